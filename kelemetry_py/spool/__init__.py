"""Durable logs: what a source accepted, and what the pipeline made of it, kept on disk (or in Redis Streams)
until every consumer has handled it.

A log holds opaque records; each named consumer reads them in order at its own pace and acknowledges them,
possibly out of order. A record is gone only once every consumer has acknowledged it, so a crash, a restart or a
slow consumer (a writer whose backend is down) loses nothing: the consumer resumes after its last contiguous
acknowledgement, and replays are harmless because span ids are deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class SpoolFull(Exception):
    """The log has no room for the records within its byte bound; the caller should push back (429)."""


class RecordTooLarge(SpoolFull):
    """One append is larger than the whole log may ever hold; retrying cannot help (413)."""


@dataclass(slots=True)
class Record:
    """One appended payload. ``value`` is the object it was encoded from when it is still in memory
    (decode ``payload`` otherwise); ``replayed`` marks a record that an earlier run (or a dead replica) may
    already have partly handled; ``damaged`` one whose checksum no longer matches what was written."""

    id: Any
    payload: bytes
    value: Any = None
    replayed: bool = False
    damaged: bool = False


class LogConsumer(Protocol):
    name: str

    async def read(self, max_records: int) -> list[Record]:
        """The next records in order; waits for at least one. Empty only once the log is closing."""

    async def ack(self, records: Sequence[Record]) -> None:
        """These records are handled; may be called out of order and concurrently with ``read``."""

    def backlog(self) -> tuple[int, int]:
        """(records, bytes) appended but not yet acknowledged by this consumer, as of the last ``refresh``."""

    async def refresh(self) -> None:
        """Bring ``backlog`` up to date where it is not known locally (a shared stream)."""


class DurableLog(Protocol):
    name: str
    max_bytes: int  # the bound of used_bytes()

    async def open(self) -> None: ...

    async def append(self, payloads: Sequence[bytes], values: Sequence[Any] | None = None) -> None:
        """Durable (per the fsync policy) when it returns. Raises :class:`SpoolFull` when over the bound."""

    def consumer(self, name: str) -> LogConsumer:
        """Every consumer must be named before the first ``read``; a record stays until all have acked it."""

    def used_bytes(self) -> int: ...

    def stop_reading(self) -> None:
        """Readers return an empty batch from now on (within a moment) and appends are refused."""

    async def close(self) -> None:
        """Wake readers with an empty batch and persist positions."""
