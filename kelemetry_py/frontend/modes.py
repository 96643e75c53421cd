"""Display modes (DESIGN §4) and the user-facing trace ids that encode them.

A mode is a base view (tree, timeline, tracing, grouped) and an optional modifier that decides which related
objects are followed (full tree, ancestors, owned objects). Its 8-hex-digit code is
``<base><modifier>000000``, so a user can switch the view by editing two digits of the trace id in a URL.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import Enum

from kelemetry_py.frontend.assembly import AssembledTrace, Modifier, ObjectTrace
from kelemetry_py.model import (
    OBJECT_TAGS,
    SERVICE_AUDIT,
    SERVICE_DIFF,
    SERVICE_EVENT,
    Attributes,
    LogEntry,
    ObjectRef,
    Span,
)
from kelemetry_py.times import InvalidInput

# A request the frontend cannot serve because its input is wrong (answered with HTTP 400); the time parser
# raises the same class.
FrontendError = InvalidInput


class BaseView(Enum):
    TREE = ("tree", 0)
    TIMELINE = ("timeline", 1)
    TRACING = ("tracing", 2)
    GROUPED = ("grouped", 3)

    def __init__(self, label: str, digit: int) -> None:
        self.label = label
        self.digit = digit


@dataclass(frozen=True, slots=True)
class DisplayMode:
    base: BaseView
    modifier: Modifier = Modifier.NONE

    @property
    def name(self) -> str:
        if self.modifier is Modifier.NONE:
            return self.base.label
        return f"{self.base.label} [{self.modifier.label}]"

    @property
    def code(self) -> str:
        return f"{self.base.digit:x}{self.modifier.digit:x}000000"

    def __str__(self) -> str:
        return self.name


ALL_MODES: tuple[DisplayMode, ...] = tuple(
    DisplayMode(base, modifier) for base in BaseView for modifier in Modifier
)
_BY_NAME = {mode.name: mode for mode in ALL_MODES}
_BY_CODE = {mode.code: mode for mode in ALL_MODES}


def mode_by_name(name: str) -> DisplayMode:
    try:
        return _BY_NAME[" ".join(name.split())]
    except KeyError:
        raise FrontendError(f"unknown display mode {name!r} (known: {', '.join(_BY_NAME)})") from None


def mode_by_code(code: str) -> DisplayMode:
    try:
        return _BY_CODE[code.lower()]
    except KeyError:
        raise FrontendError(f"unknown display mode code {code!r}") from None


# ff + 8 hex digits of mode + e1e3e7 + 16 hex digits of a trace-cache key.
_VIEW_ID = re.compile(r"^ff([0-9a-f]{8})e1e3e7([0-9a-f]{16})$")
_HEX_ID = re.compile(r"^[0-9a-f]{1,32}$")


@dataclass(frozen=True, slots=True)
class ViewId:
    mode: DisplayMode
    cache_key: str  # 16 hex digits

    @property
    def hex(self) -> str:
        return f"ff{self.mode.code}e1e3e7{self.cache_key}"

    @property
    def value(self) -> int:
        return int(self.hex, 16)


def parse_trace_id(text: str) -> ViewId | int:
    """A user-facing view id, or (for any other hex id) a raw trace id to read as is."""
    text = text.strip().lower()
    if not _HEX_ID.match(text):
        raise FrontendError(f"trace id {text!r} is not up to 32 hex digits")
    match = _VIEW_ID.match(text.rjust(32, "0"))
    if match:
        return ViewId(mode_by_code(match.group(1)), match.group(2))
    return int(text, 16)


# ----------------------------------------------------------------------------------------------------
# Reshaping an assembled trace into a view.

_AUDIT_FIELDS = ("verb", "subresource", "username", "userAgent", "responseCode", "resourceVersion", "auditID")
_EVENT_FIELDS = ("type", "reason", "action", "reportingController", "source", "count")
_DIFF_FIELDS = ("fieldManager", "operation")


def display_name(ref: ObjectRef) -> str:
    return f"{ref.namespace} {ref.name}" if ref.namespace else ref.name


def render(trace: AssembledTrace, mode: DisplayMode, trace_id: int) -> list[Span]:
    """The spans of ``trace`` as ``mode`` shows them, under ``trace_id``; the root object span comes first."""
    spans: list[Span] = []
    if mode.base is BaseView.TIMELINE:
        root = trace.objects[trace.root]
        root_span = _object_span(root, trace_id, None, root.start_ns, root.end_ns, list(root.logs))
        spans.append(root_span)
        for key in _preorder(trace):
            spans.extend(_raw_children(trace.objects[key], trace_id, root_span.span_id))
        spans[1:] = sorted(spans[1:], key=lambda span: (span.start_ns, span.span_id))
        return spans
    _render_object(trace, trace.root, mode, trace_id, None, spans)
    return spans


def _preorder(trace: AssembledTrace) -> list[str]:
    order: list[str] = []
    stack = [trace.root]
    while stack:
        key = stack.pop()
        order.append(key)
        stack.extend(reversed(trace.children_of(key)))
    return order


def _render_object(
    trace: AssembledTrace, key: str, mode: DisplayMode, trace_id: int, parent_id: int | None, out: list[Span]
) -> tuple[int, int]:
    """Appends the object's span and its subtree to ``out``; returns the span's (start, end)."""
    obj = trace.objects[key]
    index = len(out)
    out.append(_object_span(obj, trace_id, parent_id, obj.start_ns, obj.end_ns, list(obj.logs)))
    own: list[Span] = []
    if mode.base is BaseView.TREE:
        own = _raw_children(obj, trace_id, obj.span_id)
    else:
        logs_by_source = _logs_by_source(obj, trace.start_ns, trace.end_ns)
        if mode.base is BaseView.TRACING:
            out[index].logs.extend(log for logs in logs_by_source.values() for log in logs)
            out[index].logs.sort(key=lambda log: log.time_ns)
        else:
            own = [
                _source_span(obj, trace_id, source, logs) for source, logs in sorted(logs_by_source.items())
            ]
    out.extend(own)
    bounds = [(span.start_ns, span.end_ns) for span in own] + [
        (log.time_ns, log.time_ns) for log in out[index].logs
    ]
    for child in trace.children_of(key):
        bounds.append(_render_object(trace, child, mode, trace_id, obj.span_id, out))
    span = out[index]
    if mode.base in (BaseView.TRACING, BaseView.GROUPED) and bounds:
        # Durations compacted: the span covers what happened, not the whole storage window.
        span.start_ns = max(min(start for start, _ in bounds), trace.start_ns)
        span.end_ns = min(max(end for _, end in bounds), trace.end_ns)
        span.end_ns = max(span.end_ns, span.start_ns)
    return span.start_ns, span.end_ns


def _object_span(
    obj: ObjectTrace, trace_id: int, parent_id: int | None, start_ns: int, end_ns: int, logs: list[LogEntry]
) -> Span:
    attributes: Attributes = dict(obj.attributes)
    for tag, value in obj.ref.tags().items():
        attributes[tag] = value
    return Span(
        trace_id=trace_id,
        span_id=obj.span_id,
        parent_id=parent_id,
        service=obj.ref.resource,
        name=display_name(obj.ref),
        start_ns=start_ns,
        end_ns=end_ns,
        attributes=attributes,
        logs=logs,
    )


def _raw_children(obj: ObjectTrace, trace_id: int, parent_id: int) -> list[Span]:
    own_ids = {span.span_id for span in obj.children}
    out: list[Span] = []
    for span in obj.children:
        parent = span.parent_id if span.parent_id in own_ids else parent_id
        out.append(
            Span(
                trace_id=trace_id,
                span_id=span.span_id,
                parent_id=parent,
                service=span.service,
                name=span.name,
                start_ns=span.start_ns,
                end_ns=span.end_ns,
                attributes=dict(span.attributes),
                logs=[LogEntry(log.time_ns, log.name, dict(log.fields)) for log in span.logs],
                error=span.error,
                status_message=span.status_message,
            )
        )
    return out


def _source_span(obj: ObjectTrace, trace_id: int, source: str, logs: list[LogEntry]) -> Span:
    span_id = int.from_bytes(
        hashlib.blake2b(
            f"{obj.span_id:016x}\x00{source}".encode(), digest_size=8, person=b"kelemetry-group"
        ).digest()
    )
    return Span(
        trace_id=trace_id,
        span_id=span_id or 1,
        parent_id=obj.span_id,
        service=source,
        name=source,
        start_ns=min(log.time_ns for log in logs),
        end_ns=max(log.time_ns for log in logs),
        attributes=dict(obj.ref.tags()),
        logs=logs,
        error=any(log.name == "error" for log in logs),
    )


def _logs_by_source(obj: ObjectTrace, start_ns: int, end_ns: int) -> dict[str, list[LogEntry]]:
    """Child spans become readable logs named audit, event, diff, snapshot, error (or their plugin source)."""
    out: dict[str, list[LogEntry]] = {}
    for span in obj.children:
        logs = _span_as_logs(span)
        kept = [log for log in logs if start_ns <= log.time_ns <= end_ns]
        if kept:
            out.setdefault(span.service, []).extend(kept)
    for logs in out.values():
        logs.sort(key=lambda log: log.time_ns)
    return out


def _span_as_logs(span: Span) -> list[LogEntry]:
    attrs = span.attributes
    logs: list[LogEntry] = []
    if span.service == SERVICE_AUDIT:
        fields: Attributes = {"audit": span.name}
        fields.update({key: attrs[key] for key in _AUDIT_FIELDS if key in attrs and attrs[key] != ""})
        logs.append(LogEntry(span.start_ns, "audit", fields))
        context: Attributes = {"audit": span.name}
    elif span.service == SERVICE_EVENT:
        message = next((str(log.fields.get("message", "")) for log in span.logs if log.name == "event"), "")
        reason = str(attrs.get("reason", span.name))
        fields = {"event": f"{reason}: {message}" if message else reason, "message": message}
        fields.update({key: attrs[key] for key in _EVENT_FIELDS if key in attrs and attrs[key] != ""})
        return [LogEntry(span.start_ns, "event", fields)]
    elif span.service == SERVICE_DIFF:
        context = {key: attrs[key] for key in _DIFF_FIELDS if key in attrs and attrs[key] != ""}
    else:
        fields = {span.service: span.name}
        fields.update({key: value for key, value in attrs.items() if key not in OBJECT_TAGS and key != "uid"})
        logs.append(LogEntry(span.start_ns, span.service, fields))
        context = {span.service: span.name}
    for log in span.logs:
        readable: Attributes = dict(log.fields)
        if log.name not in readable:
            readable[log.name] = "; ".join(f"{key}: {value}" for key, value in log.fields.items()) or log.name
        for key, value in context.items():
            readable.setdefault(key, value)
        logs.append(LogEntry(log.time_ns, log.name, readable))
    if span.error and not any(log.name == "error" for log in span.logs):
        logs.append(LogEntry(span.end_ns, "error", {"error": span.status_message or span.name, **context}))
    return logs
