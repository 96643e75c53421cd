"""A per-process emission set: enough for a single replica."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class MemoryEmissionSet:
    def __init__(self, max_entries: int = 1_000_000, clock: Callable[[], float] = time.monotonic) -> None:
        # Claims in the order they were last made; the pipeline gives every claim the same TTL, so this is also
        # the order they expire in, and the expired ones are forgotten from the front.
        self._expiry: OrderedDict[str, float] = OrderedDict()
        self._max_entries = max_entries
        self._clock = clock

    def __len__(self) -> int:
        return len(self._expiry)

    async def claim(self, key: str, ttl_seconds: int) -> bool:
        now = self._clock()
        expiry = self._expiry.get(key)
        if expiry is not None and expiry > now:
            return False
        self._expiry[key] = now + ttl_seconds
        self._expiry.move_to_end(key)
        # The oldest go while expired (else a long-running replica kept every claim of the past, about 200 bytes
        # each with its key, until max_entries) or while there are too many.
        while self._expiry and (len(self._expiry) > self._max_entries or next(iter(self._expiry.values())) <= now):
            self._expiry.popitem(last=False)
        return True

    async def release(self, key: str) -> None:
        self._expiry.pop(key, None)

    async def close(self) -> None:
        self._expiry.clear()
