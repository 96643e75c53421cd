"""The in-process diff cache: TTL and a size bound, waiters woken by futures (no polling)."""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Callable

from kelemetry_py.sources.diffcache import EMITTED, Claimant, DiffRecord, Waiters

_Key = tuple[str, str]


class MemoryDiffCache:
    """Records expire after ``ttl_seconds``; past ``max_records`` the oldest go first."""

    def __init__(
        self,
        ttl_seconds: float = 3600.0,
        max_records: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_seconds <= 0 or max_records <= 0:
            raise ValueError("ttl_seconds and max_records must be greater than 0")
        self._ttl = ttl_seconds
        self._max = max_records
        self._clock = clock
        # Insertion order is expiry order, because every record gets the same TTL.
        self._records: OrderedDict[_Key, tuple[float, DiffRecord]] = OrderedDict()
        self._claims: OrderedDict[_Key, tuple[float, str]] = OrderedDict()
        self._waiters = Waiters()
        self._due = -math.inf  # no scan for expired entries is needed before then (see _expire)

    def __len__(self) -> int:
        return len(self._records)

    def _expire(self) -> None:
        now = self._clock()
        records, claims = self._records, self._claims
        if now < self._due and len(records) <= self._max and len(claims) <= self._max:
            return  # called twice per change: nothing is due before the earliest expiry seen at the last scan
        due = now + self._ttl  # the earliest anything stored from now on can expire: the clock only moves on
        for table in (records, claims):
            while table:
                first = next(iter(table))
                expires = table[first][0]
                if expires > now and len(table) <= self._max:
                    due = min(due, expires)
                    break
                table.popitem(last=False)
        self._due = due

    async def put(self, record: DiffRecord) -> None:
        key = (record.object_key, record.resource_version)
        self._records.pop(key, None)
        self._records[key] = (self._clock() + self._ttl, record)
        self._expire()
        self._waiters.wake(key, record)

    def _lookup(self, key: _Key) -> DiffRecord | None:
        entry = self._records.get(key)
        if entry is None or entry[0] <= self._clock():
            return None
        return entry[1]

    async def get(self, object_key: str, resource_version: str) -> DiffRecord | None:
        return self._lookup((object_key, resource_version))

    def _claim(self, key: _Key, claimant: Claimant = "audit") -> bool:
        self._expire()
        held = self._claims.get(key)
        if held is not None and not (claimant == "differ" and held[1] == "differ"):
            return False
        if held is None:
            self._claims[key] = (self._clock() + self._ttl, claimant)
        return True

    async def claim(self, object_key: str, resource_version: str, claimant: Claimant = "audit") -> bool:
        return self._claim((object_key, resource_version), claimant)

    async def confirm(self, object_key: str, resource_version: str) -> None:
        key = (object_key, resource_version)
        held = self._claims.get(key)
        if held is not None:
            self._claims[key] = (held[0], EMITTED)

    def claim_nowait(self, object_key: str, resource_version: str) -> DiffRecord | None:
        key = (object_key, resource_version)
        record = self._lookup(key)
        if record is None or not self._claim(key):
            return None
        return record

    async def wait(self, object_key: str, resource_version: str, wait_seconds: float) -> DiffRecord | None:
        key = (object_key, resource_version)
        record = self._lookup(key)
        if record is not None:
            return record
        waiter = self._waiters.add(key)
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), wait_seconds)
        except TimeoutError:
            return None
        finally:
            self._waiters.discard(key, waiter)

    async def close(self) -> None:
        self._waiters.cancel_all()
