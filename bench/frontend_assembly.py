"""Frontend benchmark: assemble a Deployment with 50 descendants over 2 hours of data from the embedded store.

Run from the repo root: python -m bench.frontend_assembly [--runs N]. Prints per-assembly milliseconds
(p50, p99) for ``tracing [full tree]`` from the Deployment, and from a Pod in ``tracing [ancestors]``.
DESIGN §7 target: < 300 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import tempfile
import time
from pathlib import Path

from kelemetry_py.config import FrontendConfig
from kelemetry_py.frontend.modes import mode_by_name
from kelemetry_py.frontend.service import FrontendService, ViewQuery
from kelemetry_py.frontend.tracecache.memory import MemoryTraceCache
from kelemetry_py.storage.sqlite import SqliteStore
from tests.frontend.rawdata import SECOND, T0, WINDOW_NS, RawWriter, deployment, pod, replicaset

REPLICASETS = 5
PODS_PER_REPLICASET = 9  # 5 + 45 = 50 descendants
HOURS = 2


def build_story() -> RawWriter:
    raw = RawWriter()
    web = deployment("bench")
    windows = HOURS * 3600 * SECOND // WINDOW_NS
    for window in range(windows):
        base = T0 + window * WINDOW_NS
        for step in range(10):
            raw.audit(
                web, base + step * 60 * SECOND, "admin", "patch", diff=[f"spec.replicas {step} -> {step + 1}"]
            )
        for r in range(REPLICASETS):
            rs = replicaset(f"bench-{r}")
            raw.link(web, rs, base + (r + 1) * SECOND)
            raw.audit(
                rs,
                base + (r + 2) * SECOND,
                "system:serviceaccount:kube-system:deployment-controller",
                "update",
            )
            for p in range(PODS_PER_REPLICASET):
                pd = pod(f"bench-{r}-{p}")
                at = base + (100 + r * 10 + p) * SECOND
                raw.link(rs, pd, at)
                raw.audit(pd, at, "system:node:node-1", "patch", subresource="status")
                raw.event(pd, at + SECOND, "Pulled", "Container image already present on machine")
                raw.field_diff(pd, at + 2 * SECOND, "kubelet", ['status.phase "Pending" -> "Running"'])
    return raw


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def measure(service: FrontendService, mode: str, tags: dict[str, str], runs: int) -> list[float]:
    query = ViewQuery(mode=mode_by_name(mode), start_ns=T0, end_ns=T0 + HOURS * 3600 * SECOND, tags=tags)
    (view,) = await service.search(query)  # warm-up, and a check that the whole tree is there
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        (view,) = await service.search(query)
        samples.append((time.perf_counter() - started) * 1000)
    print(
        f"{mode:<22} {len(view.spans):>3} object spans  "
        f"p50 {statistics.median(samples):7.1f} ms  p99 {percentile(samples, 0.99):7.1f} ms  ({runs} runs)"
    )
    return samples


async def main(runs: int) -> None:
    raw = build_story()
    with tempfile.TemporaryDirectory() as tmp:
        store = await SqliteStore(str(Path(tmp) / "bench.db")).open()
        try:
            await store.write(raw.spans)
            await store.flush()
            print(
                f"{len(raw.spans)} raw spans, {REPLICASETS * (PODS_PER_REPLICASET + 1)} descendants, {HOURS}h"
            )
            service = FrontendService(store, MemoryTraceCache(600), FrontendConfig())
            full = await measure(
                service, "tracing [full tree]", {"resource": "deployments", "name": "bench"}, runs
            )
            assert (
                len(
                    (
                        await service.search(
                            ViewQuery(
                                mode=mode_by_name("tracing [full tree]"),
                                start_ns=T0,
                                end_ns=T0 + HOURS * 3600 * SECOND,
                                tags={"resource": "deployments", "name": "bench"},
                            )
                        )
                    )[0].spans
                )
                == 51
            )
            await measure(service, "tracing [ancestors]", {"resource": "pods", "name": "bench-3-4"}, runs)
            print(f"target < 300 ms: {'met' if percentile(full, 0.99) < 300 else 'MISSED'} (full tree p99)")
            print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
        finally:
            await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=50)
    asyncio.run(main(parser.parse_args().runs))
