"""An in-process trace cache with a TTL and a bound on its size (the oldest entries go first)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from kelemetry_py.frontend.tracecache import CacheEntry


class MemoryTraceCache:
    def __init__(
        self, ttl_seconds: float, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if ttl_seconds <= 0 or max_entries <= 0:
            raise ValueError("trace cache TTL and size must be greater than 0")
        self._ttl = ttl_seconds
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, CacheEntry]] = OrderedDict()

    async def put(self, entry: CacheEntry) -> str:
        key = entry.key
        self._entries.pop(key, None)
        self._entries[key] = (self._clock() + self._ttl, entry)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return key

    async def get(self, key: str) -> CacheEntry | None:
        found = self._entries.get(key)
        if found is None:
            return None
        expires, entry = found
        if self._clock() >= expires:
            del self._entries[key]
            return None
        return entry

    def __len__(self) -> int:
        return len(self._entries)

    async def close(self) -> None:
        self._entries.clear()
