"""Object graph: memory per object and relation updates per second, and what the eviction rule keeps.

A synthetic cluster of Deployments, each with two ReplicaSets of ``--pods`` Pods, is fed into one ``ObjectGraph``
as the pipeline feeds it (``sync_links`` with each object's owner link), measured with tracemalloc. Then a churn:
every Pod is deleted and replaced once per simulated minute for ``--minutes`` minutes while ``expire`` runs as the
pipeline runs it (relations and objects that ended before the previous window are forgotten), showing that the
graph stays bounded by what the live objects and the last two windows need, not by everything ever seen.

    python -m bench graph [--deployments 1000] [--pods 5] [--minutes 10] [--json]
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from typing import Any

from bench.common import arguments, peak_rss_mib, report
from kelemetry_py.linking.graph import ObjectGraph
from kelemetry_py.model import Link, ObjectRef

WINDOW = 60.0


def _ref(group: str, resource: str, name: str, uid: str = "") -> ObjectRef:
    return ObjectRef("bench", group, "v1", resource, "default", name, uid)


def run(deployments: int, pods: int, minutes: int) -> dict[str, Any]:
    """Timed without tracemalloc (it slows allocation severalfold), then measured with it on the same input."""
    timed = _run(deployments, pods, minutes, measure=False)
    measured = _run(deployments, pods, minutes, measure=True)
    return {**measured, **{key: timed[key] for key in ("feed_updates_per_second", "churn_updates_per_second")}}


def _memory(measure: bool) -> int:
    return tracemalloc.get_traced_memory()[0] if measure else 0


def _run(deployments: int, pods: int, minutes: int, *, measure: bool) -> dict[str, Any]:
    graph = ObjectGraph(max_nodes=10_000_000)
    gc.collect()
    if measure:
        tracemalloc.start()
    base = _memory(measure)
    started = time.perf_counter()
    updates = 0
    now = 0.0
    pod_refs: list[tuple[ObjectRef, ObjectRef]] = []
    for d in range(deployments):
        deployment = _ref("apps", "deployments", f"d{d}")
        graph.add_object(deployment, now)
        for r in range(2):
            replicaset = _ref("apps", "replicasets", f"d{d}-rs{r}")
            graph.sync_links(replicaset, [Link(deployment, "parent", "owner")], now)
            updates += 1
            for p in range(pods):
                pod = _ref("", "pods", f"d{d}-rs{r}-p{p}", uid="0")
                graph.sync_links(pod, [Link(replicaset, "parent", "owner")], now)
                pod_refs.append((pod, replicaset))
                updates += 1
    fed = time.perf_counter() - started
    memory = _memory(measure) - base
    objects = len(graph)
    relations = graph.edge_count

    churn_started = time.perf_counter()
    for minute in range(1, minutes + 1):
        now = minute * WINDOW
        for index, (pod, replicaset) in enumerate(pod_refs):
            graph.delete_object(pod, now)
            # A replacement Pod has a new name (the ReplicaSet's random suffix) and uid.
            fresh = _ref("", "pods", f"{pod.name.rpartition('.')[0] or pod.name}.{minute}", uid=str(minute))
            graph.sync_links(fresh, [Link(replicaset, "parent", "owner")], now + 1)
            pod_refs[index] = (fresh, replicaset)
            updates += 2
        graph.expire(now - WINDOW)
    churned = time.perf_counter() - churn_started
    after_churn = _memory(measure) - base
    if measure:
        tracemalloc.stop()
    return {
        "bench": "graph",
        "objects": objects,
        "relations": relations,
        "bytes_per_object": round(memory / objects, 1),
        "graph_mib": round(memory / 2**20, 2),
        "feed_updates_per_second": round((objects - deployments) / fed, 1),
        "churn_minutes": minutes,
        "churn_updates_per_second": round((updates - objects + deployments) / churned, 1) if churned else 0.0,
        "objects_after_churn": len(graph),
        "graph_mib_after_churn": round(after_churn / 2**20, 2),
        "forgotten_by_expiry": graph.expired,
        "peak_rss_mib": peak_rss_mib(),
    }


def main(argv: list[str]) -> int:
    parser = arguments("graph", __doc__)
    parser.add_argument("--deployments", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=5, help="Pods per ReplicaSet")
    parser.add_argument("--minutes", type=int, default=10, help="minutes of Pod replacement churn")
    args = parser.parse_args(argv)
    result = run(args.deployments, args.pods, args.minutes)
    report(result, args.json)
    return 0
