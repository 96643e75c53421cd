"""At-least-once delivery: sources → observation log → pipeline → span log → each writer at its own pace.

``DurableIntake`` is the :class:`ObservationSink` every source calls: a batch is appended to the observation log
(on disk, or Redis Streams) before ``submit`` returns, so a 200 or an advanced cursor means kept. A pump feeds the
log to the pipeline and acknowledges a record once all of its observations are spans in the span log. One pump per
writer (embedded store, OTLP, plugins) reads the span log from its own cursor and acknowledges what its writer
confirmed, so a backend outage grows that writer's backlog on disk and never holds up the others.

With the embedded store as the only writer there are no others to hold up: the pipeline writes into it directly
(:class:`DirectWriter`) and an observation is acknowledged once the store has committed its spans.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kelemetry_py.export import SpanWriter
from kelemetry_py.metrics import Metrics
from kelemetry_py.model import KIND_RECORD, Observation, Span
from kelemetry_py.pipeline import Overloaded, TooLarge
from kelemetry_py.pipeline.core import GROUP_SPANS, Pipeline, Ticket
from kelemetry_py.pipeline.priority import Priority
from kelemetry_py.spool import DurableLog, LogConsumer, Record, RecordTooLarge, SpoolFull
from kelemetry_py.spool.codec import decode_observations, decode_spans, encode_observations, encode_spans
from kelemetry_py.spool.local import LocalConsumer, LocalLog

log = logging.getLogger(__name__)

PIPELINE_CONSUMER = "pipeline"
SPAN_LOG_LABEL = "span-log"  # the writer label of spans dropped before any writer saw them
_READ_RECORDS = 64
# What the pipeline holds in memory ahead of its spans, by encoded size: the rest waits in the log, on disk.
_FEED_AHEAD_BYTES = 4 << 20
_WRITER_READ_RECORDS = 128  # a writer's batch: what piled up while it wrote the last one, or in its linger
# A writer that got less than a full batch, and all there was, waits out the rest of this since its last read
# before the next one, so that a busy embedded store commits a few hundred spans at a time rather than a record's
# dozen or a batch's 84: its index pages are rewritten per commit, and 250 spans a commit cost it about 30 % less CPU
# per span than 84. Longer lingers save more but make each commit a longer burst of CPU, which delays the webhook's
# answers on a small machine (100 ms: saturated p99 1.9x the median instead of 1.65x). Spans reach the store and
# back ends this much later; a backlog is read at full speed.
_WRITER_LINGER_SECONDS = 0.03
_WRITER_FULL_SPANS = 1024
# How long the pipeline lets its partitions' spans gather for a writer it writes into directly. Each partition waits
# for its spans' write meanwhile, so this is shorter than a pump's linger. In the saturated webhook benchmark, with
# none the store committed a median of 64 spans at a time, which cost what skipping the span log saved; 30 ms
# gathered as many as a pump does (335) but made the pipeline's work come in bursts, and the p99 rose from 44 to
# 50 ms (medians of 9 runs); 15 ms commits about 200 and leaves the p99 as it was.
_DIRECT_LINGER_SECONDS = 0.015
# The most spans a writer is given at once (a store transaction, an export), and about what one read takes: a span
# log record holds the spans of the partitions' batches written together, from a dozen to this many.
_WRITER_MAX_SPANS = GROUP_SPANS
_ROOM_POLL_SECONDS = 0.05
_WRITER_RETRY_MAX_SECONDS = 30.0


class DurableIntake:
    """The sink sources submit to: accepted means appended to the observation log."""

    def __init__(self, observations: DurableLog, metrics: Metrics | None = None) -> None:
        self._log = observations
        self._metrics = metrics

    async def submit(self, observations: Sequence[Observation], *, wait: bool = False) -> None:
        if not observations:
            return
        batch = list(observations)
        try:
            await self._append([encode_observations(batch)], [batch], wait=wait)
        except TooLarge:
            # A source that waits for room (a watcher, a file tailer) would offer the same batch again for ever;
            # its halves may fit. A batch to be answered at once stays whole: all of it or none (413).
            if not wait or len(batch) == 1:
                raise
            await self.submit(batch[: len(batch) // 2], wait=True)
            await self.submit(batch[len(batch) // 2 :], wait=True)

    async def submit_encoded(
        self, payloads: Sequence[bytes], observations: Sequence[Sequence[Observation]] | None = None
    ) -> None:
        if payloads:
            await self._append(payloads, observations or [None] * len(payloads), wait=False)

    async def _append(self, payloads: Sequence[bytes], values: Sequence[Any], *, wait: bool) -> None:
        delay = _ROOM_POLL_SECONDS
        while True:
            started = time.monotonic()
            try:
                await self._log.append(payloads, values)
                _observe_append(self._metrics, self._log, started)
                return
            except RecordTooLarge as exc:
                raise TooLarge(str(exc)) from None
            except SpoolFull:
                if not wait:
                    raise Overloaded(retry_after_seconds=1) from None
            # Watchers and file tailers wait for room instead of dropping; their cursors stay put meanwhile.
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


def _observe_append(metrics: Metrics | None, log: DurableLog, started: float) -> None:
    if metrics is not None:
        metrics.spool_append_seconds.labels(log.name).observe(time.monotonic() - started)


class SpanLogWriter:
    """The pipeline's writer: spans are kept once they are in the span log."""

    def __init__(self, spans: DurableLog, metrics: Metrics | None = None) -> None:
        self._log = spans
        self._metrics = metrics

    async def write(self, spans: Sequence[Span]) -> None:
        batch = list(spans)
        payload = encode_spans(batch)
        started = time.monotonic()  # the append alone, as for observations: encoding is the pipeline's CPU
        try:
            await self._log.append([payload], [batch])
            _observe_append(self._metrics, self._log, started)
        except RecordTooLarge:
            # The pipeline retries a failed write until it is kept; this one never would be. Halves may fit.
            if len(batch) > 1:
                await self.write(batch[: len(batch) // 2])
                await self.write(batch[len(batch) // 2 :])
                return
            (span,) = batch
            log.error("span log: a span of %s can never fit spool.max_bytes; dropped and counted", span.service)
            if self._metrics is not None:
                self._metrics.spans_dropped.labels(SPAN_LOG_LABEL).inc()

    async def flush(self) -> None:
        return None

    async def close(self) -> None:
        return None


class DirectWriter:
    """The pipeline's writer when one writer is the only one and keeps what it commits (the embedded store): spans
    go straight into it, and its commit, as durable as the span log's would have been, is what acknowledges the
    observations. A span log in between would write every span to disk twice for nothing: it pays off only where
    writers go at different paces. A failed write is retried by the pipeline, the observations waiting in their
    log meanwhile; what an earlier run left in the span log is still delivered by the writer's pump."""

    linger_seconds = _DIRECT_LINGER_SECONDS

    def __init__(self, name: str, writer: SpanWriter, metrics: Metrics) -> None:
        self.name = name
        self.failing = False
        self._writer = writer
        self._deliver = _writing(name, writer, metrics)
        self._metrics = metrics

    async def write(self, spans: Sequence[Span]) -> None:
        try:
            await self._deliver(list(spans))
        except Exception as exc:
            _failed(self.name, self._metrics, exc, already=self.failing)
            self.failing = True
            raise
        if self.failing:
            _recovered(self.name, self._metrics)
            self.failing = False

    async def flush(self) -> None:
        await self._writer.flush()

    async def close(self) -> None:
        return None


def _failed(name: str, metrics: Metrics, exc: Exception, *, already: bool) -> None:
    # Not counted in kelemetry_export_errors_total here: each writer counts its own failed attempts.
    if not already:
        log.warning("%s failed (%s); what it has not written waits in the spool and is retried", name, exc)
    metrics.writer_failing.labels(name).set(1)


def _recovered(name: str, metrics: Metrics) -> None:
    log.info("%s recovered; delivering its backlog", name)
    metrics.writer_failing.labels(name).set(0)


class _Acker:
    """Acknowledges records as they complete, in the background; optionally only once a gate says so (with Redis
    Streams an observation is acknowledged only after every writer has written its spans)."""

    def __init__(self, consumer: LogConsumer, gate: Callable[[], int] | None, mark: Callable[[], int]) -> None:
        self._consumer = consumer
        self._gate = gate
        self._mark = mark
        self._done: deque[tuple[int, Record]] = deque()
        self._wake = asyncio.Event()

    def done(self, record: Record) -> None:
        self._done.append((self._mark(), record))
        self._wake.set()

    async def run(self) -> None:
        while True:
            if self._gate is None:
                await self._wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.1):
                        await self._wake.wait()
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        limit = self._gate() if self._gate is not None else None
        ready: list[Record] = []
        while self._done and (limit is None or self._done[0][0] <= limit):
            ready.append(self._done.popleft()[1])
        if ready:
            await self._consumer.ack(ready)


@dataclass
class Pump:
    """Feeds one consumer (a span writer, the search index, alert rules) from a log at its own pace; retries a
    failed batch until it is handled, and only then acknowledges it."""

    name: str
    consumer: LogConsumer
    decode: Callable[[bytes], list[Any]]
    deliver: Callable[[list[Any]], Awaitable[None]]
    metrics: Metrics
    records_per_batch: int = _WRITER_READ_RECORDS
    # After a batch of fewer than full_items that took everything there was, the least time from one read to the
    # next (a backlog is read at full speed).
    linger_seconds: float = 0.0
    full_items: int = 0
    # Nonzero: the most items one delivery holds, and about what one read takes (records are read fewer at a time
    # as they hold more, so that memory follows items rather than records).
    max_items: int = 0
    failing: bool = False
    _items_per_record: float = field(default=1.0, init=False, repr=False)  # of the last read

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            caught_up = await self._next_batch()
            if caught_up is None:
                return
            if caught_up:
                await asyncio.sleep(self.linger_seconds - (time.monotonic() - started))

    async def _next_batch(self) -> bool | None:
        """Whether the batch was a small one that left nothing behind; None once the log is closed. One batch per
        call, so nothing of it stays referenced while the next read waits (a batch can hold megabytes of spans)."""
        wanted = self.records_per_batch
        if self.max_items:
            wanted = max(1, min(wanted, int(self.max_items / self._items_per_record)))
        records = await self.consumer.read(wanted)
        if not records:
            return None
        items: list[Any] = []
        for record in records:
            try:
                items.extend(record.value if record.value is not None else _decoded(record, self.decode))
            except Exception:
                # Retrying cannot mend it, and stopping here would stop this consumer for good.
                log.exception("%s: spool record %s cannot be decoded; dropped and counted", self.name, record.id)
                self.metrics.spool_dropped.labels(self.name, "undecodable").inc()
        self._items_per_record = max(1.0, len(items) / len(records))
        step = self.max_items or len(items) or 1
        for start in range(0, len(items), step):
            await self._deliver(items[start : start + step])
        await self.consumer.ack(records)
        return len(records) < wanted and len(items) < self.full_items

    async def _deliver(self, items: list[Any]) -> None:
        delay = 0.1
        while True:
            try:
                await self.deliver(items)
                break
            except Exception as exc:
                _failed(self.name, self.metrics, exc, already=self.failing)
                self.failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, _WRITER_RETRY_MAX_SECONDS)
        if self.failing:
            _recovered(self.name, self.metrics)
            self.failing = False


def _decoded(record: Record, decode: Callable[[bytes], list[Any]]) -> list[Any]:
    if record.damaged:
        raise ValueError("its checksum does not match: the disk changed it")
    return decode(record.payload)


def _writing(name: str, writer: SpanWriter, metrics: Metrics) -> Callable[[list[Span]], Awaitable[None]]:
    async def deliver(spans: list[Span]) -> None:
        await writer.write(spans)
        await writer.flush()
        for service, count in collections.Counter(span.service for span in spans).items():
            metrics.spans_written.labels(name, service).inc(count)

    return deliver


ObservationConsumer = Callable[[Sequence[Observation]], Awaitable[None]]


class Delivery:
    """Owns the two logs and the pumps between them; started after the pipeline, stopped before it."""

    def __init__(
        self,
        *,
        observations: DurableLog,
        spans: LocalLog,
        pipeline: Pipeline,
        writers: Mapping[str, SpanWriter],
        metrics: Metrics,
        consumers: Mapping[str, ObservationConsumer] | None = None,
        ack_after_writers: bool = False,
        priority: Priority | None = None,
        direct: DirectWriter | None = None,
    ) -> None:
        self._priority = priority or Priority()
        self.observations = observations
        self.spans = spans
        self.pipeline = pipeline
        self.metrics = metrics
        self.intake = DurableIntake(observations, metrics)
        self._ack_after_writers = ack_after_writers
        self._direct = direct  # the pipeline's writer, when it writes past the span log
        self._pipeline_consumer: LogConsumer | None = None
        self.pumps: list[Pump] = []
        self._span_consumers: list[LocalConsumer] = []
        self._writers = dict(writers)
        self._consumers = dict(consumers or {})
        self._tasks: list[asyncio.Task[None]] = []
        self._acker: _Acker | None = None
        self._feeder: asyncio.Task[None] | None = None
        self._feeding_bytes = 0
        self._fed = asyncio.Event()

    async def start(self) -> None:
        await self.observations.open()
        await self.spans.open()
        self._span_consumers = [self.spans.consumer(name) for name in self._writers]
        self.pumps = [
            Pump(
                name,
                consumer,
                decode_spans,
                _writing(name, writer, self.metrics),
                self.metrics,
                linger_seconds=_WRITER_LINGER_SECONDS,
                full_items=_WRITER_FULL_SPANS,
                max_items=_WRITER_MAX_SPANS,
            )
            for (name, writer), consumer in zip(self._writers.items(), self._span_consumers, strict=True)
        ]
        # Search and alerts read what was accepted, each from its own cursor: a 200 covers them too.
        self.pumps += [
            Pump(name, self.observations.consumer(name), decode_observations, handle, self.metrics, _READ_RECORDS)
            for name, handle in self._consumers.items()
        ]
        self._pipeline_consumer = self.observations.consumer(PIPELINE_CONSUMER)
        gate = self._written_by_all if self._ack_after_writers else None
        self._acker = _Acker(self._pipeline_consumer, gate, lambda: self.spans.end)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(pump.run(), name=f"writer-{pump.name}") for pump in self.pumps]
        self._feeder = loop.create_task(self._feed_pipeline(), name="observation-pump")
        self._tasks.append(self._feeder)
        self._tasks.append(loop.create_task(self._acker.run(), name="observation-acker"))

    def _written_by_all(self) -> int:
        return min((consumer.committed for consumer in self._span_consumers), default=self.spans.end)

    async def _feed_pipeline(self) -> None:
        while await self._feed_next():
            pass

    async def _feed_next(self) -> bool:
        # One read per call, so the records fed stay referenced only by the pipeline while the next read waits.
        consumer = self._pipeline_consumer
        acker = self._acker
        assert consumer is not None and acker is not None
        records = await consumer.read(_READ_RECORDS)
        if not records:
            return False
        for record in records:
            try:
                async with self._priority.background():  # one record at a time: 400 observations to queue
                    batch = record.value if record.value is not None else _decoded(record, decode_observations)
                    batch = [observation for observation in batch if observation.kind != KIND_RECORD]
            except Exception:
                log.exception("observation log: record %s cannot be decoded; dropped and counted", record.id)
                self.metrics.observations_failed.labels("undecodable").inc()
                self.metrics.spool_dropped.labels(PIPELINE_CONSUMER, "undecodable").inc()
                acker.done(record)
                continue
            if not batch:  # search records only: nothing to trace
                acker.done(record)
                continue
            size = len(record.payload)
            while self._feeding_bytes and self._feeding_bytes + size > _FEED_AHEAD_BYTES:
                self._fed.clear()
                await self._fed.wait()
            self._feeding_bytes += size
            ticket = Ticket(len(batch), functools.partial(self._fed_done, record, size), replayed=record.replayed)
            await self.pipeline.feed(batch, ticket, wait=True)
        return True

    def _fed_done(self, record: Record, size: int) -> None:
        assert self._acker is not None
        self._acker.done(record)
        self._feeding_bytes -= size
        self._fed.set()

    # -- observing --------------------------------------------------------------------------------------------

    def backlog(self) -> dict[str, tuple[int, int]]:
        """(records, bytes) not yet handled, per consumer: ``pipeline`` and each writer."""
        out: dict[str, tuple[int, int]] = {}
        if self._pipeline_consumer is not None:
            records, size = self._pipeline_consumer.backlog()
            out[PIPELINE_CONSUMER] = (records + self.pipeline.pending, size)
        for pump in self.pumps:
            out[pump.name] = pump.consumer.backlog()
        return out

    def writers_caught_up(self) -> bool:
        """Whether every writer has written all the span log holds, or waits for its back end (its backlog is on
        disk, not in memory, for as long as that takes)."""
        return all(pump.failing or pump.consumer.backlog()[0] == 0 for pump in self.pumps)

    def failing_writers(self) -> list[str]:
        failing = [pump.name for pump in self.pumps if pump.failing]
        if self._direct is not None and self._direct.failing and self._direct.name not in failing:
            failing.append(self._direct.name)
        return failing

    def has_room(self) -> bool:
        for spool in (self.observations, self.spans):
            if spool.used_bytes() > 0.95 * spool.max_bytes:
                return False
        room = getattr(self.observations, "has_room", None)
        return bool(room()) if callable(room) else True

    def update_metrics(self) -> None:
        for name, (records, size) in self.backlog().items():
            self.metrics.spool_backlog_records.labels(name).set(records)
            self.metrics.spool_backlog_bytes.labels(name).set(size)
        for spool in (self.observations, self.spans):
            self.metrics.spool_used_bytes.labels(spool.name).set(spool.used_bytes())
            self.metrics.spool_capacity_bytes.labels(spool.name).set(spool.max_bytes)

    # -- stopping ---------------------------------------------------------------------------------------------

    async def drain(self, deadline: float) -> bool:
        """Wait until every consumer has handled everything, or the monotonic ``deadline`` passes."""
        while True:
            if self._acker is not None:
                await self._acker.flush()
            if self._pipeline_consumer is not None:
                await self._pipeline_consumer.refresh()
            if all(records == 0 for records, _ in self.backlog().values()):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)

    async def stop_feeding(self) -> None:
        """Stop handing observations to the pipeline (before it stops); the rest stays in the log."""
        if self._feeder is not None:
            # Readers of a shared stream finish their blocking read rather than being cut mid-command.
            self.observations.stop_reading()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._feeder), timeout=2)
            self._feeder.cancel()
            await asyncio.gather(self._feeder, return_exceptions=True)

    async def stop(self) -> None:
        """Persist positions and stop; whatever is not handled stays in the logs for the next start."""
        await self.stop_feeding()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._acker is not None:
            with contextlib.suppress(Exception):
                await self._acker.flush()
        await self.observations.close()
        await self.spans.close()
