"""Differ throughput: watch events per second through ObjectDiffer (redaction, diff, attribution, cache put).

Replays every recorded watch stream of every fixture scenario through one differ with a memory diff cache,
``--rounds`` times (each round under a fresh cluster name, so every round diffs rather than dedups), and
prints events/s. Usage: ``python bench/differ_throughput.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kelemetry_py.kube.watch import ResourceType
from kelemetry_py.metrics import Metrics
from kelemetry_py.model import Observation
from kelemetry_py.sources.diffcache.memory import MemoryDiffCache
from kelemetry_py.sources.differ import ObjectDiffer

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
SKIPPED = ("events", "leases")  # the differ does not watch these by default


class NullSink:
    def __init__(self) -> None:
        self.count = 0

    async def submit(self, observations: Sequence[Observation], *, wait: bool = False) -> None:
        self.count += len(observations)


def _streams() -> list[tuple[ResourceType, list[tuple[str, dict[str, Any]]]]]:
    streams = []
    for path in sorted(FIXTURES.glob("*/watch/*.jsonl")):
        group, version, resource = path.stem.split("_", 2)
        if resource in SKIPPED:
            continue
        events = [json.loads(line) for line in path.read_text().splitlines() if line]
        lines = [(e["type"], e["object"]) for e in events if e["type"] != "BOOKMARK"]
        if lines:
            kind = lines[0][1].get("kind", "")
            streams.append((ResourceType("" if group == "core" else group, version, resource, kind, True), lines))
    return streams


async def main(rounds: int) -> None:
    streams = _streams()
    sink = NullSink()
    differ = ObjectDiffer(sink, Metrics(), MemoryDiffCache(max_records=1_000_000))
    total = 0
    started = time.perf_counter()
    for round_number in range(rounds):
        cluster = f"bench-{round_number}"
        for rtype, lines in streams:
            for event_type, obj in lines:
                await differ.on_event(cluster, rtype, event_type, obj, relisted=False)
            total += len(lines)
    elapsed = time.perf_counter() - started
    await differ.flush_unclaimed(now=float("inf"))
    print(f"differ: {total} watch events in {elapsed:.2f}s = {total / elapsed:,.0f} events/s ({sink.count} diffs)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    asyncio.run(main(parser.parse_args().rounds))
