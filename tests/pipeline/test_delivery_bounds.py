"""Bounds between the pipeline and the span log: what it feeds ahead of its spans, writes too large for a record."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from pathlib import Path

import pytest

import kelemetry_py.pipeline.durable as durable
from kelemetry_py.metrics import Metrics
from kelemetry_py.model import Observation, Span
from kelemetry_py.pipeline import TooLarge
from kelemetry_py.pipeline.durable import SPAN_LOG_LABEL, DurableIntake, Pump, SpanLogWriter, _writing
from kelemetry_py.spool.codec import decode_observations, decode_spans, encode_spans
from kelemetry_py.spool.local import LocalLog
from tests.pipeline.test_pipeline import POD, observation
from tests.support.delivery import settle, start_delivery, stop_delivery
from tests.support.waiting import until
from tests.support.writers import CollectingWriter


class HoldEverything:
    """A hook that parks every observation until released: the pipeline cannot finish any of them."""

    name = "hold"

    def __init__(self) -> None:
        self.release = asyncio.Event()

    def prepare(self, observation: Observation) -> Awaitable[None] | None:
        return self._released()

    async def _released(self) -> None:
        await self.release.wait()


async def test_a_backlog_stays_in_the_log_beyond_the_bytes_fed_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(durable, "_FEED_AHEAD_BYTES", 1000)
    hold = HoldEverything()
    writer = CollectingWriter()
    delivery = await start_delivery(tmp_path, writer, Metrics(), spool_bytes=1 << 24, hooks=[hold])
    pipeline = delivery.pipeline
    for record in range(20):  # 20 records of about 500 bytes each
        await delivery.intake.submit([observation(POD, 100 + record, f"r{record}-{i}") for i in range(3)])
    for _ in range(200):  # every chance to feed more than the bound allows
        await asyncio.sleep(0)
    # One record always goes in; a second of ~500 bytes fits under 1000; a third would not.
    assert 3 <= pipeline.pending <= 6
    records, _ = delivery.backlog()["pipeline"]
    assert records == 20 + pipeline.pending
    hold.release.set()
    while len(writer.by_service("audit")) < 60:
        writer.written.clear()
        await writer.written.wait()
    await stop_delivery(delivery)
    assert sorted(str(s.attributes["verb"]) for s in writer.by_service("audit")) == sorted(
        f"r{record}-{i}" for record in range(20) for i in range(3)
    )


def _span(span_id: int, padding: int) -> Span:
    return Span(
        trace_id=1,
        span_id=span_id,
        parent_id=None,
        service="audit",
        name=f"s{span_id}",
        start_ns=0,
        end_ns=1,
        attributes={"padding": "x" * padding},
    )


async def test_spans_too_many_for_one_record_are_split_and_a_span_that_never_fits_is_dropped(tmp_path: Path) -> None:
    """The pipeline retries a write until the span log keeps it: a write that can never fit must not be retried
    for ever."""
    spans = LocalLog(tmp_path, name="spans", max_bytes=8192)  # records of at most 6 KiB
    await spans.open()
    metrics = Metrics()
    small = [_span(span_id, 300) for span_id in range(1, 13)]  # about 4 KiB together
    await SpanLogWriter(spans, metrics).write([*small[:5], _span(99, 7000), *small[5:]])
    records = await spans.consumer("writer").read(100)
    assert len(records) > 1
    kept = [span for record in records for span in decode_spans(record.payload)]
    assert [span.span_id for span in kept] == list(range(1, 13))
    assert metrics.spans_dropped.labels(SPAN_LOG_LABEL)._value.get() == 1
    await spans.close()


async def test_a_source_that_waits_for_room_gets_a_batch_too_large_for_one_record_kept_in_parts(
    tmp_path: Path,
) -> None:
    observations = LocalLog(tmp_path, name="observations", max_bytes=16384)  # records of at most 12 KiB
    await observations.open()
    intake = DurableIntake(observations)
    batch = [observation(POD, 100 + i, f"v{i}") for i in range(60)]  # about 25 KiB
    with pytest.raises(TooLarge):  # answered at once (the webhook): all of it or none
        await intake.submit(batch)
    await intake.submit(batch, wait=True)
    records = await observations.consumer("pipeline").read(100)
    assert len(records) > 1
    kept = [item for record in records for item in decode_observations(record.payload)]
    assert [item.title for item in kept] == [item.title for item in batch]
    await observations.close()


async def test_a_writer_skips_a_record_it_cannot_decode_and_counts_it(tmp_path: Path) -> None:
    """Retrying cannot mend a record, and a writer that stopped on one would never deliver again."""
    spans = LocalLog(tmp_path, name="spans", max_bytes=1 << 20)
    await spans.open()
    await spans.append([encode_spans([_span(1, 10)]), b"\xc1 not spans", encode_spans([_span(2, 10)])])
    metrics, writer = Metrics(), CollectingWriter()
    pump = Pump("collect", spans.consumer("collect"), decode_spans, _writing("collect", writer, metrics), metrics)
    delivering = asyncio.create_task(pump.run())
    while len(writer.spans) < 2:
        writer.written.clear()
        await asyncio.wait_for(writer.written.wait(), 10)
    assert [span.span_id for span in writer.spans] == [1, 2]
    assert metrics.spool_dropped.labels("collect", "undecodable")._value.get() == 1
    assert not delivering.done()
    spans.stop_reading()
    await delivering
    await spans.close()


async def test_a_writer_that_got_a_small_batch_takes_what_came_during_its_linger_in_one_write(tmp_path: Path) -> None:
    """A busy embedded store then commits many records' spans at once (durable._WRITER_LINGER_SECONDS) rather than
    each record's dozen in a commit of its own."""
    spans = LocalLog(tmp_path, name="spans", max_bytes=1 << 20)
    await spans.open()
    metrics, writer = Metrics(), CollectingWriter()
    deliver = _writing("collect", writer, metrics)
    pump = Pump("collect", spans.consumer("collect"), decode_spans, deliver, metrics, linger_seconds=2.0, full_items=10)
    delivering = asyncio.create_task(pump.run())
    await spans.append([encode_spans([_span(1, 10)])])
    await asyncio.wait_for(writer.written.wait(), 10)
    for span_id in range(2, 6):  # four records, appended one by one while the writer lingers
        await spans.append([encode_spans([_span(span_id, 10)])])
    while len(writer.spans) < 5:
        writer.written.clear()
        await asyncio.wait_for(writer.written.wait(), 10)
    assert writer.writes == [[1], [2, 3, 4, 5]]
    spans.stop_reading()
    await delivering
    await spans.close()


async def test_a_writer_reads_a_backlog_of_small_records_without_lingering(tmp_path: Path) -> None:
    """A read that filled its batch's records left more behind: the next read comes at once, however few spans the
    records held (a backlog after an outage drains at full speed). The linger here is longer than the test waits."""
    spans = LocalLog(tmp_path, name="spans", max_bytes=1 << 20)
    await spans.open()
    await spans.append([encode_spans([_span(span_id, 10)]) for span_id in range(1, 6)])
    metrics, writer = Metrics(), CollectingWriter()
    deliver = _writing("collect", writer, metrics)
    pump = Pump(
        "collect", spans.consumer("collect"), decode_spans, deliver, metrics, 2, linger_seconds=600.0, full_items=10
    )
    delivering = asyncio.create_task(pump.run())
    while len(writer.spans) < 5:
        writer.written.clear()
        await asyncio.wait_for(writer.written.wait(), 10)
    assert writer.writes == [[1, 2], [3, 4], [5]]
    spans.stop_reading()
    delivering.cancel()  # lingering after the last, short read
    await asyncio.gather(delivering, return_exceptions=True)
    await spans.close()


async def test_a_writer_is_given_at_most_its_most_spans_at_once_and_reads_big_records_fewer_at_a_time(
    tmp_path: Path,
) -> None:
    """A span log record holds every partition's spans written together, up to a few thousand: a store transaction
    and a read stay bounded by spans (durable._WRITER_MAX_SPANS), not by records."""
    spans = LocalLog(tmp_path, name="spans", max_bytes=1 << 20)
    await spans.open()
    await spans.append([encode_spans([_span(6 * record + i + 1, 10) for i in range(6)]) for record in range(5)])
    metrics, writer = Metrics(), CollectingWriter()
    deliver = _writing("collect", writer, metrics)
    pump = Pump(
        "collect",
        spans.consumer("collect"),
        decode_spans,
        deliver,
        metrics,
        linger_seconds=600.0,
        full_items=10,
        max_items=4,
    )
    delivering = asyncio.create_task(pump.run())
    while len(writer.spans) < 30:
        writer.written.clear()
        await asyncio.wait_for(writer.written.wait(), 10)
    # The first read takes 4 records (it knew no better): 24 spans in writes of 4. Records of 6 spans each are
    # then read one at a time.
    assert writer.writes == [list(range(start, min(start + 4, 25))) for start in range(1, 25, 4)] + [
        [25, 26, 27, 28],
        [29, 30],
    ]
    spans.stop_reading()
    delivering.cancel()
    await asyncio.gather(delivering, return_exceptions=True)
    await spans.close()


class DownWriter(CollectingWriter):
    """Refuses every write while ``down``, as a writer whose back end cannot be reached."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    async def write(self, spans: Sequence[Span]) -> None:
        await self.gate.wait()
        if self.down:
            raise ConnectionError("the back end is down")
        await super().write(spans)


async def test_writers_are_caught_up_once_they_wrote_everything_or_wait_for_their_back_end(tmp_path: Path) -> None:
    """What lets the App give freed memory back: not while a writer is still writing a burst's spans."""
    writer = DownWriter()
    writer.gate.clear()
    delivery = await start_delivery(tmp_path, writer, Metrics())
    (pump,) = delivery.pumps
    try:
        await delivery.intake.submit([observation(POD, 1_000, key) for key in "abc"])
        await until("the pipeline turned them into spans", lambda: delivery.spans.end > 0)
        assert delivery.pipeline.pending == 0
        assert not delivery.writers_caught_up(), "the writer holds them"

        writer.down = True
        writer.gate.set()
        await until("the writer found its back end down", lambda: pump.failing)
        assert delivery.writers_caught_up(), "its backlog waits on disk, not in memory"

        writer.down = False
        await until("the writer wrote everything", lambda: not pump.failing and pump.consumer.backlog()[0] == 0)
        assert delivery.writers_caught_up()
        assert sorted(span.name for span in writer.by_service("audit")) == ["admin a", "admin b", "admin c"]
    finally:
        await stop_delivery(delivery)


async def test_the_writer_alone_is_written_past_the_span_log_and_its_write_acknowledges_the_observations(
    tmp_path: Path,
) -> None:
    """The App's embedded store alone: no span in the span log, and an observation stays unacknowledged in its log
    (a restart would handle it again) until the writer has it, however long the writer fails."""
    writer = DownWriter()
    writer.gate.clear()
    metrics = Metrics()
    delivery = await start_delivery(tmp_path, writer, metrics, direct=True)
    try:
        await delivery.intake.submit([observation(POD, 1_000, key) for key in "abc"])
        await until("the pipeline has them", lambda: delivery.pipeline.pending == 3)
        assert unacknowledged(delivery) == 1, "not acknowledged while the writer holds them"

        writer.down = True
        writer.gate.set()
        await until("the write failed", lambda: delivery.failing_writers() == ["collect"])
        assert metrics.writer_failing.labels("collect")._value.get() == 1
        assert delivery.pipeline.pending == 3 and unacknowledged(delivery) == 1, "nor while it fails"
        assert not writer.spans

        writer.down = False
        await settle(delivery)
        assert unacknowledged(delivery) == 0
        assert delivery.failing_writers() == []
        assert metrics.writer_failing.labels("collect")._value.get() == 0
        assert sorted(span.name for span in writer.by_service("audit")) == ["admin a", "admin b", "admin c"]
        assert delivery.spans.end == 0, "nothing went through the span log"
    finally:
        await stop_delivery(delivery)


def unacknowledged(delivery: durable.Delivery) -> int:
    """Records of the observation log not acknowledged yet (its backlog counts the pipeline's observations too)."""
    records, _ = delivery.backlog()["pipeline"]
    return records - delivery.pipeline.pending


async def test_a_failed_write_is_counted_once_by_its_writer_and_not_again_by_the_delivery(tmp_path: Path) -> None:
    """The store and the OTLP exporter count their own failed attempts; the pump or the pipeline that retries one
    only says the writer is failing."""
    metrics = Metrics()
    writer = SelfCountingWriter(metrics)
    writer.down = True
    delivery = await start_delivery(tmp_path, writer, metrics)
    try:
        await delivery.intake.submit([observation(POD, 1_000, "a")])
        await until("the writer failed", lambda: delivery.failing_writers() == ["collect"])
        writer.down = False
        await settle(delivery)
        assert metrics.export_errors.labels("collect")._value.get() == writer.failures > 0
    finally:
        await stop_delivery(delivery)


class SelfCountingWriter(DownWriter):
    """Counts its failed attempts, as the real writers do."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics
        self.failures = 0

    async def write(self, spans: Sequence[Span]) -> None:
        try:
            await super().write(spans)
        except ConnectionError:
            self.failures += 1
            self.metrics.export_errors.labels("collect").inc()
            raise
