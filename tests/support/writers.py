"""A span writer that keeps what it is given, for tests of the stages in front of the real writers."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from kelemetry_py.model import Span


class CollectingWriter:
    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.writes: list[list[int]] = []  # the span ids of each write, in order
        self.gate = asyncio.Event()  # cleared: write() blocks, as a writer with a full queue does
        self.gate.set()
        self.written = asyncio.Event()  # set after every write

    async def write(self, spans: Sequence[Span]) -> None:
        await self.gate.wait()
        self.spans.extend(spans)
        self.writes.append([span.span_id for span in spans])
        self.written.set()

    async def flush(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def by_service(self, service: str) -> list[Span]:
        return [span for span in self.spans if span.service == service]
