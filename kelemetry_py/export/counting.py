"""Counts the spans handed to a writer (``kelemetry_spans_written_total{writer,service}``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from kelemetry_py.export import SpanWriter
from kelemetry_py.metrics import Metrics
from kelemetry_py.model import Span


class CountingWriter:
    """Wraps a writer; every span handed to it is counted by service before the writer sees it."""

    def __init__(self, writer: SpanWriter, name: str, metrics: Metrics) -> None:
        self.writer = writer
        self._by_service: dict[str, Any] = {}
        self._metrics = metrics
        self._name = name

    async def write(self, spans: Sequence[Span]) -> None:
        for service, count in Counter(span.service for span in spans).items():
            child = self._by_service.get(service)
            if child is None:
                child = self._by_service[service] = self._metrics.spans_written.labels(self._name, service)
            child.inc(count)
        await self.writer.write(spans)

    async def flush(self) -> None:
        await self.writer.flush()

    async def close(self) -> None:
        await self.writer.close()
