"""Embedded SQLite store: spans per CPU second with its indexes, query latency while the writer runs at full
speed, and bytes on disk per span against the span's own encoded size.

The spans are real: the recorded audit events of every fixture scenario turned into spans by the real pipeline
(object, audit and link spans), then copied under fresh trace ids, object names, audit IDs and resource versions
(each real request has its own) until ``--spans`` are written, in time order across the copies (``--order
time``: a cluster's batches add spans to many objects' traces at once, each trace filling over its window) or
copy by copy (``--order copies``: each trace's spans together, the friendlier order earlier rounds measured), in
batches of 256 (a pipeline partition's batch) from ``--writers`` concurrent writers, as the pipeline does.
The store is given the pipeline's Span objects, as the span log's writer pump hands them while a record is
still in memory (a record read back from disk after a restart is decoded first, which is not in this figure).
The CPU figure is from the first two thirds, written alone, to ``--rounds`` fresh stores: the median round (one
is about a CPU second, and this machine's speed moves by a fifth from one second to the next). The last store
goes on: during the last third one reader runs the frontend's queries (tag search by name, by verb, a whole
trace) back to back, for the latency figures. The
parse-only limit is msgspec decoding the same spans from MessagePack, what a durable span log hands a writer.

    python -m bench store [--spans 60000] [--writers 4] [--order time|copies] [--rounds 3] [--json]
"""

from __future__ import annotations

import asyncio
import dataclasses
import operator
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import orjson

from bench.common import (
    FIXTURES,
    SCENARIOS,
    arguments,
    dir_bytes,
    parse_limit,
    peak_rss_mib,
    percentile,
    ratio,
    report,
)
from kelemetry_py.metrics import Metrics
from kelemetry_py.model import Span
from kelemetry_py.process import run_event_loop, tune_garbage_collector
from kelemetry_py.spool.codec import span_row
from kelemetry_py.storage import TraceQuery

BATCH = 256
_START = operator.attrgetter("start_ns")


class _Capture:
    def __init__(self) -> None:
        self.spans: list[Span] = []

    async def write(self, spans: Sequence[Span]) -> None:
        self.spans.extend(spans)

    async def flush(self) -> None:
        return None

    async def close(self) -> None:
        return None


async def recorded_spans() -> list[Span]:
    """The spans the real pipeline makes of the recorded audit events (no store, no network)."""
    from kelemetry_py.config import AuditConfig, RedactionConfig
    from kelemetry_py.pipeline.core import Pipeline
    from kelemetry_py.pipeline.emission.memory import MemoryEmissionSet
    from kelemetry_py.sources.audit import AuditConverter, parse_event_list

    capture = _Capture()
    pipeline = Pipeline(writer=capture, emission=MemoryEmissionSet(), metrics=Metrics())
    await pipeline.start()
    converter = AuditConverter(AuditConfig(), RedactionConfig())
    for scenario in SCENARIOS:
        for line in (FIXTURES / scenario / "audit.jsonl").read_bytes().splitlines():
            await pipeline.submit(converter.convert("bench", parse_event_list(line)), wait=True)
    await pipeline.stop()
    return capture.spans


def copies(spans: list[Span], total: int) -> list[Span]:
    """``total`` spans: the recorded ones again and again, each copy under new trace ids and object names, and
    with the audit ID and resource version that each real request has afresh (repeating them would make the tag
    index see far fewer distinct values than a cluster sends)."""
    out: list[Span] = []
    copy_number = 0
    while len(out) < total:
        for span in spans:
            attributes = dict(span.attributes)
            if isinstance(attributes.get("name"), str):
                attributes["name"] = f"{attributes['name']}-{copy_number}"
            audit_id = attributes.get("auditID")
            if isinstance(audit_id, str) and copy_number:  # same length: the copy number in place of the first part
                attributes["auditID"] = f"{copy_number:08x}{audit_id[8:]}"
            version = attributes.get("resourceVersion")
            if isinstance(version, str) and version.isdigit():
                attributes["resourceVersion"] = str(int(version) + copy_number * 1_000_000)
            out.append(dataclasses.replace(span, trace_id=span.trace_id ^ (copy_number << 96), attributes=attributes))
            if len(out) == total:
                break
        copy_number += 1
    return out


async def _query_loop(
    store: Any, sample: list[Span], stop: asyncio.Event, latencies: list[float], count: int | None = None
) -> None:
    names = [str(span.attributes["name"]) for span in sample if "name" in span.attributes]
    everything = (0, 1 << 62)
    step = 0
    while not stop.is_set() and (count is None or step < count):
        span = sample[step % len(sample)]
        started = time.perf_counter()
        if step % 3 == 0:
            await store.find_traces(
                TraceQuery(tags={"name": names[step % len(names)]}, start_ns=everything[0], end_ns=everything[1])
            )
        elif step % 3 == 1:
            await store.find_traces(
                TraceQuery(
                    tags={"verb": "update", "resource": "pods"},
                    start_ns=everything[0],
                    end_ns=everything[1],
                    service="audit",
                )
            )
        else:
            await store.get_trace(span.trace_id)
        latencies.append((time.perf_counter() - started) * 1000)
        step += 1
        await asyncio.sleep(0)


async def _write_all(store: Any, batches: list[list[Span]], writers: int) -> None:
    queue: asyncio.Queue[list[Span]] = asyncio.Queue()
    for batch in batches:
        queue.put_nowait(batch)

    async def writer() -> None:
        while not queue.empty():
            await store.write(queue.get_nowait())

    await asyncio.gather(*(writer() for _ in range(writers)))
    await store.flush()


async def run(total: int, writers: int, order: str = "time", rounds: int = 3) -> dict[str, Any]:
    from kelemetry_py.storage.sqlite import SqliteStore

    spans = copies(await recorded_spans(), total)
    if order == "time":
        spans.sort(key=_START)  # stable: a copy's spans of one moment stay in the pipeline's order
    tune_garbage_collector()  # as the App does at start: this part runs inside it
    batches = [spans[i : i + BATCH] for i in range(0, len(spans), BATCH)]
    encoder = msgspec.msgpack.Encoder()
    encoded_batches = [encoder.encode([span_row(span) for span in batch]) for batch in batches]
    encoded_bytes = sum(len(encoder.encode(span_row(span))) for span in spans)
    json_bytes = sum(len(orjson.dumps(span_row(span)[1:])) + 34 for span in spans)  # + the trace id in hex
    limit = parse_limit(encoded_batches, len, msgspec.msgpack.Decoder().decode)

    split = len(batches) * 2 // 3
    written = sum(len(batch) for batch in batches[:split])
    cpu_seconds: list[float] = []
    walls: list[float] = []
    latencies: list[float] = []
    idle: list[float] = []
    for number in range(rounds):
        with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
            store = await SqliteStore(str(Path(tmp) / "traces.db"), metrics=Metrics(), active_trace_seconds=3600).open()
            try:
                cpu_before, wall_before = time.process_time(), time.perf_counter()
                await _write_all(store, batches[:split], writers)
                cpu_seconds.append(time.process_time() - cpu_before)
                walls.append(time.perf_counter() - wall_before)
                if number < rounds - 1:
                    continue
                # The last store goes on: the rest of the spans while a reader queries.
                limit = (limit + parse_limit(encoded_batches, len, msgspec.msgpack.Decoder().decode)) / 2
                stop = asyncio.Event()
                sample = spans[: len(spans) // 2]
                reader = asyncio.create_task(_query_loop(store, sample, stop, latencies))
                busy_before = time.perf_counter()
                await _write_all(store, batches[split:], writers)
                busy_wall = time.perf_counter() - busy_before
                stop.set()
                await reader
                await _query_loop(store, sample, asyncio.Event(), idle, count=300)
            finally:
                await store.close()
            disk = dir_bytes(tmp)
    cpu = statistics.median(cpu_seconds)
    wall = statistics.median(walls)
    per_cpu = written / cpu
    return {
        "bench": "store",
        "spans": total,
        "writers": writers,
        "order": order,
        "spans_per_cpu_second": round(per_cpu),
        "spans_per_cpu_second_rounds": [round(written / seconds) for seconds in cpu_seconds],
        "spans_per_second": round(written / wall),
        "spans_per_second_while_queried": round((total - written) / busy_wall),
        "parse_limit_spans_per_cpu_second": round(limit),
        "ratio": ratio(per_cpu, limit),
        "query_p50_ms": round(statistics.median(latencies), 2),
        "query_p99_ms": round(percentile(latencies, 0.99), 2),
        "queries_while_writing": len(latencies),
        "idle_query_p99_ms": round(percentile(idle, 0.99), 2),
        "bytes_per_span": round(disk / total),
        "encoded_bytes_per_span": round(encoded_bytes / total),
        "json_bytes_per_span": round(json_bytes / total),
        "disk_ratio": ratio(disk, encoded_bytes),
        "peak_rss_mib": round(peak_rss_mib()),
        "note": "encoded = the span as MessagePack (msgspec); CPU includes the store's own threads",
    }


def main(argv: list[str]) -> int:
    parser = arguments("store", __doc__)
    parser.add_argument("--spans", type=int, default=60_000)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--order", choices=("time", "copies"), default="time", help="the order spans are written in")
    parser.add_argument(
        "--rounds", type=int, default=3, help="fresh stores the first two thirds are written to; the median counts"
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        raise SystemExit("--rounds: at least 1")
    result = run_event_loop(run(args.spans, args.writers, args.order, args.rounds))
    report(result, args.json)
    return 0
