"""Object differ: watch events per CPU second and memory per watched object, beside the watch parse limit.

Two inputs: every recorded watch stream of every fixture scenario (``--rounds`` times, each round under a fresh
cluster name so every round diffs rather than dedups), and a synthetic churn of Pod and Node status updates (the
kubelet's patches: conditions, container statuses, heartbeats) on objects shaped like the recorded ones. The timed
loop parses each watch line with orjson and hands the object to one ``ObjectDiffer`` with a memory diff cache,
exactly what the watch engine does; the parse-only limit is orjson alone on the same lines, measured slice by
slice in alternation with the timed loop (before one slice, after the next) so that both see the same load.

Memory: ``--objects`` synthetic Pods listed into a differ, measured with tracemalloc, minus the compressed state
(zlib'd JSON of the object without bookkeeping) that any differ must keep to diff the next change. Listed objects
stay compressed; objects that change are kept uncompressed within a fixed byte bound for all of them
(``kube.diff_hot_state_max_bytes``), not per object: ``churn_hot_state_bytes`` is what that took after the churn.

    python -m bench differ [--rounds 20] [--churn-objects 400] [--churn-updates 15] [--objects 20000] [--json]
"""

from __future__ import annotations

import copy
import gc
import time
import tracemalloc
import zlib
from collections.abc import Sequence
from typing import Any

import orjson

from bench.common import FIXTURES, arguments, peak_rss_mib, ratio, report
from kelemetry_py.kube.watch import ResourceType
from kelemetry_py.metrics import Metrics
from kelemetry_py.model import Observation
from kelemetry_py.process import run_event_loop, tune_garbage_collector
from kelemetry_py.sources.diffcache.memory import MemoryDiffCache
from kelemetry_py.sources.differ import ObjectDiffer
from kelemetry_py.sources.diffing import strip_bookkeeping

SKIPPED = ("events", "leases")  # the differ does not watch these by default
PODS = ResourceType("", "v1", "pods", "Pod", True)
NODES = ResourceType("", "v1", "nodes", "Node", False)
Stream = tuple[ResourceType, list[bytes]]
SLICE = 200  # lines handled between two measurements of the parse-only limit
PARSE_REPEATS = 2  # each slice parsed alone this many times, for enough CPU time to measure


class NullSink:
    def __init__(self) -> None:
        self.count = 0

    async def submit(self, observations: Sequence[Observation], *, wait: bool = False) -> None:
        self.count += len(observations)


def recorded_streams() -> list[Stream]:
    streams = []
    for path in sorted(FIXTURES.glob("*/watch/*.jsonl")):
        group, version, resource = path.stem.split("_", 2)
        if resource in SKIPPED:
            continue
        lines = [line for line in path.read_bytes().splitlines() if line and b'"type":"BOOKMARK"' not in line]
        if lines:
            kind = orjson.loads(lines[0])["object"].get("kind", "")
            streams.append((ResourceType("" if group == "core" else group, version, resource, kind, True), lines))
    return streams


def _last_object(relative: str, marker: bytes) -> dict[str, Any]:
    lines = (FIXTURES / relative).read_bytes().splitlines()
    found: dict[str, Any] = orjson.loads([line for line in lines if marker in line][-1])["object"]
    return found


def _named(template: dict[str, Any], name: str, index: int) -> dict[str, Any]:
    obj = copy.deepcopy(template)
    metadata = obj["metadata"]
    metadata["name"] = name
    metadata["uid"] = f"00000000-0000-0000-0000-{index:012d}"
    metadata["resourceVersion"] = str(1_000_000 + index)
    return obj


def churn_streams(objects: int, updates: int) -> list[Stream]:
    """Pods whose kubelet flips readiness and restarts containers, and Nodes that heartbeat (5 pods per node)."""
    pod_template = _last_object("deployment-lifecycle/watch/core_v1_pods.jsonl", b'"phase":"Running"')
    node_template = _last_object("deployment-lifecycle/watch/core_v1_nodes.jsonl", b'"kind":"Node"')
    pods = [_named(pod_template, f"churn-{i}", i) for i in range(objects)]
    nodes = [_named(node_template, f"node-{i}", objects + i) for i in range(max(1, objects // 5))]
    pod_lines: list[bytes] = []
    node_lines: list[bytes] = []
    rv = 2_000_000
    for step in range(updates):
        stamp = f"2026-12-01T10:{step // 60:02d}:{step % 60:02d}Z"
        for pod in pods:
            rv += 1
            pod["metadata"]["resourceVersion"] = str(rv)
            status = pod["status"]
            ready = "True" if step % 2 else "False"
            for condition in status.get("conditions", []):
                if condition["type"] in ("Ready", "ContainersReady"):
                    condition["status"] = ready
                    condition["lastTransitionTime"] = stamp
            for container in status.get("containerStatuses", []):
                container["ready"] = ready == "True"
                container["restartCount"] = step
                container["state"] = {"running": {"startedAt": stamp}}
            pod_lines.append(orjson.dumps({"type": "MODIFIED", "object": pod}))
        for node in nodes:
            rv += 1
            node["metadata"]["resourceVersion"] = str(rv)
            for condition in node["status"].get("conditions", []):
                condition["lastHeartbeatTime"] = stamp
            node_lines.append(orjson.dumps({"type": "MODIFIED", "object": node}))
    added_pods = [
        orjson.dumps({"type": "ADDED", "object": _named(pod_template, f"churn-{i}", i)}) for i in range(objects)
    ]
    return [(PODS, added_pods + pod_lines), (NODES, node_lines)]


async def _drive(streams: list[Stream], rounds: int) -> tuple[int, float, float, int, int]:
    """Events, the differ's CPU seconds (parse included), orjson's CPU seconds per parse of the same lines alone,
    observations emitted and the hot tier's bytes.

    The parse-only limit is measured slice by slice beside the differ, alternately just before and just after it
    handles the same slice: the machine's load drifts while a benchmark runs, and a limit measured minutes apart
    from the figure it divides moved the ratio by a fifth between two runs of the same code.
    """
    sink = NullSink()
    differ = ObjectDiffer(sink, Metrics(), MemoryDiffCache(max_records=1_000_000))
    total = 0
    cpu = parse_cpu = 0.0
    parse_only = 0
    for round_number in range(rounds):
        cluster = f"bench-{round_number}"
        for rtype, lines in streams:
            for start in range(0, len(lines), SLICE):
                chunk = lines[start : start + SLICE]
                parse_first = parse_only % 2 == 0
                parse_only += 1
                if parse_first:
                    parse_cpu += _parse_only(chunk)
                started = time.process_time()
                for line in chunk:
                    event = orjson.loads(line)
                    await differ.on_event(cluster, rtype, event["type"], event["object"], relisted=False)
                cpu += time.process_time() - started
                if not parse_first:
                    parse_cpu += _parse_only(chunk)
            total += len(lines)
    hot_bytes = differ.hot_state_bytes
    await differ.flush_unclaimed(now=float("inf"))
    return total, cpu, parse_cpu / PARSE_REPEATS, sink.count, hot_bytes


def _parse_only(lines: list[bytes]) -> float:
    started = time.process_time()
    for _ in range(PARSE_REPEATS):
        for line in lines:
            orjson.loads(line)
    return time.process_time() - started


async def _bytes_per_object(count: int) -> tuple[float, float]:
    template = _last_object("deployment-lifecycle/watch/core_v1_pods.jsonl", b'"phase":"Running"')
    objects = [_named(template, f"synthetic-{i}", i) for i in range(count)]
    for index, pod in enumerate(objects):
        pod["status"]["podIP"] = f"10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}"
    state_bytes = sum(len(zlib.compress(orjson.dumps(strip_bookkeeping(pod)), 1)) for pod in objects)
    differ = ObjectDiffer(NullSink(), Metrics(), MemoryDiffCache())
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for pod in objects:
        await differ.on_event("bench", PODS, "ADDED", pod, relisted=True)
    gc.collect()
    total = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return (total - state_bytes) / count, state_bytes / count


async def run(rounds: int, churn_objects: int, churn_updates: int, objects: int) -> dict[str, Any]:
    recorded = recorded_streams()
    tune_garbage_collector()  # as the App does at start: this part runs inside it
    churn = churn_streams(churn_objects, churn_updates)
    recorded_events, recorded_cpu, recorded_parse_cpu, recorded_out, _ = await _drive(recorded, rounds)
    churn_events, churn_cpu, churn_parse_cpu, churn_out, churn_hot_bytes = await _drive(churn, 1)
    recorded_limit = recorded_events / recorded_parse_cpu
    churn_limit = churn_events / churn_parse_cpu
    beyond, state = await _bytes_per_object(objects)
    recorded_rate = recorded_events / recorded_cpu
    churn_rate = churn_events / churn_cpu
    return {
        "bench": "differ",
        "events": recorded_events,
        "events_per_cpu_second": round(recorded_rate),
        "parse_limit_events_per_cpu_second": round(recorded_limit),
        "ratio": ratio(recorded_rate, recorded_limit),
        "observations_emitted": recorded_out,
        "churn_events": churn_events,
        "churn_events_per_cpu_second": round(churn_rate),
        "churn_parse_limit_events_per_cpu_second": round(churn_limit),
        "churn_ratio": ratio(churn_rate, churn_limit),
        "churn_observations_emitted": churn_out,
        "churn_hot_state_bytes": churn_hot_bytes,
        "bytes_per_object": round(beyond),
        "compressed_state_bytes_per_object": round(state),
        "memory_objects": objects,
        "peak_rss_mib": round(peak_rss_mib()),
        "note": "events/CPU-s include orjson parsing each line, as the watch engine does before the differ",
    }


def main(argv: list[str]) -> int:
    parser = arguments("differ", __doc__)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--churn-objects", type=int, default=400)
    parser.add_argument("--churn-updates", type=int, default=15)
    parser.add_argument("--objects", type=int, default=20_000, help="synthetic Pods for the memory figure")
    args = parser.parse_args(argv)
    result = run_event_loop(run(args.rounds, args.churn_objects, args.churn_updates, args.objects))
    report(result, args.json)
    return 0
