"""Reading facts off raw spans: who acted, what a request did, what a patch or diff changed.

Everything here works on the raw trace model (DESIGN §3): audit spans with their tags and ``error`` /
``request`` / ``diff`` logs, event spans with ``type`` / ``reason`` / ``count``, and diff spans.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from kelemetry_py.model import SERVICE_AUDIT, SERVICE_DIFF, SERVICE_EVENT, LogEntry, Span

ActorKind = Literal["user", "controller", "scheduler", "node", "system", "unknown"]

_CONTROLLER_ACCOUNT = "system:serviceaccount:kube-system:"
# Field managers of the control plane's own components (diffs carry these instead of a username).
_CONTROL_PLANE_MANAGERS = {
    "kube-controller-manager": "controller",
    "kube-scheduler": "scheduler",
    "kubelet": "node",
    "kube-apiserver": "system",
}
_MAX_PATCH_PATHS = 50


def iso(time_ns: int) -> str:
    """RFC 3339 in UTC with microseconds, the precision audit timestamps have."""
    moment = datetime.fromtimestamp(time_ns // 1_000_000_000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{(time_ns % 1_000_000_000) // 1000:06d}Z"


def millis(duration_ns: int) -> float:
    return round(duration_ns / 1_000_000, 3)


def tag(span: Span, key: str) -> str:
    value = span.attributes.get(key, "")
    return "" if value is None else str(value)


def response_code(span: Span) -> int:
    value = span.attributes.get("responseCode")
    try:
        return int(value) if value not in (None, "") else 0  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0


def classify_identity(identity: str) -> ActorKind:
    """What kind of actor a username or field manager is, so a story can tell people from controllers."""
    if not identity:
        return "unknown"
    if identity.startswith(_CONTROLLER_ACCOUNT) or identity == "system:kube-controller-manager":
        return "controller"
    if identity == "system:kube-scheduler" or identity == "default-scheduler":
        return "scheduler"
    if identity.startswith("system:node:"):
        return "node"
    if identity in _CONTROL_PLANE_MANAGERS:
        return _CONTROL_PLANE_MANAGERS[identity]  # type: ignore[return-value]
    if identity.startswith("system:apiserver") or identity == "system:apiserver":
        return "system"
    if identity.endswith("-controller") or identity.endswith("-controller-manager"):
        return "controller"
    return "user"


def short_actor(identity: str) -> str:
    """``system:serviceaccount:kube-system:deployment-controller`` reads better as ``deployment-controller``."""
    if identity.startswith(_CONTROLLER_ACCOUNT):
        return identity[len(_CONTROLLER_ACCOUNT) :]
    return identity


@dataclass(frozen=True, slots=True)
class Actor:
    """Who did something: the effective identity (the impersonated one when there is one)."""

    name: str
    kind: ActorKind
    user: str = ""  # the authenticated user, when different from ``name`` (impersonation)


def actor_of(span: Span) -> Actor:
    if span.service == SERVICE_AUDIT:
        user = tag(span, "username")
        impersonated = tag(span, "impersonatedUser")
        if impersonated:
            return Actor(impersonated, classify_identity(impersonated), user)
        return Actor(user, classify_identity(user))
    if span.service == SERVICE_EVENT:
        who = tag(span, "reportingController") or tag(span, "source")
        return Actor(who, classify_identity(who) if who else "unknown")
    if span.service == SERVICE_DIFF:
        manager = tag(span, "fieldManager")
        return Actor(manager, classify_identity(manager))
    return Actor(span.service, "unknown")


def action_of(span: Span) -> str:
    if span.service == SERVICE_AUDIT:
        verb = tag(span, "verb")
        subresource = tag(span, "subresource")
        target = tag(span, "targetResource")
        return " ".join(part for part in (verb, target, subresource) if part)
    if span.service == SERVICE_EVENT:
        return tag(span, "reason") or span.name
    if span.service == SERVICE_DIFF:
        return tag(span, "change") or "diff"
    return span.name


def log_named(span: Span, name: str) -> LogEntry | None:
    return next((log for log in span.logs if log.name == name), None)


def event_message(span: Span) -> str:
    log = log_named(span, "event")
    return str(log.fields.get("message", "")) if log is not None else ""


@dataclass(frozen=True, slots=True)
class RequestError:
    code: int
    reason: str
    message: str


def request_error(span: Span) -> RequestError | None:
    """The failure of an audit span: its ``error`` log, else its code and status message."""
    code = response_code(span)
    log = log_named(span, "error")
    if log is not None:
        logged_code = log.fields.get("code", code)
        with contextlib.suppress(TypeError, ValueError):
            code = int(logged_code)  # type: ignore[arg-type]
        return RequestError(code, str(log.fields.get("reason", "")), str(log.fields.get("message", "")))
    if code >= 400 or span.error:
        return RequestError(code, "", span.status_message)
    return None


def succeeded(span: Span) -> bool:
    code = response_code(span)
    return not span.error and (code == 0 or code < 400)


# ------------------------------------------------------------------------------------------------ changes


@dataclass(frozen=True, slots=True)
class FieldChange:
    path: str
    line: str


def patch_text(span: Span) -> str:
    log = log_named(span, "request")
    return str(log.fields.get("patch", "")) if log is not None else ""


def patch_changes(text: str) -> list[FieldChange] | None:
    """The fields a patch document sets; None when it cannot be read (a truncated log)."""
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    out: list[FieldChange] = []
    _flatten(document, "", out)
    return out[:_MAX_PATCH_PATHS]


def _flatten(value: Any, path: str, out: list[FieldChange]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if key.startswith("$") or (path == "metadata" and key in ("uid", "resourceVersion")):
                continue  # strategic-merge directives and preconditions are not changes
            _flatten(item, _join(path, key), out)
        return
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        for index, item in enumerate(value):
            match_key = "name" if "name" in item else "type" if "type" in item else None
            label = item[match_key] if match_key else index
            # The key that names a list item identifies it; it is not a change of its own.
            rest = {key: field for key, field in item.items() if key != match_key}
            _flatten(rest, f"{path}[{label}]", out)
        return
    rendered = orjson.dumps(value).decode()
    if len(rendered) > 120:
        rendered = rendered[:119] + "…"
    out.append(FieldChange(path, f"{path} = {rendered}"))


def _join(path: str, key: str) -> str:
    if re.fullmatch(r"[A-Za-z_$][A-Za-z0-9_$-]*", key):
        return f"{path}.{key}" if path else key
    return f"{path}[{orjson.dumps(key).decode()}]"


def diff_changes(log: LogEntry) -> list[FieldChange]:
    """The changes of a ``diff`` log: its machine-readable list, else its rendered lines."""
    lines = [line for line in str(log.fields.get("diff", "")).splitlines() if line]
    raw = log.fields.get("changes")
    if isinstance(raw, str) and raw:
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list):
            paths = [str(item.get("path", "")) for item in parsed if isinstance(item, dict)]
            if len(paths) == len(lines):
                return [FieldChange(path, line) for path, line in zip(paths, lines, strict=True)]
            return [FieldChange(path, path) for path in paths]
    return [FieldChange(line.split(" ", 1)[0], line) for line in lines]


def diff_logs(span: Span) -> list[LogEntry]:
    return [log for log in span.logs if log.name == "diff"]


# ------------------------------------------------------------------------------------------------ pod state


def change_leaves(span: Span) -> list[tuple[str, Any]]:
    """Every field a status write sets, as ``(path, value)`` with the differ's path naming (list items named by
    their ``name`` or ``type``): from the structured ``changes`` of its diffs, else from its patch document.
    Never from rendered text: how a diff is shown may change, what it says does not."""
    leaves: list[tuple[str, Any]] = []
    for log in diff_logs(span):
        for change in structured_changes(log):
            if change.get("op") != "remove":
                _leaves(change.get("new"), str(change.get("path", "")), leaves)
    if not leaves:
        document = patch_document(span)
        if document is not None:
            _leaves(document, "", leaves)
    return leaves


def structured_changes(log: LogEntry) -> list[dict[str, Any]]:
    """The machine-readable changes of a ``diff`` log (``path``, ``op``, ``old``, ``new``)."""
    raw = log.fields.get("changes")
    if not isinstance(raw, str) or not raw:
        return []
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return []
    return [item for item in parsed if isinstance(item, dict)] if isinstance(parsed, list) else []


def patch_document(span: Span) -> dict[str, Any] | None:
    """The request's patch as JSON; None without one, or when its log was cut short."""
    text = patch_text(span)
    if not text:
        return None
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return document if isinstance(document, dict) else None


def _leaves(value: Any, path: str, out: list[tuple[str, Any]]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if not key.startswith("$"):  # strategic-merge directives
                _leaves(item, f"{path}.{key}" if path else key, out)
    elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        for index, item in enumerate(value):
            match_key = "name" if "name" in item else "type" if "type" in item else None
            label = item[match_key] if match_key else index
            _leaves({key: field for key, field in item.items() if key != match_key}, f"{path}[{label}]", out)
    else:
        out.append((path, value))


def becomes_ready(span: Span) -> bool:
    """A pod status write (kubelet patch, or a diff) that sets the Ready condition to True."""
    return any(path.endswith("conditions[Ready].status") and value == "True" for path, value in change_leaves(span))


def waiting_reasons(span: Span) -> list[str]:
    """Container waiting reasons a pod status write reports (CrashLoopBackOff, ImagePullBackOff, ...)."""
    return [
        value for path, value in change_leaves(span) if path.endswith(".waiting.reason") and isinstance(value, str)
    ]


def sets_condition_reason(span: Span, condition: str, reason: str) -> bool:
    """Whether a status write sets ``condition``'s reason to ``reason`` (e.g. Progressing, ProgressDeadlineExceeded)."""
    return any(
        path.endswith(f"conditions[{condition}].reason") and value == reason for path, value in change_leaves(span)
    )
