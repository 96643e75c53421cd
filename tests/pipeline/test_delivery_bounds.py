"""The pipeline holds a bounded number of bytes ahead of its spans; the rest of a backlog waits in the log."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path

import pytest

import kelemetry_py.pipeline.durable as durable
from kelemetry_py.metrics import Metrics
from kelemetry_py.model import Observation
from kelemetry_py.pipeline.core import Pipeline
from kelemetry_py.pipeline.durable import Delivery, SpanLogWriter
from kelemetry_py.pipeline.emission.memory import MemoryEmissionSet
from kelemetry_py.spool.local import LocalLog
from tests.pipeline.test_pipeline import POD, observation
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
    spans = LocalLog(tmp_path / "spans", name="spans", max_bytes=1 << 24)
    hold = HoldEverything()
    pipeline = Pipeline(
        writer=SpanLogWriter(spans), emission=MemoryEmissionSet(), metrics=Metrics(), hooks=[hold]
    )
    writer = CollectingWriter()
    delivery = Delivery(
        observations=LocalLog(tmp_path / "observations", name="observations", max_bytes=1 << 24),
        spans=spans,
        pipeline=pipeline,
        writers={"collect": writer},
        metrics=Metrics(),
    )
    await pipeline.start()
    await delivery.start()
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
    await delivery.stop()
    await pipeline.stop()
    assert sorted(str(s.attributes["verb"]) for s in writer.by_service("audit")) == sorted(
        f"r{record}-{i}" for record in range(20) for i in range(3)
    )
