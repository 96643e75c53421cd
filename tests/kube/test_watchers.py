from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from kelemetry_py.config import ClusterConfig, Config
from kelemetry_py.kube.catalog import ClusterCatalogs
from kelemetry_py.kube.client import KubeClient
from kelemetry_py.kube.discovery import Discovery, ResourceSelector
from kelemetry_py.kube.election import LeaderElector
from kelemetry_py.kube.watch import ResourceType, WatchHandler
from kelemetry_py.metrics import Metrics
from kelemetry_py.sources.watchers import WatcherKind, WatcherService
from tests.kube.conftest import TOKEN
from tests.kube.helpers import RecordingHandler, write_kubeconfig
from tests.support.kube_double import KubeApiDouble

SCENARIO = "deployment-lifecycle"


class NullSink:
    async def submit(self, observations: object, *, wait: bool = False) -> None:
        return None


def recorded_changes(fixtures_dir: Path, streams: set[str]) -> Counter[tuple[str, str, str]]:
    found: Counter[tuple[str, str, str]] = Counter()
    for path in (fixtures_dir / SCENARIO / "watch").glob("*.jsonl"):
        group, _, resource = path.stem.split("_")
        key = resource if group == "core" else f"{resource}.{group}"
        if key not in streams:
            continue
        for line in path.read_text().splitlines():
            event = json.loads(line)
            if event["type"] != "BOOKMARK":
                found[(key, event["type"], event["object"]["metadata"]["resourceVersion"])] += 1
    return found


def delivered(handler: RecordingHandler) -> Counter[tuple[str, str, str]]:
    return Counter((e.rtype.group_resource, e.event_type, e.rv) for e in handler.events if not e.relisted)


def _always(handler: WatchHandler) -> Callable[[WatcherKind], WatchHandler]:
    return lambda kind: handler


def config_for(tmp_path: Path, url: str, **kube: object) -> Config:
    config = Config()
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", url, token=TOKEN)
    config.kube.clusters = [ClusterConfig(name="fixture", kubeconfig=str(kubeconfig))]
    for key, value in kube.items():
        setattr(config.kube, key, value)
    return config


async def test_selector_defaults_skip_events_and_leases() -> None:
    selector = ResourceSelector.from_config(Config().kube)
    assert selector.selects(ResourceType("apps", "v1", "deployments", "Deployment", True))
    assert not selector.selects(ResourceType("", "v1", "events", "Event", True))
    assert not selector.selects(ResourceType("events.k8s.io", "v1", "events", "Event", True))
    assert not selector.selects(ResourceType("coordination.k8s.io", "v1", "leases", "Lease", True))
    only_apps = ResourceSelector(include=("deployments.apps", "pods"))
    assert only_apps.selects(ResourceType("", "v1", "pods", "Pod", True))
    assert not only_apps.selects(ResourceType("apps", "v1", "replicasets", "ReplicaSet", True))


async def test_discovery_finds_watchable_preferred_resources_and_fills_the_catalog(
    double: KubeApiDouble, client: KubeClient
) -> None:
    catalogs = ClusterCatalogs()
    discovery = Discovery(client, catalogs=catalogs)
    assert await discovery.refresh()
    names = {r.group_resource for r in discovery.resources}
    assert {
        "pods",
        "deployments.apps",
        "events",
        "events.events.k8s.io",
        "leases.coordination.k8s.io",
    } <= names
    assert "tokenreviews.authentication.k8s.io" not in names, "create-only resources cannot be watched"
    autoscaling = [r for r in discovery.resources if r.resource == "horizontalpodautoscalers"]
    assert [r.version for r in autoscaling] == ["v2"], "one preferred version per resource"
    assert catalogs.for_cluster("fixture").by_kind("apps", "Deployment") is not None
    assert not await discovery.refresh(), "nothing changed"
    assert discovery.generation == 1


async def test_service_delivers_every_object_change_and_event_once(
    double: KubeApiDouble, fixtures_dir: Path, tmp_path: Path
) -> None:
    objects, events = RecordingHandler(), RecordingHandler()
    handlers: dict[WatcherKind, WatchHandler] = {"objects": objects, "events": events}
    service = WatcherService(config_for(tmp_path, double.url), NullSink(), Metrics(), handlers.__getitem__)
    await service.start()
    try:
        cluster = service.clusters["fixture"]
        await asyncio.wait_for(cluster.discovery.wait_for_change(0), 10)
        engines = len(cluster.engines["objects"]) + len(cluster.engines["events"])
        assert {r.group_resource for r in cluster.engines["events"]} == {"events", "events.events.k8s.io"}
        await double.wait_for_watches(engines)
        double.release()
        watched_objects = {r.group_resource for r in cluster.engines["objects"]}
        expected_objects = recorded_changes(fixtures_dir, watched_objects)
        expected_events = recorded_changes(fixtures_dir, {"events", "events.events.k8s.io"})
        await objects.wait_for(lambda h: sum(delivered(h).values()) >= sum(expected_objects.values()))
        await events.wait_for(lambda h: sum(delivered(h).values()) >= sum(expected_events.values()))
    finally:
        await service.stop()
    assert delivered(objects) == expected_objects
    assert delivered(events) == expected_events
    assert "leases.coordination.k8s.io" not in watched_objects and "events" not in watched_objects
    assert all(r.headers.get("Authorization") == f"Bearer {TOKEN}" for r in double.requests)


async def test_two_replicas_one_watches_and_the_other_takes_over(
    double: KubeApiDouble, fixtures_dir: Path, tmp_path: Path
) -> None:
    config = config_for(
        tmp_path,
        double.url,
        leader_election=True,
        lease_duration_seconds=0.9,
        include_resources=["deployments"],
    )
    config.kube.watch_events = False
    replicas = []
    for name in ("replica-a", "replica-b"):
        handler = RecordingHandler()
        service = WatcherService(config, NullSink(), Metrics(), _always(handler), identity=name)
        await service.start()
        replicas.append((service, handler))
    try:
        electors = [service.clusters["fixture"].electors["objects"] for service, _ in replicas]
        winner_index = await _first_leader(electors)
        leader, leader_handler = replicas[winner_index]
        follower, follower_handler = replicas[1 - winner_index]
        await _engines_watching(leader)
        assert double.watcher_count("deployments") == 1, "only the leader watches"
        lines = recorded_changes(fixtures_dir, {"deployments.apps"})
        double.release(6, resource="deployments")
        await leader_handler.wait_for(lambda h: sum(delivered(h).values()) >= 6)
        # The leader dies without handing the lease back.
        for elector in leader.clusters["fixture"].electors.values():
            elector.release_on_cancel = False
        await leader.stop()
        follower_elector = follower.clusters["fixture"].electors["objects"]
        await asyncio.wait_for(follower_elector.leading.wait(), 10)
        await _engines_watching(follower)
        double.release(resource="deployments")
        total = sum(lines.values())
        await follower_handler.wait_for(lambda h: sum(delivered(h).values()) >= total - 6)
    finally:
        for service, _ in replicas:
            await service.stop()
    assert delivered(leader_handler) + delivered(follower_handler) == lines
    assert not delivered(leader_handler) & delivered(follower_handler)


async def _engines_watching(service: WatcherService) -> None:
    cluster = service.clusters["fixture"]
    async with asyncio.timeout(10):
        await cluster.running["objects"].wait()
        for engine in list(cluster.engines["objects"].values()):
            await engine.watching.wait()


async def _first_leader(electors: list[LeaderElector]) -> int:
    waits = [asyncio.ensure_future(e.leading.wait()) for e in electors]
    done, pending = await asyncio.wait(waits, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    assert done
    return next(i for i, w in enumerate(waits) if w in done)
