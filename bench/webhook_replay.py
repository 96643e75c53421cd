"""Webhook → pipeline → OTLP benchmark.

Replays the recorded audit events of all fixture scenarios, re-batched into 400-event EventLists (the apiserver's
default batch size), at full speed through the real HTTP webhook of a running App, whose OTLP writer exports over
gRPC to a receiver in this process. Prints events/s (wall and per CPU second), webhook latency percentiles and
peak RSS.

    python bench/webhook_replay.py [--events 100000] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import grpc
import orjson
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kelemetry_py.app import App  # noqa: E402
from kelemetry_py.config import load_config  # noqa: E402
from kelemetry_py.export.otlp import WRITER_LABEL as OTLP_WRITER  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
SCENARIOS = ("deployment-lifecycle", "errors-and-links", "batch-and-stateful")
BATCH = 400


class CountingReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Decodes every export request (as a collector must) and counts the spans."""

    def __init__(self) -> None:
        self.spans = 0
        self.changed = asyncio.Event()

    async def Export(self, request, context):  # type: ignore[no-untyped-def]
        self.spans += sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        self.changed.set()
        return trace_service_pb2.ExportTraceServiceResponse()


def build_batches(target_events: int) -> tuple[list[bytes], int]:
    events = []
    for scenario in SCENARIOS:
        for line in (FIXTURES / scenario / "audit.jsonl").read_bytes().splitlines():
            events.extend(orjson.loads(line)["items"])
    bodies: list[bytes] = []
    total = 0
    round_number = 0
    while total < target_events:
        for start in range(0, len(events), BATCH):
            chunk = events[start : start + BATCH]
            body = orjson.dumps(
                {"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": chunk}
            )
            # Unique audit IDs per round, so every round is new work rather than a re-delivery.
            bodies.append(body.replace(b'"auditID":"', f'"auditID":"r{round_number}-'.encode()))
            total += len(chunk)
        round_number += 1
    return bodies, total


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def main(target_events: int, concurrency: int) -> None:
    bodies, total_events = build_batches(target_events)
    receiver = CountingReceiver()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port(f"127.0.0.1:{free_port()}")
    await server.start()

    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(
            env={},
            overrides={
                "http.host": "127.0.0.1",
                "http.port": 0,
                "otlp.endpoint": f"grpc://127.0.0.1:{port}",
                "otlp.compression": "none",
                "store.enabled": False,
                "frontend.enabled": False,
                "store.path": f"{tmp}/unused.db",
                "log_level": "warning",
            },
        )
        app = App(config)
        await app.start()
        url = f"{app.base_url}/audit/bench"
        latencies: list[float] = []
        throttled = 0
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        for body in bodies:
            queue.put_nowait(body)
        for _ in range(concurrency):
            queue.put_nowait(None)

        async def client(session: aiohttp.ClientSession) -> None:
            nonlocal throttled
            while (body := await queue.get()) is not None:
                while True:
                    started = time.perf_counter()
                    async with session.post(
                        url, data=body, headers={"Content-Type": "application/json"}
                    ) as resp:
                        await resp.read()
                    if resp.status == 429:
                        throttled += 1
                        await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))
                        continue
                    assert resp.status == 200, resp.status
                    latencies.append(time.perf_counter() - started)
                    break

        cpu_before = time.process_time()
        wall_before = time.perf_counter()
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(client(session) for _ in range(concurrency)))
        accepted_wall = time.perf_counter() - wall_before
        assert app.components is not None
        await app.settle()
        written = int(app.components.metrics.spans_exported.labels(OTLP_WRITER)._value.get())
        while receiver.spans < written:
            receiver.changed.clear()
            await receiver.changed.wait()
        wall = time.perf_counter() - wall_before
        cpu = time.process_time() - cpu_before
        await app.stop()
    await server.stop(None)

    latencies.sort()
    ms = [x * 1000 for x in latencies]
    print(
        f"events replayed       {total_events} in {len(bodies)} batches of up to {BATCH} (concurrency {concurrency})"
    )
    print(f"spans exported        {receiver.spans} (received over OTLP/gRPC)")
    print(
        f"throughput (wall)     {total_events / wall:,.0f} audit events/s end to end; "
        f"{total_events / accepted_wall:,.0f} events/s accepted by the webhook"
    )
    print(
        f"throughput (per core) {total_events / cpu:,.0f} audit events per CPU-second "
        f"(process CPU {cpu:.2f}s, includes the in-process receiver and client)"
    )
    print(
        f"webhook latency       p50 {statistics.median(ms):.1f} ms  p99 {ms[int(len(ms) * 0.99) - 1]:.1f} ms  "
        f"max {ms[-1]:.1f} ms per batch"
    )
    print(f"throttled (429)       {throttled}")
    print(f"peak RSS              {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    asyncio.run(main(args.events, args.concurrency))
