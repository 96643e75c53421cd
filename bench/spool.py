"""The observation log under full load: append latency with ``spool.fsync: always`` while consumed segments are freed.

Each payload is what the ingest process hands the observation log for one recorded 400-event audit batch (the
webhook bench's batches, decoded and converted as the ingest process does). ``--appenders`` callers append them back
to back, as the webhook's handlers do, while one consumer reads and acknowledges them as the pipeline does; cursors
persist and consumed 64 MiB segments are freed on the log's own schedule, with the shipped settings.

Each run appends half of ``--megabytes`` to a fresh directory, four times in the order A B B A: as shipped (a
consumed segment is set aside and given back a few MiB at a time), and with each one unlinked at once
(``at_once_*``, what earlier versions did); each way's figures pool its two runs.
The parse-only limit is msgspec decoding the same payloads, the consumer's part of each record.

    python -m bench spool [--megabytes 400] [--appenders 4] [--json]
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import arguments, parse_limit, percentile, report
from bench.webhook import Batches
from kelemetry_py.config import AuditConfig, RedactionConfig
from kelemetry_py.process import run_event_loop
from kelemetry_py.sources.audit import AuditConverter
from kelemetry_py.sources.auditdecode.inline import decode_batch
from kelemetry_py.spool.codec import decode_observations
from kelemetry_py.spool.local import FREE_STEP_BYTES, LocalLog


def observation_payloads() -> list[bytes]:
    """The observation log's record of each recorded batch."""
    converter = AuditConverter(AuditConfig(), RedactionConfig(), records=False, whole_bodies=False)
    batches = Batches(1)
    return [payload for body, _ in batches.templates for payload in decode_batch(converter, "bench", body).payloads]


async def _phase(payloads: list[bytes], count: int, appenders: int, free_step_bytes: int) -> tuple[list[float], float]:
    """Each append's wait in milliseconds, and the wall seconds of all ``count`` appends."""
    waits: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-spool-") as tmp:
        log = LocalLog(
            Path(tmp) / "observations",
            name="observations",
            max_bytes=2 << 30,
            fsync="always",
            free_step_bytes=free_step_bytes,
        )
        await log.open()
        consumer = log.consumer("pipeline")
        source = itertools.islice(itertools.cycle(payloads), count)

        async def append() -> None:
            for payload in source:
                started = time.perf_counter()
                await log.append([payload])
                waits.append((time.perf_counter() - started) * 1000)

        async def consume() -> None:
            seen = 0
            while seen < count:
                records = await consumer.read(64)
                seen += len(records)
                await consumer.ack(records)

        started = time.perf_counter()
        reader = asyncio.create_task(consume())
        await asyncio.gather(*(append() for _ in range(appenders)))
        await reader
        wall = time.perf_counter() - started
        await log.close()
    return waits, wall


def _figures(prefix: str, waits: list[float], wall: float, written: int) -> dict[str, Any]:
    return {
        f"{prefix}append_p50_ms": round(statistics.median(waits), 2),
        f"{prefix}append_p99_ms": round(percentile(waits, 0.99), 2),
        f"{prefix}append_max_ms": round(max(waits), 2),
        f"{prefix}megabytes_per_second": round(written / wall / 1e6, 1),
    }


async def run(megabytes: int, appenders: int) -> dict[str, Any]:
    payloads = observation_payloads()
    average = sum(map(len, payloads)) // len(payloads)
    limit = parse_limit(payloads, lambda observations: 1, decode_observations)
    result: dict[str, Any] = {"bench": "spool", "megabytes": megabytes, "appenders": appenders}
    # Each way twice, in the order A B B A, so that a machine speeding up or slowing down favours neither.
    count = -(-megabytes * 500_000 // average)  # appends per run: half of --megabytes
    phases: dict[int, list[tuple[list[float], float]]] = {FREE_STEP_BYTES: [], 0: []}
    for free_step_bytes in (FREE_STEP_BYTES, 0, 0, FREE_STEP_BYTES):
        phases[free_step_bytes].append(await _phase(payloads, count, appenders, free_step_bytes))
    for prefix, free_step_bytes in (("", FREE_STEP_BYTES), ("at_once_", 0)):
        both = phases[free_step_bytes]
        waits = [wait for phase_waits, _ in both for wait in phase_waits]
        wall = sum(phase_wall for _, phase_wall in both)
        result.update(_figures(prefix, waits, wall, len(waits) * average))
    result["record_bytes"] = average
    result["parse_limit_records_per_cpu_second"] = round(limit)
    result["note"] = "one record per 400-event batch; latency is each append's wait for its group commit and fsync"
    return result


def main(argv: list[str]) -> int:
    parser = arguments("spool", __doc__)
    parser.add_argument("--megabytes", type=int, default=400, help="appended per run (400)")
    parser.add_argument("--appenders", type=int, default=4, help="concurrent appenders (4)")
    args = parser.parse_args(argv)
    report(run_event_loop(run(args.megabytes, args.appenders)), args.json)
    return 0
