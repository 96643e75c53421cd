"""The diff cache: what the object differ recorded per (object key, resourceVersion), for audit spans.

Two implementations side by side: :mod:`.memory` (one process) and :mod:`.redis` (replicas share records,
claims and "a record arrived" notifications). A record is claimed exactly once: by the audit span whose
response carries its resourceVersion, or, when none does in time, by the differ (as its own diff span).

The differ claims before it emits and confirms once the pipeline has accepted the diff span; a differ claim
not confirmed (the emitting replica died in between, or the pipeline refused) may be claimed again by any
differ, so an interrupted emission is retried rather than lost.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import msgspec
import orjson

from kelemetry_py.model import ObjectRef

ChangeOp = Literal["add", "remove", "change"]
RecordKind = Literal["diff", "create", "delete"]
Claimant = Literal["audit", "differ"]
# The value of a claim once the differ's emission has been accepted: nobody may claim it again.
EMITTED = "emitted"


class Change(msgspec.Struct, frozen=True, gc=False):
    """One changed field. ``old``/``new`` are None for an add/remove respectively. (A struct the cyclic collector
    never tracks: the differ makes one per changed field and caches them with their records, and nothing a
    Change holds can point back to it; a frozen dataclass costs many times more to build.)"""

    path: str
    op: ChangeOp
    old: Any = None
    new: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "op": self.op, "old": self.old, "new": self.new}


@dataclass(frozen=True, slots=True)
class DiffRecord:
    """What changed when ``ref`` reached ``resource_version``, and who (from managedFields) changed it."""

    ref: ObjectRef
    resource_version: str
    kind: RecordKind
    time_ns: int
    field_manager: str = ""
    operation: str = ""
    changes: tuple[Change, ...] = ()
    lines: tuple[str, ...] = ()
    # The redacted object without managedFields, for creates and deletes.
    snapshot: dict[str, Any] | None = field(default=None, compare=False)
    # Seen by a (re)list rather than a watch event: the change happened while nobody was watching.
    late: bool = False

    @property
    def object_key(self) -> str:
        return self.ref.key

    @property
    def is_snapshot(self) -> bool:
        return self.kind != "diff"

    def changes_json(self) -> str:
        # to_builtins makes each Change the dict to_dict would, in C: one call per record, not one per change.
        return orjson.dumps(msgspec.to_builtins(self.changes)).decode()

    def to_json(self) -> bytes:
        ref = self.ref
        return orjson.dumps(
            {
                "ref": [ref.cluster, ref.group, ref.version, ref.resource, ref.namespace, ref.name, ref.uid],
                "rv": self.resource_version,
                "kind": self.kind,
                "time_ns": self.time_ns,
                "manager": self.field_manager,
                "operation": self.operation,
                "changes": [change.to_dict() for change in self.changes],
                "lines": list(self.lines),
                "snapshot": self.snapshot,
                "late": self.late,
            }
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> DiffRecord:
        raw = orjson.loads(data)
        return cls(
            ref=ObjectRef(*raw["ref"]),
            resource_version=raw["rv"],
            kind=raw["kind"],
            time_ns=raw["time_ns"],
            field_manager=raw["manager"],
            operation=raw["operation"],
            changes=tuple(Change(c["path"], c["op"], c["old"], c["new"]) for c in raw["changes"]),
            lines=tuple(raw["lines"]),
            snapshot=raw["snapshot"],
            late=bool(raw.get("late", False)),
        )

    def size_bytes(self) -> int:
        """A cheap estimate of what holding this record costs, for byte bounds."""
        snapshot = len(orjson.dumps(self.snapshot)) if self.snapshot else 0
        return 300 + snapshot + sum(map(len, self.lines)) * 2


@runtime_checkable
class DiffCache(Protocol):
    async def put(self, record: DiffRecord) -> None:
        """Store ``record`` (with the cache's TTL) and wake whoever waits for it."""

    async def get(self, object_key: str, resource_version: str) -> DiffRecord | None: ...

    async def claim(self, object_key: str, resource_version: str, claimant: Claimant = "audit") -> bool:
        """True for exactly one caller per (key, resourceVersion) across every replica sharing the cache, except
        that a ``differ`` claim not yet confirmed is granted to a ``differ`` again."""

    async def confirm(self, object_key: str, resource_version: str) -> None:
        """The differ's emission of this record was accepted: its claim is final."""

    def claim_nowait(self, object_key: str, resource_version: str) -> DiffRecord | None:
        """Claim and return the record if that needs no I/O; None means "use the async path"."""

    async def wait(self, object_key: str, resource_version: str, wait_seconds: float) -> DiffRecord | None:
        """The record as soon as it is stored, or None after ``wait_seconds``."""

    async def close(self) -> None: ...


class Waiters:
    """Futures of callers waiting for a record per (object key, resourceVersion); both caches wake them."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, str], list[asyncio.Future[DiffRecord | None]]] = {}

    def add(self, key: tuple[str, str]) -> asyncio.Future[DiffRecord | None]:
        waiter: asyncio.Future[DiffRecord | None] = asyncio.get_running_loop().create_future()
        self._by_key.setdefault(key, []).append(waiter)
        return waiter

    def discard(self, key: tuple[str, str], waiter: asyncio.Future[DiffRecord | None]) -> None:
        remaining = [w for w in self._by_key.get(key, []) if w is not waiter]
        if remaining:
            self._by_key[key] = remaining
        else:
            self._by_key.pop(key, None)

    def wake(self, key: tuple[str, str], record: DiffRecord | None) -> None:
        for waiter in self._by_key.pop(key, []):
            if not waiter.done():
                waiter.set_result(record)

    def cancel_all(self) -> None:
        for waiters in self._by_key.values():
            for waiter in waiters:
                waiter.cancel()
        self._by_key.clear()
