"""The differ holds each change until an audit span claims it or its own emission is accepted: long enough
for a late audit batch, bounded in bytes, kept through a failing pipeline, and on standbys handed on at a
take-over after the leader's progress marks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pytest

from kelemetry_py.config import KubeConfig
from kelemetry_py.metrics import Metrics
from kelemetry_py.model import Observation
from kelemetry_py.sources.diffcache.memory import MemoryDiffCache
from kelemetry_py.sources.differ import ObjectDiffer
from kelemetry_py.sources.differstate import SqliteDifferState
from kelemetry_py.sources.diffs import DiffAttacher
from kelemetry_py.sources.events import EventTracker, MemoryEventCursor
from tests.differ.support import CLUSTER, CORE_EVENTS, DEPLOYMENTS, CollectingSink, watch_lines
from tests.differ.test_differ_fixtures import _first_scale
from tests.support.clock import FakeClock

SCALE_RV = "283"  # kubectl scale --replicas=4 in deployment-lifecycle


@pytest.fixture
def lifecycle(fixtures_dir: Path) -> Path:
    return fixtures_dir / "deployment-lifecycle"


class FailingOnceSink(CollectingSink):
    def __init__(self) -> None:
        super().__init__()
        self.failures = 1

    async def submit(self, observations: Sequence[Observation], *, wait: bool = False) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("the pipeline's spool is unwritable")
        await super().submit(observations, wait=wait)


def _configured_differ(
    sink: CollectingSink, cache: MemoryDiffCache, clock: FakeClock, **kwargs: object
) -> ObjectDiffer:
    """A differ with the hold ``serve`` uses by default (kube.diff_hold_seconds, kube.diff_wait_seconds)."""
    kube = KubeConfig()
    options: dict[str, object] = {
        "claim_wait_seconds": kube.diff_wait_seconds,
        "hold_seconds": kube.diff_hold_seconds,
        "max_pending_bytes": kube.diff_pending_max_bytes,
    }
    options.update(kwargs)
    return ObjectDiffer(sink, Metrics(), cache, clock=clock, **options)  # type: ignore[arg-type]


async def _feed_deployments(differ: ObjectDiffer, lifecycle: Path) -> None:
    for event_type, obj in watch_lines(lifecycle, DEPLOYMENTS):
        await differ.on_event(CLUSTER, DEPLOYMENTS, event_type, obj, relisted=False)


def test_the_default_hold_covers_a_60s_audit_lag() -> None:
    kube = KubeConfig()
    # The apiserver's --audit-webhook-batch-max-wait is 30 s; a batch retried once arrives up to ~60 s late.
    assert kube.diff_hold_seconds >= 60 + kube.diff_wait_seconds


async def test_audit_arriving_40s_after_the_watch_still_gets_its_diff(lifecycle: Path) -> None:
    """Time is driven through the differ's and the cache's injectable clock: the watch events are handled at
    t, the audit batch arrives at t + 40 s, and the differ's deadline check runs at t + 40 s in between."""
    clock = FakeClock()
    cache = MemoryDiffCache(clock=clock)
    sink = CollectingSink()
    differ = _configured_differ(sink, cache, clock)
    await _feed_deployments(differ, lifecycle)
    clock.now += 40.0
    await differ.flush_unclaimed()
    assert not any(o.tags["resourceVersion"] == SCALE_RV for o in sink.observations), "held, not emitted yet"
    metrics = Metrics()
    attacher = DiffAttacher(cache, KubeConfig().diff_wait_seconds, metrics)
    scale = _first_scale(lifecycle)
    assert attacher.prepare(scale) is None, "attached at once, no wait"
    assert "spec.replicas 2 -> 4" in str(next(log for log in scale.logs if log.name == "diff").fields["diff"])
    assert metrics.diff_attach.labels("hit")._value.get() == 1
    # Once the hold has passed, the claimed change is not emitted again; the others are.
    clock.now += KubeConfig().diff_hold_seconds
    await differ.flush_unclaimed()
    assert sink.observations and not any(o.tags["resourceVersion"] == SCALE_RV for o in sink.observations)
    assert differ.pending == 0


async def test_with_the_old_four_second_hold_the_same_lag_loses_the_attachment(lifecycle: Path) -> None:
    clock = FakeClock()
    cache = MemoryDiffCache(clock=clock)
    sink = CollectingSink()
    differ = _configured_differ(sink, cache, clock, hold_seconds=None)  # claim wait 3 s + margin 1 s
    await _feed_deployments(differ, lifecycle)
    clock.now += 40.0
    await differ.flush_unclaimed()
    assert any(o.tags["resourceVersion"] == SCALE_RV for o in sink.observations)
    scale = _first_scale(lifecycle)
    pending = DiffAttacher(cache, 0.01).prepare(scale)
    assert pending is not None
    await pending
    assert not any(log.name == "diff" for log in scale.logs)


async def test_a_failed_emission_keeps_the_changes_and_the_next_attempt_emits_them(lifecycle: Path) -> None:
    clock = FakeClock()
    sink = FailingOnceSink()
    differ = _configured_differ(sink, MemoryDiffCache(clock=clock), clock)
    await _feed_deployments(differ, lifecycle)
    held = differ.pending
    assert held > 0
    with pytest.raises(OSError):
        await differ.flush_unclaimed(now=math.inf)
    assert differ.pending == held, "nothing let go before the pipeline accepted it"
    assert await differ.flush_unclaimed(now=math.inf) == held
    assert differ.pending == 0
    assert len({o.tags["resourceVersion"] for o in sink.observations}) == held


async def test_held_changes_are_bounded_in_bytes(lifecycle: Path) -> None:
    clock = FakeClock()
    sink = CollectingSink()
    leader = _configured_differ(sink, MemoryDiffCache(clock=clock), clock, max_pending_bytes=4096)
    await _feed_deployments(leader, lifecycle)
    assert leader.pending_bytes <= 4096
    assert sink.observations, "past the bound a leader emits its oldest changes early rather than dropping them"
    standby_sink = CollectingSink()
    metrics = Metrics()
    standby = ObjectDiffer(
        standby_sink, metrics, MemoryDiffCache(clock=clock), clock=clock, hold_seconds=90, max_pending_bytes=4096
    )
    standby.stand_by(CLUSTER)
    await _feed_deployments(standby, lifecycle)
    assert standby.pending_bytes <= 4096 and standby.dropped > 0
    exposition = metrics.exposition().decode()
    assert f'kelemetry_watch_held_dropped_total{{watcher="objects"}} {float(standby.dropped)}' in exposition
    assert f'kelemetry_watch_held_bytes{{watcher="objects"}} {float(standby.pending_bytes)}' in exposition
    assert not standby_sink.observations


async def test_a_standby_lets_go_of_what_the_leader_handled_and_takes_over_after_it(lifecycle: Path) -> None:
    clock = FakeClock()
    cache = MemoryDiffCache(clock=clock)
    leader_sink, standby_sink = CollectingSink(), CollectingSink()
    leader = _configured_differ(leader_sink, cache, clock)
    standby = _configured_differ(standby_sink, cache, clock)
    standby.stand_by(CLUSTER)
    lines = list(watch_lines(lifecycle, DEPLOYMENTS))
    half = len(lines) // 2
    for event_type, obj in lines[:half]:
        for differ in (leader, standby):
            await differ.on_event(CLUSTER, DEPLOYMENTS, event_type, obj, relisted=False)
    await leader.flush_unclaimed(now=math.inf)
    emitted = {o.tags["resourceVersion"] for o in leader_sink.observations}
    marks = leader.progress(CLUSTER)
    assert marks and standby.trim(CLUSTER, marks) == len(emitted) and standby.pending == 0
    # The leader dies; changes go on while nobody leads, and the standby takes over.
    for event_type, obj in lines[half:]:
        await standby.on_event(CLUSTER, DEPLOYMENTS, event_type, obj, relisted=False)
    last = lines[-1][1]["metadata"]
    last_key = f"{CLUSTER}/apps/deployments/{last['namespace']}/{last['name']}"
    assert not standby_sink.observations
    assert await cache.get(last_key, last["resourceVersion"]) is None, "a standby stores nothing for audit spans"
    resumed = await standby.take_over(CLUSTER, marks)
    assert await cache.get(last_key, last["resourceVersion"]) is not None
    assert resumed == standby.pending > 0
    await standby.flush_unclaimed(now=math.inf)
    taken = [o.tags["resourceVersion"] for o in standby_sink.observations]
    assert len(taken) == resumed and not set(taken) & emitted


async def test_a_standby_event_tracker_emits_nothing_until_it_takes_over(lifecycle: Path) -> None:
    cursor = MemoryEventCursor()
    leader_sink, standby_sink = CollectingSink(), CollectingSink()
    recorded_now = 1_763_700_000 * 10**9
    leader = EventTracker(leader_sink, Metrics(), cursor, max_age_seconds=1e9, wall_clock_ns=lambda: recorded_now)
    standby = EventTracker(standby_sink, Metrics(), cursor, max_age_seconds=1e9, wall_clock_ns=lambda: recorded_now)
    standby.stand_by(CLUSTER)
    lines = list(watch_lines(lifecycle, CORE_EVENTS))
    half = len(lines) // 2
    for event_type, obj in lines[:half]:
        for tracker in (leader, standby):
            await tracker.on_event(CLUSTER, CORE_EVENTS, event_type, obj, relisted=False)
    assert leader.emitted > 0 and not standby_sink.observations
    # The leader's last marks are a little behind what it emitted: the cursor covers the difference.
    marks = leader.progress(CLUSTER)
    for event_type, obj in lines[half:]:
        await standby.on_event(CLUSTER, CORE_EVENTS, event_type, obj, relisted=False)
    assert marks and standby.trim(CLUSTER, marks) > 0
    await standby.take_over(CLUSTER, marks)
    keys = [o.dedup_key for o in leader_sink.observations + standby_sink.observations]
    assert len(keys) == len(set(keys)), "each occurrence once across the two"
    assert standby.emitted > 0


async def test_a_progress_mark_never_passes_a_change_still_held(lifecycle: Path) -> None:
    """A relist delivers objects in name order, not resourceVersion order: releasing a newer change first must
    not tell standbys that an older one, still held, is handled."""
    clock = FakeClock()
    differ = _configured_differ(CollectingSink(), MemoryDiffCache(clock=clock), clock)
    await _feed_deployments(differ, lifecycle)
    queue = differ._held[CLUSTER]
    newest = max(queue, key=lambda held: int(held.record.resource_version))
    queue.remove(newest)
    queue.appendleft(newest)  # as if the newest arrived first
    await differ._emit(CLUSTER, limit=1)
    mark = int(differ.progress(CLUSTER)["deployments.apps"])
    assert mark < min(int(held.record.resource_version) for held in queue)


async def test_state_and_held_changes_survive_a_restart_through_the_state_file(
    lifecycle: Path, tmp_path: Path
) -> None:
    lines = list(watch_lines(lifecycle, DEPLOYMENTS))
    scale = next(i for i, (_, obj) in enumerate(lines) if obj["metadata"]["resourceVersion"] == SCALE_RV)
    clock = FakeClock()
    state = await SqliteDifferState(tmp_path / "state.db").open()
    first = _configured_differ(CollectingSink(), MemoryDiffCache(clock=clock), clock, state=state)
    for event_type, obj in lines[:scale]:
        await first.on_event(CLUSTER, DEPLOYMENTS, event_type, obj, relisted=False)
    held = first.pending
    await first.persist()
    await state.close()  # the process ends here without emitting what it held

    state = await SqliteDifferState(tmp_path / "state.db").open()
    sink = CollectingSink()
    second = _configured_differ(sink, MemoryDiffCache(clock=clock), clock, state=state)
    assert await second.restore() == first.watched_objects
    assert second.pending == held
    # The first list after the restart shows the object as the scale left it, while nobody watched.
    _, listed = lines[scale]
    await second.on_event(CLUSTER, DEPLOYMENTS, "ADDED", listed, relisted=True)
    await second.flush_unclaimed(now=math.inf)
    await state.close()
    late = [o for o in sink.observations if o.tags.get("observedLate") is True]
    assert [o.tags["resourceVersion"] for o in late] == [SCALE_RV]
    assert "spec.replicas 2 -> 4" in str(late[0].logs[0].fields["diff"])
    assert late[0].tags["fieldManager"] == "kubectl"
    assert len(sink.observations) == held + 1, "what the first process held comes out after the restart"
