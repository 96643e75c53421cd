"""Search benchmark: fill the search index with 1 million records, then time three filtered query shapes.

Run from the repo root: python -m bench search [--records N] [--runs N] [--json]. Records go through the index's
own ``index()`` path (synthetic audit records spread over 7 days, 40 namespaces, 200 users). Each query is what
the API runs for ``operation=query`` (total + first page of 10). Target (issue #13): p99 < 200 ms at 1M records.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kelemetry_py.model import ObjectRef, Observation
from kelemetry_py.process import run_event_loop
from kelemetry_py.search.filters import build_filter
from kelemetry_py.search.index import SearchIndex

VERBS = ("get", "list", "watch", "create", "update", "patch", "delete")
RESOURCES = ("pods", "deployments", "configmaps", "secrets", "services", "replicasets", "events")
T0_NS = 1_795_000_000 * 10**9
SPAN_NS = 7 * 86400 * 10**9


def synthetic(i: int, rng: random.Random) -> Observation:
    namespace = f"ns-{rng.randrange(40)}"
    resource = rng.choice(RESOURCES)
    name = f"{resource[:-1]}-{rng.randrange(500)}"
    user = f"user-{rng.randrange(200)}"
    verb = rng.choice(VERBS)
    code = 403 if rng.random() < 0.01 else 200
    time_ns = T0_NS + rng.randrange(SPAN_NS)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time_ns // 10**9)) + ".000000Z"
    record: dict[str, Any] = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": f"bench-{i}",
        "stage": "ResponseComplete",
        "requestURI": f"/api/v1/namespaces/{namespace}/{resource}/{name}",
        "verb": verb,
        "user": {"username": user, "groups": ["system:authenticated"]},
        "sourceIPs": [f"10.0.{rng.randrange(256)}.{rng.randrange(256)}"],
        "userAgent": "kubectl/v1.24.0 (linux/amd64) kubernetes/4ce5a89",
        "objectRef": {"resource": resource, "namespace": namespace, "name": name, "apiVersion": "v1"},
        "responseStatus": {"metadata": {}, "code": code},
        "requestReceivedTimestamp": stamp,
        "stageTimestamp": stamp,
    }
    ref = ObjectRef("bench", "", "v1", resource, namespace, name)
    return Observation(ref=ref, kind="record", title=verb, start_ns=time_ns, end_ns=time_ns, record=record)


SHAPES = {
    "namespace+verb, 1 day": {"objectref_namespace_filter": "ns-7", "verb_filter": "patch"},
    "verb=get, whole week (broad)": {"verb_filter": "get"},
    "name search (fuzzy), 1 day": {"objectref_name_search": "POD-12", "objectref_namespace_filter": "ns-3"},
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(records: int, runs: int) -> dict[str, Any]:
    rng = random.Random(13)
    with tempfile.TemporaryDirectory() as tmp:
        index = await SearchIndex(Path(tmp) / "search.db", readers=2).open()
        try:
            started = time.perf_counter()
            for offset in range(0, records, 5000):
                await index.index([synthetic(i, rng) for i in range(offset, min(records, offset + 5000))])
            fill_seconds = time.perf_counter() - started
            day_start = (T0_NS // 10**9) + 3 * 86400
            results: dict[str, Any] = {}
            for label, params in SHAPES.items():
                query = dict(params)
                if "1 day" in label:
                    query.update(start_time=str(day_start), end_time=str(day_start + 86400))
                record_filter = build_filter("audit", query, {})
                timings, total = [], 0
                for _ in range(runs):
                    began = time.perf_counter()
                    total, _ = await index.query(record_filter, None, ascending=False, offset=0, size=10)
                    timings.append((time.perf_counter() - began) * 1000)
                results[label] = {
                    "matched": total,
                    "p50_ms": round(statistics.median(timings), 2),
                    "p99_ms": round(percentile(timings, 0.99), 2),
                }
            return {
                "records": records,
                "fill_seconds": round(fill_seconds, 1),
                "records_per_second": round(records / fill_seconds),
                "index_bytes": index.bytes_used,
                "queries": results,
                "target_p99_ms": 200,
                "met": all(r["p99_ms"] < 200 for r in results.values()),
            }
        finally:
            await index.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench search", description=__doc__)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    report = run_event_loop(run(args.records, args.runs))
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"{report['records']} records filled in {report['fill_seconds']} s "
            f"({report['records_per_second']}/s), index {report['index_bytes'] / 2**20:.0f} MiB"
        )
        for label, result in report["queries"].items():
            print(
                f"  {label:<32} matched {result['matched']:>7}  p50 {result['p50_ms']:>7} ms  "
                f"p99 {result['p99_ms']:>7} ms"
            )
        print(f"target p99 < 200 ms: {'met' if report['met'] else 'MISSED'}")
    return 0 if report["met"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
