"""Audit webhook end to end through the real App: recorded audit events, re-batched into 400-event EventLists (the
apiserver's default batch), POSTed at full speed to ``/audit/bench`` until every span is written.

The default configuration (embedded store and frontend on, everything else as shipped, the built-in plugins
only) runs in a fresh directory, so relative default paths (store, spool) land there. The client runs in a
process of its own, as the apiserver does: the CPU figure is the tracer's alone (every thread of this process),
and the client's work never queues on the tracer's event loop. ``--otlp-only`` turns store and frontend off
and exports over OTLP/gRPC to a receiver in a third process instead. The parse-only limit is orjson parsing the same
batch bodies in the same process.

Then, on the same App, open-loop phases (each batch sent on schedule whether or not the last was answered): 50
batches at 10 per second, an apiserver's default pace (``paced_*``), and 6 seconds at 80 % of the batches per second
the saturating run sustained end to end (``load_*``), the latency near capacity. ``rss_after_load_mib`` is taken
after every phase is delivered and the App has been idle for a few seconds.

    python -m bench webhook [--events 240000] [--concurrency 4] [--otlp-only] [--moving-clock] [--json]
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import statistics
import tempfile
import time
from collections.abc import Iterator
from datetime import date, timedelta
from multiprocessing.connection import Connection
from typing import Any

import aiohttp
import orjson

from bench.common import (
    FIXTURES,
    SCENARIOS,
    arguments,
    cpu_seconds_of,
    dir_bytes,
    other_installed_plugins,
    parse_limit,
    peak_rss_mib,
    peak_rss_mib_of,
    percentile,
    ratio,
    report,
)
from kelemetry_py.process import resident_bytes, resident_memory_mib, run_event_loop, usable_cpus

BATCH = 400
_RECORDED_DAY = date(2026, 11, 21)  # every recorded audit event's, and every timestamp in its objects
_RECORDED_DATE = f'"{_RECORDED_DAY.isoformat()}T'.encode()
_IDLE_SECONDS = 5.0  # after the last phase, before the RSS "after the load": an idle replica's first seconds


class Batches:
    """Every recorded audit event in 400-event EventLists, repeated until ``target_events``; each round's audit
    IDs are made unique when its bodies are sent (so every round is new work, not a re-delivery), which keeps
    only one round in memory and the peak RSS the server's."""

    def __init__(self, target_events: int) -> None:
        events: list[Any] = []
        for scenario in SCENARIOS:
            for line in (FIXTURES / scenario / "audit.jsonl").read_bytes().splitlines():
                events.extend(orjson.loads(line)["items"])
        self.templates: list[tuple[bytes, int]] = []
        for start in range(0, len(events), BATCH):
            chunk = events[start : start + BATCH]
            body = orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": chunk})
            self.templates.append((body, len(chunk)))
        per_round = len(events)
        self.rounds = max(1, -(-target_events // per_round))
        self.events = self.rounds * per_round
        self.count = self.rounds * len(self.templates)

    def bodies(self, tag: str = "r", first_day: int | None = None) -> Iterator[bytes]:
        """Each round under new audit IDs; with ``first_day``, round ``n`` also moved ``first_day + n`` days on
        from the recording (every timestamp in it, objects' included), as a cluster's time moves on: each round
        then fills new windows' traces instead of adding to the same ones."""
        for round_number in range(self.rounds):
            prefix = f'"auditID":"{tag}{round_number}-'.encode()
            moved = None if first_day is None else _RECORDED_DAY + timedelta(days=first_day + round_number)
            for body, _ in self.templates:
                body = body.replace(b'"auditID":"', prefix)
                if moved is not None:
                    body = body.replace(_RECORDED_DATE, f'"{moved.isoformat()}T'.encode())
                yield body


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Receiver:
    """An OTLP/gRPC collector that decodes every request (as a collector must) and counts spans."""

    def __init__(self, port: int) -> None:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

        self.spans = 0
        self.changed = asyncio.Event()
        receiver = self

        class Servicer(trace_service_pb2_grpc.TraceServiceServicer):
            async def Export(self, request: Any, context: Any) -> Any:
                receiver.spans += sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
                receiver.changed.set()
                return trace_service_pb2.ExportTraceServiceResponse()

        import grpc

        self.server = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Servicer(), self.server)  # type: ignore[no-untyped-call]
        self.server.add_insecure_port(f"127.0.0.1:{port}")

    async def wait_for(self, spans: int) -> None:
        while self.spans < spans:
            self.changed.clear()
            await self.changed.wait()


def _receiver_process(port: int, conn: Connection) -> None:
    """The OTLP back end's part, in its own process (as Tempo or Jaeger would be): answers each span count it is
    sent once it has received that many spans."""

    async def serve() -> None:
        receiver = _Receiver(port)
        await receiver.server.start()
        conn.send("ready")
        loop = asyncio.get_running_loop()
        while (spans := await loop.run_in_executor(None, conn.recv)) is not None:
            await receiver.wait_for(spans)
            conn.send(receiver.spans)
        await receiver.server.stop(None)

    asyncio.run(serve())
    conn.close()


def _client_process(url: str, target_events: int, concurrency: int, moving_clock: bool, conn: Connection) -> None:
    """The apiserver's part, in its own process: builds the bodies, says it is ready, posts them all when told to
    and sends back the latencies, the count of 429s and the CPU it spent sending."""
    batches = Batches(target_events)
    conn.send("ready")
    conn.recv()
    cpu_before = time.process_time()
    day = 0 if moving_clock else None
    latencies, throttled = asyncio.run(_post_all(url, batches.bodies(first_day=day), concurrency))
    conn.send((latencies, throttled, time.process_time() - cpu_before))
    while (phase := conn.recv()) is not None:
        tag, rate, count = phase
        day = None if day is None else day + batches.rounds
        phase_batches = Batches(count * BATCH)
        conn.send(asyncio.run(_post_paced(url, phase_batches.bodies(tag, day), rate, count)))
        batches = phase_batches
    conn.close()


async def _post_paced(url: str, bodies: Iterator[bytes], rate: float, count: int) -> tuple[list[float], int]:
    """``count`` batches at ``rate`` per second, each sent on schedule whether or not the last was answered (an
    apiserver's throttled batch sender): the latency of each, from its first send to its 200 (a 429 is sent again
    after its Retry-After, as the apiserver does), and how many 429s there were."""
    async with aiohttp.ClientSession() as session:
        start = time.perf_counter()
        sending = []
        for index, body in zip(range(count), bodies, strict=False):
            await asyncio.sleep(max(0.0, start + index / rate - time.perf_counter()))
            sending.append(asyncio.create_task(_deliver(session, url, body)))
        answers = await asyncio.gather(*sending)
    return [seconds for seconds, _ in answers], sum(throttled for _, throttled in answers)


async def _deliver(session: aiohttp.ClientSession, url: str, body: bytes) -> tuple[float, int]:
    started = time.perf_counter()
    throttled = 0
    while (answer := await _post(session, url, body))[0] is None:
        throttled += 1
        await asyncio.sleep(answer[1])
    return time.perf_counter() - started, throttled


async def _post(session: aiohttp.ClientSession, url: str, body: bytes) -> tuple[float | None, float]:
    """(seconds to the 200, or None for a 429; the Retry-After of a 429); any other answer is an error."""
    started = time.perf_counter()
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
        await resp.read()
    if resp.status == 429:
        return None, float(resp.headers.get("Retry-After", "1"))
    if resp.status != 200:
        raise RuntimeError(f"webhook answered {resp.status}")
    return time.perf_counter() - started, 0.0


async def _post_all(url: str, bodies: Iterator[bytes], concurrency: int) -> tuple[list[float], int]:
    latencies: list[float] = []
    throttled = 0

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal throttled
        while (body := next(bodies, None)) is not None:
            while (answer := await _post(session, url, body))[0] is None:
                throttled += 1
                await asyncio.sleep(answer[1])
            latencies.append(answer[0])

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return latencies, throttled


async def _answer(conn: Connection, who: str) -> Any:
    """The next message from a child process; an error, not a hang, when it died (its traceback is above)."""
    try:
        return await asyncio.get_running_loop().run_in_executor(None, conn.recv)
    except EOFError:
        raise RuntimeError(f"the benchmark's {who} process exited before answering") from None


async def run(
    target_events: int,
    concurrency: int,
    otlp_only: bool,
    paced_rate: float = 10.0,
    paced_batches: int = 0,
    load_fraction: float = 0.0,
    load_seconds: float = 6.0,
    settings: dict[str, str] | None = None,
    moving_clock: bool = False,
) -> dict[str, Any]:
    from kelemetry_py.app import App
    from kelemetry_py.config import ENV_PREFIX, load_config

    batches = Batches(target_events)
    templates = [body for body, _ in batches.templates]
    limit = parse_limit(templates, lambda parsed: len(parsed["items"]), orjson.loads)
    overrides: dict[str, Any] = {
        "http.host": "127.0.0.1",
        "http.port": 0,
        "log_level": "warning",
        "plugins.disabled": other_installed_plugins(),  # as installed: the built-in linkers only
    }
    # Settings go in as the environment would give them (KELEMETRY_SPOOL__MEMORY_BYTES=...), converted the same way.
    env = {ENV_PREFIX + key.upper().replace(".", "__"): value for key, value in (settings or {}).items()}
    spawn = multiprocessing.get_context("spawn")
    receiver: Connection | None = None
    receiver_process = None
    if otlp_only:
        receiver, their_end = spawn.Pipe()
        port = _free_port()
        receiver_process = spawn.Process(target=_receiver_process, args=(port, their_end))
        receiver_process.start()
        their_end.close()  # the child's alone now, so that its death reads as EOF here instead of a hang
        await _answer(receiver, "OTLP receiver")
        overrides |= {
            "otlp.endpoint": f"grpc://127.0.0.1:{port}",
            "otlp.compression": "none",
            "store.enabled": False,
            "frontend.enabled": False,
        }
    here = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="bench-webhook-") as tmp:
        os.chdir(tmp)  # the default configuration's relative paths (./kelemetry-data/...) land here
        try:
            app = App(load_config(env=env, overrides=overrides))
            await app.start()
            # The processes doing the webhook's work beside this one: decoding workers or the ingest process.
            workers: list[int] = []
            if app.ingest_process is not None:
                if app.ingest_process.pid is None:
                    # The webhook would be served by this process instead: figures of another configuration.
                    raise RuntimeError("the ingest process did not start")
                workers = [app.ingest_process.pid]
            elif app.decoder is not None:
                await app.decoder.started()  # the steady state: decoding workers up, as a second after any start
                workers = app.decoder.worker_pids
            ingest_process = app.ingest_process is not None
            ours, theirs = spawn.Pipe()
            client = spawn.Process(
                target=_client_process,
                args=(f"{app.ingest_url}/audit/bench", target_events, concurrency, moving_clock, theirs),
            )
            client.start()
            theirs.close()
            try:
                await _answer(ours, "client")  # the client has its bodies
                started_rss = resident_memory_mib()
                serving_before, workers_before = time.process_time(), cpu_seconds_of(workers)
                wall_before = time.perf_counter()
                ours.send("go")
                latencies, throttled, client_cpu = await _answer(ours, "client")
                components = app.components
                assert components is not None
                await app.settle()
                if receiver is not None:
                    from kelemetry_py.export.otlp import WRITER_LABEL

                    receiver.send(int(components.metrics.spans_exported.labels(WRITER_LABEL)._value.get()))
                    await _answer(receiver, "OTLP receiver")
                wall = time.perf_counter() - wall_before
                serving_cpu = time.process_time() - serving_before
                if app.ingest_process is not None and app.ingest_process.pid not in workers:
                    raise RuntimeError("the ingest process was replaced during the run: its CPU was not all counted")
                workers_cpu = cpu_seconds_of(workers) - workers_before
                cpu = serving_cpu + workers_cpu
                appends = {
                    part: components.metrics.registry.get_sample_value(
                        f"kelemetry_spool_append_duration_seconds_{part}", {"log": "observations"}
                    )
                    or 0.0
                    for part in ("sum", "count")
                }
                store_bytes = dir_bytes(tmp)
                paced: tuple[list[float], int] = ([], 0)
                if paced_batches:
                    ours.send(("paced", paced_rate, paced_batches))
                    paced = await _answer(ours, "client")
                    await app.settle()
                loaded: tuple[list[float], int] = ([], 0)
                load_rate = load_fraction * (batches.count / wall)  # of the batches per second just sustained
                if load_fraction:
                    ours.send(("load", load_rate, max(1, round(load_rate * load_seconds))))
                    loaded = await _answer(ours, "client")
                    await app.settle()
                ours.send(None)
                await asyncio.sleep(_IDLE_SECONDS)
                settled_rss = resident_memory_mib()
                workers_settled_rss = sum(resident_bytes(pid) for pid in workers) / (1 << 20)
                workers_peak_rss = peak_rss_mib_of(workers)
            finally:
                client.join(timeout=10)
                if client.is_alive():
                    client.kill()
                await app.stop()
        finally:
            os.chdir(here)
    if receiver is not None and receiver_process is not None:
        receiver.send(None)
        receiver_process.join(timeout=10)
    # Measured again right after, and averaged: the machine's load drifts while a benchmark runs.
    limit = (limit + parse_limit(templates, lambda parsed: len(parsed["items"]), orjson.loads)) / 2
    ms = [x * 1000 for x in latencies]
    total_events = batches.events
    per_cpu = total_events / cpu
    return {
        "bench": "webhook",
        "configuration": "otlp-only (store and frontend off)" if otlp_only else "default (embedded store, frontend)",
        **({"settings": settings} if settings else {}),
        "events": total_events,
        "batches": batches.count,
        "concurrency": concurrency,
        "moving_clock": moving_clock,
        "events_per_cpu_second": round(per_cpu),
        "events_per_second": round(total_events / wall),
        "cpu_ms_per_batch": round(cpu / batches.count * 1000, 1),
        "serving_cpu_ms_per_batch": round(serving_cpu / batches.count * 1000, 1),
        "workers_cpu_ms_per_batch": round(workers_cpu / batches.count * 1000, 1),  # ingest process or decoders
        "client_cpu_ms_per_batch": round(client_cpu / batches.count * 1000, 2),
        # The client does the same work per batch in every run, so this follows the tracer's cost, not the
        # machine's speed: steadier from run to run than the CPU figures, or the ratio with its separate limit.
        "cpu_per_client_cpu": round(cpu / client_cpu, 2) if client_cpu else None,
        # Little's law: with `concurrency` batches always in flight, and no more batches a second than the CPUs
        # can do the tracer's and the client's work for, the mean latency cannot be below this.
        "saturated_floor_ms": round(concurrency * (cpu + client_cpu) / batches.count * 1000 / usable_cpus(), 1),
        "p50_ms": round(statistics.median(ms), 1),
        "p99_ms": round(percentile(ms, 0.99), 1),
        # Of the latency, the mean wait for the observation log to keep a batch (its group commit included).
        "append_mean_ms": round(appends["sum"] / appends["count"] * 1000, 1) if appends["count"] else None,
        "throttled": throttled,
        "decode_processes": 0 if ingest_process else len(workers),
        "peak_rss_mib": round(peak_rss_mib() + workers_peak_rss),  # with the decoding workers' or ingest process's
        "workers_peak_rss_mib": round(workers_peak_rss),
        "rss_before_load_mib": round(started_rss),  # the batches to send and the started App
        "rss_after_load_mib": round(settled_rss),  # every phase delivered, then idle for _IDLE_SECONDS
        "workers_rss_after_load_mib": round(workers_settled_rss),
        "data_dir_bytes": store_bytes,
        "parse_limit_events_per_cpu_second": round(limit),
        "ratio": ratio(per_cpu, limit),
        "note": "CPU is the tracer's, all threads of the serving process and its decoding workers or ingest "
        "process; the client and the OTLP receiver run apart",
        **_open_loop_figures("paced", paced, paced_rate),
        **_open_loop_figures("load", loaded, load_rate),
    }


def _open_loop_figures(name: str, phase: tuple[list[float], int], rate: float) -> dict[str, Any]:
    """Latency of batches sent on schedule at ``rate`` per second, measured after the saturating run on the
    same App: ``paced`` at an apiserver's own pace, ``load`` at a fraction of the throughput just sustained."""
    latencies, throttled = phase
    if not latencies:
        return {}
    ms = [x * 1000 for x in latencies]
    return {
        f"{name}_batches_per_second": round(rate, 1),
        f"{name}_batches": len(ms),
        f"{name}_p50_ms": round(statistics.median(ms), 1),
        f"{name}_p99_ms": round(percentile(ms, 0.99), 1),
        f"{name}_throttled": throttled,  # 429s, each batch sent again after its Retry-After
    }


def parse_settings(pairs: list[str]) -> dict[str, str]:
    settings: dict[str, str] = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator:
            raise SystemExit(f"--set {pair}: expected KEY=VALUE")
        settings[key] = value
    return settings


def main(argv: list[str]) -> int:
    parser = arguments("webhook", __doc__)
    # 624 batches: the p99 is the sixth slowest. Of 156 (60,000 events) it was the second, and it moved between 1.65
    # and 2.06 times the floor from run to run (9 runs), against 1.87 to 1.98 here (5 runs).
    parser.add_argument("--events", type=int, default=240_000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--otlp-only", action="store_true", help="store and frontend off, export over OTLP/gRPC")
    parser.add_argument(
        "--paced-batches",
        type=int,
        default=50,
        help="then this many batches at --paced-rate, each on schedule, for the latency at an apiserver's pace",
    )
    parser.add_argument(
        "--paced-rate", type=float, default=10.0, help="batches per second (the apiserver's default throttle: 10)"
    )
    parser.add_argument(
        "--load-fraction",
        type=float,
        default=0.8,
        help="last, batches on schedule at this fraction of the batches per second the saturating run sustained "
        "(its end-to-end rate, every span written), for the latency near capacity; 0 skips it",
    )
    parser.add_argument("--load-seconds", type=float, default=6.0, help="how long the near-capacity phase lasts")
    parser.add_argument(
        "--moving-clock",
        action="store_true",
        help="each round of the recording a day after the last, as a cluster's time moves on (new traces each "
        "round); without it every round replays the recorded moments, adding to the same windows' traces",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting over the default configuration, as its environment variable would give it "
        "(e.g. spool.memory_bytes=4194304 for KELEMETRY_SPOOL__MEMORY_BYTES)",
    )
    args = parser.parse_args(argv)
    result = run_event_loop(
        run(
            args.events,
            args.concurrency,
            args.otlp_only,
            args.paced_rate,
            args.paced_batches,
            args.load_fraction,
            args.load_seconds,
            parse_settings(args.set),
            args.moving_clock,
        )
    )
    report(result, args.json)
    return 0
