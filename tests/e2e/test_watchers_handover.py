"""Leader hand-over without a gap (warm standbys), a single replica restarting over its saved differ state,
a prompt hand-over through a released Lease, and watchers that die being restarted (readiness shows it)."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import ClientSession

from kelemetry_py.app import App
from kelemetry_py.metrics import Metrics
from kelemetry_py.model import Span
from kelemetry_py.sources.kubewatch import STATE_FILE
from tests.e2e.conftest import AppFactory
from tests.e2e.test_core_pipeline import key_of
from tests.e2e.test_watchers_lifecycle import DEPLOYMENT, LIFECYCLE, log_lines
from tests.e2e.test_watchers_resilience import observed, received, settle, undisturbed_run
from tests.kube.helpers import DOUBLE_TOKEN, all_watching, caught_up, cluster_watchers, watcher_settings
from tests.support.kube_double import KubeApiDouble
from tests.support.otlp_receiver import GrpcOtlpReceiver

KINDS = ("objects", "events")


def object_span_counts(spans: list[Span]) -> Counter[tuple[str, int]]:
    return Counter((key_of(s), s.start_ns) for s in spans if s.service == "object")


async def crash_watching(app: App) -> None:
    """End an App's watchers as a crash would: no final flush, no Lease handed back, no state saved."""
    assert app.watching is not None
    for elector in cluster_watchers(app).electors.values():
        elector.release_on_cancel = False
    tasks = [*app.watching.service._tasks, *app.watching._tasks]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    app.watching = None  # what the crashed process held is gone; App.stop must not stop it gracefully


def recorded_time_of(scenario_dir: Path, stream: str, resource_version: str) -> float:
    """When the recorder received the watch line that brought ``resource_version`` (recording's unix seconds)."""
    lines = (scenario_dir / "watch" / f"{stream}.jsonl").read_text().splitlines()
    times = (scenario_dir / "watch" / f"{stream}.times").read_text().split()
    for line, when in zip(lines, times, strict=True):
        if json.loads(line)["object"]["metadata"].get("resourceVersion") == resource_version:
            return float(when)
    raise AssertionError(f"no {stream} line at resourceVersion {resource_version}")


def handover_settings(
    directory: Path, double: KubeApiDouble, receiver: GrpcOtlpReceiver, redis_url: str, name: str, **overrides: object
) -> dict[str, object]:
    directory.mkdir()
    return watcher_settings(
        directory,
        double.url,
        **{
            "otlp.endpoint": receiver.endpoint,
            "redis.url": redis_url,
            "kube.leader_election": True,
            "kube.identity": f"replica-{name}",
            **overrides,
        },
    )


async def test_a_change_made_while_nobody_leads_is_emitted_once_by_the_warm_standby(
    fixtures_dir: Path, redis_url: str, otlp_receiver: GrpcOtlpReceiver, make_app: AppFactory, tmp_path: Path
) -> None:
    reference = await undisturbed_run(fixtures_dir, make_app, tmp_path / "reference")
    scenario = fixtures_dir / LIFECYCLE
    scale_time = recorded_time_of(scenario, "apps_v1_deployments", "283")  # kubectl scale --replicas=4
    async with KubeApiDouble(scenario, tokens=[DOUBLE_TOKEN]) as double:
        lease = {"kube.lease_duration_seconds": 3.0}
        leader = await make_app(**handover_settings(tmp_path / "a", double, otlp_receiver, redis_url, "a", **lease))
        for kind in KINDS:
            await asyncio.wait_for(cluster_watchers(leader).electors[kind].leading.wait(), 15)
        standby = await make_app(**handover_settings(tmp_path / "b", double, otlp_receiver, redis_url, "b", **lease))
        await all_watching(leader)
        engines = await all_watching(standby)
        assert engines == len(cluster_watchers(leader).engines["objects"]) + len(
            cluster_watchers(leader).engines["events"]
        ), "the standby watches everything the leader does"
        double.release_until(scale_time - 0.001)
        await caught_up(leader, double)
        await caught_up(standby, double)
        assert standby.watching is not None and standby.watching.differ.pending > 0, "the standby holds changes too"
        assert standby.watching.events.emitted == 0, "a standby emits nothing"

        leader_metrics = await _drained(leader)
        await crash_watching(leader)
        # The scale (and what followed it) happens while nobody leads: the leader is dead, its Lease not expired.
        gap = double.release_until(scale_time + 1.0)
        assert gap > 0
        assert not any(cluster_watchers(standby).electors[kind].is_leader for kind in KINDS)
        for kind in KINDS:
            await asyncio.wait_for(cluster_watchers(standby).electors[kind].leading.wait(), 15)
        assert cluster_watchers(standby).electors["objects"].previous_holder == "replica-a", "taken after expiry"
        double.release()
        await caught_up(standby, double)
        standby_metrics = await settle(standby)
        spans = await received(otlp_receiver, leader_metrics, standby_metrics)
        handovers = standby_metrics.leader_handovers.labels("fixture")._value.get()

    assert observed(spans) == reference, "every change and Event exactly once across the hand-over"
    scaled = [
        s
        for s in spans
        if s.service == "diff" and key_of(s) == DEPLOYMENT and "spec.replicas 2 -> 4" in log_lines(s, "diff")
    ]
    assert len(scaled) == 1 and scaled[0].attributes["fieldManager"] == "kubectl"
    assert max(object_span_counts(spans).values()) == 1, "each object span written once"
    assert handovers == 2  # objects and events


async def _drained(app: App) -> Metrics:
    assert app.components is not None
    await app.settle()
    return app.components.metrics


async def test_a_stopping_leader_releases_its_lease_and_the_standby_leads_at_once(
    fixtures_dir: Path,
    redis_url: str,
    otlp_receiver: GrpcOtlpReceiver,
    make_app: AppFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="kelemetry_py.sources.watchers")
    # A lease that would take 60 s to expire, and candidates that retry every 20 s: only a released Lease, seen
    # by the standby's watch on it, explains a take-over within the 15 s waited below.
    timings = {
        "kube.lease_duration_seconds": 60.0,
        "kube.renew_deadline_seconds": 40.0,
        "kube.retry_period_seconds": 20.0,
    }
    async with KubeApiDouble(fixtures_dir / LIFECYCLE, tokens=[DOUBLE_TOKEN]) as double:
        leader = await make_app(**handover_settings(tmp_path / "a", double, otlp_receiver, redis_url, "a", **timings))
        for kind in KINDS:
            await asyncio.wait_for(cluster_watchers(leader).electors[kind].leading.wait(), 15)
        standby = await make_app(**handover_settings(tmp_path / "b", double, otlp_receiver, redis_url, "b", **timings))
        await all_watching(standby)
        double.release(double.pending // 2)
        await caught_up(leader, double)
        await caught_up(standby, double)
        electors = cluster_watchers(standby).electors
        started = time.monotonic()
        await leader.stop()
        await asyncio.wait_for(asyncio.gather(*(electors[kind].leading.wait() for kind in KINDS)), 15)
        took = time.monotonic() - started
        assert all(electors[kind].previous_holder == "" for kind in KINDS), "taken from a released Lease"
        for kind in KINDS:
            wanted = f"replica-b took over the {kind} watcher of cluster fixture from a released lease, resuming after"
            # The log line follows the Lease by a Redis read; there is no event to wait on.
            await _until(functools.partial(_logged, caplog, wanted), 1)
        assert standby.components is not None
        exposition = standby.components.metrics.exposition().decode()
        assert 'kelemetry_leader{cluster="fixture"} 2.0' in exposition
        assert 'kelemetry_leader_handovers_total{cluster="fixture"} 2.0' in exposition
    print(f"\nhand-over after a graceful stop: the standby led {took:.3f} s after stop() began")


async def _logged(caplog: pytest.LogCaptureFixture, wanted: str) -> int:
    return int(any(wanted in record.getMessage() for record in caplog.records))


async def test_a_single_replica_restarting_diffs_its_first_list_against_its_saved_state(
    fixtures_dir: Path, otlp_receiver: GrpcOtlpReceiver, make_app: AppFactory, tmp_path: Path
) -> None:
    scenario = fixtures_dir / LIFECYCLE
    scale_time = recorded_time_of(scenario, "apps_v1_deployments", "283")
    async with KubeApiDouble(scenario, tokens=[DOUBLE_TOKEN]) as double:
        settings = watcher_settings(tmp_path, double.url, **{"otlp.endpoint": otlp_receiver.endpoint})
        first = await make_app(**settings)
        await all_watching(first)
        double.release_until(scale_time - 0.001)
        await caught_up(first, double)
        first_metrics = await settle(first)
        await first.stop()
        assert (tmp_path / "app0" / STATE_FILE).is_file()

        double.release_until(scale_time)  # kubectl scale --replicas=4, while nobody watches
        second = await make_app(**{**settings, "store.path": str(tmp_path / "app0" / "traces.db")})
        await all_watching(second)
        await caught_up(second, double)
        second_metrics = await settle(second)
        spans = await received(otlp_receiver, first_metrics, second_metrics)

    late = [s for s in spans if s.service == "diff" and s.attributes.get("observedLate") is True]
    scaled = [s for s in late if key_of(s) == DEPLOYMENT and "spec.replicas 2 -> 4" in log_lines(s, "diff")]
    assert len(scaled) == 1, [log_lines(s, "diff") for s in late]
    assert scaled[0].attributes["fieldManager"] == "kubectl"
    assert scaled[0].attributes["resourceVersion"] == "283"
    before = [s for s in spans if s.service == "diff" and s.attributes.get("observedLate") is not True]
    assert before, "the changes seen live before the restart are not marked late"


async def test_a_watcher_that_dies_is_restarted_and_readiness_shows_the_cluster_down(
    fixtures_dir: Path, make_app: AppFactory, tmp_path: Path
) -> None:
    async with KubeApiDouble(fixtures_dir / LIFECYCLE, tokens=[DOUBLE_TOKEN]) as double:
        app = await make_app(**watcher_settings(tmp_path, double.url))
        await all_watching(app)
        deployments = next(
            engine
            for rtype, engine in cluster_watchers(app).engines["objects"].items()
            if rtype.resource == "deployments"
        )
        async with ClientSession() as session:
            assert await _ready(session, app) == 200
            # The apiserver refuses the deployments collection for a while, and a watch line the engine does not
            # expect (an event whose object is not an object) kills its task.
            double.fail_next("/apis/apps/v1/deployments", 500, times=4)
            double.send_raw_line("apps", "v1", "deployments", b'{"type":"MODIFIED","object":[]}\n')
            await _until(lambda: _ready(session, app), 503)
            assert b'kelemetry_watchers_up{cluster="fixture"} 0.0' in await _metrics(session, app)
            await _until(lambda: _ready(session, app), 200)
            assert b'kelemetry_watchers_up{cluster="fixture"} 1.0' in await _metrics(session, app)
            assert b'kelemetry_watch_restarts_total{cluster="fixture",reason="crash",resource="deployments.apps"}' in (
                await _metrics(session, app)
            )
        double.release(resource="deployments")
        await caught_up(app, double)  # the restarted engine follows the resource again
        assert deployments.watching.is_set()


async def _ready(session: ClientSession, app: App) -> int:
    async with session.get(f"{app.base_url}/readyz") as response:
        return response.status


async def _metrics(session: ClientSession, app: App) -> bytes:
    async with session.get(f"{app.base_url}/metrics") as response:
        return await response.read()


async def _until(probe: Callable[[], Awaitable[int]], wanted: int, within: float = 30.0) -> None:
    """Poll an observable condition (readiness has no event to wait on) until it holds, with a deadline."""
    async with asyncio.timeout(within):
        while True:
            if await probe() == wanted:
                return
            await asyncio.sleep(0.05)


async def test_a_replay_whose_audit_arrives_40s_after_the_watch_still_attaches_the_scale_diff(
    fixtures_dir: Path, otlp_receiver: GrpcOtlpReceiver, make_app: AppFactory, tmp_path: Path
) -> None:
    """The whole watch stream first; then the differ's deadline check as it runs 40 s later (its clock is
    monotonic, so ``now`` is passed as that moment); then every audit batch."""
    scenario = fixtures_dir / LIFECYCLE
    async with KubeApiDouble(scenario, tokens=[DOUBLE_TOKEN]) as double:
        app = await make_app(**watcher_settings(tmp_path, double.url, **{"otlp.endpoint": otlp_receiver.endpoint}))
        await all_watching(app)
        double.release()
        await caught_up(app, double)
        assert app.watching is not None
        assert await app.watching.differ.flush_unclaimed(now=time.monotonic() + 40.0) == 0, "all still held"
        async with ClientSession() as session:
            for body in (scenario / "audit.jsonl").read_bytes().splitlines():
                async with session.post(
                    f"{app.base_url}/audit/fixture", data=body, headers={"Content-Type": "application/json"}
                ) as response:
                    assert response.status == 200
        assert app.components is not None
        await app.settle()  # every audit span has looked for its diff
        metrics = await settle(app)
        spans = await received(otlp_receiver, metrics)
    scales = sorted(
        (s for s in spans if s.service == "audit" and key_of(s) == DEPLOYMENT and s.name == "admin patch scale"),
        key=lambda span: span.start_ns,
    )
    assert [log_lines(s, "diff") for s in scales] == [
        ["metadata.generation 1 -> 2", "spec.replicas 2 -> 4"],
        ["metadata.generation 3 -> 4", "spec.replicas 4 -> 2"],
    ]
    assert metrics.diff_attach.labels("hit")._value.get() > 0
