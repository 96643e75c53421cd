"""Rollouts: what triggered each one, the steps down to the Pods becoming ready, and the slowest step."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from kelemetry_py.analysis.evidence import CONTROL_PLANE, WRITE_VERBS, Fact, actor_json, evidence, is_pod, kind_label
from kelemetry_py.analysis.facts import (
    action_of,
    actor_of,
    becomes_ready,
    diff_changes,
    diff_logs,
    iso,
    millis,
    succeeded,
    tag,
)
from kelemetry_py.analysis.timeline import summary_text
from kelemetry_py.frontend.assembly import AssembledTrace
from kelemetry_py.model import SERVICE_AUDIT, SERVICE_DIFF, SERVICE_EVENT, Span

_TRIGGER_SUBRESOURCES = frozenset({"", "scale"})


def _is_trigger(fact: Fact) -> bool:
    """A change a person (or their automation) asked for, as opposed to a controller reacting."""
    span = fact.span
    actor = actor_of(span)
    if actor.kind in CONTROL_PLANE or actor.kind == "unknown":
        return False
    if span.service == SERVICE_AUDIT:
        return (
            tag(span, "verb") in WRITE_VERBS and tag(span, "subresource") in _TRIGGER_SUBRESOURCES and succeeded(span)
        )
    if span.service == SERVICE_DIFF:
        return any(change.path.startswith("spec") for log in diff_logs(span) for change in diff_changes(log)) or tag(
            span, "change"
        ) in ("create", "delete")
    return False


def _is_teardown(fact: Fact) -> bool:
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
    created: Fact | None = None
    scheduled: Fact | None = None
    ready: Fact | None = None
    terminating: Fact | None = None
    removed: Fact | None = None


@dataclass(slots=True)
class _OwnerStory:
    created: Fact | None = None
    deleted: Fact | None = None
    scaled: list[Fact] = field(default_factory=list)


def pod_story(facts: Iterable[Fact]) -> _PodStory:
    """How one pod moved: created, scheduled, ready, terminating, removed (the first evidence of each)."""
    story = _PodStory()
    deletes: list[Fact] = []
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


def _owner_story(facts: Iterable[Fact]) -> _OwnerStory:
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


class Rollouts:
    """Each requested change of a workload, followed through its owned objects until the pods settle."""

    def __init__(self, trace: AssembledTrace, facts: list[Fact]) -> None:
        self.trace = trace
        self.facts = facts
        self.by_key: dict[str, list[Fact]] = {}
        for fact in facts:
            self.by_key.setdefault(fact.key, []).append(fact)

    def build(self) -> list[dict[str, Any]]:
        workloads = [key for key in self.trace.objects if any(is_pod(d) for d in self._descendants(key))]
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

    def _within(self, key: str, start_ns: int, until_ns: int) -> list[Fact]:
        return [f for f in self.by_key.get(key, []) if start_ns <= f.span.start_ns < until_ns]

    def _rollout(self, trigger: Fact, until_ns: int) -> dict[str, Any]:
        start_ns = trigger.span.start_ns
        descendants = self._descendants(trigger.key)
        pods = sorted(key for key in descendants if is_pod(key))
        owners = {
            key: _owner_story(self._within(key, start_ns, until_ns)) for key in sorted(descendants) if not is_pod(key)
        }
        stories = {key: pod_story(self._within(key, start_ns, until_ns)) for key in pods}
        created = {key: story for key, story in stories.items() if story.created is not None}
        leaving = {
            key: story for key, story in stories.items() if story.created is None and story.terminating is not None
        }

        chains: list[list[tuple[str, Fact]]] = []
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
        settled = {key: pod_story(self._within(key, start_ns, self.trace.end_ns + 1)) for key in [*created, *leaving]}
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
                **evidence(trigger),
                **actor_json(actor),
                "action": action_of(trigger.span),
                "summary": summary_text(trigger.span),
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

    def _owner_steps(self, pod: str, owners: dict[str, _OwnerStory], before_ns: int) -> list[tuple[str, Fact]]:
        """What the pod's owner did in this rollout before the pod moved (a new ReplicaSet, a scale)."""
        parents = [key for key in self.trace.graph.predecessors(pod) if key in owners]
        for parent in parents:
            owner = owners[parent]
            label = kind_label(parent)
            if owner.created is not None and owner.created.time_ns <= before_ns:
                return [(f"new {label}", owner.created)]
            if owner.deleted is not None and owner.deleted.time_ns <= before_ns:
                return [(f"{label} deleted", owner.deleted)]
            scaled = [fact for fact in owner.scaled if fact.time_ns <= before_ns]
            if scaled:
                return [(f"{label} scaled", scaled[-1])]
        return []

    @staticmethod
    def _owner_events(key: str, owner: _OwnerStory) -> list[tuple[str, Fact]]:
        label = kind_label(key)
        events = [(f"new {label}", owner.created), (f"{label} deleted", owner.deleted)]
        events += [(f"{label} scaled", fact) for fact in owner.scaled[:1]]
        return [(name, fact) for name, fact in events if fact is not None]

    @staticmethod
    def _steps(chain: list[tuple[str, Fact]]) -> list[dict[str, Any]]:
        steps: list[dict[str, Any]] = []
        previous_ns = chain[0][1].span.start_ns
        for name, fact in chain:
            end_ns = max(fact.time_ns, previous_ns)
            actor = actor_of(fact.span)
            steps.append(
                {
                    "name": name,
                    **evidence(fact),
                    **actor_json(actor),
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
        found: dict[str, list[Fact]] = {}
        for key, owner in owners.items():
            for name, fact in Rollouts._owner_events(key, owner):
                found.setdefault(name, []).append(fact)
        moments: list[tuple[str, Fact | None]] = []
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


def slowest_step(rollouts: list[dict[str, Any]]) -> dict[str, Any] | None:
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
