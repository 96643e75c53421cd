"""Memory per watched object in the watch engine's bookkeeping, with 100,000 synthetic objects.

Each object is fed to a :class:`ResourceWatch` as a watch line (ADDED), exactly as from the apiserver, with a
handler that keeps nothing; tracemalloc measures what the engine retains afterwards (the uid set and the
per-resource state), divided by the number of objects. Run: ``python -m bench watch [--objects N] [--json]``.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
import uuid
from typing import Any

import orjson
from kubernetes_asyncio.client import ApiClient, Configuration

from bench.common import arguments, report
from kelemetry_py.kube.client import KubeClient
from kelemetry_py.kube.watch import ResourceType, ResourceWatch
from kelemetry_py.metrics import Metrics
from kelemetry_py.process import run_event_loop

PODS = ResourceType("", "v1", "pods", "Pod", True)


class DiscardingHandler:
    async def on_event(
        self, cluster: str, rtype: ResourceType, event_type: str, obj: dict[str, Any], *, relisted: bool
    ) -> None:
        return None

    async def on_relist_done(self, cluster: str, rtype: ResourceType, present_uids: set[str]) -> None:
        return None


def pod_line(i: int) -> bytes:
    pod = {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": f"pod-{i}",
            "namespace": f"ns-{i % 100}",
            "uid": str(uuid.UUID(int=i + 1)),
            "resourceVersion": str(1000 + i),
            "labels": {"app": f"app-{i % 50}"},
        },
        "spec": {"nodeName": "node-1", "containers": [{"name": "main", "image": "nginx:1.25"}]},
        "status": {"phase": "Running"},
    }
    return orjson.dumps({"type": "ADDED", "object": pod})


async def run(count: int) -> dict[str, Any]:
    client = KubeClient("bench", ApiClient(Configuration()))
    engine = ResourceWatch(client, PODS, DiscardingHandler(), Metrics())
    lines = [pod_line(i) for i in range(count)]
    gc.collect()
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    started = time.perf_counter()
    for line in lines:
        await engine._handle_line(line)
    elapsed = time.perf_counter() - started
    gc.collect()
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(engine.uids) == count
    await client.close()
    return {
        "bench": "watch",
        "objects": count,
        "bytes_per_object": round((after - before) / count, 1),
        "events_per_second_under_tracemalloc": round(count / elapsed),
    }


def main(argv: list[str]) -> int:
    parser = arguments("watch", __doc__)
    parser.add_argument("--objects", type=int, default=100_000)
    args = parser.parse_args(argv)
    result = run_event_loop(run(args.objects))
    report(result, args.json)
    return 0
