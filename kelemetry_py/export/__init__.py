"""Span writers: where raw spans go (OTLP to Tempo/Jaeger, the embedded store, or both)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from kelemetry_py.model import Span


@runtime_checkable
class SpanWriter(Protocol):
    """Accepts raw spans. ``write`` may await to push back when the writer's own bounded queue is full. A writer
    the pipeline writes into directly may set ``linger_seconds``: how long the pipeline lets spans gather between
    the starts of two writes (see :class:`~kelemetry_py.pipeline.durable.DirectWriter`)."""

    async def write(self, spans: Sequence[Span]) -> None: ...

    async def flush(self) -> None:
        """Return once everything written so far has been delivered (or failed and been counted)."""

    async def close(self) -> None: ...
