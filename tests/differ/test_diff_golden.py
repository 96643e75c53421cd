"""The differ's output on every recorded watch stream, pinned: a faster diff must not change what users see.

Three goldens in ``golden/``: the records the ObjectDiffer makes of each stream, event by event (kind, changes,
rendered lines, attribution); the same for the benchmark's synthetic Pod and Node status churn (``bench/differ.py``,
scaled down); and ``compute_diff`` between every object version and the versions two and five changes later,
which reaches list shapes (added and removed items, reordered lists) that consecutive versions rarely do.
Regenerate only for an intended format change: ``python -m tests.differ.test_diff_golden``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.differ import churn_streams
from kelemetry_py.kube.watch import ResourceType
from kelemetry_py.metrics import Metrics
from kelemetry_py.model import Observation
from kelemetry_py.sources.diffcache import DiffRecord
from kelemetry_py.sources.diffcache.memory import MemoryDiffCache
from kelemetry_py.sources.differ import ObjectDiffer, compute_diff

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GOLDEN = Path(__file__).resolve().parent / "golden"
LATER = (2, 5)
CHURN_OBJECTS, CHURN_UPDATES = 20, 6


class _Sink:
    async def submit(self, observations: Sequence[Observation], *, wait: bool = False) -> None:
        return None


class _Recording(MemoryDiffCache):
    def __init__(self) -> None:
        super().__init__(max_records=1_000_000)
        self.records: list[DiffRecord] = []

    async def put(self, record: DiffRecord) -> None:
        self.records.append(record)
        await super().put(record)


def _streams() -> list[tuple[str, ResourceType, list[tuple[str, dict[str, Any]]]]]:
    streams = []
    for path in sorted(FIXTURES.glob("*/watch/*.jsonl")):
        group, version, resource = path.stem.split("_", 2)
        events = [json.loads(line) for line in path.read_text().splitlines() if line]
        lines = [(e["type"], e["object"]) for e in events if e["type"] != "BOOKMARK"]
        if lines:
            kind = lines[0][1].get("kind", "")
            rtype = ResourceType("" if group == "core" else group, version, resource, kind, True)
            streams.append((f"{path.parent.parent.name}/{path.stem}", rtype, lines))
    return streams


def _changes(changes: Sequence[Any]) -> list[dict[str, Any]]:
    return [change.to_dict() for change in changes]


def recording_differ(**options: Any) -> ObjectDiffer:
    return ObjectDiffer(_Sink(), Metrics(), _Recording(), wall_clock_ns=lambda: 0, clock=lambda: 0.0, **options)


async def _records(
    rtype: ResourceType, lines: Sequence[tuple[str, dict[str, Any]]], **options: Any
) -> list[dict[str, Any]]:
    differ = recording_differ(**options)
    cache = differ._cache
    assert isinstance(cache, _Recording)
    for event_type, obj in lines:
        await differ.on_event("fixture", rtype, event_type, obj, relisted=False)
    return [
        {
            "key": record.ref.key,
            "rv": record.resource_version,
            "kind": record.kind,
            "manager": [record.field_manager, record.operation],
            "changes": _changes(record.changes),
            "lines": list(record.lines),
        }
        for record in cache.records
    ]


async def differ_records() -> dict[str, list[dict[str, Any]]]:
    return {name: await _records(rtype, lines) for name, rtype, lines in _streams()}


def churn_events() -> list[tuple[ResourceType, list[tuple[str, dict[str, Any]]]]]:
    streams = []
    for rtype, raw in churn_streams(CHURN_OBJECTS, CHURN_UPDATES):
        events = [json.loads(line) for line in raw]
        streams.append((rtype, [(e["type"], e["object"]) for e in events]))
    return streams


async def churn_records() -> dict[str, list[dict[str, Any]]]:
    return {rtype.resource: await _records(rtype, events) for rtype, events in churn_events()}


def pairwise_diffs() -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for name, _, lines in _streams():
        versions: dict[str, list[dict[str, Any]]] = {}
        for _, obj in lines:
            versions.setdefault(obj["metadata"].get("uid", ""), []).append(obj)
        found = []
        for history in versions.values():
            for index, old in enumerate(history):
                for step in LATER:
                    if index + step < len(history):
                        new = history[index + step]
                        rvs = f"{old['metadata'].get('resourceVersion')}->{new['metadata'].get('resourceVersion')}"
                        found.append({"rv": rvs, "changes": _changes(compute_diff(old, new))})
        out[name] = found
    return out


def _load(name: str) -> Any:
    return json.loads((GOLDEN / name).read_text())


async def test_differ_records_on_recorded_streams_are_unchanged() -> None:
    golden = _load("differ_records.json")
    current = await differ_records()
    assert current.keys() == golden.keys()
    for stream, records in golden.items():
        assert current[stream] == records, stream


async def test_differ_records_on_status_churn_are_unchanged() -> None:
    golden = _load("churn_records.json")
    current = await churn_records()
    assert current.keys() == golden.keys()
    for resource, records in golden.items():
        assert current[resource] == records, resource


def test_diffs_between_distant_versions_are_unchanged() -> None:
    golden = _load("pairwise_diffs.json")
    current = pairwise_diffs()
    assert current.keys() == golden.keys()
    for stream, diffs in golden.items():
        assert current[stream] == diffs, stream


if __name__ == "__main__":
    GOLDEN.mkdir(exist_ok=True)
    (GOLDEN / "differ_records.json").write_text(json.dumps(asyncio.run(differ_records()), indent=1) + "\n")
    (GOLDEN / "churn_records.json").write_text(json.dumps(asyncio.run(churn_records()), indent=1) + "\n")
    (GOLDEN / "pairwise_diffs.json").write_text(json.dumps(pairwise_diffs(), indent=1) + "\n")
