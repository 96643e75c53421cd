"""Differ memory per watched object: 100,000 synthetic Pods listed into one ObjectDiffer.

Prints bytes per object in total and beyond the object itself (its compressed JSON state, which is what the
differ must keep to diff the next change). ``--standby`` measures a warm standby (it keeps the same state).
Usage: ``python bench/differ_memory.py [--objects N] [--standby]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kelemetry_py.kube.watch import ResourceType
from kelemetry_py.metrics import Metrics
from kelemetry_py.model import Observation
from kelemetry_py.sources.diffcache.memory import MemoryDiffCache
from kelemetry_py.sources.differ import ObjectDiffer

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
PODS = ResourceType("", "v1", "pods", "Pod", True)


class NullSink:
    async def submit(self, observations: Sequence[Observation], *, wait: bool = False) -> None:
        return None


def _template() -> dict[str, Any]:
    """The last Running pod of the deployment-lifecycle recording, as a realistic shape."""
    lines = (FIXTURES / "deployment-lifecycle" / "watch" / "core_v1_pods.jsonl").read_text().splitlines()
    running: list[dict[str, Any]] = [json.loads(line)["object"] for line in lines if '"phase":"Running"' in line]
    return running[-1]


def _pod(template: dict[str, Any], index: int) -> dict[str, Any]:
    pod: dict[str, Any] = json.loads(json.dumps(template))
    metadata = pod["metadata"]
    metadata["name"] = f"synthetic-{index}"
    metadata["uid"] = f"00000000-0000-0000-0000-{index:012d}"
    metadata["resourceVersion"] = str(1_000_000 + index)
    pod["status"]["podIP"] = f"10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}"
    return pod


async def main(count: int, standby: bool = False) -> None:
    template = _template()
    differ = ObjectDiffer(NullSink(), Metrics(), MemoryDiffCache())
    if standby:
        differ.stand_by("bench")
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for index in range(count):
        await differ.on_event("bench", PODS, "ADDED", _pod(template, index), relisted=True)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    states = differ._states.values()
    state_bytes = sum(len(state.blob) for state in states)
    total = after - before
    role = "standby" if standby else "leader"
    print(f"differ memory ({role}): {count} objects, {total / count:,.0f} B/object in total,")
    print(f"  {state_bytes / count:,.0f} B/object compressed state (the object itself, zlib'd JSON),")
    print(f"  {(total - state_bytes) / count:,.0f} B/object beyond the object itself")
    print(f"  (the uncompressed JSON of one such pod is {len(json.dumps(template))} B)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--standby", action="store_true", help="measure a warm standby instead of the leader")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.objects, arguments.standby))
