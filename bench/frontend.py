"""Frontend assembly from the embedded store: a Deployment's ``tracing [full tree]`` over 2 hours, with 50
descendants (5 ReplicaSets of 9 Pods) and with 300 (12 of 24), plus a Pod's ``tracing [ancestors]``.

Every assembly is a search through the real FrontendService over a real SQLite file; each run misses the trace
cache (a search assembles afresh). The parse-only limit is orjson parsing the JSON of the same raw spans the
view is built from, the least any reader of a remote backend (Tempo, Jaeger) must do.

    python -m bench frontend [--runs 50] [--json]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench.common import arguments, peak_rss_mib, percentile, report
from kelemetry_py.config import FrontendConfig
from kelemetry_py.frontend.modes import mode_by_name
from kelemetry_py.frontend.service import FrontendService, ViewQuery
from kelemetry_py.frontend.tracecache.memory import MemoryTraceCache
from kelemetry_py.model import Span
from kelemetry_py.process import run_event_loop, tune_garbage_collector
from kelemetry_py.spool.codec import span_row
from kelemetry_py.storage.sqlite import SqliteStore
from tests.frontend.rawdata import SECOND, T0, WINDOW_NS, RawWriter, deployment, pod, replicaset

HOURS = 2
END = T0 + HOURS * 3600 * SECOND


def build_story(name: str, replicasets: int, pods_per_replicaset: int) -> RawWriter:
    raw = RawWriter()
    top = deployment(name)
    for window in range(HOURS * 3600 * SECOND // WINDOW_NS):
        base = T0 + window * WINDOW_NS
        for step in range(10):
            raw.audit(top, base + step * 60 * SECOND, "admin", "patch", diff=[f"spec.replicas {step} -> {step + 1}"])
        for r in range(replicasets):
            rs = replicaset(f"{name}-{r}")
            raw.link(top, rs, base + (r + 1) * SECOND)
            raw.audit(rs, base + (r + 2) * SECOND, "system:serviceaccount:kube-system:deployment-controller", "update")
            for p in range(pods_per_replicaset):
                pd = pod(f"{name}-{r}-{p}")
                at = base + (100 + r * 10 + p) * SECOND
                raw.link(rs, pd, at)
                raw.audit(pd, at, "system:node:node-1", "patch", subresource="status")
                raw.event(pd, at + SECOND, "Pulled", "Container image already present on machine")
                raw.field_diff(pd, at + 2 * SECOND, "kubelet", ['status.phase "Pending" -> "Running"'])
    return raw


def _span_json(span: Span) -> bytes:
    trace_id, *rest = span_row(span)
    return orjson.dumps([trace_id.hex(), *rest])


async def _measure(service: FrontendService, mode: str, tags: dict[str, str], runs: int) -> tuple[list[float], int]:
    query = ViewQuery(mode=mode_by_name(mode), start_ns=T0, end_ns=END, tags=tags)
    (view,) = await service.search(query)  # warm-up
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        (view,) = await service.search(query)
        samples.append((time.perf_counter() - started) * 1000)
    return samples, len(view.spans)


def _parse_ms(spans: list[Span], keys: set[str]) -> float:
    """Milliseconds for orjson to parse the raw spans of the objects a view shows (best of 5)."""
    encoded = [_span_json(span) for span in spans if str(span.attributes.get("name")) in keys]
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for item in encoded:
            orjson.loads(item)
        best = min(best, time.perf_counter() - started)
    return best * 1000


async def run(runs: int) -> dict[str, Any]:
    small = build_story("web", 5, 9)
    tune_garbage_collector()  # as the App does at start: this part runs inside it
    large = build_story("big", 12, 24)
    with tempfile.TemporaryDirectory(prefix="bench-frontend-") as tmp:
        store = await SqliteStore(str(Path(tmp) / "bench.db")).open()
        try:
            await store.write(small.spans + large.spans)
            service = FrontendService(store, MemoryTraceCache(600), FrontendConfig())
            full_tree = "tracing [full tree]"
            full, full_objects = await _measure(service, full_tree, {"resource": "deployments", "name": "web"}, runs)
            big_runs = max(10, runs // 3)
            big, big_objects = await _measure(service, full_tree, {"resource": "deployments", "name": "big"}, big_runs)
            pod_tags = {"resource": "pods", "name": "web-3-4"}
            ancestors, _ = await _measure(service, "tracing [ancestors]", pod_tags, runs)
        finally:
            await store.close()
    small_names = {str(s.attributes.get("name")) for s in small.spans}
    large_names = {str(s.attributes.get("name")) for s in large.spans}
    small_parse = _parse_ms(small.spans, small_names)
    large_parse = _parse_ms(large.spans, large_names)
    full_p99 = percentile(full, 0.99)
    big_p99 = percentile(big, 0.99)
    return {
        "bench": "frontend",
        "full_tree_objects": full_objects,
        "full_tree_p50_ms": round(statistics.median(full), 1),
        "full_tree_p99_ms": round(full_p99, 1),
        "full_tree_parse_limit_ms": round(small_parse, 1),
        "full_tree_ratio": round(small_parse / full_p99, 4),
        "tree_300_objects": big_objects,
        "tree_300_p50_ms": round(statistics.median(big), 1),
        "tree_300_p99_ms": round(big_p99, 1),
        "tree_300_parse_limit_ms": round(large_parse, 1),
        "tree_300_ratio": round(large_parse / big_p99, 4),
        "ancestors_p99_ms": round(percentile(ancestors, 0.99), 1),
        "raw_spans": len(small.spans) + len(large.spans),
        "runs": runs,
        "peak_rss_mib": round(peak_rss_mib()),
        "note": "ratio = parse-only ms / p99 ms (1.0 would be as fast as parsing the raw spans)",
    }


def main(argv: list[str]) -> int:
    parser = arguments("frontend", __doc__)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args(argv)
    result = run_event_loop(run(args.runs))
    report(result, args.json)
    return 0
