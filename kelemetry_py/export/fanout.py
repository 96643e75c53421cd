"""A span writer that hands every batch to several writers at once (e.g. OTLP and the embedded store)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from kelemetry_py.export import SpanWriter
from kelemetry_py.model import Span


class FanoutWriter:
    """Writes, flushes and closes all writers concurrently.

    A failing writer does not keep the others from getting the spans; its error is raised afterwards
    (several failures together as an ExceptionGroup). ``write`` waits for the slowest writer, so each
    one's backpressure reaches the caller.
    """

    def __init__(self, writers: Sequence[SpanWriter]) -> None:
        if not writers:
            raise ValueError("FanoutWriter needs at least one writer")
        self.writers = list(writers)

    async def write(self, spans: Sequence[Span]) -> None:
        await self._all(lambda writer: writer.write(spans), "write")

    async def flush(self) -> None:
        await self._all(lambda writer: writer.flush(), "flush")

    async def close(self) -> None:
        await self._all(lambda writer: writer.close(), "close")

    async def _all(self, call: Callable[[SpanWriter], Awaitable[None]], what: str) -> None:
        if len(self.writers) == 1:
            await call(self.writers[0])
            return
        results = await asyncio.gather(*(call(writer) for writer in self.writers), return_exceptions=True)
        errors = [result for result in results if isinstance(result, BaseException)]
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise BaseExceptionGroup(f"{len(errors)} span writers failed to {what}", errors)
