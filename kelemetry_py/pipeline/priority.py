"""Who goes first on the event loop: a request waiting for its answer, or background work.

An audit batch waits for its 200 while the pipeline turns earlier batches into spans on the same loop. Background
work runs in slices, one slice per turn of the loop, so that a request never waits behind a pile of them; while
any request is being served the slices can be held to a share of the time (``pipeline.background_share``): the
backlog then waits in the durable log and the apiserver is answered at the speed of acceptance.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator


class Priority:
    def __init__(self, background_share: float = 1.0) -> None:
        if not 0 < background_share <= 1:
            raise ValueError("background_share must be in (0, 1]")
        self._pause_factor = (1 - background_share) / background_share
        self._serving = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._slice = asyncio.Lock()
        self._resume_at = 0.0  # monotonic: the earliest next slice while requests are being served

    @property
    def serving_requests(self) -> int:
        return self._serving

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        """Around a request's handling, up to its answer."""
        self._serving += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._serving -= 1
            if not self._serving:
                self._idle.set()

    @contextlib.asynccontextmanager
    async def background(self) -> AsyncIterator[None]:
        """Around one slice of background work (a few milliseconds of CPU, no waiting on other background work)."""
        await asyncio.sleep(0)  # a turn of the loop first: requests that arrived meanwhile are read before it
        async with self._slice:
            while self._serving and (pause := self._resume_at - time.monotonic()) > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause):
                        await self._idle.wait()
            started = time.monotonic()
            try:
                yield
            finally:
                ended = time.monotonic()
                self._resume_at = ended + (ended - started) * self._pause_factor
