"""Failures: failed requests, warning events, back-offs, stuck rollouts and unscheduled Pods."""

from __future__ import annotations

from typing import Any

from kelemetry_py.analysis.evidence import CONTROL_PLANE, Fact, actor_json, evidence, is_pod
from kelemetry_py.analysis.facts import (
    actor_of,
    event_message,
    iso,
    millis,
    request_error,
    sets_condition_reason,
    short_actor,
    tag,
    waiting_reasons,
)
from kelemetry_py.analysis.rollouts import pod_story
from kelemetry_py.frontend.assembly import AssembledTrace
from kelemetry_py.model import SERVICE_AUDIT, SERVICE_EVENT, Span

_ROUTINE_CODES = frozenset({404, 409})


_PROGRESS_DEADLINE = "ProgressDeadlineExceeded"


def find_failures(
    trace: AssembledTrace, facts: list[Fact], rollouts: list[dict[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    requests: list[dict[str, Any]] = []
    warnings: list[dict[str, Any]] = []
    backoffs: dict[tuple[str, str], dict[str, Any]] = {}
    deadlines: list[dict[str, Any]] = []
    for fact in facts:
        span = fact.span
        if span.service == SERVICE_AUDIT:
            error = request_error(span)
            if error is not None:
                actor = actor_of(span)
                requests.append(
                    {
                        **evidence(fact),
                        **actor_json(actor),
                        "impersonatedUser": tag(span, "impersonatedUser"),
                        "verb": tag(span, "verb"),
                        "subresource": tag(span, "subresource"),
                        "targetResource": tag(span, "targetResource"),
                        "code": error.code,
                        "reason": error.reason,
                        "message": error.message,
                        "routine": actor.kind in CONTROL_PLANE and error.code in _ROUTINE_CODES,
                    }
                )
        if span.service == SERVICE_EVENT:
            reason = tag(span, "reason") or span.name
            if tag(span, "type") == "Warning":
                warnings.append(
                    {
                        **evidence(fact),
                        "reason": reason,
                        "message": event_message(span),
                        "count": _count(span),
                        "source": short_actor(actor_of(span).name),
                    }
                )
            if "BackOff" in reason:
                _note_backoff(backoffs, fact, reason, _count(span), event_message(span))
            if reason == _PROGRESS_DEADLINE:
                deadlines.append({**evidence(fact), "reason": reason, "message": event_message(span)})
        for reason in waiting_reasons(span):
            if "BackOff" in reason:
                _note_backoff(backoffs, fact, reason, 1, "")
        if sets_condition_reason(span, "Progressing", _PROGRESS_DEADLINE):
            deadlines.append({**evidence(fact), "reason": _PROGRESS_DEADLINE, "message": "condition Progressing"})

    stuck: list[dict[str, Any]] = []
    for rollout in rollouts:
        if not rollout["converged"]:
            stuck.append(
                {
                    "workload": rollout["workload"],
                    "trigger": rollout["trigger"]["spanId"],
                    "time": rollout["trigger"]["time"],
                    "reason": "replicas not converging",
                    "detail": ", ".join(f"{p['pod'].rsplit('/', 1)[-1]} ({p['lastStep']})" for p in rollout["pending"]),
                    "spanIds": [rollout["trigger"]["spanId"]],
                }
            )
    for deadline in deadlines:
        stuck.append(
            {
                "workload": deadline["object"],
                "trigger": deadline["spanId"],
                "time": deadline["time"],
                "reason": "progress deadline exceeded",
                "detail": deadline["message"],
                "spanIds": [deadline["spanId"]],
            }
        )
    for item in backoffs.values():
        item["repeated"] = item["occurrences"] > 1 or item["count"] > 1
    return {
        "requests": requests,
        "warningEvents": warnings,
        "backOffs": sorted(backoffs.values(), key=lambda item: (item["first"], item["object"])),
        "stuckRollouts": stuck,
        "unscheduledPods": _unscheduled(trace, facts),
    }


def _count(span: Span) -> int:
    try:
        return int(span.attributes.get("count", 1) or 1)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 1


def _note_backoff(
    found: dict[tuple[str, str], dict[str, Any]], fact: Fact, reason: str, count: int, message: str
) -> None:
    item = found.get((fact.key, reason))
    if item is None:
        found[(fact.key, reason)] = {
            "object": fact.key,
            "reason": reason,
            "occurrences": 1,
            "count": count,
            "first": iso(fact.time_ns),
            "last": iso(fact.time_ns),
            "message": message,
            "spanIds": [fact.span.span_id_hex],
            "repeated": False,
        }
        return
    item["occurrences"] += 1
    item["count"] = max(item["count"], count, item["occurrences"])
    item["last"] = iso(fact.time_ns)
    item["message"] = message or item["message"]
    if fact.span.span_id_hex not in item["spanIds"]:
        item["spanIds"].append(fact.span.span_id_hex)


def _unscheduled(trace: AssembledTrace, facts: list[Fact]) -> list[dict[str, Any]]:
    out = []
    by_key: dict[str, list[Fact]] = {}
    for fact in facts:
        by_key.setdefault(fact.key, []).append(fact)
    for key in sorted(trace.objects):
        if not is_pod(key):
            continue
        story = pod_story(by_key.get(key, []))
        if story.created is None or story.scheduled is not None:
            continue
        out.append(
            {
                **evidence(story.created),
                "pod": key,
                "deleted": story.terminating is not None,
                "waitedMs": millis(
                    (story.terminating.time_ns if story.terminating else trace.end_ns) - story.created.time_ns
                ),
            }
        )
    return out
