"""A Jaeger v1 trace (what ``GET /api/traces`` returns) as a tree in the terminal, like ``kubectl tree``."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kelemetry_py.analysis.text import cell, duration

# Logs whose value is too big to read in a terminal are summarised by size.
_BULKY_LOGS = frozenset({"snapshot"})
_MAX_LOG_FIELDS = 4
# Machine-readable copies of what the head line already says.
_HIDDEN_FIELDS = frozenset({"changes", "snapshot", "auditID", "userAgent", "resourceVersion"})
_MAX_LOG_LINES = 8


def _tags(span: Mapping[str, Any]) -> dict[str, Any]:
    return {item["key"]: item.get("value") for item in span.get("tags") or []}


def _clock_us(time_us: int) -> str:
    moment = datetime.fromtimestamp(time_us // 1_000_000, UTC)
    return moment.strftime("%H:%M:%S") + f".{(time_us % 1_000_000) // 1000:03d}"


def _parent_of(span: Mapping[str, Any], known: set[str]) -> str | None:
    for reference in span.get("references") or []:
        if reference.get("refType") == "CHILD_OF" and reference.get("spanID") in known:
            return str(reference["spanID"])
    return None


def render_tree(trace: Mapping[str, Any], *, show_logs: bool = True) -> str:
    """Each span on its own line (service, name, start, duration, status) under its parent, logs beneath."""
    spans = list(trace.get("spans") or [])
    if not spans:
        return "(empty trace)\n"
    processes = trace.get("processes") or {}
    known = {str(span["spanID"]) for span in spans}
    children: dict[str | None, list[Mapping[str, Any]]] = {}
    for span in spans:
        children.setdefault(_parent_of(span, known), []).append(span)
    for group in children.values():
        group.sort(key=lambda span: (span["startTime"], span["spanID"]))
    origin = min(span["startTime"] for span in spans)
    lines = [f"trace {trace.get('traceID', '')}  (times from {_clock_us(origin)} UTC)"]

    def walk(span: Mapping[str, Any], prefix: str, last: bool, root: bool) -> None:
        branch = "" if root else ("└─ " if last else "├─ ")
        service = str(processes.get(span.get("processID"), {}).get("serviceName", ""))
        tags = _tags(span)
        status = ""
        if tags.get("error") in (True, "true"):
            code = tags.get("responseCode")
            status = f"  ERROR{f' {code}' if code else ''}"
        offset = (span["startTime"] - origin) / 1000
        lines.append(
            f"{prefix}{branch}{service}: {span['operationName']}  "
            f"+{duration(offset)} {duration(span['duration'] / 1000)}{status}"
        )
        inner = prefix + ("" if root else ("   " if last else "│  "))
        kids = children.get(str(span["spanID"]), [])
        if show_logs:
            bar = "│  " if kids else "   "
            for log in sorted(span.get("logs") or [], key=lambda log: log["timestamp"]):
                for text in _log_lines(log, origin):
                    lines.append(f"{inner}{bar}{text}")
        for index, child in enumerate(kids):
            walk(child, inner, index == len(kids) - 1, False)

    roots = children.get(None, [])
    for root in roots:
        walk(root, "", True, True)
    return "\n".join(lines) + "\n"


def _log_lines(log: Mapping[str, Any], origin_us: int) -> list[str]:
    fields = {item["key"]: item.get("value") for item in log.get("fields") or []}
    at = f"· +{duration((log['timestamp'] - origin_us) / 1000)}"
    # Jaeger's "event" field names the log (audit, diff, error, ...), or is the text of a Kubernetes event.
    label = str(fields.pop("event", ""))
    if label in _BULKY_LOGS:
        return [f"{at} {label} ({len(str(fields.get(label, '')))} bytes)"]
    head = label
    if label in fields:
        head = f"{label}: {fields.pop(label)}"
    extras = [
        f"{key}={cell(value, 60)}"
        for key, value in fields.items()
        if key not in _HIDDEN_FIELDS and value not in ("", None) and str(value) not in head
    ][:_MAX_LOG_FIELDS]
    first, *rest = head.splitlines() or [""]
    out = [f"{at} {cell(first, 120)}" + (f"  [{', '.join(extras)}]" if extras else "")]
    out += [f"      {cell(line, 120)}" for line in rest[:_MAX_LOG_LINES]]
    if len(rest) > _MAX_LOG_LINES:
        out.append(f"      ... {len(rest) - _MAX_LOG_LINES} more lines")
    return out
