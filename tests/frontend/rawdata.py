"""Raw spans as the pipeline writes them: a Deployment → ReplicaSets → Pods story over two windows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson

from kelemetry_py.model import (
    SERVICE_AUDIT,
    SERVICE_DIFF,
    SERVICE_EVENT,
    SERVICE_LINK,
    SERVICE_OBJECT,
    Attributes,
    LogEntry,
    ObjectRef,
    Span,
    child_span_id,
    object_span_id,
    object_trace_id,
    window_of,
)
from kelemetry_py.storage import TraceHit, TraceQuery

WINDOW_SECONDS = 1800
WINDOW_NS = WINDOW_SECONDS * 10**9
W0 = 1_000_000  # window index of the first window
T0 = W0 * WINDOW_NS  # its start, in ns
SECOND = 10**9
CLUSTER = "fixture"


def deployment(name: str, namespace: str = "shop") -> ObjectRef:
    return ObjectRef(CLUSTER, "apps", "v1", "deployments", namespace, name, uid=f"uid-deploy-{name}")


def replicaset(name: str, namespace: str = "shop") -> ObjectRef:
    return ObjectRef(CLUSTER, "apps", "v1", "replicasets", namespace, name, uid=f"uid-rs-{name}")


def pod(name: str, namespace: str = "shop") -> ObjectRef:
    return ObjectRef(CLUSTER, "", "v1", "pods", namespace, name, uid=f"uid-pod-{name}")


def service(name: str, namespace: str = "shop") -> ObjectRef:
    return ObjectRef(CLUSTER, "", "v1", "services", namespace, name, uid=f"uid-svc-{name}")


@dataclass
class RawWriter:
    """Builds raw spans as the pipeline does: one object span per object per window, children under it."""

    spans: list[Span] = field(default_factory=list)
    _object_spans: set[tuple[str, int]] = field(default_factory=set)

    def _ensure_object(self, ref: ObjectRef, time_ns: int) -> tuple[int, int]:
        window = window_of(time_ns, WINDOW_SECONDS)
        trace_id = object_trace_id(ref.key, window)
        span_id = object_span_id(ref.key, window)
        if (ref.key, window) not in self._object_spans:
            self._object_spans.add((ref.key, window))
            self.spans.append(
                Span(
                    trace_id=trace_id,
                    span_id=span_id,
                    parent_id=None,
                    service=SERVICE_OBJECT,
                    name=f"{ref.resource}/{ref.name}",
                    start_ns=window * WINDOW_NS,
                    end_ns=(window + 1) * WINDOW_NS,
                    attributes=ref.tags(),
                )
            )
        return trace_id, span_id

    def _child(
        self,
        ref: ObjectRef,
        service: str,
        name: str,
        start_ns: int,
        end_ns: int,
        identity: str,
        tags: Attributes,
        logs: Sequence[LogEntry] = (),
        error: str | None = None,
    ) -> Span:
        trace_id, parent = self._ensure_object(ref, start_ns)
        span = Span(
            trace_id=trace_id,
            span_id=child_span_id(trace_id, identity),
            parent_id=parent,
            service=service,
            name=name,
            start_ns=start_ns,
            end_ns=end_ns,
            attributes={**ref.tags(), **tags},
            logs=list(logs),
            error=error is not None,
            status_message=error or "",
        )
        self.spans.append(span)
        return span

    def audit(
        self,
        ref: ObjectRef,
        at_ns: int,
        user: str,
        verb: str,
        code: int = 200,
        *,
        subresource: str = "",
        diff: list[str] | None = None,
        snapshot: dict[str, object] | None = None,
    ) -> Span:
        name = f"{user} {verb}" + (f" {subresource}" if subresource else "")
        logs: list[LogEntry] = []
        if diff is not None:
            changes = orjson.dumps([{"path": line.split(" ")[0]} for line in diff]).decode()
            logs.append(LogEntry(at_ns + 1000, "diff", {"diff": "\n".join(diff), "changes": changes}))
        if snapshot is not None:
            logs.append(LogEntry(at_ns + 2000, "snapshot", {"snapshot": orjson.dumps(snapshot).decode()}))
        error = None
        if code >= 400:
            name += f" ({code})"
            error = "Conflict: the object has been modified"
            logs.append(LogEntry(at_ns + 3000, "error", {"reason": "Conflict", "message": error}))
        tags: Attributes = {
            "auditID": f"audit-{ref.name}-{verb}-{at_ns}",
            "verb": verb,
            "subresource": subresource,
            "username": user,
            "userAgent": "kubectl/v1.24.0",
            "sourceIPs": ["127.0.0.1"],
            "responseCode": code,
            "resourceVersion": str(at_ns // SECOND),
        }
        return self._child(
            ref, SERVICE_AUDIT, name, at_ns, at_ns + 5_000_000, f"audit/{tags['auditID']}", tags, logs, error
        )

    def event(self, ref: ObjectRef, at_ns: int, reason: str, message: str, kind: str = "Normal") -> Span:
        tags: Attributes = {
            "type": kind,
            "reason": reason,
            "action": "",
            "reportingController": "default-scheduler",
            "source": "default-scheduler",
            "count": 1,
        }
        logs = [LogEntry(at_ns, "event", {"message": message})]
        return self._child(
            ref, SERVICE_EVENT, reason, at_ns, at_ns, f"event/{ref.name}/{reason}/{at_ns}", tags, logs
        )

    def field_diff(self, ref: ObjectRef, at_ns: int, manager: str, lines: list[str]) -> Span:
        logs = [LogEntry(at_ns, "diff", {"diff": "\n".join(lines), "changes": "[]"})]
        tags: Attributes = {"fieldManager": manager, "operation": "Update"}
        return self._child(ref, SERVICE_DIFF, manager, at_ns, at_ns, f"diff/{ref.name}/{at_ns}", tags, logs)

    def link(self, parent: ObjectRef, child: ObjectRef, at_ns: int, link_class: str = "owner") -> None:
        """Written under both ends, as the pipeline does, once per window."""
        for holder, target, role in ((child, parent, "parent"), (parent, child, "child")):
            tags: Attributes = {
                "linkedCluster": target.cluster,
                "linkedGroup": target.group,
                "linkedVersion": target.version,
                "linkedResource": target.resource,
                "linkedNamespace": target.namespace,
                "linkedName": target.name,
                "linkRole": role,
                "linkClass": link_class,
            }
            window = window_of(at_ns, WINDOW_SECONDS)
            self._child(
                holder,
                SERVICE_LINK,
                f"{role} {target.key}",
                at_ns,
                at_ns,
                f"link/{target.key}/{window}",
                tags,
            )


def deployment_story() -> RawWriter:
    """shop/web: created in window 0 (ReplicaSet web-aaa, pods web-aaa-1/2), scaled and rolled out in window 1
    (ReplicaSet web-bbb, pod web-bbb-1) and deleted. shop/other is an unrelated Deployment with its own pods;
    a Service also named web lives in shop."""
    raw = RawWriter()
    web, other = deployment("web"), deployment("other")
    rs_a, rs_b, rs_o = replicaset("web-aaa"), replicaset("web-bbb"), replicaset("other-ooo")
    t = T0 + 100 * SECOND
    raw.audit(web, t, "admin", "create", snapshot={"metadata": {"name": "web"}, "spec": {"replicas": 2}})
    raw.audit(rs_a, t + SECOND, "system:serviceaccount:kube-system:deployment-controller", "create")
    raw.link(web, rs_a, t + SECOND)
    for i, pod_name in enumerate(("web-aaa-1", "web-aaa-2")):
        p = pod(pod_name)
        raw.audit(
            p, t + (2 + i) * SECOND, "system:serviceaccount:kube-system:replicaset-controller", "create"
        )
        raw.link(rs_a, p, t + (2 + i) * SECOND)
        raw.event(p, t + (3 + i) * SECOND, "Scheduled", f"Successfully assigned shop/{pod_name} to node-1")
        raw.field_diff(p, t + (4 + i) * SECOND, "kubelet", ['status.phase "Pending" -> "Running"'])
    raw.audit(
        rs_a,
        t + 10 * SECOND,
        "system:serviceaccount:kube-system:replicaset-controller",
        "update",
        409,
        subresource="status",
    )
    raw.audit(other, t + 20 * SECOND, "admin", "create")
    raw.audit(rs_o, t + 21 * SECOND, "system:serviceaccount:kube-system:deployment-controller", "create")
    raw.link(other, rs_o, t + 21 * SECOND)
    raw.audit(
        pod("other-ooo-1"),
        t + 22 * SECOND,
        "system:serviceaccount:kube-system:replicaset-controller",
        "create",
    )
    raw.link(rs_o, pod("other-ooo-1"), t + 22 * SECOND)
    raw.audit(service("web"), t + 30 * SECOND, "admin", "create")

    u = T0 + WINDOW_NS + 200 * SECOND  # window 1
    raw.audit(web, u, "admin", "patch", diff=["spec.replicas 2 -> 4"])
    raw.audit(
        web,
        u + SECOND,
        "admin",
        "patch",
        diff=['spec.template.spec.containers["nginx"].image "nginx:1.25" -> "nginx:1.26"'],
    )
    raw.audit(rs_b, u + 2 * SECOND, "system:serviceaccount:kube-system:deployment-controller", "create")
    raw.link(web, rs_b, u + 2 * SECOND)
    raw.link(web, rs_a, u + 2 * SECOND)  # the old ReplicaSet is still owned in window 1
    raw.audit(rs_a, u + 3 * SECOND, "system:serviceaccount:kube-system:deployment-controller", "update")
    p = pod("web-bbb-1")
    raw.audit(p, u + 4 * SECOND, "system:serviceaccount:kube-system:replicaset-controller", "create")
    raw.link(rs_b, p, u + 4 * SECOND)
    raw.event(p, u + 5 * SECOND, "Scheduled", "Successfully assigned shop/web-bbb-1 to node-1")
    raw.audit(
        web,
        u + 60 * SECOND,
        "admin",
        "delete",
        snapshot={"metadata": {"name": "web"}, "spec": {"replicas": 2}},
    )
    return raw


class MemoryReader:
    """A TraceReader over spans in memory, matching like the embedded store (one span has every tag)."""

    def __init__(self, spans: Sequence[Span] = ()) -> None:
        self.traces: dict[int, list[Span]] = {}
        self.get_trace_calls = 0
        self.find_calls = 0
        for span in spans:
            self.traces.setdefault(span.trace_id, []).append(span)

    async def write(self, spans: Sequence[Span]) -> None:
        for span in spans:
            self.traces.setdefault(span.trace_id, []).append(span)

    async def find_traces(self, query: TraceQuery) -> list[TraceHit]:
        self.find_calls += 1
        hits = []
        for trace_id, spans in self.traces.items():
            roots = [span for span in spans if span.parent_id is None] or spans
            start = min(span.start_ns for span in roots)
            end = max(span.end_ns for span in roots)
            if end < query.start_ns or start > query.end_ns:
                continue
            if not any(
                all(str(span.attributes.get(key, "\x00")) == value for key, value in query.tags.items())
                and (query.service is None or span.service == query.service)
                for span in spans
            ):
                continue
            attrs = roots[0].attributes
            ref = ObjectRef(
                *(
                    str(attrs.get(key, ""))
                    for key in ("cluster", "group", "version", "resource", "namespace", "name")
                )
            )
            hits.append(TraceHit(trace_id=trace_id, ref=ref, start_ns=start, end_ns=end))
        hits.sort(key=lambda hit: -hit.start_ns)
        return hits[: query.limit]

    async def get_trace(self, trace_id: int) -> list[Span]:
        self.get_trace_calls += 1
        return list(self.traces.get(trace_id, []))

    async def tag_values(self, key: str, start_ns: int, end_ns: int) -> list[str]:
        return sorted(
            {str(s.attributes[key]) for spans in self.traces.values() for s in spans if key in s.attributes}
        )

    async def close(self) -> None:
        self.traces.clear()
