"""Namespace names outside a caller's scope, hidden where they hide in plain text: service-account user names.

An audit span says who acted, e.g. ``system:serviceaccount:kube-system:deployment-controller``. For a caller
scoped to other namespaces that names a namespace it may not see, so the namespace is replaced (the account's own
name stays: "the deployment controller did it" is still told). What an object says in its own fields (snapshots,
diffs, patches) is left as it is.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Iterable
from typing import Any

from kelemetry_py.auth import Scope
from kelemetry_py.model import AttrValue, LogEntry, ObjectRef, Span

HIDDEN = "<other-namespace>"
_SERVICE_ACCOUNT = re.compile(r"(system:serviceaccounts?:)([a-z0-9](?:[-a-z0-9]*[a-z0-9])?)")
# Where a user name appears in spans and their logs.
_USER_KEYS = frozenset({"username", "impersonatedUser", "userAgent", "audit", "user", "actor"})


def namespaces_allowed(scope: Scope, shown: Iterable[ObjectRef]) -> set[str]:
    """Namespaces an answer may name: those of the objects it shows, and those the scope says outright."""
    names = {ref.namespace for ref in shown if ref.namespace}
    static = scope.static()
    if static is not None and static.namespaces is not None:
        names |= static.namespaces
    return names


def mask_text(text: str, allowed: Collection[str]) -> str:
    if "system:serviceaccount" not in text:
        return text
    return _SERVICE_ACCOUNT.sub(
        lambda match: match.group(0) if match.group(2) in allowed else match.group(1) + HIDDEN, text
    )


def mask_spans(spans: Iterable[Span], allowed: Collection[str]) -> list[Span]:
    """Copies of the spans with other namespaces hidden in their names and user-bearing attributes and logs."""
    return [
        dataclasses.replace(
            span,
            name=mask_text(span.name, allowed),
            attributes={key: _masked(key, value, allowed) for key, value in span.attributes.items()},
            logs=[
                LogEntry(log.time_ns, log.name, {k: _masked(k, v, allowed) for k, v in log.fields.items()})
                for log in span.logs
            ],
        )
        for span in spans
    ]


def _masked(key: str, value: AttrValue, allowed: Collection[str]) -> AttrValue:
    return mask_text(value, allowed) if key in _USER_KEYS and isinstance(value, str) else value


def mask_document(document: Any, allowed: Collection[str]) -> Any:
    """An analysis document with every string masked (it holds facts about the objects, not their fields)."""
    if isinstance(document, str):
        return mask_text(document, allowed)
    if isinstance(document, list):
        return [mask_document(item, allowed) for item in document]
    if isinstance(document, dict):
        return {key: mask_document(value, allowed) for key, value in document.items()}
    return document
