"""The query frontend end to end: `serve` on embedded defaults, a recorded scenario replayed through the webhook,
then only the public HTTP APIs (Jaeger v1 and v3, /redirect), checked against what the recording says."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import ClientSession

from kelemetry_py.app import App
from tests.e2e.conftest import AppFactory, replay_scenario
from tests.frontend.scenario import (
    CLUSTER,
    FrontendClient,
    ScenarioFacts,
    key_tags,
    object_key,
    object_spans,
    object_tree,
    rfc3339,
    scenario_facts,
    span_key,
)
from tests.frontend.test_http_shapes import HEX16, HEX32, jaeger_fixture, same_shape
from tests.frontend.views import V1Trace

LIFECYCLE = "deployment-lifecycle"
WEB = object_key("apps", "deployments", "shop", "web")
MUTATING = ("create", "update", "patch", "delete", "deletecollection")
WEB_TAGS = {"resource": "deployments", "namespace": "shop", "name": "web"}
OBJECT_TAGS = ("cluster", "group", "version", "resource", "namespace", "name")


@pytest.fixture
async def lifecycle(fixtures_dir: Path, make_app: AppFactory) -> AsyncIterator[FrontendClient]:
    app = await make_app()
    await replay_scenario(app, fixtures_dir, LIFECYCLE)
    async with ClientSession() as session:
        yield FrontendClient(session, app.base_url, scenario_facts(fixtures_dir, LIFECYCLE))


def descendants(facts: ScenarioFacts, key: str) -> set[str]:
    found: set[str] = set()
    frontier = {key}
    while frontier:
        frontier = {child for parent in frontier for child in facts.owned_by(parent)} - found
        found |= frontier
    return found


def assert_object_tags(trace: V1Trace) -> None:
    for span in object_spans(trace):
        tags = trace.tags(span)
        assert all(tag in tags for tag in OBJECT_TAGS), (span["operationName"], tags)
        assert trace.service(span) == tags["resource"]
        expected_name = f"{tags['namespace']} {tags['name']}" if tags["namespace"] else tags["name"]
        assert span["operationName"] == expected_name


def admin_requests(facts: ScenarioFacts, key: str) -> list[dict[str, Any]]:
    return [
        event for event in facts.requests[key] if event["user"]["username"] == "admin" and event["verb"] in MUTATING
    ]


async def test_full_tree_of_the_deployment(lifecycle: FrontendClient) -> None:
    facts = lifecycle.facts
    replicasets = facts.owned_by(WEB)
    pods = {pod for rs in replicasets for pod in facts.owned_by(rs)}
    assert len(replicasets) == 2 and len(pods) == 8  # what the recording holds

    (trace,) = await lifecycle.search(
        "tracing [full tree]", {"resource": "deployments", "namespace": "shop", "name": "web"}
    )
    assert trace.trace_id.startswith("ff21") and trace.trace_id[10:16] == "e1e3e7"
    tree = object_tree(trace)
    assert tree == {WEB: None, **{rs: WEB for rs in replicasets}, **{pod: facts.owner_of[pod] for pod in pods}}
    assert len(trace.spans) == 1 + len(replicasets) + len(pods), "tracing mode: requests are logs, not spans"
    assert_object_tags(trace)
    root = trace.root
    assert span_key(trace, root) == WEB and trace.service(root) == "deployments"
    assert trace.tags(root)["version"] == "v1"

    # Every admin request on the Deployment is a readable "audit" log on the root, in order, with its body.
    logs = trace.log_fields(root)
    audits = [log for log in logs if log["event"] == "audit"]
    expected = admin_requests(facts, WEB)
    assert [log["auditID"] for log in audits if log["username"] == "admin"] == [e["auditID"] for e in expected]
    scales = [log for log in audits if log["audit"] == "admin patch scale"]
    scale_events = [e for e in expected if e.get("objectRef", {}).get("subresource") == "scale"]
    assert len(scales) == len(scale_events) == 2
    scale_bodies = [log["patch"] for log in logs if log["event"] == "request" and log["audit"] == "admin patch scale"]
    assert [orjson.loads(body) for body in scale_bodies] == [e["requestObject"] for e in scale_events]
    (delete,) = [log for log in audits if log["audit"] == "admin delete"]
    assert delete["verb"] == "delete" and delete["responseCode"] == 200
    # The create's response is the Deployment itself: its snapshot is there, as written.
    snapshots = [orjson.loads(log["snapshot"]) for log in logs if log["event"] == "snapshot"]
    create = next(e for e in expected if e["verb"] == "create")
    assert create["responseObject"]["metadata"]["uid"] in [s["metadata"]["uid"] for s in snapshots]
    # The controller's conflicts show as error logs, with the reason readable.
    conflicts = [e for e in facts.requests[WEB] if e["responseStatus"]["code"] == 409]
    errors = [log for log in logs if log["event"] == "error"]
    assert len(errors) == len(conflicts) > 0 and all(log["reason"] == "Conflict" for log in errors)
    # Log timestamps are the requests' own times, inside the root span.
    times = [log["timestamp"] for log in root["logs"]]
    assert times == sorted(times)
    assert root["startTime"] <= times[0] and times[-1] <= root["startTime"] + root["duration"]

    # The same search through v3, as Jaeger UI v2.20 sends it, names the same trace.
    (summary,) = await lifecycle.summaries(
        "tracing [full tree]",
        {"resource": "deployments", "namespace": "shop", "name": "web"},
        **{"query.operationName": CLUSTER},
    )
    assert summary["traceId"] == trace.trace_id
    assert (summary["rootServiceName"], summary["rootOperationName"]) == ("deployments", "shop web")
    assert summary["spanCount"] == len(trace.spans) and summary["orphanSpanCount"] == 0
    assert {s["name"]: s["spanCount"] for s in summary["services"]} == {"deployments": 1, "replicasets": 2, "pods": 8}
    # ... and reading that id back gives the same trace.
    again = await lifecycle.trace(summary["traceId"])
    assert again.raw == trace.raw


async def test_redirect_answers_302_to_the_deployment_trace(lifecycle: FrontendClient) -> None:
    facts = lifecycle.facts
    (searched,) = await lifecycle.search(
        "tracing [full tree]", {"resource": "deployments", "namespace": "shop", "name": "web"}
    )
    params = {
        **key_tags(WEB),
        "ts": str((facts.start_ns + facts.end_ns) // 2 / 1e9),
        "mode": "tracing [full tree]",
    }
    async with lifecycle.session.get(
        lifecycle.base_url + "/redirect", params=params, allow_redirects=False
    ) as response:
        assert response.status == 302
        location = response.headers["Location"]
    assert location.startswith("/trace/")
    redirected = await lifecycle.trace(location.removeprefix("/trace/"))
    assert redirected.trace_id.startswith("ff21")
    assert object_tree(redirected) == object_tree(searched)
    assert redirected.log_fields(redirected.root) == searched.log_fields(searched.root)

    # Default mode, core group (empty), RFC 3339 time: still exactly one answer.
    pod = sorted(descendants(facts, WEB) - facts.owned_by(WEB))[-1]

    async with lifecycle.session.get(
        lifecycle.base_url + "/redirect",
        params={**key_tags(pod), "ts": rfc3339(facts.end_ns)},
        allow_redirects=False,
    ) as response:
        assert response.status == 302
        pod_location = response.headers["Location"]
    pod_trace = await lifecycle.trace(pod_location.removeprefix("/trace/"))
    assert pod_trace.trace_id.startswith("ff20")
    assert object_tree(pod_trace) == {pod: None}

    # Only a resource and a name, no namespace or cluster: still one answer.
    async with lifecycle.session.get(
        lifecycle.base_url + "/redirect",
        params={"resource": "pods", "name": pod.rsplit("/", 1)[1], "ts": rfc3339(facts.end_ns)},
        allow_redirects=False,
    ) as response:
        assert response.status == 302


async def test_ancestors_of_a_pod_and_owned_objects_of_a_replicaset(lifecycle: FrontendClient) -> None:
    facts = lifecycle.facts
    for replicaset in sorted(facts.owned_by(WEB)):
        pod = sorted(facts.owned_by(replicaset))[0]
        (trace,) = await lifecycle.search("tracing [ancestors]", key_tags(pod))
        assert object_tree(trace) == {WEB: None, replicaset: WEB, pod: replicaset}
        assert trace.trace_id.startswith("ff22")
        assert_object_tags(trace)

        (owned,) = await lifecycle.search("tracing [owned objects]", key_tags(replicaset))
        assert object_tree(owned) == {replicaset: None, **{p: replicaset for p in facts.owned_by(replicaset)}}
        assert owned.trace_id.startswith("ff23")

    # Editing the mode digits of an id switches the view: the same Pod, now with its full tree.
    pod = sorted(descendants(facts, WEB) - facts.owned_by(WEB))[0]
    (ancestors,) = await lifecycle.search("tracing [ancestors]", key_tags(pod))
    full = await lifecycle.trace("ff21" + ancestors.trace_id[4:])
    assert set(object_tree(full)) == {WEB} | descendants(facts, WEB)
    tree_view = await lifecycle.trace("ff00" + ancestors.trace_id[4:])  # tree: requests as child spans
    audit_spans = [span for span in tree_view.spans.values() if tree_view.service(span) == "audit"]
    pod_requests = [e for e in facts.requests[pod] if e["verb"] in MUTATING]
    assert sorted(trace_tags["auditID"] for trace_tags in map(tree_view.tags, audit_spans)) == sorted(
        e["auditID"] for e in pod_requests
    )


async def test_search_by_any_raw_tag(lifecycle: FrontendClient) -> None:
    facts = lifecycle.facts
    scale = next(e for e in admin_requests(facts, WEB) if e["objectRef"].get("subresource") == "scale")
    (by_audit_id,) = await lifecycle.search("tracing", {"auditID": scale["auditID"]})
    assert object_tree(by_audit_id) == {WEB: None}
    # Operation = cluster narrows the search; an unknown cluster finds nothing.
    assert len(await lifecycle.search("tracing", {"auditID": scale["auditID"]}, operation=CLUSTER)) == 1
    assert await lifecycle.search("tracing", {"auditID": scale["auditID"]}, operation="elsewhere") == []
    # Everything the kubelet patched: exactly the Pods of the recording, one trace each.
    kubelet = await lifecycle.search("tracing", {"username": "system:node:node-1", "resource": "pods"})
    kubelet_pods = {
        key
        for key, events in facts.requests.items()
        if any(e["user"]["username"] == "system:node:node-1" and e["verb"] in MUTATING for e in events)
        and "/pods/" in key
    }
    assert {span_key(trace, trace.root) for trace in kubelet} == kubelet_pods


async def test_v1_and_v3_json_match_the_recorded_jaeger_shapes(lifecycle: FrontendClient, fixtures_dir: Path) -> None:
    facts = lifecycle.facts
    web = {"resource": "deployments", "namespace": "shop", "name": "web"}
    services = await lifecycle.get_json("/api/services")
    assert set(services) == {"data", "total", "limit", "offset", "errors"}
    assert services["total"] == 16 and "tracing [full tree]" in services["data"]
    operations = await lifecycle.get_json("/api/services/tracing [full tree]/operations")
    assert operations["data"] == [CLUSTER]
    v1_operations = await lifecycle.get_json("/api/operations", {"service": "tracing", "spanKind": "internal"})
    assert v1_operations["data"] == [{"name": CLUSTER, "spanKind": "internal"}]
    dependencies = await lifecycle.get_json("/api/dependencies", {"endTs": "1", "lookback": "3600000"})
    assert dependencies["data"] == [] and dependencies["errors"] is None

    # v1 trace, field by field against upstream Jaeger's own test trace (tree mode: child spans too).
    real = jaeger_fixture(fixtures_dir, "v1-ui_01-trace.json")
    (trace,) = await lifecycle.search("tree [full tree]", web)
    ours = trace.raw
    same_shape(ours, {key: value for key, value in real.items() if key != "warnings"})
    assert ours["warnings"] is None
    ids = set(trace.spans)
    for span in ours["spans"]:
        same_shape(span, {k: v for k, v in real["spans"][2].items() if k not in ("warnings", "tags", "logs")})
        assert HEX32.match(span["traceID"]) and HEX16.match(span["spanID"]) and span["traceID"] == ours["traceID"]
        assert isinstance(span["startTime"], int) and isinstance(span["duration"], int) and span["duration"] >= 0
        for ref in span["references"]:
            assert ref["refType"] == "CHILD_OF" and ref["spanID"] in ids and ref["traceID"] == ours["traceID"]
        for tag in span["tags"]:
            assert set(tag) == {"key", "type", "value"} and tag["type"] in ("string", "bool", "int64", "float64")
        for log in span["logs"]:
            same_shape(log, real["spans"][0]["logs"][0])
            assert any(field["key"] == "event" for field in log["fields"])
    for process in ours["processes"].values():
        same_shape(process, real["processes"]["p1"])
    assert {process["serviceName"] for process in ours["processes"].values()} >= {"deployments", "pods", "audit"}
    # Exactly the failed requests of the recording's objects in this tree carry the error marker.
    failed = [span for span in ours["spans"] if {"key": "error", "type": "bool", "value": True} in span["tags"]]
    in_tree = set(object_tree(trace))
    failed_requests = {
        e["auditID"]
        for key in in_tree
        for e in facts.requests.get(key, [])
        if e["verb"] in MUTATING and e["responseStatus"]["code"] >= 400
    }
    assert failed_requests and {trace.tags(span)["auditID"] for span in failed} == failed_requests

    # v3: services, operations, summaries, a trace and a search, each against the recorded real responses.
    same_shape(await lifecycle.get_json("/api/v3/services"), jaeger_fixture(fixtures_dir, "v3-GetServices.json"))
    v3_operations = await lifecycle.get_json("/api/v3/operations", {"service": "tracing [full tree]"})
    same_shape(v3_operations, jaeger_fixture(fixtures_dir, "v3-GetOperations.json"))
    assert v3_operations["operations"] == [{"name": CLUSTER, "spanKind": "internal"}]
    summaries = await lifecycle.summaries("tree [full tree]", web)
    same_shape({"summaries": summaries}, jaeger_fixture(fixtures_dir, "v3-FindTraceSummaries.json"))
    (summary,) = summaries
    assert summary["traceId"] == trace.trace_id
    assert summary["errorSpanCount"] == len(failed)
    assert int(summary["minStartTimeUnixNano"]) // 1000 == min(s["startTime"] for s in ours["spans"])
    assert int(summary["maxEndTimeUnixNano"]) // 1000 == max(s["startTime"] + s["duration"] for s in ours["spans"])

    real_trace = jaeger_fixture(fixtures_dir, "v3-GetTrace.json")
    real_span = real_trace["result"]["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    real_status = real_span.pop("status")  # OTLP JSON carries a status only on failed spans
    got = await lifecycle.get_json(f"/api/v3/traces/{trace.trace_id}")
    same_shape(got, real_trace)
    spans = [s for rs in got["result"]["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]
    assert {s["spanId"] for s in spans} == ids
    for span in spans:
        assert span["traceId"] == trace.trace_id and span["kind"] == 1
        assert span["startTimeUnixNano"].isdigit() and int(span["endTimeUnixNano"]) >= int(span["startTimeUnixNano"])
        if span["status"]:
            same_shape(span["status"], real_status)
    assert sum(1 for span in spans if span["status"]) == len(failed)
    missing = await lifecycle.get_json("/api/v3/traces/ff21000000e1e3e7" + "0" * 16, status=404)
    assert missing["error"]["httpCode"] == 404
    v1_missing = await lifecycle.get_json("/api/traces/ff21000000e1e3e7" + "0" * 16, status=404)
    assert v1_missing["errors"][0]["code"] == 404

    found = await lifecycle.get_json(
        "/api/v3/traces",
        {
            "query.serviceName": "tree [full tree]",
            "query.attributes": orjson.dumps(web).decode(),
            "query.startTimeMin": "2026-11-21T05:00:00.000Z",
            "query.startTimeMax": "2026-11-21T06:30:00.000Z",
        },
    )
    real_found = jaeger_fixture(fixtures_dir, "v3-FindTraces.json")
    real_found["result"]["resourceSpans"][0]["scopeSpans"][0]["spans"][0].pop("status")
    same_shape(found, real_found)
    assert {
        s["spanId"] for rs in found["result"]["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]
    } == ids


async def test_annotation_link_shows_in_the_full_tree(fixtures_dir: Path, make_app: AppFactory) -> None:
    scenario = "errors-and-links"
    app: App = await make_app()
    await replay_scenario(app, fixtures_dir, scenario)
    facts = scenario_facts(fixtures_dir, scenario)
    child = object_key("", "configmaps", "shop", "child-of-web")
    annotations = [
        e["requestObject"]["metadata"]["annotations"]["kelemetry.kubewharf.io/parent-link"]
        for e in facts.requests[child]
        if "kelemetry.kubewharf.io/parent-link"
        in ((e.get("requestObject") or {}).get("metadata") or {}).get("annotations", {})
    ]
    parent = orjson.loads(annotations[0])
    parent_key = object_key(parent["group"], parent["resource"], parent["namespace"], parent["name"])
    async with ClientSession() as session:
        client = FrontendClient(session, app.base_url, facts)
        (trace,) = await client.search("tracing [full tree]", key_tags(child))
        tree = object_tree(trace)
        assert tree[parent_key] is None and tree[child] == parent_key
        # The annotated parent's own owned objects are in its full tree too.
        for replicaset in facts.owned_by(parent_key):
            assert tree[replicaset] == parent_key
            assert all(tree[pod] == replicaset for pod in facts.owned_by(replicaset))
        (from_parent,) = await client.search("tracing [full tree]", key_tags(parent_key))
        assert object_tree(from_parent) == tree
        (up,) = await client.search("tracing [ancestors]", key_tags(child))
        assert object_tree(up) == {parent_key: None, child: parent_key}


def request_ns(event: dict[str, Any]) -> int:
    from kelemetry_py.times import kube_time_ns as parse_time_ns

    return parse_time_ns(event["requestReceivedTimestamp"])


async def test_a_narrow_range_shows_only_what_happened_in_it(lifecycle: FrontendClient) -> None:
    facts = lifecycle.facts
    # Up to the image rollout: the second ReplicaSet and its Pods do not exist yet.
    rollout = next(
        e for e in admin_requests(facts, WEB) if e["verb"] == "patch" and "subresource" not in e["objectRef"]
    )
    cut_ns = request_ns(rollout)
    family = {WEB} | descendants(facts, WEB)
    active = {
        key
        for key in family
        if any(e["verb"] in MUTATING and request_ns(e) <= cut_ns for e in facts.requests.get(key, []))
    }
    assert 0 < len(active) < len(family)
    (trace,) = await lifecycle.search(
        "tracing [full tree]", WEB_TAGS, start=str(facts.search_start_ns // 1000), end=str(cut_ns // 1000)
    )
    assert set(object_tree(trace)) == active
    for span in trace.spans.values():
        assert all(log["timestamp"] <= cut_ns // 1000 for log in span["logs"])
        assert span["startTime"] + span["duration"] <= cut_ns // 1000
    assert rollout["auditID"] in [log.get("auditID") for log in trace.log_fields(trace.root)]
