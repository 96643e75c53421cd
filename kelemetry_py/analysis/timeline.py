"""The timeline: every span of the tree in order, and the objects it is about."""

from __future__ import annotations

from typing import Any

from kelemetry_py.analysis.evidence import Fact, actor_json
from kelemetry_py.analysis.facts import (
    action_of,
    actor_of,
    diff_changes,
    diff_logs,
    event_message,
    iso,
    millis,
    patch_changes,
    patch_text,
    request_error,
    response_code,
    tag,
)
from kelemetry_py.frontend.assembly import AssembledTrace
from kelemetry_py.model import SERVICE_AUDIT, SERVICE_DIFF, SERVICE_EVENT, Span


def objects_json(trace: AssembledTrace) -> list[dict[str, Any]]:
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


def summary_text(span: Span) -> str:
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


def timeline_entry(fact: Fact) -> dict[str, Any]:
    span = fact.span
    actor = actor_of(span)
    entry = {
        "time": iso(span.start_ns),
        "timeUnixNano": span.start_ns,
        "durationMs": millis(span.end_ns - span.start_ns),
        "object": fact.key,
        "source": span.service,
        **actor_json(actor),
        "action": action_of(span),
        "code": response_code(span),
        "error": span.error or response_code(span) >= 400,
        "summary": summary_text(span),
        "spanId": span.span_id_hex,
    }
    return entry
