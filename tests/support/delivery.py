"""The product's path from a source's sink to a span writer, for tests of the stages in front of it: the durable
intake, the observation and span logs in a directory, the pipeline, and one writer pump (or the writer alone)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from kelemetry_py.export import SpanWriter
from kelemetry_py.metrics import Metrics
from kelemetry_py.pipeline.core import Pipeline
from kelemetry_py.pipeline.durable import Delivery, DirectWriter, SpanLogWriter
from kelemetry_py.pipeline.emission.memory import MemoryEmissionSet
from kelemetry_py.spool.local import LocalLog


async def start_delivery(
    directory: Path,
    writer: SpanWriter,
    metrics: Metrics,
    *,
    spool_bytes: int = 1 << 30,
    direct: bool = False,
    **pipeline_options: Any,
) -> Delivery:
    """``direct``: the pipeline writes into the writer past the span log, as the App does with the store alone."""
    spans = LocalLog(directory / "spans", name="spans", max_bytes=spool_bytes)
    direct_writer = DirectWriter("collect", writer, metrics) if direct else None
    pipeline = Pipeline(
        writer=direct_writer or SpanLogWriter(spans),
        emission=MemoryEmissionSet(),
        metrics=metrics,
        **pipeline_options,
    )
    delivery = Delivery(
        observations=LocalLog(directory / "observations", name="observations", max_bytes=spool_bytes),
        spans=spans,
        pipeline=pipeline,
        writers={"collect": writer},
        metrics=metrics,
        direct=direct_writer,
    )
    await pipeline.start()
    await delivery.start()
    return delivery


async def settle(delivery: Delivery) -> None:
    """Until everything accepted is written: an error, not a hang, when it never is."""
    assert await delivery.drain(time.monotonic() + 60)


async def stop_delivery(delivery: Delivery) -> None:
    await delivery.stop()
    await delivery.pipeline.stop()
