"""Where traces live and how they are read back: the TraceReader Protocol and its implementations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from kelemetry_py.model import ObjectRef, Span


@dataclass(slots=True, kw_only=True)
class TraceQuery:
    """Raw traces overlapping [start_ns, end_ns] with one span whose attributes match every tag (Jaeger's rule)."""

    tags: dict[str, str] = field(default_factory=dict)
    start_ns: int
    end_ns: int
    limit: int = 20
    service: str | None = None  # a raw service ("object", "audit", ...) the matching span must have


@dataclass(slots=True, kw_only=True)
class TraceHit:
    """One raw trace: one object in one window."""

    trace_id: int
    ref: ObjectRef
    start_ns: int
    end_ns: int


@runtime_checkable
class TraceReader(Protocol):
    async def find_traces(self, query: TraceQuery) -> list[TraceHit]:
        """Newest first, at most ``query.limit``."""

    async def get_trace(self, trace_id: int) -> list[Span]:
        """All spans of one raw trace; empty if it is unknown."""

    async def close(self) -> None: ...


@runtime_checkable
class BatchTraceReader(Protocol):
    """A TraceReader that answers many lookups at once (the embedded store: one hop to its read thread, not one
    per object); the frontend uses it when the reader offers it."""

    async def find_traces_many(self, queries: Sequence[TraceQuery]) -> list[list[TraceHit]]:
        """``find_traces`` of each query, in order."""

    async def get_traces(self, trace_ids: Sequence[int]) -> dict[int, list[Span]]:
        """The spans of each known trace id; unknown ones are absent."""
