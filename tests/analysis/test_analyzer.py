"""The analyzer on raw spans shaped as the event tracker and the differ write them (DESIGN §3).

The recorded fixtures hold no Warning events, back-offs or stuck rollouts, so these build them span by span.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import jsonschema
import networkx as nx
import orjson

from kelemetry_py.analysis.analyzer import analyze
from kelemetry_py.analysis.report import render_report
from kelemetry_py.analysis.schema import ANALYSIS_SCHEMA
from kelemetry_py.frontend.assembly import AssembledTrace, merge_object
from kelemetry_py.model import Attributes, LogEntry, ObjectRef, Span

S = 1_000_000_000
T0 = 1_795_000_000 * S
DEPLOY = ObjectRef("c1", "apps", "v1", "deployments", "prod", "api")
RS = ObjectRef("c1", "apps", "v1", "replicasets", "prod", "api-1")
POD_A = ObjectRef("c1", "", "v1", "pods", "prod", "api-1-a")
POD_B = ObjectRef("c1", "", "v1", "pods", "prod", "api-1-b")
_ids = itertools.count(1)


def span(ref: ObjectRef, service: str, name: str, at: float, tags: Attributes, *logs: LogEntry) -> Span:
    return Span(
        trace_id=1,
        span_id=next(_ids),
        parent_id=None,
        service=service,
        name=name,
        start_ns=T0 + int(at * S),
        end_ns=T0 + int(at * S),
        attributes={**ref.tags(), **tags},
        logs=list(logs),
    )


def audit(ref: ObjectRef, user: str, verb: str, at: float, code: int, subresource: str = "", patch: Any = None) -> Span:
    tags: Attributes = {"verb": verb, "username": user, "responseCode": code}
    if subresource:
        tags["subresource"] = subresource
    logs = [LogEntry(T0 + int(at * S), "request", {"patch": orjson.dumps(patch).decode()})] if patch else []
    return span(ref, "audit", f"{user} {verb}", at, tags, *logs)


def event(ref: ObjectRef, kind: str, reason: str, at: float, count: int, source: str, message: str) -> Span:
    tags: Attributes = {"type": kind, "reason": reason, "count": count, "source": source}
    return span(ref, "event", reason, at, tags, LogEntry(T0 + int(at * S), "event", {"message": message}))


def diff(ref: ObjectRef, manager: str, at: float, changes: list[dict[str, Any]], lines: list[str]) -> Span:
    fields: Attributes = {"diff": "\n".join(lines), "changes": orjson.dumps(changes).decode()}
    tags: Attributes = {"fieldManager": manager, "operation": "Update", "change": "diff"}
    return span(ref, "diff", manager, at, tags, LogEntry(T0 + int(at * S), "diff", fields))


def assemble(spans: dict[ObjectRef, list[Span]], searched: ObjectRef) -> AssembledTrace:
    start, end = T0 - 60 * S, T0 + 600 * S
    objects = {}
    for ref, own in spans.items():
        merged = merge_object(ref, [own], start, end)
        assert merged is not None
        objects[ref.key] = merged
    graph = nx.DiGraph()
    graph.add_edge(DEPLOY.key, RS.key, link_class="owner")
    for pod in (POD_A, POD_B):
        if pod.key in objects:
            graph.add_edge(RS.key, pod.key, link_class="owner")
    return AssembledTrace(searched.key, DEPLOY.key, objects, graph, start, end)


def stuck_rollout() -> AssembledTrace:
    image = "spec.template.spec.containers[app].image"
    crash = {
        "status": {
            "containerStatuses": [{"name": "app", "ready": False, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]
        }
    }
    return assemble(
        {
            DEPLOY: [
                # No audit webhook: the change is known from the differ, attributed to its field manager.
                diff(
                    DEPLOY,
                    "kubectl-client-side-apply",
                    0,
                    [{"path": image, "op": "change", "old": "a:1", "new": "a:2"}],
                    [f'{image} "a:1" -> "a:2"'],
                ),
                diff(
                    DEPLOY,
                    "kube-controller-manager",
                    600 - 10,
                    [
                        {
                            "path": "status.conditions[Progressing].reason",
                            "op": "change",
                            "old": "ReplicaSetUpdated",
                            "new": "ProgressDeadlineExceeded",
                        }
                    ],
                    ['status.conditions[Progressing].reason "ReplicaSetUpdated" -> "ProgressDeadlineExceeded"'],
                ),
            ],
            RS: [audit(RS, "system:serviceaccount:kube-system:deployment-controller", "create", 0.1, 201)],
            POD_A: [
                audit(POD_A, "system:serviceaccount:kube-system:replicaset-controller", "create", 0.2, 201),
                audit(POD_A, "system:kube-scheduler", "create", 0.3, 201, "binding"),
                audit(POD_A, "system:node:n1", "patch", 2, 200, "status", crash),
                event(POD_A, "Warning", "BackOff", 20, 1, "kubelet", "Back-off restarting failed container"),
                event(POD_A, "Warning", "BackOff", 80, 5, "kubelet", "Back-off restarting failed container"),
            ],
            POD_B: [
                audit(POD_B, "system:serviceaccount:kube-system:replicaset-controller", "create", 0.25, 201),
                event(POD_B, "Warning", "FailedScheduling", 1, 3, "default-scheduler", "0/3 nodes are available"),
            ],
        },
        DEPLOY,
    )


def test_stuck_rollout_warnings_backoffs_and_unscheduled_pods() -> None:
    doc = analyze(stuck_rollout())
    jsonschema.validate(doc, ANALYSIS_SCHEMA)

    (rollout,) = doc["latency"]["rollouts"]
    assert rollout["kind"] == "update" and rollout["trigger"]["actor"] == "kubectl-client-side-apply"
    assert rollout["trigger"]["actorKind"] == "user"
    assert not rollout["converged"]
    assert rollout["pending"] == [
        {"pod": POD_A.key, "lastStep": "pod scheduled"},
        {"pod": POD_B.key, "lastStep": "pod created"},
    ]
    assert [step["name"] for step in rollout["steps"]] == [
        "spec change",
        "new ReplicaSet",
        "pod created",
        "pod scheduled",
    ]

    failures = doc["failures"]
    reasons = sorted(item["reason"] for item in failures["stuckRollouts"])
    assert reasons == ["progress deadline exceeded", "replicas not converging"]
    converging = next(item for item in failures["stuckRollouts"] if item["reason"] == "replicas not converging")
    assert converging["detail"] == "api-1-a (pod scheduled), api-1-b (pod created)"

    assert [(w["object"], w["reason"], w["count"], w["source"]) for w in failures["warningEvents"]] == [
        (POD_B.key, "FailedScheduling", 3, "default-scheduler"),
        (POD_A.key, "BackOff", 1, "kubelet"),
        (POD_A.key, "BackOff", 5, "kubelet"),
    ]
    backoffs = {(item["object"], item["reason"]): item for item in failures["backOffs"]}
    assert set(backoffs) == {(POD_A.key, "BackOff"), (POD_A.key, "CrashLoopBackOff")}
    repeated = backoffs[(POD_A.key, "BackOff")]
    assert (repeated["occurrences"], repeated["count"], repeated["repeated"]) == (2, 5, True)
    assert len(repeated["spanIds"]) == 2
    assert backoffs[(POD_A.key, "CrashLoopBackOff")]["repeated"] is False

    (unscheduled,) = failures["unscheduledPods"]
    assert unscheduled["pod"] == POD_B.key and unscheduled["deleted"] is False
    assert unscheduled["waitedMs"] == (600 + 60 - 0.25) * 1000 - 60_000  # until the end of the range

    by_actor = {item["actor"]: item for item in doc["changes"]["byActor"]}
    assert by_actor["kubectl-client-side-apply"]["fieldManagers"] == ["kubectl-client-side-apply"]
    assert by_actor["kubectl-client-side-apply"]["paths"] == ["spec.template.spec.containers[app].image"]
    assert doc["changes"]["byActor"][0]["actor"] == "kubectl-client-side-apply", "people come first"
    assert doc["summary"]["stuckRollouts"] == 2 and doc["summary"]["warningEvents"] == 3

    report = render_report(doc)
    assert "NOT CONVERGED" in report
    assert "repeated back-off BackOff on pods prod/api-1-a: 2 times" in report
    assert "pod api-1-b never scheduled" in report
    assert "stuck rollout of deployments prod/api: progress deadline exceeded" in report


def test_rollout_told_by_events_and_diffs_alone_converges() -> None:
    ready = 'status.conditions[Ready].status "False" -> "True"'
    ready_change = [{"path": "status.conditions[Ready].status", "op": "change", "old": "False", "new": "True"}]
    trace = assemble(
        {
            DEPLOY: [
                diff(
                    DEPLOY,
                    "helm",
                    0,
                    [{"path": "spec.replicas", "op": "change", "old": 0, "new": 1}],
                    ["spec.replicas 0 -> 1"],
                )
            ],
            RS: [
                diff(
                    RS,
                    "kube-controller-manager",
                    0.1,
                    [{"path": "spec.replicas", "op": "change", "old": 0, "new": 1}],
                    ["spec.replicas 0 -> 1"],
                )
            ],
            POD_A: [
                span(
                    POD_A,
                    "diff",
                    "kube-controller-manager create",
                    0.2,
                    {"change": "create", "fieldManager": "kube-controller-manager"},
                ),
                event(
                    POD_A,
                    "Normal",
                    "Scheduled",
                    0.3,
                    1,
                    "default-scheduler",
                    "Successfully assigned prod/api-1-a to n1",
                ),
                diff(POD_A, "kubelet", 4.3, ready_change, [ready]),
            ],
        },
        DEPLOY,
    )
    doc = analyze(trace)
    jsonschema.validate(doc, ANALYSIS_SCHEMA)
    (rollout,) = doc["latency"]["rollouts"]
    assert rollout["converged"] and rollout["trigger"]["actor"] == "helm"
    steps = [(step["name"], step["actor"], step["durationMs"]) for step in rollout["steps"]]
    assert steps == [
        ("spec change", "helm", 0.0),
        ("ReplicaSet scaled", "kube-controller-manager", 100.0),
        ("pod created", "kube-controller-manager", 100.0),
        ("pod scheduled", "default-scheduler", 100.0),
        ("pod ready", "kubelet", 4000.0),
    ]
    assert rollout["slowestStep"] == {"name": "pod ready", "durationMs": 4000.0}
    assert doc["failures"]["unscheduledPods"] == [] and doc["failures"]["stuckRollouts"] == []
    assert [entry["source"] for entry in doc["timeline"]] == ["diff", "diff", "diff", "event", "diff"]
    assert doc["timeline"][3]["summary"] == "Scheduled: Successfully assigned prod/api-1-a to n1"


def test_controller_writes_are_not_rollouts() -> None:
    trace = assemble(
        {
            DEPLOY: [
                audit(DEPLOY, "system:serviceaccount:kube-system:deployment-controller", "update", 0, 200, "status")
            ],
            RS: [audit(RS, "system:serviceaccount:kube-system:deployment-controller", "update", 1, 200)],
            POD_A: [audit(POD_A, "system:serviceaccount:kube-system:replicaset-controller", "create", 2, 201)],
        },
        DEPLOY,
    )
    doc = analyze(trace)
    assert doc["latency"]["rollouts"] == [] and doc["latency"]["slowestStep"] is None
    assert [entry["actorKind"] for entry in doc["timeline"]] == ["controller"] * 3
    jsonschema.validate(doc, ANALYSIS_SCHEMA)


def _rerendered(trace: AssembledTrace) -> AssembledTrace:
    """The same trace with every diff shown another way (one line, another notation): only the rendering differs."""
    objects = {}
    for key, obj in trace.objects.items():
        children = []
        for child in obj.children:
            logs = []
            for log in child.logs:
                if log.name == "diff":
                    changes = orjson.loads(str(log.fields["changes"]))
                    shown = "; ".join(f"{c['path']} := {orjson.dumps(c.get('new')).decode()}" for c in changes)
                    log = LogEntry(log.time_ns, log.name, {**log.fields, "diff": f"[{shown}]"})
                logs.append(log)
            children.append(dataclasses.replace(child, logs=logs))
        objects[key] = dataclasses.replace(obj, children=children)
    return dataclasses.replace(trace, objects=objects)


def _without_quoted_text(value: Any) -> Any:
    """The analysis without the diff text it quotes as evidence ("lines", "summary")."""
    if isinstance(value, dict):
        return {k: _without_quoted_text(v) for k, v in value.items() if k not in ("lines", "summary")}
    if isinstance(value, list):
        return [_without_quoted_text(item) for item in value]
    return value


def test_analysis_is_unaffected_by_how_diffs_are_rendered() -> None:
    ready_change = [{"path": "status.conditions[Ready].status", "op": "change", "old": "False", "new": "True"}]
    waiting = [
        {"path": "status.containerStatuses[app].state.waiting.reason", "op": "add", "new": "ImagePullBackOff"},
    ]
    stuck = stuck_rollout()
    waiting_line = 'status.containerStatuses[app].state.waiting.reason "ImagePullBackOff"'
    ready_line = 'status.conditions[Ready].status "False" -> "True"'
    replicas = [{"path": "spec.replicas", "op": "change", "old": 0, "new": 1}]
    created: Attributes = {"change": "create", "fieldManager": "kube-controller-manager"}
    scheduled = "Successfully assigned prod/api-1-a to n1"
    converging = assemble(
        {
            DEPLOY: [diff(DEPLOY, "helm", 0, replicas, ["spec.replicas 0 -> 1"])],
            RS: [diff(RS, "kube-controller-manager", 0.1, replicas, ["spec.replicas 0 -> 1"])],
            POD_A: [
                span(POD_A, "diff", "kube-controller-manager create", 0.2, created),
                event(POD_A, "Normal", "Scheduled", 0.3, 1, "default-scheduler", scheduled),
                diff(POD_A, "kubelet", 1.0, waiting, [waiting_line]),
                diff(POD_A, "kubelet", 4.3, ready_change, [ready_line]),
            ],
        },
        DEPLOY,
    )
    for trace in (stuck, converging):
        before, after = analyze(trace), analyze(_rerendered(trace))
        assert _without_quoted_text(after) == _without_quoted_text(before)
    doc = analyze(_rerendered(converging))
    assert [step["name"] for step in doc["latency"]["rollouts"][0]["steps"]][-1] == "pod ready"
    assert [item["reason"] for item in doc["failures"]["backOffs"]] == ["ImagePullBackOff"]
    stuck_doc = analyze(_rerendered(stuck))
    assert "progress deadline exceeded" in [item["reason"] for item in stuck_doc["failures"]["stuckRollouts"]]
