"""The Kubernetes watchers inside the real App, against the apiserver double serving a recorded scenario while
the webhook receives the same scenario's audit stream: diffs on audit spans, Events once, no audit at all."""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path

import orjson
import pytest
from aiohttp import ClientSession

from kelemetry_py.app import App
from kelemetry_py.model import Span
from tests.e2e.conftest import AppFactory
from tests.e2e.test_core_pipeline import exported, key_of
from tests.kube.helpers import DOUBLE_TOKEN, all_watching, caught_up, watcher_settings
from tests.support.kube_double import KubeApiDouble
from tests.support.otlp_receiver import GrpcOtlpReceiver

LIFECYCLE = "deployment-lifecycle"
DEPLOYMENT = "fixture/apps/deployments/shop/web"


@pytest.fixture
async def lifecycle_double(fixtures_dir: Path) -> AsyncIterator[KubeApiDouble]:
    async with KubeApiDouble(fixtures_dir / LIFECYCLE, tokens=[DOUBLE_TOKEN]) as double:
        yield double


def audit_batches(scenario_dir: Path) -> Iterator[tuple[float, bytes]]:
    """Each recorded webhook POST with the time the sink received it."""
    with (scenario_dir / "requests.jsonl").open() as requests, (scenario_dir / "audit.jsonl").open("rb") as bodies:
        for request, body in zip(requests, bodies, strict=True):
            yield json.loads(request)["received"], body


async def replay_alongside_watches(app: App, double: KubeApiDouble, scenario_dir: Path) -> None:
    """Replay in recorded order: before each audit batch, the watch lines the recorder had received by then."""
    async with ClientSession() as session:
        for received, body in audit_batches(scenario_dir):
            double.release_until(received)
            await caught_up(app, double)
            async with session.post(
                f"{app.base_url}/audit/fixture", data=body, headers={"Content-Type": "application/json"}
            ) as response:
                assert response.status == 200, await response.text()
    double.release()
    await caught_up(app, double)
    assert app.components is not None
    await app.settle()


def recorded_event_occurrences(scenario_dir: Path) -> Counter[tuple[str, int, str]]:
    """(event namespace/name, occurrence, involved object key) of every Event the double will serve."""
    found: set[tuple[str, int, str]] = set()
    listed = json.loads((scenario_dir / "list" / "core_v1_events.json").read_text())["items"]
    watched = [json.loads(line)["object"] for line in (scenario_dir / "watch" / "core_v1_events.jsonl").open()]
    for event in [*listed, *watched]:
        meta, involved = event["metadata"], event["involvedObject"]
        group = involved.get("apiVersion", "v1").rpartition("/")[0]
        resource = {"Pod": "pods", "ReplicaSet": "replicasets", "Deployment": "deployments", "Node": "nodes"}[
            involved["kind"]
        ]
        namespace = involved.get("namespace", "") if resource != "nodes" else ""
        key = f"fixture/{group}/{resource}/{namespace}/{involved['name']}"
        found.add(
            (
                f"{meta['namespace']}/{meta['name']}",
                (event.get("series") or {}).get("count") or event.get("count") or 1,
                key,
            )
        )
    return Counter(found)


def event_occurrences(spans: list[Span]) -> Counter[tuple[str, int, str]]:
    return Counter(
        (str(s.attributes["eventName"]), int(s.attributes["count"]), key_of(s))  # type: ignore[arg-type]
        for s in spans
        if s.service == "event"
    )


def log_lines(span: Span, name: str) -> list[str]:
    return [line for log in span.logs if log.name == name for line in str(log.fields[name]).splitlines()]


async def test_diffs_land_on_audit_spans_and_events_once(
    fixtures_dir: Path,
    lifecycle_double: KubeApiDouble,
    otlp_receiver: GrpcOtlpReceiver,
    make_app: AppFactory,
    tmp_path: Path,
) -> None:
    app = await make_app(
        **watcher_settings(
            tmp_path, lifecycle_double.url, **{"otlp.endpoint": otlp_receiver.endpoint, "kube.diff_wait_seconds": 5.0}
        )
    )
    await all_watching(app)
    await replay_alongside_watches(app, lifecycle_double, fixtures_dir / LIFECYCLE)
    spans = await exported(otlp_receiver, app)

    deployment_audits = [s for s in spans if s.service == "audit" and key_of(s) == DEPLOYMENT]
    scales = [s for s in deployment_audits if s.name == "admin patch scale"]
    assert len(scales) == 2
    assert "spec.replicas 2 -> 4" in log_lines(scales[0], "diff")
    assert "spec.replicas 4 -> 2" in log_lines(scales[1], "diff")
    changes = json.loads(str(next(log for log in scales[0].logs if log.name == "diff").fields["changes"]))
    assert {"path": "spec.replicas", "op": "change", "old": 2, "new": 4} in changes
    image_patch = next(s for s in deployment_audits if s.name == "admin patch")
    assert 'spec.template.spec.containers[nginx].image "nginx:1.25" -> "nginx:1.26"' in log_lines(image_patch, "diff")
    # Controllers' writes get their diffs too: the deployment controller's status updates.
    status_updates = [s for s in deployment_audits if s.name.endswith("deployment-controller update status")]
    assert status_updates and any(log_lines(s, "diff") for s in status_updates)
    # A claimed change is shown once: not also as the differ's own diff span.
    claimed = {
        (key_of(s), s.attributes.get("resourceVersion")) for s in spans if s.service == "audit" and log_lines(s, "diff")
    }
    unclaimed = {(key_of(s), s.attributes.get("resourceVersion")) for s in spans if s.service == "diff"}
    assert claimed and not claimed & unclaimed

    # The new ReplicaSet's creation carries its snapshot with the new image.
    rs_creates = [
        s
        for s in spans
        if s.service == "audit" and s.attributes["resource"] == "replicasets" and s.attributes["verb"] == "create"
    ]
    images = sorted(
        orjson.loads(str(log.fields["snapshot"]))["spec"]["template"]["spec"]["containers"][0]["image"]
        for s in rs_creates
        for log in s.logs
        if log.name == "snapshot"
    )
    assert images == ["nginx:1.25", "nginx:1.26"]

    events = event_occurrences(spans)
    assert events == recorded_event_occurrences(fixtures_dir / LIFECYCLE), "every Event occurrence exactly once"
    on = Counter(key.split("/")[2] for _, _, key in events)
    assert on["deployments"] and on["replicasets"] and on["pods"]
    assert max(events.values()) == 1


async def test_without_audit_changes_become_diff_spans_attributed_to_field_managers(
    fixtures_dir: Path,
    lifecycle_double: KubeApiDouble,
    otlp_receiver: GrpcOtlpReceiver,
    make_app: AppFactory,
    tmp_path: Path,
) -> None:
    app = await make_app(
        **watcher_settings(tmp_path, lifecycle_double.url, **{"otlp.endpoint": otlp_receiver.endpoint})
    )
    await all_watching(app)
    lifecycle_double.release()
    await caught_up(app, lifecycle_double)
    assert app.watching is not None and app.components is not None
    # The recorded changes are days old by now: their watch events arrived that late, as the lag gauge says.
    newest_write = max(
        entry["time"]
        for line in (fixtures_dir / LIFECYCLE / "watch").glob("*.jsonl")
        for event in map(json.loads, line.read_text().splitlines())
        for entry in event["object"]["metadata"].get("managedFields", [])
        if "time" in entry
    )
    lag = app.components.metrics.registry.get_sample_value("kelemetry_watch_lag_seconds", {"cluster": "fixture"})
    recorded_age = time.time() - datetime.fromisoformat(newest_write.replace("Z", "+00:00")).timestamp()
    assert lag is not None and recorded_age - 5 <= lag
    await app.watching.differ.flush_unclaimed(now=math.inf)  # no audit span will claim anything
    await app.settle()
    spans = await exported(otlp_receiver, app)
    diffs = [s for s in spans if s.service == "diff"]

    def changed_by(key: str, line: str) -> set[tuple[object, object]]:
        return {
            (s.attributes["fieldManager"], s.attributes["operation"])
            for s in diffs
            if key_of(s) == key and line in log_lines(s, "diff")
        }

    assert changed_by(DEPLOYMENT, "spec.replicas 2 -> 4") == {("kubectl", "Update")}
    assert changed_by(DEPLOYMENT, "spec.replicas 4 -> 2") == {("kubectl", "Update")}
    image = 'spec.template.spec.containers[nginx].image "nginx:1.25" -> "nginx:1.26"'
    assert changed_by(DEPLOYMENT, image) == {("kubectl-set", "Update")}
    deployment_status = {
        (s.attributes["fieldManager"], s.name)
        for s in diffs
        if key_of(s) == DEPLOYMENT
        and s.attributes["change"] == "diff"
        and all(line.startswith("status.") for line in log_lines(s, "diff"))
    }
    assert deployment_status == {("kube-controller-manager", "kube-controller-manager Update")}
    created = next(s for s in diffs if key_of(s) == DEPLOYMENT and s.attributes["change"] == "create")
    assert created.attributes["fieldManager"] == "kubectl-client-side-apply"

    # Pods: the kubelet's status patches.
    running = [
        s
        for s in diffs
        if s.attributes["resource"] == "pods" and 'status.phase "Pending" -> "Running"' in log_lines(s, "diff")
    ]
    assert len(running) == 8
    assert {s.attributes["fieldManager"] for s in running} == {"kubelet"}

    # The new ReplicaSet appears whole, created by the controller manager, with the new image.
    rs_created = {
        orjson.loads(str(log.fields["snapshot"]))["spec"]["template"]["spec"]["containers"][0]["image"]: s
        for s in diffs
        if s.attributes["resource"] == "replicasets" and s.attributes["change"] == "create"
        for log in s.logs
        if log.name == "snapshot"
    }
    assert set(rs_created) == {"nginx:1.25", "nginx:1.26"}
    assert rs_created["nginx:1.26"].attributes["fieldManager"] == "kube-controller-manager"
    # Every ReplicaSet and Pod that went away has a delete snapshot.
    deleted = Counter(s.attributes["resource"] for s in diffs if s.attributes["change"] == "delete")
    assert deleted["replicasets"] == 2 and deleted["pods"] == 8 and deleted["deployments"] == 1
    # Each change once.
    assert max(Counter((key_of(s), s.attributes["resourceVersion"]) for s in diffs).values()) == 1
