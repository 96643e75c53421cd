"""The example linker packages, installed and discovered through entry points, end to end through the App."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
from aiohttp import ClientSession
from kelemetry_crosscluster_linker import CrossClusterLinker
from kelemetry_pod_node_linker import PodNodeLinker
from kelemetry_pvc_pv_linker import PvcPvLinker

from kelemetry_py.app import App
from kelemetry_py.config import PluginsConfig
from kelemetry_py.model import Span, object_trace_id, window_of
from kelemetry_py.plugins import load_linkers
from kelemetry_py.sources.replay import read_batches, replay
from kelemetry_py.times import kube_time_ns as parse_time_ns
from tests.plugins.support import running_app

NODE_KEY = "fixture//nodes//node-1"


def fixture_events(fixtures_dir: Path, scenario: str) -> list[dict[str, Any]]:
    lines = (fixtures_dir / scenario / "audit.jsonl").read_bytes().splitlines()
    return [event for line in lines for event in orjson.loads(line)["items"]]


async def trace_spans(app: App, key: str, times_ns: set[int]) -> list[Span]:
    assert app.components is not None and app.components.store is not None
    spans: list[Span] = []
    for window in sorted({window_of(t, 1800) for t in times_ns}):
        spans.extend(await app.components.store.get_trace(object_trace_id(key, window)))
    return spans


def links_in(spans: list[Span], link_class: str) -> set[tuple[str, str, str]]:
    return {
        (str(s.attributes["linkRole"]), str(s.attributes["linkedResource"]), str(s.attributes["linkedName"]))
        for s in spans
        if s.service == "link" and s.attributes["linkClass"] == link_class
    }


def test_installed_linkers_are_discovered() -> None:
    names = {linker.name: linker for linker in load_linkers(PluginsConfig())}
    assert isinstance(names["pod-node"], PodNodeLinker)
    assert isinstance(names["pvc-pv"], PvcPvLinker)
    assert isinstance(names["cross-cluster"], CrossClusterLinker)


async def test_recorded_pods_are_linked_to_node_1(fixtures_dir: Path, tmp_path: Path) -> None:
    events = fixture_events(fixtures_dir, "deployment-lifecycle")
    scheduled = {
        event["objectRef"]["name"]
        for event in events
        if event.get("objectRef", {}).get("resource") == "pods"
        and ((event.get("responseObject") or {}).get("spec") or {}).get("nodeName") == "node-1"
    }
    assert len(scheduled) == 8
    times = {parse_time_ns(event["stageTimestamp"]) for event in events}
    async with running_app(tmp_path) as app:
        batches = read_batches([fixtures_dir / "deployment-lifecycle" / "audit.jsonl"])
        result = await replay(batches, target=app.base_url, cluster="fixture")
        assert result.failed == 0
        assert app.components is not None
        await app.settle()
        node_links = links_in(await trace_spans(app, NODE_KEY, times), "node")
        assert node_links == {("child", "pods", name) for name in scheduled}
        for name in scheduled:
            pod_spans = await trace_spans(app, f"fixture//pods/shop/{name}", times)
            assert ("parent", "nodes", "node-1") in links_in(pod_spans, "node")
            assert any(s.service == "link" and s.attributes["linkClass"] == "owner" for s in pod_spans)
        assert app.components.graph is not None


def configmap_event(fixtures_dir: Path) -> dict[str, Any]:
    return next(
        event
        for event in fixture_events(fixtures_dir, "errors-and-links")
        if event["verb"] == "create" and event.get("objectRef", {}).get("name") == "settings"
    )


async def post(app: App, cluster: str, items: list[dict[str, Any]]) -> None:
    body = orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": items})
    async with ClientSession() as session:
        response = await session.post(
            f"{app.base_url}/audit/{cluster}", data=body, headers={"Content-Type": "application/json"}
        )
        assert response.status == 200, await response.text()
    assert app.components is not None
    await app.settle()


async def test_propagated_object_links_to_its_origin_in_another_cluster(fixtures_dir: Path, tmp_path: Path) -> None:
    event = copy.deepcopy(configmap_event(fixtures_dir))
    event["responseObject"]["metadata"].setdefault("labels", {})["multicluster.kelemetry.io/origin-cluster"] = "hub"
    time_ns = parse_time_ns(event["stageTimestamp"])
    async with running_app(tmp_path) as app:
        await post(app, "member-1", [event])
        member = await trace_spans(app, "member-1//configmaps/shop/settings", {time_ns})
        assert links_in(member, "cross-cluster") == {("parent", "configmaps", "settings")}
        (link,) = [s for s in member if s.service == "link"]
        assert link.attributes["linkedCluster"] == "hub"
        hub = await trace_spans(app, "hub//configmaps/shop/settings", {time_ns})
        assert links_in(hub, "cross-cluster") == {("child", "configmaps", "settings")}
        assert {s.attributes["cluster"] for s in hub} == {"hub"}


async def test_claim_and_volume_are_linked(fixtures_dir: Path, tmp_path: Path) -> None:
    template = configmap_event(fixtures_dir)
    claim = copy.deepcopy(template)
    claim["auditID"] = "pvc-create"
    claim["objectRef"] = {"resource": "persistentvolumeclaims", "namespace": "shop", "name": "data", "apiVersion": "v1"}
    claim["requestObject"] = None
    claim["responseObject"] = {
        "kind": "PersistentVolumeClaim",
        "apiVersion": "v1",
        "metadata": {"name": "data", "namespace": "shop", "uid": "claim-uid", "resourceVersion": "9001"},
        "spec": {"volumeName": "pvc-claim-uid", "accessModes": ["ReadWriteOnce"]},
        "status": {"phase": "Bound"},
    }
    time_ns = parse_time_ns(claim["stageTimestamp"])
    async with running_app(tmp_path) as app:
        await post(app, "fixture", [claim])
        claim_spans = await trace_spans(app, "fixture//persistentvolumeclaims/shop/data", {time_ns})
        assert links_in(claim_spans, "volume") == {("child", "persistentvolumes", "pvc-claim-uid")}
        volume_spans = await trace_spans(app, "fixture//persistentvolumes//pvc-claim-uid", {time_ns})
        assert links_in(volume_spans, "volume") == {("parent", "persistentvolumeclaims", "data")}
