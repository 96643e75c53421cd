"""Display modes and link following, queried only through the Jaeger v1 HTTP API over loopback."""

from __future__ import annotations

import re
from typing import Any

from aiohttp.test_utils import TestClient

from tests.frontend.rawdata import CLUSTER, T0, WINDOW_NS
from tests.frontend.views import V1Trace, search_params, us

WEB = {"resource": "deployments", "namespace": "shop", "name": "web"}
VIEW_ID = re.compile(r"^ff[0-9a-f]{8}e1e3e7[0-9a-f]{16}$")


async def find(client: TestClient[Any, Any], mode: str, tags: dict[str, str], **extra: str) -> list[V1Trace]:
    response = await client.get("/api/traces", params=search_params(mode, tags, **extra))
    body = await response.json()
    assert response.status == 200, body
    assert body["errors"] is None
    assert body["total"] == len(body["data"])
    return [V1Trace(trace) for trace in body["data"]]


async def test_services_are_the_sixteen_display_modes(client: TestClient[Any, Any]) -> None:
    body = await (await client.get("/api/services")).json()
    assert len(body["data"]) == 16 and body["total"] == 16
    assert "tracing" in body["data"] and "tracing [ancestors]" in body["data"]
    assert "grouped [owned objects]" in body["data"] and "timeline [full tree]" in body["data"]


async def test_operations_are_the_clusters(client: TestClient[Any, Any]) -> None:
    body = await (await client.get("/api/services/tracing/operations")).json()
    assert body["data"] == [CLUSTER]
    body = await (await client.get("/api/operations", params={"service": "tree"})).json()
    assert body["data"] == [{"name": CLUSTER, "spanKind": "internal"}]
    unknown = await client.get("/api/services/nonsense/operations")
    assert unknown.status == 400
    assert "unknown display mode" in (await unknown.json())["errors"][0]["msg"]


async def test_full_tree_of_a_deployment_merges_windows_and_nests_owned_objects(
    client: TestClient[Any, Any],
) -> None:
    (trace,) = await find(client, "tracing [full tree]", WEB)
    assert VIEW_ID.match(trace.trace_id)
    assert trace.trace_id[2:10] == "21000000"
    root = trace.root
    assert trace.service(root) == "deployments" and root["operationName"] == "shop web"
    tags = trace.tags(root)
    for key, value in {
        "cluster": CLUSTER,
        "group": "apps",
        "version": "v1",
        "resource": "deployments",
        "namespace": "shop",
        "name": "web",
    }.items():
        assert tags[key] == value
    assert trace.object_children(root) == ["shop web-aaa", "shop web-bbb"]
    assert trace.object_children(trace.by_name("shop web-aaa")) == ["shop web-aaa-1", "shop web-aaa-2"]
    assert trace.object_children(trace.by_name("shop web-bbb")) == ["shop web-bbb-1"]
    assert "shop other" not in {span["operationName"] for span in trace.spans.values()}

    # Both windows' requests are logs on the one root span, with their own timestamps.
    logs = trace.log_fields(root)
    audits = [log["audit"] for log in logs if log.get("event") == "audit"]
    assert audits == ["admin create", "admin patch", "admin patch", "admin delete"]
    diffs = [log["diff"] for log in logs if log.get("event") == "diff"]
    assert diffs[0] == "spec.replicas 2 -> 4" and "nginx:1.26" in diffs[1]
    snapshots = [log for log in logs if log.get("event") == "snapshot"]
    assert len(snapshots) == 2 and '"replicas":2' in snapshots[1]["snapshot"]
    times = [log["timestamp"] for log in root["logs"]]
    assert times == sorted(times) and times[-1] - times[0] > us(WINDOW_NS)
    # Durations compacted: the span covers its activity, not whole windows.
    assert root["startTime"] == times[0]
    assert root["startTime"] + root["duration"] < us(T0 + 2 * WINDOW_NS)
    # Tracing mode shows no raw audit/event spans, only object spans.
    assert {trace.service(span) for span in trace.spans.values()} == {"deployments", "replicasets", "pods"}


async def test_tracing_logs_are_readable(client: TestClient[Any, Any]) -> None:
    (trace,) = await find(client, "tracing", {"resource": "pods", "name": "web-aaa-1"})
    logs = trace.log_fields(trace.root)
    (event,) = [log for log in logs if log.get("reason") == "Scheduled"]
    assert event["event"] == "Scheduled: Successfully assigned shop/web-aaa-1 to node-1"
    (diff,) = [log for log in logs if "fieldManager" in log]
    assert diff["diff"] == 'status.phase "Pending" -> "Running"' and diff["fieldManager"] == "kubelet"
    (rs_trace,) = await find(client, "tracing", {"resource": "replicasets", "name": "web-aaa"})
    errors = [log for log in trace.log_fields(rs_trace.root) if "error" in log]
    assert errors and "Conflict" in errors[0]["error"]


async def test_ancestors_of_a_pod_keep_only_its_path(client: TestClient[Any, Any]) -> None:
    (trace,) = await find(client, "tracing [ancestors]", {"resource": "pods", "name": "web-aaa-2"})
    assert trace.root["operationName"] == "shop web"
    assert trace.object_children(trace.root) == ["shop web-aaa"]
    assert trace.object_children(trace.by_name("shop web-aaa")) == ["shop web-aaa-2"]
    assert len(trace.spans) == 3


async def test_owned_objects_of_a_replicaset_are_only_its_pods(client: TestClient[Any, Any]) -> None:
    (trace,) = await find(client, "tracing [owned objects]", {"resource": "replicasets", "name": "web-aaa"})
    assert trace.root["operationName"] == "shop web-aaa"
    assert trace.object_children(trace.root) == ["shop web-aaa-1", "shop web-aaa-2"]
    assert len(trace.spans) == 3


async def test_plain_mode_shows_only_the_object(client: TestClient[Any, Any]) -> None:
    (trace,) = await find(client, "tracing", WEB)
    assert len(trace.spans) == 1


async def test_full_tree_from_several_pods_is_shown_once(client: TestClient[Any, Any]) -> None:
    traces = await find(client, "tracing [full tree]", {"resource": "pods", "namespace": "shop"})
    roots = sorted(trace.root["operationName"] for trace in traces)
    assert roots == ["shop other", "shop web"]


async def test_tree_mode_has_events_and_requests_as_child_spans(client: TestClient[Any, Any]) -> None:
    (trace,) = await find(client, "tree [owned objects]", {"resource": "replicasets", "name": "web-aaa"})
    pod = trace.by_name("shop web-aaa-1")
    (event,) = trace.children(pod, "event")
    assert event["operationName"] == "Scheduled"
    assert trace.log_fields(event)[0]["message"].startswith("Successfully assigned")
    (audit,) = trace.children(pod, "audit")
    assert trace.tags(audit)["verb"] == "create"
    assert len(trace.children(pod, "diff")) == 1
    # The 409 status update keeps its error marker.
    (failed,) = [span for span in trace.children(trace.root, "audit") if "(409)" in span["operationName"]]
    assert trace.tags(failed)["error"] is True
    assert not [span for span in trace.spans.values() if trace.service(span) == "link"]


async def test_timeline_puts_everything_under_the_root(client: TestClient[Any, Any]) -> None:
    (trace,) = await find(client, "timeline [owned objects]", {"resource": "replicasets", "name": "web-aaa"})
    root = trace.root
    others = [span for span in trace.spans.values() if span is not root]
    assert others and all(trace.parent(span) == root["spanID"] for span in others)
    assert {trace.service(span) for span in others} == {"audit", "event", "diff"}
    pod_names = {trace.tags(span)["name"] for span in others}
    assert pod_names == {"web-aaa", "web-aaa-1", "web-aaa-2"}


async def test_grouped_mode_has_one_child_per_source(client: TestClient[Any, Any]) -> None:
    (trace,) = await find(client, "grouped", {"resource": "pods", "name": "web-aaa-1"})
    sources = trace.children(trace.root)
    assert sorted(trace.service(span) for span in sources) == ["audit", "diff", "event"]
    (event_group,) = [span for span in sources if trace.service(span) == "event"]
    assert [log["event"] for log in trace.log_fields(event_group)] == [
        "Scheduled: Successfully assigned shop/web-aaa-1 to node-1"
    ]
    for span in sources:
        assert trace.tags(span)["name"] == "web-aaa-1"


async def test_time_range_clips_windows_and_objects(client: TestClient[Any, Any]) -> None:
    first_window = {"start": str(us(T0)), "end": str(us(T0 + WINDOW_NS - 1))}
    response = await client.get(
        "/api/traces",
        params={
            "service": "tracing [full tree]",
            "tags": '{"resource":"deployments","name":"web"}',
            **first_window,
        },
    )
    (raw,) = (await response.json())["data"]
    trace = V1Trace(raw)
    assert trace.object_children(trace.root) == ["shop web-aaa"]
    audits = [log["audit"] for log in trace.log_fields(trace.root) if log.get("event") == "audit"]
    assert audits == ["admin create"]
    assert all(span["startTime"] + span["duration"] <= us(T0 + WINDOW_NS) for span in trace.spans.values())


async def test_objects_with_nothing_in_the_range_are_left_out(client: TestClient[Any, Any]) -> None:
    # Pod web-aaa-2 is created 3 s after the Deployment: a range ending before that has the rest of its window
    # in storage, but nothing of that Pod.
    created = T0 + 100 * 10**9
    response = await client.get(
        "/api/traces",
        params={
            "service": "tracing [full tree]",
            "tags": '{"resource":"deployments","name":"web"}',
            "start": str(us(T0)),
            "end": str(us(created + 2_500_000_000)),
        },
    )
    (raw,) = (await response.json())["data"]
    trace = V1Trace(raw)
    assert trace.object_children(trace.root) == ["shop web-aaa"]
    (replicaset,) = trace.children(trace.root, "replicasets")
    assert trace.object_children(replicaset) == ["shop web-aaa-1"]
    # The searched object and its path from the root stay even when nothing happened to them in the range.
    response = await client.get(
        "/api/traces",
        params={
            "service": "tracing [full tree]",
            "tags": '{"resource":"pods","name":"web-aaa-2"}',
            "start": str(us(created + 2_500_000_000)),
            "end": str(us(created + 2_900_000_000)),
        },
    )
    (quiet,) = (await response.json())["data"]
    assert sorted(span["operationName"] for span in quiet["spans"]) == ["shop web", "shop web-aaa", "shop web-aaa-2"]


async def test_operation_filters_by_cluster(client: TestClient[Any, Any]) -> None:
    assert len(await find(client, "tracing", WEB, operation=CLUSTER)) == 1
    assert await find(client, "tracing", WEB, operation="elsewhere") == []


async def test_duration_filters_and_limit(client: TestClient[Any, Any]) -> None:
    # The compacted web span lasts from its create in window 0 to its delete in window 1: over 30 minutes.
    assert len(await find(client, "tracing", WEB, minDuration="30m")) == 1
    assert await find(client, "tracing", WEB, maxDuration="1m") == []
    assert len(await find(client, "tracing", {"namespace": "shop"}, limit="2")) == 2


async def test_lookback_without_start_finds_nothing_in_the_past_hour(client: TestClient[Any, Any]) -> None:
    response = await client.get(
        "/api/traces", params={"service": "tracing", "tags": '{"name":"web"}', "lookback": "1h"}
    )
    assert response.status == 200
    assert (await response.json())["data"] == []


async def test_editing_the_mode_digits_switches_the_view(client: TestClient[Any, Any]) -> None:
    (trace,) = await find(client, "tracing", {"resource": "pods", "name": "web-bbb-1"})
    assert len(trace.spans) == 1
    ancestors_id = trace.trace_id[:2] + "22000000" + trace.trace_id[10:]
    body = await (await client.get(f"/api/traces/{ancestors_id}")).json()
    (raw,) = body["data"]
    view = V1Trace(raw)
    assert view.trace_id == ancestors_id
    assert view.root["operationName"] == "shop web"
    assert view.object_children(view.root) == ["shop web-bbb"]
    tree_id = trace.trace_id[:2] + "00000000" + trace.trace_id[10:]
    (raw,) = (await (await client.get(f"/api/traces/{tree_id}")).json())["data"]
    assert {V1Trace(raw).service(span) for span in raw["spans"]} == {"pods", "audit", "event"}


async def test_bad_ids_and_bad_input_get_clear_errors(client: TestClient[Any, Any]) -> None:
    (trace,) = await find(client, "tracing", WEB)
    bad_mode = trace.trace_id[:2] + "99000000" + trace.trace_id[10:]
    response = await client.get(f"/api/traces/{bad_mode}")
    assert response.status == 400
    assert "unknown display mode code" in (await response.json())["errors"][0]["msg"]
    unknown = "ff20000000e1e3e7" + "0" * 16
    response = await client.get(f"/api/traces/{unknown}")
    body = await response.json()
    assert response.status == 404 and body["errors"] == [{"code": 404, "msg": "trace not found"}]
    response = await client.get("/api/traces/not-hex")
    assert response.status == 400
    response = await client.get("/api/traces", params={"service": "tracing", "tags": "[1,2]"})
    assert response.status == 400 and "tags" in (await response.json())["errors"][0]["msg"]
    response = await client.get("/api/traces", params={"service": "tracing", "minDuration": "10 parsecs"})
    assert response.status == 400 and "minDuration" in (await response.json())["errors"][0]["msg"]
    response = await client.get("/api/traces", params={"service": "tracing", "start": "yesterday"})
    assert response.status == 400


async def test_raw_trace_ids_read_raw_traces(client: TestClient[Any, Any]) -> None:
    from kelemetry_py.model import object_trace_id

    raw_id = object_trace_id(f"{CLUSTER}/apps/deployments/shop/web", T0 // WINDOW_NS)
    (raw,) = (await (await client.get(f"/api/traces/{raw_id:032x}")).json())["data"]
    trace = V1Trace(raw)
    assert trace.service(trace.root) == "object" and trace.root["operationName"] == "deployments/web"


async def test_dependencies_answer_an_empty_list(client: TestClient[Any, Any]) -> None:
    body = await (await client.get("/api/dependencies", params={"endTs": "1", "lookback": "3600000"})).json()
    assert body["data"] == [] and body["errors"] is None
