"""Automated analysis of an assembled object tree: timeline, rollout latency, failures and changes.

The input is the :class:`AssembledTrace` the frontend builds (the same objects and spans the UI shows); the
output is a JSON-ready dict that :data:`kelemetry_py.analysis.schema.ANALYSIS_SCHEMA` describes. Every fact
names its evidence: the span id, the object, the time and the actor.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from kelemetry_py.analysis.facts import (
    Actor,
    action_of,
    actor_of,
    becomes_ready,
    diff_changes,
    diff_logs,
    event_message,
    iso,
    millis,
    patch_changes,
    patch_text,
    request_error,
    response_code,
    short_actor,
    succeeded,
    tag,
    waiting_reasons,
)
from kelemetry_py.frontend.assembly import AssembledTrace
from kelemetry_py.model import SERVICE_AUDIT, SERVICE_DIFF, SERVICE_EVENT, ObjectRef, Span

ANALYSIS_API_VERSION = "kelemetry-py/analysis/v1"

_WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
_TRIGGER_SUBRESOURCES = frozenset({"", "scale"})
_CONTROL_PLANE = frozenset({"controller", "scheduler", "node", "system"})
# Optimistic-concurrency conflicts and deletes of already-gone objects are routine for controllers: they retry.
_ROUTINE_CODES = frozenset({404, 409})
_KINDS = {
    "replicasets": "ReplicaSet",
    "controllerrevisions": "ControllerRevision",
    "jobs": "Job",
    "pods": "Pod",
    "deployments": "Deployment",
    "statefulsets": "StatefulSet",
    "daemonsets": "DaemonSet",
}
_PROGRESS_DEADLINE = "ProgressDeadlineExceeded"


@dataclass(frozen=True, slots=True)
class _Fact:
    """One span of one object of the tree."""

    key: str
    span: Span

    @property
    def time_ns(self) -> int:
        return self.span.end_ns


def analyze(trace: AssembledTrace) -> dict[str, Any]:
    """The full analysis of ``trace`` as a JSON-ready dict."""
    facts = sorted(
        (_Fact(key, span) for key, obj in trace.objects.items() for span in obj.children),
        key=lambda fact: (fact.span.start_ns, fact.span.span_id),
    )
    rollouts = _Rollouts(trace, facts).build()
    failures = _failures(trace, facts, rollouts)
    changes = _changes(facts)
    slowest = _slowest(rollouts)
    searched = trace.objects[trace.searched].ref
    return {
        "apiVersion": ANALYSIS_API_VERSION,
        "object": _ref_json(searched),
        "range": {
            "start": iso(trace.start_ns),
            "end": iso(trace.end_ns),
            "startUnixNano": trace.start_ns,
            "endUnixNano": trace.end_ns,
        },
        "objects": _objects(trace),
        "timeline": [_timeline_entry(fact) for fact in facts],
        "latency": {"rollouts": rollouts, "slowestStep": slowest},
        "failures": failures,
        "changes": changes,
        "summary": {
            "objects": len(trace.objects),
            "spans": len(facts),
            "rollouts": len(rollouts),
            "failedRequests": sum(1 for item in failures["requests"] if not item["routine"]),
            "routineFailedRequests": sum(1 for item in failures["requests"] if item["routine"]),
            "warningEvents": len(failures["warningEvents"]),
            "backOffs": len(failures["backOffs"]),
            "stuckRollouts": len(failures["stuckRollouts"]),
            "unscheduledPods": len(failures["unscheduledPods"]),
            "changes": len(changes["entries"]),
            "slowestStep": slowest,
        },
    }


# ------------------------------------------------------------------------------------------------ shared parts


def _ref_json(ref: ObjectRef) -> dict[str, str]:
    return {
        "key": ref.key,
        "cluster": ref.cluster,
        "group": ref.group,
        "version": ref.version,
        "resource": ref.resource,
        "namespace": ref.namespace,
        "name": ref.name,
        "uid": ref.uid,
    }


def _evidence(fact: _Fact) -> dict[str, Any]:
    return {
        "time": iso(fact.time_ns),
        "timeUnixNano": fact.time_ns,
        "object": fact.key,
        "spanId": fact.span.span_id_hex,
    }


def _actor_json(actor: Actor) -> dict[str, Any]:
    return {"actor": actor.name, "actorKind": actor.kind, "user": actor.user or actor.name}


def _objects(trace: AssembledTrace) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    stack: list[tuple[str, str | None, int]] = [(trace.root, None, 0)]
    while stack:
        key, parent, depth = stack.pop()
        obj = trace.objects[key]
        link_class = str(trace.graph.edges[parent, key].get("link_class", "")) if parent else ""
        out.append(
            {
                "key": key,
                "resource": obj.ref.resource,
                "namespace": obj.ref.namespace,
                "name": obj.ref.name,
                "parent": parent,
                "linkClass": link_class,
                "depth": depth,
                "spans": len(obj.children),
                "firstSeen": iso(min((s.start_ns for s in obj.children), default=obj.start_ns)),
                "lastSeen": iso(max((s.end_ns for s in obj.children), default=obj.end_ns)),
            }
        )
        stack.extend((child, key, depth + 1) for child in reversed(trace.children_of(key)))
    return out


def _summary_text(span: Span) -> str:
    """What the entry adds to its actor and action: an error, the changed fields, an event's message."""
    if span.service == SERVICE_AUDIT:
        error = request_error(span)
        if error is not None:
            return f"{error.reason}: {error.message}" if error.message else error.reason or str(error.code)
        lines = [change.line for log in diff_logs(span) for change in diff_changes(log)]
        if not lines and patch_text(span):
            lines = [change.line for change in patch_changes(patch_text(span)) or []]
        return "; ".join(lines[:3]) + (f" (+{len(lines) - 3})" if len(lines) > 3 else "")
    if span.service == SERVICE_EVENT:
        message = event_message(span)
        reason = tag(span, "reason") or span.name
        return f"{reason}: {message}" if message else reason
    if span.service == SERVICE_DIFF:
        lines = [change.line for log in diff_logs(span) for change in diff_changes(log)]
        return f"{span.name}: {'; '.join(lines[:3])}" if lines else span.name
    return span.name


def _timeline_entry(fact: _Fact) -> dict[str, Any]:
    span = fact.span
    actor = actor_of(span)
    entry = {
        "time": iso(span.start_ns),
        "timeUnixNano": span.start_ns,
        "durationMs": millis(span.end_ns - span.start_ns),
        "object": fact.key,
        "source": span.service,
        **_actor_json(actor),
        "action": action_of(span),
        "code": response_code(span),
        "error": span.error or response_code(span) >= 400,
        "summary": _summary_text(span),
        "spanId": span.span_id_hex,
    }
    return entry


# ------------------------------------------------------------------------------------------------ rollouts


def _is_pod(key: str) -> bool:
    ref = ObjectRef.from_key(key)
    return ref.group == "" and ref.resource == "pods"


def _kind_label(key: str) -> str:
    resource = ObjectRef.from_key(key).resource
    return _KINDS.get(resource, resource)


def _is_trigger(fact: _Fact) -> bool:
    """A change a person (or their automation) asked for, as opposed to a controller reacting."""
    span = fact.span
    actor = actor_of(span)
    if actor.kind in _CONTROL_PLANE or actor.kind == "unknown":
        return False
    if span.service == SERVICE_AUDIT:
        return (
            tag(span, "verb") in _WRITE_VERBS and tag(span, "subresource") in _TRIGGER_SUBRESOURCES and succeeded(span)
        )
    if span.service == SERVICE_DIFF:
        return any(change.path.startswith("spec") for log in diff_logs(span) for change in diff_changes(log)) or tag(
            span, "change"
        ) in ("create", "delete")
    return False


def _is_teardown(fact: _Fact) -> bool:
    span = fact.span
    return (
        span.service == SERVICE_AUDIT
        and tag(span, "verb").startswith("delete")
        and not tag(span, "subresource")
        and succeeded(span)
    )


def _trigger_kind(span: Span) -> str:
    verb = tag(span, "verb") or tag(span, "change")
    if verb == "create":
        return "create"
    if verb.startswith("delete"):
        return "delete"
    if tag(span, "subresource") == "scale":
        return "scale"
    return "update"


@dataclass(slots=True)
class _PodStory:
    created: _Fact | None = None
    scheduled: _Fact | None = None
    ready: _Fact | None = None
    terminating: _Fact | None = None
    removed: _Fact | None = None


@dataclass(slots=True)
class _OwnerStory:
    created: _Fact | None = None
    deleted: _Fact | None = None
    scaled: list[_Fact] = field(default_factory=list)


def _pod_story(facts: Iterable[_Fact]) -> _PodStory:
    """How one pod moved: created, scheduled, ready, terminating, removed (the first evidence of each)."""
    story = _PodStory()
    deletes: list[_Fact] = []
    for fact in facts:
        span = fact.span
        if not succeeded(span):
            continue
        verb, subresource = tag(span, "verb"), tag(span, "subresource")
        if span.service == SERVICE_AUDIT and verb == "create" and not subresource:
            story.created = story.created or fact
        elif (span.service == SERVICE_AUDIT and verb == "create" and subresource == "binding") or (
            span.service == SERVICE_EVENT and tag(span, "reason") == "Scheduled"
        ):
            story.scheduled = story.scheduled or fact
        elif span.service == SERVICE_AUDIT and verb.startswith("delete") and not subresource:
            deletes.append(fact)
        elif span.service == SERVICE_DIFF and tag(span, "change") == "create":
            story.created = story.created or fact
        elif span.service == SERVICE_DIFF and tag(span, "change") == "delete":
            deletes.append(fact)
        if story.ready is None and becomes_ready(span):
            story.ready = fact
    if deletes:
        story.terminating = deletes[0]
        last = deletes[-1]
        if len(deletes) > 1 or actor_of(last.span).kind == "node" or tag(last.span, "change") == "delete":
            story.removed = last
    return story


def _owner_story(facts: Iterable[_Fact]) -> _OwnerStory:
    story = _OwnerStory()
    for fact in facts:
        span = fact.span
        if not succeeded(span) or span.service not in (SERVICE_AUDIT, SERVICE_DIFF):
            continue
        verb = tag(span, "verb") or tag(span, "change")
        subresource = tag(span, "subresource")
        if verb == "create" and not subresource:
            story.created = story.created or fact
        elif verb.startswith("delete") and not subresource:
            story.deleted = story.deleted or fact
        elif verb in ("update", "patch", "diff") and subresource in _TRIGGER_SUBRESOURCES:
            story.scaled.append(fact)
    return story


class _Rollouts:
    """Each requested change of a workload, followed through its owned objects until the pods settle."""

    def __init__(self, trace: AssembledTrace, facts: list[_Fact]) -> None:
        self.trace = trace
        self.facts = facts
        self.by_key: dict[str, list[_Fact]] = {}
        for fact in facts:
            self.by_key.setdefault(fact.key, []).append(fact)

    def build(self) -> list[dict[str, Any]]:
        workloads = [key for key in self.trace.objects if any(_is_pod(d) for d in self._descendants(key))]
        triggers = sorted(
            (
                fact
                for key in workloads
                for fact in self.by_key.get(key, [])
                if _is_trigger(fact) or (self._is_top(key) and _is_teardown(fact))
            ),
            key=lambda fact: (fact.span.start_ns, fact.span.span_id),
        )
        out: list[dict[str, Any]] = []
        for index, trigger in enumerate(triggers):
            until = triggers[index + 1].span.start_ns if index + 1 < len(triggers) else self.trace.end_ns + 1
            out.append(self._rollout(trigger, until))
        return out

    def _is_top(self, key: str) -> bool:
        """No owner of the object is in the tree: a controller deleting it (a namespace going) starts a story."""
        return key == self.trace.root or not any(True for _ in self.trace.graph.predecessors(key))

    def _descendants(self, key: str) -> set[str]:
        return set(nx.descendants(self.trace.graph, key)) if key in self.trace.graph else set()

    def _within(self, key: str, start_ns: int, until_ns: int) -> list[_Fact]:
        return [f for f in self.by_key.get(key, []) if start_ns <= f.span.start_ns < until_ns]

    def _rollout(self, trigger: _Fact, until_ns: int) -> dict[str, Any]:
        start_ns = trigger.span.start_ns
        descendants = self._descendants(trigger.key)
        pods = sorted(key for key in descendants if _is_pod(key))
        owners = {
            key: _owner_story(self._within(key, start_ns, until_ns)) for key in sorted(descendants) if not _is_pod(key)
        }
        stories = {key: _pod_story(self._within(key, start_ns, until_ns)) for key in pods}
        created = {key: story for key, story in stories.items() if story.created is not None}
        leaving = {
            key: story for key, story in stories.items() if story.created is None and story.terminating is not None
        }

        chains: list[list[tuple[str, _Fact]]] = []
        for key, story in created.items():
            assert story.created is not None
            chain = self._owner_steps(key, owners, story.created.time_ns)
            chain.append(("pod created", story.created))
            if story.scheduled is not None:
                chain.append(("pod scheduled", story.scheduled))
                if story.ready is not None:
                    chain.append(("pod ready", story.ready))
            chains.append(chain)
        for key, story in leaving.items():
            assert story.terminating is not None
            chain = self._owner_steps(key, owners, story.terminating.time_ns)
            chain.append(("pod terminating", story.terminating))
            if not created and story.removed is not None:
                chain.append(("pod removed", story.removed))
            chains.append(chain)
        if not chains:
            chains = [
                [(label, fact)] for key, owner in owners.items() for label, fact in self._owner_events(key, owner)
            ]
        critical = max(chains, key=lambda chain: (chain[-1][1].time_ns, len(chain)), default=[])
        first = "deletion" if _trigger_kind(trigger.span) == "delete" else "spec change"
        steps = self._steps([(first, trigger), *critical])

        stages = self._stages(created, leaving, owners)
        # A pod still moving when the next change came may settle after it: judge it on the rest of the range.
        settled = {key: _pod_story(self._within(key, start_ns, self.trace.end_ns + 1)) for key in [*created, *leaving]}
        pending = [
            {"pod": key, "lastStep": _last_step(settled[key])}
            for key in sorted(created)
            if all(getattr(settled[key], step) is None for step in ("ready", "removed", "terminating"))
        ] + [
            {"pod": key, "lastStep": "pod terminating"}
            for key in sorted(leaving)
            if settled[key].removed is None and not created
        ]
        actor = actor_of(trigger.span)
        end_ns = steps[-1]["endUnixNano"]
        slowest = max(steps[1:] or steps, key=lambda step: step["durationMs"])
        return {
            "workload": trigger.key,
            "kind": _trigger_kind(trigger.span),
            "trigger": {
                **_evidence(trigger),
                **_actor_json(actor),
                "action": action_of(trigger.span),
                "summary": _summary_text(trigger.span),
            },
            "start": iso(start_ns),
            "end": iso(end_ns),
            "durationMs": millis(end_ns - start_ns),
            "steps": steps,
            "slowestStep": {"name": slowest["name"], "durationMs": slowest["durationMs"]},
            "stages": stages,
            "converged": not pending,
            "pending": pending,
        }

    def _owner_steps(self, pod: str, owners: dict[str, _OwnerStory], before_ns: int) -> list[tuple[str, _Fact]]:
        """What the pod's owner did in this rollout before the pod moved (a new ReplicaSet, a scale)."""
        parents = [key for key in self.trace.graph.predecessors(pod) if key in owners]
        for parent in parents:
            owner = owners[parent]
            label = _kind_label(parent)
            if owner.created is not None and owner.created.time_ns <= before_ns:
                return [(f"new {label}", owner.created)]
            if owner.deleted is not None and owner.deleted.time_ns <= before_ns:
                return [(f"{label} deleted", owner.deleted)]
            scaled = [fact for fact in owner.scaled if fact.time_ns <= before_ns]
            if scaled:
                return [(f"{label} scaled", scaled[-1])]
        return []

    @staticmethod
    def _owner_events(key: str, owner: _OwnerStory) -> list[tuple[str, _Fact]]:
        label = _kind_label(key)
        events = [(f"new {label}", owner.created), (f"{label} deleted", owner.deleted)]
        events += [(f"{label} scaled", fact) for fact in owner.scaled[:1]]
        return [(name, fact) for name, fact in events if fact is not None]

    @staticmethod
    def _steps(chain: list[tuple[str, _Fact]]) -> list[dict[str, Any]]:
        steps: list[dict[str, Any]] = []
        previous_ns = chain[0][1].span.start_ns
        for name, fact in chain:
            end_ns = max(fact.time_ns, previous_ns)
            actor = actor_of(fact.span)
            steps.append(
                {
                    "name": name,
                    **_evidence(fact),
                    **_actor_json(actor),
                    "action": action_of(fact.span),
                    "startUnixNano": previous_ns,
                    "endUnixNano": end_ns,
                    "durationMs": millis(end_ns - previous_ns),
                }
            )
            previous_ns = end_ns
        return steps

    @staticmethod
    def _stages(
        created: dict[str, _PodStory], leaving: dict[str, _PodStory], owners: dict[str, _OwnerStory]
    ) -> list[dict[str, Any]]:
        found: dict[str, list[_Fact]] = {}
        for key, owner in owners.items():
            for name, fact in _Rollouts._owner_events(key, owner):
                found.setdefault(name, []).append(fact)
        moments: list[tuple[str, _Fact | None]] = []
        for story in created.values():
            moments += [
                ("pod created", story.created),
                ("pod scheduled", story.scheduled),
                ("pod ready", story.ready),
            ]
        for story in [*created.values(), *leaving.values()]:
            moments += [("pod terminating", story.terminating), ("pod removed", story.removed)]
        for name, moment in moments:
            if moment is not None:
                found.setdefault(name, []).append(moment)
        out = []
        for name, facts in found.items():
            times = [fact.time_ns for fact in facts]
            out.append(
                {
                    "name": name,
                    "count": len(facts),
                    "first": iso(min(times)),
                    "last": iso(max(times)),
                    "spanIds": [fact.span.span_id_hex for fact in facts],
                }
            )
        out.sort(key=lambda stage: (stage["last"], stage["name"]))
        return out


def _last_step(story: _PodStory) -> str:
    if story.ready is not None:
        return "pod ready"
    if story.scheduled is not None:
        return "pod scheduled"
    return "pod created"


def _slowest(rollouts: list[dict[str, Any]]) -> dict[str, Any] | None:
    best: dict[str, Any] | None = None
    for rollout in rollouts:
        for step in rollout["steps"][1:]:
            if best is None or step["durationMs"] > best["durationMs"]:
                best = {
                    "name": step["name"],
                    "durationMs": step["durationMs"],
                    "object": step["object"],
                    "spanId": step["spanId"],
                    "rollout": rollout["trigger"]["spanId"],
                }
    return best


# ------------------------------------------------------------------------------------------------ failures


def _failures(
    trace: AssembledTrace, facts: list[_Fact], rollouts: list[dict[str, Any]]
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
                        **_evidence(fact),
                        **_actor_json(actor),
                        "impersonatedUser": tag(span, "impersonatedUser"),
                        "verb": tag(span, "verb"),
                        "subresource": tag(span, "subresource"),
                        "targetResource": tag(span, "targetResource"),
                        "code": error.code,
                        "reason": error.reason,
                        "message": error.message,
                        "routine": actor.kind in _CONTROL_PLANE and error.code in _ROUTINE_CODES,
                    }
                )
        if span.service == SERVICE_EVENT:
            reason = tag(span, "reason") or span.name
            if tag(span, "type") == "Warning":
                warnings.append(
                    {
                        **_evidence(fact),
                        "reason": reason,
                        "message": event_message(span),
                        "count": _count(span),
                        "source": short_actor(actor_of(span).name),
                    }
                )
            if "BackOff" in reason:
                _note_backoff(backoffs, fact, reason, _count(span), event_message(span))
            if reason == _PROGRESS_DEADLINE:
                deadlines.append({**_evidence(fact), "reason": reason, "message": event_message(span)})
        for reason in waiting_reasons(span):
            if "BackOff" in reason:
                _note_backoff(backoffs, fact, reason, 1, "")
        if any(_PROGRESS_DEADLINE in change.line for log in diff_logs(span) for change in diff_changes(log)):
            deadlines.append({**_evidence(fact), "reason": _PROGRESS_DEADLINE, "message": "condition Progressing"})

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
    found: dict[tuple[str, str], dict[str, Any]], fact: _Fact, reason: str, count: int, message: str
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


def _unscheduled(trace: AssembledTrace, facts: list[_Fact]) -> list[dict[str, Any]]:
    out = []
    by_key: dict[str, list[_Fact]] = {}
    for fact in facts:
        by_key.setdefault(fact.key, []).append(fact)
    for key in sorted(trace.objects):
        if not _is_pod(key):
            continue
        story = _pod_story(by_key.get(key, []))
        if story.created is None or story.scheduled is not None:
            continue
        out.append(
            {
                **_evidence(story.created),
                "pod": key,
                "deleted": story.terminating is not None,
                "waitedMs": millis(
                    (story.terminating.time_ns if story.terminating else trace.end_ns) - story.created.time_ns
                ),
            }
        )
    return out


# ------------------------------------------------------------------------------------------------ changes


def _changes(facts: list[_Fact]) -> dict[str, Any]:
    entries: list[dict[str, Any]] = []
    for fact in facts:
        span = fact.span
        logs = diff_logs(span)
        actor = actor_of(span)
        base = {
            **_evidence(fact),
            **_actor_json(actor),
            "fieldManager": tag(span, "fieldManager"),
            "userAgent": tag(span, "userAgent"),
        }
        if logs:
            found = [change for log in logs for change in diff_changes(log)]
            entries.append(
                {
                    **base,
                    "source": "diff",
                    "paths": [change.path for change in found],
                    "lines": [change.line for change in found],
                }
            )
            continue
        text = patch_text(span) if succeeded(span) else ""
        if text:
            patched = patch_changes(text)
            entries.append(
                {
                    **base,
                    "source": "patch",
                    "paths": [change.path for change in patched or []],
                    "lines": [change.line for change in patched]
                    if patched is not None
                    else ["(patch too long to show)"],
                }
            )
    by_actor: dict[str, dict[str, Any]] = {}
    for entry in entries:
        summary = by_actor.setdefault(
            entry["actor"],
            {
                "actor": entry["actor"],
                "actorKind": entry["actorKind"],
                "fieldManagers": [],
                "objects": [],
                "paths": [],
                "changes": 0,
            },
        )
        summary["changes"] += 1
        for list_key, value in (("fieldManagers", entry["fieldManager"]), ("objects", entry["object"])):
            if value and value not in summary[list_key]:
                summary[list_key].append(value)
        for path in entry["paths"]:
            if path not in summary["paths"]:
                summary["paths"].append(path)
    people_first = sorted(by_actor.values(), key=lambda item: (item["actorKind"] != "user", item["actor"]))
    return {"entries": entries, "byActor": people_first}
