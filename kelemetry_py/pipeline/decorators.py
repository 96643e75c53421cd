"""Decorators (the plugin kind that adds tags and logs to spans) and running them so that one failing decorator
harms nobody else. Re-exported by :mod:`kelemetry_py.plugins`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from kelemetry_py.metrics import Metrics
from kelemetry_py.model import OBJECT_TAGS, Attributes, AttrValue, LogEntry, ObjectRef, Span


@dataclass(frozen=True, slots=True)
class SpanInfo:
    """A read-only view of a span a decorator is asked about.

    ``service`` is ``object`` for an object span, else the observation's kind (``audit``, ``event``, ``diff`` or
    a plugin source's name). ``body`` is the redacted object the observation carried (None when unknown, e.g.
    for an object span created for the far end of a link).
    """

    service: str
    name: str
    ref: ObjectRef
    start_ns: int
    end_ns: int
    tags: Mapping[str, AttrValue]
    body: Mapping[str, Any] | None
    error: bool


@dataclass(slots=True)
class Decoration:
    """What a decorator adds. Tags naming the object (cluster, group, version, resource, namespace, name, uid)
    cannot be overwritten: they are how spans are found."""

    tags: Attributes = field(default_factory=dict)
    logs: list[LogEntry] = field(default_factory=list)


@runtime_checkable
class Decorator(Protocol):
    """Adds tags and logs to spans before they are written. Return None to add nothing."""

    name: str

    async def decorate(self, span: SpanInfo) -> Decoration | None: ...


logger = logging.getLogger(__name__)

# A decorator that hangs would stall its partition; past this it is treated as failed.
DECORATOR_TIMEOUT_SECONDS = 5.0
_PROTECTED_TAGS = frozenset((*OBJECT_TAGS, "uid"))
_TAG_TYPES = (str, bool, int, float)


async def apply_decorators(
    decorators: Sequence[Decorator],
    span: Span,
    ref: ObjectRef,
    body: Mapping[str, Any] | None,
    metrics: Metrics | None = None,
    *,
    timeout_seconds: float = DECORATOR_TIMEOUT_SECONDS,
) -> None:
    """Add each decorator's tags and logs to ``span``, in order; each sees the tags the earlier ones added.

    A decorator that raises, times out or returns something malformed adds nothing, is logged and is counted in
    ``metrics.plugin_errors``.
    """
    for decorator in decorators:
        info = SpanInfo(
            service=span.service,
            name=span.name,
            ref=ref,
            start_ns=span.start_ns,
            end_ns=span.end_ns,
            tags=dict(span.attributes),
            body=body,
            error=span.error,
        )
        name = getattr(decorator, "name", type(decorator).__name__)
        try:
            async with asyncio.timeout(timeout_seconds):
                decoration = await decorator.decorate(info)
            if decoration is None:
                continue
            tags, logs = _checked(decoration)
        except Exception as exc:  # a plugin's bug must not stop the pipeline
            reason = "timed out" if isinstance(exc, TimeoutError) else f"failed: {exc!r}"
            logger.warning("decorator %s %s on %s span of %s", name, reason, span.service, ref, exc_info=True)
            if metrics is not None:
                metrics.plugin_errors.labels(plugin=name).inc()
            continue
        for key, value in tags.items():
            if key in _PROTECTED_TAGS:
                logger.debug("decorator %s may not change the %s tag; ignored", name, key)
                continue
            span.attributes[key] = value
        if logs:
            span.logs = [*span.logs, *logs]  # the observation's own list may be shared


def _checked(decoration: Any) -> tuple[dict[str, Any], list[LogEntry]]:
    if not isinstance(decoration, Decoration):
        raise TypeError(f"returned {decoration!r}, not a Decoration or None")
    for key, value in decoration.tags.items():
        valid = isinstance(value, _TAG_TYPES) or (
            isinstance(value, list) and all(isinstance(item, str) for item in value)
        )
        if not isinstance(key, str) or not valid:
            raise TypeError(
                f"tag {key!r} has a value of type {type(value).__name__} (str, bool, int, float, list[str])"
            )
    for entry in decoration.logs:
        if not isinstance(entry, LogEntry):
            raise TypeError(f"log {entry!r} is not a LogEntry")
    return dict(decoration.tags), list(decoration.logs)
