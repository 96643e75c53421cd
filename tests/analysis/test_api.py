"""GET /api/analysis over real fixture data replayed through the real App."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from aiohttp import ClientSession

from kelemetry_py.analysis.schema import ANALYSIS_SCHEMA
from kelemetry_py.kube.watch import ResourceType
from kelemetry_py.metrics import Metrics
from kelemetry_py.sources.events import EventTracker
from kelemetry_py.times import kube_time_ns as parse_time_ns
from tests.analysis.conftest import Served, ServeScenario

VALIDATOR = jsonschema.Draft202012Validator(ANALYSIS_SCHEMA)
CONTROLLERS = "system:serviceaccount:kube-system:"
CORE_EVENTS = ResourceType("", "v1", "events", "Event", True)
NEW_EVENTS = ResourceType("events.k8s.io", "v1", "events", "Event", True)


async def get(served: Served, **query: str) -> tuple[int, Any]:
    async with (
        ClientSession() as session,
        session.get(served.url + "/api/analysis", params=served.params(**query)) as r,
    ):
        return r.status, await r.json()


async def analysis(served: Served, **query: str) -> dict[str, Any]:
    status, document = await get(served, **query)
    assert status == 200, document
    VALIDATOR.validate(document)
    return document  # type: ignore[no-any-return]


def admin_writes(served: Served, resource: str, name: str) -> list[dict[str, Any]]:
    return [
        e
        for e in served.events
        if e["user"]["username"] == "admin"
        and e["verb"] in ("create", "patch", "update", "delete")
        and (e.get("objectRef") or {}).get("resource") == resource
        and (e.get("objectRef") or {}).get("name") == name
    ]


def test_schema_is_a_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(ANALYSIS_SCHEMA)


async def test_deployment_lifecycle_names_each_rollout_and_its_steps(serve_scenario: ServeScenario) -> None:
    served = await serve_scenario("deployment-lifecycle")
    doc = await analysis(served, resource="deployments", group="apps", namespace="shop", name="web")

    assert doc["object"]["key"] == "fixture/apps/deployments/shop/web"
    # Objects: the Deployment, its 2 ReplicaSets and their 8 pods, nested by ownership.
    resources = [obj["resource"] for obj in doc["objects"]]
    assert resources.count("replicasets") == 2 and resources.count("pods") == 8
    parents = {obj["key"]: obj["parent"] for obj in doc["objects"]}
    assert all(parents[key].split("/")[2] == "replicasets" for key in parents if key.split("/")[2] == "pods")

    # One rollout per change admin asked for, at the times the apiserver recorded them.
    triggers = admin_writes(served, "deployments", "web")
    rollouts = doc["latency"]["rollouts"]
    assert [r["kind"] for r in rollouts] == ["create", "scale", "update", "scale", "delete"]
    assert [r["trigger"]["timeUnixNano"] for r in rollouts] == [parse_time_ns(e["stageTimestamp"]) for e in triggers]
    assert {r["trigger"]["actor"] for r in rollouts} == {"admin"}

    create, scale_up, image, scale_down, delete = rollouts
    assert [s["name"] for s in create["steps"]] == [
        "spec change",
        "new ReplicaSet",
        "pod created",
        "pod scheduled",
        "pod ready",
    ]
    assert [s["actor"] for s in create["steps"][1:]] == [
        CONTROLLERS + "deployment-controller",
        CONTROLLERS + "replicaset-controller",
        "system:kube-scheduler",
        "system:node:node-1",
    ]
    assert [s["name"] for s in scale_up["steps"]][:2] == ["spec change", "ReplicaSet scaled"]
    assert [s["name"] for s in scale_down["steps"]][-2:] == ["pod terminating", "pod removed"]
    assert [s["name"] for s in delete["steps"]][:2] == ["deletion", "ReplicaSet deleted"]

    # The image change created the second ReplicaSet: the one deployment-controller created after it.
    rs_creates = [
        e["responseObject"]["metadata"]["name"]
        for e in served.events
        if e["verb"] == "create" and (e.get("objectRef") or {}).get("resource") == "replicasets"
    ]
    assert image["steps"][1]["name"] == "new ReplicaSet"
    assert image["steps"][1]["object"].endswith("/" + rs_creates[1])
    assert create["steps"][1]["object"].endswith("/" + rs_creates[0])
    stages = {stage["name"]: stage["count"] for stage in image["stages"]}
    assert stages["pod created"] == 4 and stages["pod ready"] == 4 and stages["pod terminating"] == 4
    assert {stage["name"]: stage["count"] for stage in create["stages"]}["pod ready"] == 2

    timeline_ids = {entry["spanId"] for entry in doc["timeline"]}
    for rollout in rollouts:
        assert rollout["converged"] and not rollout["pending"]
        steps = rollout["steps"]
        ends = [step["endUnixNano"] for step in steps]
        assert ends == sorted(ends)
        assert all(step["spanId"] in timeline_ids for step in steps), "every step is evidenced by a span"
        assert rollout["slowestStep"]["durationMs"] == max(step["durationMs"] for step in steps[1:])
        for previous, step in itertools.pairwise(steps):
            assert step["startUnixNano"] == previous["endUnixNano"]
    overall = doc["latency"]["slowestStep"]
    assert overall["durationMs"] == max(s["durationMs"] for r in rollouts for s in r["steps"][1:])
    assert doc["summary"]["slowestStep"] == overall

    # The pod-ready step is the kubelet's status patch that set Ready=True, as recorded.
    ready = create["steps"][-1]
    pod_name = ready["object"].rsplit("/", 1)[1]
    ready_patches = [
        e
        for e in served.events
        if (e.get("objectRef") or {}).get("subresource") == "status"
        and (e.get("objectRef") or {}).get("name") == pod_name
        and any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in e["requestObject"]["status"].get("conditions", [])
        )
    ]
    assert ready["timeUnixNano"] == parse_time_ns(ready_patches[0]["stageTimestamp"])

    # Changes: who changed which paths; admin's patches are read off the request.
    by_actor = {item["actor"]: item for item in doc["changes"]["byActor"]}
    assert {"spec.replicas", "spec.template.spec.containers[nginx].image"} <= set(by_actor["admin"]["paths"])
    image_change = next(e for e in doc["changes"]["entries"] if e["actor"] == "admin" and "image" in str(e["paths"]))
    assert image_change["lines"] == ['spec.template.spec.containers[nginx].image = "nginx:1.26"']
    assert by_actor["system:node:node-1"]["actorKind"] == "node"

    # Controllers' conflicts are there, marked routine; nothing else failed.
    assert doc["failures"]["requests"] and all(item["routine"] for item in doc["failures"]["requests"])
    assert {item["code"] for item in doc["failures"]["requests"]} == {409}
    assert doc["summary"]["failedRequests"] == 0
    assert doc["failures"]["unscheduledPods"] == [] and doc["failures"]["stuckRollouts"] == []


@pytest.mark.parametrize(
    ("query", "code", "reason", "actor", "verb"),
    [
        ({"kind": "deploy", "name": "broken"}, 422, "Invalid", "admin", "create"),
        ({"resource": "configmaps", "name": "settings"}, 409, "Conflict", "admin", "update"),
        ({"kind": "deployment", "name": "web2"}, 403, "Forbidden", "system:serviceaccount:shop:nobody", "get"),
    ],
)
async def test_errors_and_links_failures_with_user_and_reason(
    serve_scenario: ServeScenario, query: dict[str, str], code: int, reason: str, actor: str, verb: str
) -> None:
    served = await serve_scenario("errors-and-links")
    doc = await analysis(served, namespace="shop", **query)
    failed = [item for item in doc["failures"]["requests"] if not item["routine"]]
    assert len(failed) == 1
    (item,) = failed
    recorded = next(
        e
        for e in served.events
        if e["responseStatus"]["code"] == code
        and e["user"]["username"] == "admin"
        and (e.get("objectRef") or {}).get("name") == query["name"]
    )
    assert (item["code"], item["reason"], item["actor"], item["user"], item["verb"]) == (
        code,
        reason,
        actor,
        "admin",
        verb,
    )
    assert item["message"] == recorded["responseStatus"]["message"]
    assert item["timeUnixNano"] == parse_time_ns(recorded["stageTimestamp"])
    assert doc["summary"]["failedRequests"] == 1


async def test_denied_create_of_a_nameless_object_is_told_on_its_namespace(serve_scenario: ServeScenario) -> None:
    served = await serve_scenario("errors-and-links")
    doc = await analysis(served, resource="namespaces", namespace="", name="shop")
    (item,) = [item for item in doc["failures"]["requests"] if item["code"] == 403]
    assert item["targetResource"] == "configmaps" and item["verb"] == "create"
    assert item["actor"] == "system:serviceaccount:shop:nobody" and item["user"] == "admin"
    assert item["impersonatedUser"] == "system:serviceaccount:shop:nobody"


async def test_bad_requests_and_unknown_objects(serve_scenario: ServeScenario) -> None:
    served = await serve_scenario("errors-and-links")
    status, body = await get(served, resource="deployments")
    assert status == 400 and "name" in body["error"]["message"]
    status, body = await get(served, kind="notakind", name="x")
    assert status == 400 and "notakind" in body["error"]["message"]
    status, body = await get(served, resource="deployments", name="web2", scope="sideways")
    assert status == 400 and "scope" in body["error"]["message"]
    status, body = await get(served, resource="deployments", name="never-existed")
    assert status == 404 and body["error"]["code"] == 404
    async with ClientSession() as session:
        async with session.get(
            served.url + "/api/analysis", params={"name": "web2", "resource": "deployments", "start": "yesterday"}
        ) as r:
            assert r.status == 400 and "start" in (await r.json())["error"]["message"]
        async with session.get(served.url + "/api/analysis/schema") as r:
            assert r.status == 200 and await r.json(content_type=None) == ANALYSIS_SCHEMA


async def test_scope_object_leaves_owned_objects_out(serve_scenario: ServeScenario) -> None:
    served = await serve_scenario("errors-and-links")
    owned = await analysis(served, kind="deploy", namespace="shop", name="web2")
    alone = await analysis(served, kind="deploy", namespace="shop", name="web2", scope="object")
    assert len(alone["objects"]) == 1 < len(owned["objects"])
    assert {entry["object"] for entry in alone["timeline"]} == {"fixture/apps/deployments/shop/web2"}


async def test_recorded_events_through_the_real_pipeline_join_the_story(
    serve_scenario: ServeScenario, fixtures_dir: Path
) -> None:
    served = await serve_scenario("deployment-lifecycle")
    assert served.app.components is not None
    tracker = EventTracker(
        served.app.components.pipeline,
        Metrics(),
        catalogs=served.app.components.catalogs,
        wall_clock_ns=lambda: served.end_ns,
    )
    recorded = 0
    for rtype, stream in ((CORE_EVENTS, "core_v1_events"), (NEW_EVENTS, "events.k8s.io_v1_events")):
        for line in (fixtures_dir / "deployment-lifecycle" / "watch" / f"{stream}.jsonl").read_bytes().splitlines():
            change = orjson.loads(line)
            await tracker.on_event("fixture", rtype, change["type"], change["object"], relisted=False)
            recorded += 1
    assert recorded and tracker.emitted
    await served.app.settle()

    doc = await analysis(served, resource="deployments", group="apps", namespace="shop", name="web")
    events = [entry for entry in doc["timeline"] if entry["source"] == "event"]
    reasons = {entry["action"] for entry in events}
    assert {"ScalingReplicaSet", "SuccessfulCreate", "Scheduled", "Pulled", "Started", "Killing"} <= reasons
    scheduled = [entry for entry in events if entry["action"] == "Scheduled"]
    assert len(scheduled) == 8 and {entry["actorKind"] for entry in scheduled} == {"scheduler"}
    assert all(entry["summary"].startswith("Scheduled: Successfully assigned shop/web-") for entry in scheduled)
    kubelet = [entry for entry in events if entry["action"] in ("Pulled", "Started", "Created")]
    assert kubelet and {entry["actor"] for entry in kubelet} == {"kubelet"}
    # No Warning in the recording, so none reported; the rollouts read the same with events added.
    assert doc["failures"]["warningEvents"] == [] and doc["failures"]["backOffs"] == []
    rollouts = doc["latency"]["rollouts"]
    assert [r["kind"] for r in rollouts] == ["create", "scale", "update", "scale", "delete"]
    for rollout in rollouts:
        stages = {stage["name"]: stage["count"] for stage in rollout["stages"]}
        assert stages.get("pod scheduled", 0) == stages.get("pod created", 0)
        assert rollout["converged"]


async def test_statefulset_rollouts_end_with_the_namespace_teardown(serve_scenario: ServeScenario) -> None:
    served = await serve_scenario("batch-and-stateful")
    doc = await analysis(served, kind="sts", namespace="jobs", name="db")
    rollouts = doc["latency"]["rollouts"]
    assert [(r["kind"], r["trigger"]["actor"]) for r in rollouts] == [
        ("create", "admin"),
        ("scale", "admin"),
        ("delete", CONTROLLERS + "namespace-controller"),
    ]
    assert all(r["converged"] for r in rollouts), [r["pending"] for r in rollouts]
    create, scale, teardown = rollouts
    # StatefulSet pods come straight from the StatefulSet, one after the other.
    assert [s["name"] for s in create["steps"]] == ["spec change", "pod created", "pod scheduled", "pod ready"]
    assert {stage["name"]: stage["count"] for stage in create["stages"]}["pod ready"] == 3
    assert teardown["steps"][0]["name"] == "deletion"
    removed_by_scale = {stage["name"]: stage["count"] for stage in scale["stages"]}
    assert removed_by_scale["pod removed"] == 2  # db-2 and db-1; db-0 goes with the namespace
