"""Requests first: work somebody is waiting on goes before work nobody is waiting on.

The apiserver waits for each audit batch's 200 (and its own buffer fills while it waits); nobody waits for an
accepted batch to become spans, since it is already kept in the observation log. Both share one event loop, and
asyncio runs whatever is ready in turn, so without a priority a request queues behind every partition's batch.
Background work takes one slice at a time and, while a request is being served, waits for it to finish, but
never longer than ``max_deferral_seconds``: under a steady stream of requests the background slows down (its
backlog grows in the log, bounded by the spool) and still moves.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

MAX_DEFERRAL_SECONDS = 0.02


class Priority:
    def __init__(self, max_deferral_seconds: float = MAX_DEFERRAL_SECONDS) -> None:
        self._max_deferral = max_deferral_seconds
        self._serving = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._turn = asyncio.Lock()
        self.deferrals = 0  # background slices that waited for a request

    @property
    def serving(self) -> int:
        return self._serving

    @contextlib.contextmanager
    def foreground(self) -> Iterator[None]:
        """Around serving a request somebody waits on."""
        self._serving += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._serving -= 1
            if self._serving == 0:
                self._idle.set()

    @contextlib.asynccontextmanager
    async def background(self) -> AsyncIterator[None]:
        """Around one slice of background work: one slice runs at a time, after the requests being served."""
        async with self._turn:
            if self._serving:
                self.deferrals += 1
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._max_deferral):
                        await self._idle.wait()
            yield
