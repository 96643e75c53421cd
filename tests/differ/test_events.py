"""The event tracker fed both recorded event streams, their LISTs, relists and restarts."""

from __future__ import annotations

import asyncio
import copy
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from kelemetry_py.metrics import Metrics
from kelemetry_py.sources.events import (
    EventCursor,
    EventTracker,
    MemoryEventCursor,
    RedisEventCursor,
    SqliteEventCursor,
    parse_time_ns,
)
from tests.differ.support import CLUSTER, CORE_EVENTS, NEW_EVENTS, CollectingSink, list_items, watch_lines

# The recordings' clock; "now" for age checks is just after deployment-lifecycle ended.
RECORDING_NOW_NS = parse_time_ns("2026-11-21T05:36:30Z") or 0


@pytest.fixture
def lifecycle(fixtures_dir: Path) -> Path:
    return fixtures_dir / "deployment-lifecycle"


def _tracker(sink: CollectingSink, cursor: EventCursor, max_age: float = 3600.0) -> EventTracker:
    return EventTracker(sink, Metrics(), cursor, max_age_seconds=max_age, wall_clock_ns=lambda: RECORDING_NOW_NS)


async def _feed_both(tracker: EventTracker, scenario: Path) -> None:
    """Interleave the two views the way two concurrent watches deliver them."""
    core = list(watch_lines(scenario, CORE_EVENTS))
    new = list(watch_lines(scenario, NEW_EVENTS))
    for index in range(max(len(core), len(new))):
        for rtype, lines in ((CORE_EVENTS, core), (NEW_EVENTS, new)):
            if index < len(lines):
                event_type, obj = lines[index]
                await tracker.on_event(CLUSTER, rtype, event_type, obj, relisted=False)


def _distinct_occurrences(scenario: Path) -> set[tuple[str, int]]:
    seen = set()
    for _, obj in watch_lines(scenario, CORE_EVENTS):
        seen.add((obj["metadata"]["uid"], obj.get("series", {}).get("count") or obj.get("count") or 1))
    return seen


async def test_each_occurrence_once_across_both_event_apis(lifecycle: Path) -> None:
    sink = CollectingSink()
    await _feed_both(_tracker(sink, MemoryEventCursor()), lifecycle)
    keys = [o.dedup_key for o in sink.observations]
    assert len(keys) == len(set(keys))
    assert {(k.split("/")[1], int(k.split("/")[2])) for k in keys if k} == _distinct_occurrences(lifecycle)

    # The count bump (deployment scaled down, "combined from similar events") is a second span.
    repeated = Counter(o.dedup_key.split("/")[1] for o in sink.observations if o.dedup_key)
    bumped = [uid for uid, n in repeated.items() if n == 2]
    assert len(bumped) == 1
    pair = sorted((o for o in sink.observations if o.dedup_key and bumped[0] in o.dedup_key), key=lambda o: o.start_ns)
    assert [o.tags["count"] for o in pair] == [1, 2]
    assert pair[0].start_ns < pair[1].start_ns  # the repeat is placed at its last occurrence
    assert pair[1].logs[0].fields["message"].startswith("(combined from similar events)")  # type: ignore[union-attr]


async def test_events_land_on_their_involved_objects(lifecycle: Path) -> None:
    sink = CollectingSink()
    await _feed_both(_tracker(sink, MemoryEventCursor()), lifecycle)
    by_resource = Counter((o.ref.group, o.ref.resource) for o in sink.observations)
    assert set(by_resource) == {("apps", "deployments"), ("apps", "replicasets"), ("", "pods")}
    scheduled = next(o for o in sink.observations if o.title == "Scheduled")
    assert scheduled.kind == "event"
    assert scheduled.tags["reportingController"] == "default-scheduler"
    assert scheduled.tags["action"] == "Binding"
    assert scheduled.ref.namespace == "shop" and scheduled.ref.uid
    pulled = next(o for o in sink.observations if o.title == "Pulled")
    assert pulled.tags["source"] == "kubelet/node-1"
    assert pulled.tags["type"] == "Normal"
    scaling = next(o for o in sink.observations if o.title == "ScalingReplicaSet")
    assert scaling.ref.key == f"{CLUSTER}/apps/deployments/shop/web"
    assert scaling.tags["source"] == "deployment-controller"


async def test_relists_and_restarts_neither_duplicate_nor_lose(lifecycle: Path) -> None:
    cursor = MemoryEventCursor()
    sink = CollectingSink()
    tracker = _tracker(sink, cursor)
    await _feed_both(tracker, lifecycle)
    emitted = len(sink.observations)
    # The same process relists (watch dropped); a new process starts with the same cursor (restart).
    for current in (tracker, _tracker(sink, cursor)):
        for rtype in (CORE_EVENTS, NEW_EVENTS):
            for _, obj in watch_lines(lifecycle, rtype):
                await current.on_event(CLUSTER, rtype, "ADDED", obj, relisted=True)
    assert len(sink.observations) == emitted
    # Something newer after the restart is not lost.
    _, last = list(watch_lines(lifecycle, CORE_EVENTS))[-1]
    repeat = copy.deepcopy(last)
    repeat["count"] = (last.get("count") or 1) + 1
    repeat["lastTimestamp"] = "2026-11-21T05:36:20Z"
    await _tracker(sink, cursor).on_event(CLUSTER, CORE_EVENTS, "MODIFIED", repeat, relisted=False)
    assert len(sink.observations) == emitted + 1
    assert sink.observations[-1].tags["count"] == repeat["count"]


async def test_redis_cursor_survives_a_restart(lifecycle: Path, redis_url: str) -> None:
    sink = CollectingSink()
    first = RedisEventCursor(redis_url, key_prefix="t:")
    await _feed_both(_tracker(sink, first), lifecycle)
    await first.close()
    emitted = len(sink.observations)
    assert emitted > 0
    second = RedisEventCursor(redis_url, key_prefix="t:")
    try:
        await _feed_both(_tracker(sink, second), lifecycle)
        assert len(sink.observations) == emitted
        uid = next(iter(_distinct_occurrences(lifecycle)))[0]
        await second.mark(CLUSTER, uid, 1)  # never lowers what is stored
        assert await second.emitted(CLUSTER, uid) >= 1
    finally:
        await second.close()


async def test_old_events_are_skipped_and_node_events_resolve(lifecycle: Path) -> None:
    listed = list_items(lifecycle, CORE_EVENTS)
    node_events = [e for e in listed if e["involvedObject"].get("kind") == "Node"]
    assert node_events
    sink = CollectingSink()
    tracker = _tracker(sink, MemoryEventCursor())
    for obj in node_events:
        await tracker.on_event(CLUSTER, CORE_EVENTS, "ADDED", obj, relisted=True)
    assert sink.observations
    node = sink.observations[0]
    assert (node.ref.group, node.ref.resource, node.ref.namespace, node.ref.name) == (
        "",
        "nodes",
        "",
        "node-1",
    )
    assert node.ref.uid == ""  # "node-1" in the uid field is a name, not a uid

    stale: list[dict[str, Any]] = node_events
    old_sink = CollectingSink()
    strict = _tracker(old_sink, MemoryEventCursor(), max_age=10.0)
    for obj in stale:
        await strict.on_event(CLUSTER, CORE_EVENTS, "ADDED", obj, relisted=True)
    assert old_sink.observations == []
    assert strict.skipped_old == len(stale)


async def test_an_event_without_uid_is_refused() -> None:
    tracker = _tracker(CollectingSink(), MemoryEventCursor())
    with pytest.raises(ValueError, match=r"no metadata\.uid"):
        await tracker.on_event(CLUSTER, CORE_EVENTS, "ADDED", {"metadata": {"name": "x"}}, relisted=False)


async def test_sqlite_cursor_survives_a_restart(lifecycle: Path, tmp_path: Path) -> None:
    sink = CollectingSink()
    path = tmp_path / "data" / "state.db"
    first = await SqliteEventCursor(path).open()
    await _feed_both(_tracker(sink, first), lifecycle)
    await first.close()
    emitted = len(sink.observations)
    assert emitted == len(_distinct_occurrences(lifecycle))
    second = await SqliteEventCursor(path).open()
    try:
        await _feed_both(_tracker(sink, second), lifecycle)
        assert len(sink.observations) == emitted, "a restarted process re-emitted events"
        uid, occurrence = max(_distinct_occurrences(lifecycle), key=lambda pair: pair[1])
        await second.mark(CLUSTER, uid, 1)  # never lowers what is stored
        assert await second.emitted(CLUSTER, uid) == occurrence
        assert await second.emitted("other-cluster", uid) == 0
    finally:
        await second.close()


async def test_sqlite_cursor_entries_expire(tmp_path: Path) -> None:
    now = [1000.0]
    cursor = await SqliteEventCursor(tmp_path / "state.db", ttl_seconds=60, purge_every=2, clock=lambda: now[0]).open()
    try:
        await cursor.mark(CLUSTER, "uid-a", 3)
        assert await cursor.emitted(CLUSTER, "uid-a") == 3
        now[0] += 61
        assert await cursor.emitted(CLUSTER, "uid-a") == 0
        # An expired entry does not hold its old occurrence against a new, lower one.
        await cursor.mark(CLUSTER, "uid-a", 1)
        assert await cursor.emitted(CLUSTER, "uid-a") == 1
        await cursor.mark(CLUSTER, "uid-b", 1)
        now[0] += 61
        await cursor.mark(CLUSTER, "uid-c", 1)  # every second mark purges what expired
        await cursor.mark(CLUSTER, "uid-d", 1)
    finally:
        await cursor.close()
    with sqlite3.connect(tmp_path / "state.db") as conn:
        rows = {uid for (uid,) in conn.execute("SELECT uid FROM event_cursor")}
    assert rows == {"uid-c", "uid-d"}


class YieldingCursor(MemoryEventCursor):
    """A cursor whose reads give the event loop away, as Redis and SQLite reads do."""

    async def emitted(self, cluster: str, uid: str) -> int:
        await asyncio.sleep(0)
        return await super().emitted(cluster, uid)


async def test_both_views_delivered_concurrently_emit_once(lifecycle: Path) -> None:
    sink = CollectingSink()
    tracker = _tracker(sink, YieldingCursor())
    core = list(watch_lines(lifecycle, CORE_EVENTS))
    new = {obj["metadata"]["uid"]: obj for _, obj in watch_lines(lifecycle, NEW_EVENTS)}
    for event_type, obj in core[:10]:
        twin = new[obj["metadata"]["uid"]]
        await asyncio.gather(
            tracker.on_event(CLUSTER, CORE_EVENTS, event_type, obj, relisted=False),
            tracker.on_event(CLUSTER, NEW_EVENTS, event_type, twin, relisted=False),
        )
    keys = [o.dedup_key for o in sink.observations]
    assert len(keys) == len(set(keys)) == len({(o["metadata"]["uid"], o.get("count")) for _, o in core[:10]})
