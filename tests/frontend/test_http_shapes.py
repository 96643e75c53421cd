"""Wire shapes checked field by field against real Jaeger responses; v3 queries; /redirect; the UI bundle."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from kelemetry_py.config import FrontendConfig
from kelemetry_py.storage import TraceReader
from tests.frontend.conftest import serve
from tests.frontend.rawdata import CLUSTER, T0, WINDOW_NS
from tests.frontend.views import V1Trace, search_params

HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")
WEB = {"resource": "deployments", "namespace": "shop", "name": "web"}


def jaeger_fixture(fixtures_dir: Path, name: str) -> Any:
    return json.loads((fixtures_dir / "backends" / "jaeger" / name).read_text())


def same_shape(ours: Any, real: Any, where: str = "$") -> None:
    """Every field the real response has, we have too, with the same JSON type (recursively)."""
    if isinstance(real, dict):
        assert isinstance(ours, dict), f"{where}: expected an object"
        for key, value in real.items():
            assert key in ours, f"{where}.{key} missing"
            same_shape(ours[key], value, f"{where}.{key}")
    elif isinstance(real, list):
        assert isinstance(ours, list), f"{where}: expected a list"
        if real and ours:
            same_shape(ours[0], real[0], f"{where}[0]")
    elif real is None:
        assert ours is None or isinstance(ours, list), f"{where}: expected null or a list"
    else:
        assert type(ours) is type(real), f"{where}: {type(ours).__name__} is not {type(real).__name__}"


def rfc3339(ns: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


V3_RANGE = {"query.startTimeMin": rfc3339(T0), "query.startTimeMax": rfc3339(T0 + 2 * WINDOW_NS)}


async def test_v1_trace_matches_the_real_shape(client: TestClient[Any, Any], fixtures_dir: Path) -> None:
    real = jaeger_fixture(fixtures_dir, "v1-ui_01-trace.json")
    body = await (await client.get("/api/traces", params=search_params("tree [owned objects]", WEB))).json()
    assert set(body) == {"data", "total", "limit", "offset", "errors"}
    (ours,) = body["data"]
    same_shape(ours, {key: value for key, value in real.items() if key != "warnings"})
    assert ours["warnings"] is None
    real_span = real["spans"][2]  # one with a CHILD_OF reference
    for span in ours["spans"]:
        same_shape(
            span, {key: value for key, value in real_span.items() if key not in ("warnings", "tags", "logs")}
        )
        assert HEX32.match(span["traceID"]) and HEX16.match(span["spanID"])
        assert span["traceID"] == ours["traceID"]
        assert span["processID"] in ours["processes"]
        for tag in span["tags"]:
            assert set(tag) == {"key", "type", "value"}
            assert tag["type"] in ("string", "bool", "int64", "float64")
        for log in span["logs"]:
            same_shape(log, real["spans"][0]["logs"][0])
        for ref in span["references"]:
            assert ref["refType"] == "CHILD_OF" and ref["spanID"] in {s["spanID"] for s in ours["spans"]}
    for process in ours["processes"].values():
        same_shape(process, real["processes"]["p1"])
    int_tag = next(tag for span in ours["spans"] for tag in span["tags"] if tag["key"] == "responseCode")
    assert int_tag["type"] == "int64" and isinstance(int_tag["value"], int)
    error_tag = next(tag for span in ours["spans"] for tag in span["tags"] if tag["key"] == "error")
    assert error_tag == {"key": "error", "type": "bool", "value": True}


async def test_v3_services_and_operations_match_the_real_shape(
    client: TestClient[Any, Any], fixtures_dir: Path
) -> None:
    services = await (await client.get("/api/v3/services")).json()
    same_shape(services, jaeger_fixture(fixtures_dir, "v3-GetServices.json"))
    assert len(services["services"]) == 16
    operations = await (await client.get("/api/v3/operations", params={"service": "tracing"})).json()
    same_shape(operations, jaeger_fixture(fixtures_dir, "v3-GetOperations.json"))
    assert operations["operations"] == [{"name": CLUSTER, "spanKind": "internal"}]
    server_only = await (
        await client.get("/api/v3/operations", params={"service": "tracing", "spanKind": "server"})
    ).json()
    assert server_only == {"operations": []}


async def test_v3_trace_summaries_match_the_real_shape(
    client: TestClient[Any, Any], fixtures_dir: Path
) -> None:
    params = {
        "query.serviceName": "tracing [full tree]",
        "query.operationName": CLUSTER,
        "query.searchDepth": "20",
        "query.attributes": json.dumps(WEB),
        "query.durationMin": "10ms",
        **V3_RANGE,
    }
    body = await (await client.get("/api/v3/trace-summaries", params=params)).json()
    real = jaeger_fixture(fixtures_dir, "v3-FindTraceSummaries.json")
    same_shape(body, real)
    (summary,) = body["summaries"]
    assert HEX32.match(summary["traceId"])
    assert summary["rootServiceName"] == "deployments" and summary["rootOperationName"] == "shop web"
    assert int(summary["minStartTimeUnixNano"]) < int(summary["maxEndTimeUnixNano"])
    assert summary["spanCount"] == 6 and summary["orphanSpanCount"] == 0
    assert {service["name"]: service["spanCount"] for service in summary["services"]} == {
        "deployments": 1,
        "replicasets": 2,
        "pods": 3,
    }


async def test_v3_accepts_snake_case_and_filters_durations(client: TestClient[Any, Any]) -> None:
    params = {
        "query.service_name": "tracing",
        "query.attributes": json.dumps(WEB),
        "query.start_time_min": rfc3339(T0),
        "query.start_time_max": rfc3339(T0 + 2 * WINDOW_NS),
        "query.num_traces": "5",
    }
    body = await (await client.get("/api/v3/trace-summaries", params=params)).json()
    assert len(body["summaries"]) == 1
    body = await (
        await client.get("/api/v3/trace-summaries", params={**params, "query.duration_max": "1m"})
    ).json()
    assert body["summaries"] == []


async def test_v3_bad_input_is_a_400_with_a_message(client: TestClient[Any, Any]) -> None:
    response = await client.get("/api/v3/trace-summaries", params={"query.startTimeMin": "last tuesday"})
    body = await response.json()
    assert response.status == 400 and "query.startTimeMin" in body["error"]["message"]
    response = await client.get("/api/v3/traces/" + "ff20000000e1e3e7" + "1" * 16)
    assert response.status == 404 and (await response.json())["error"]["httpCode"] == 404


async def test_v3_get_trace_matches_the_real_shape(client: TestClient[Any, Any], fixtures_dir: Path) -> None:
    summaries = await (
        await client.get(
            "/api/v3/trace-summaries",
            params={
                "query.serviceName": "tree [owned objects]",
                "query.attributes": json.dumps(WEB),
                **V3_RANGE,
            },
        )
    ).json()
    trace_id = summaries["summaries"][0]["traceId"]
    body = await (await client.get(f"/api/v3/traces/{trace_id}")).json()
    real = jaeger_fixture(fixtures_dir, "v3-GetTrace.json")
    real_span = real["result"]["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    error_status = real_span.pop("status")  # only failed spans carry a status code, as in OTLP JSON
    same_shape(body, real)
    spans = [
        span for rs in body["result"]["resourceSpans"] for ss in rs["scopeSpans"] for span in ss["spans"]
    ]
    ids = {span["spanId"] for span in spans}
    for span in spans:
        assert span["traceId"] == trace_id and HEX32.match(span["traceId"]) and HEX16.match(span["spanId"])
        assert isinstance(span["startTimeUnixNano"], str) and span["startTimeUnixNano"].isdigit()
        assert isinstance(span["endTimeUnixNano"], str) and int(span["endTimeUnixNano"]) >= int(
            span["startTimeUnixNano"]
        )
        assert span.get("parentSpanId", next(iter(ids))) in ids
        for event in span.get("events", []):  # omitted when empty, as protojson does
            assert event["timeUnixNano"].isdigit()
    services = {
        attr["value"]["stringValue"]
        for rs in body["result"]["resourceSpans"]
        for attr in rs["resource"]["attributes"]
        if attr["key"] == "service.name"
    }
    assert services == {"deployments", "replicasets", "pods", "audit", "event", "diff"}
    failed = [span for span in spans if span["status"]]
    assert len(failed) == 1 and "(409)" in failed[0]["name"]  # the status update that conflicted
    same_shape(failed[0]["status"], error_status)
    found = await (
        await client.get(
            "/api/v3/traces",
            params={"query.serviceName": "tree", "query.attributes": json.dumps(WEB), **V3_RANGE},
        )
    ).json()
    real_found = jaeger_fixture(fixtures_dir, "v3-FindTraces.json")
    real_found["result"]["resourceSpans"][0]["scopeSpans"][0]["spans"][0].pop("status")
    same_shape(found, real_found)
    assert len(found["result"]["resourceSpans"]) == 2  # deployments and audit: tree mode alone


async def test_redirect_answers_one_302_even_when_several_objects_match(client: TestClient[Any, Any]) -> None:
    at = str((T0 + 150 * 10**9) // 10**9)
    # A Deployment and a Service are both named shop/web: still exactly one answer.
    response = await client.get(
        "/redirect",
        params={"cluster": CLUSTER, "namespace": "shop", "name": "web", "resource": "deployments", "ts": at},
        allow_redirects=False,
    )
    assert response.status == 302
    location = response.headers["Location"]
    assert re.fullmatch(r"/trace/ff[0-9a-f]{8}e1e3e7[0-9a-f]{16}", location)
    (raw,) = (await (await client.get("/api/traces/" + location.rsplit("/", 1)[1])).json())["data"]
    trace = V1Trace(raw)
    assert trace.service(trace.root) == "deployments" and trace.root["operationName"] == "shop web"

    both = await client.get(
        "/redirect",
        params={
            "namespace": "shop",
            "name": "web",
            "resource": "deployments",
            "ts": at,
            "mode": "tracing [full tree]",
        },
        allow_redirects=False,
    )
    assert both.status == 302
    missing = await client.get(
        "/redirect", params={"resource": "deployments", "name": "nothing", "ts": at}, allow_redirects=False
    )
    assert missing.status == 404
    bad = await client.get("/redirect", params={"name": "web"}, allow_redirects=False)
    assert bad.status == 400


async def test_redirect_with_only_a_name_picks_one_of_several_resources(client: TestClient[Any, Any]) -> None:
    at = str((T0 + 150 * 10**9) // 10**9)
    responses = [
        await client.get(
            "/redirect",
            params={"resource": resource, "namespace": "shop", "name": "web", "ts": at},
            allow_redirects=False,
        )
        for resource in ("deployments", "services")
    ]
    assert [response.status for response in responses] == [302, 302]
    assert responses[0].headers["Location"] != responses[1].headers["Location"]


async def test_jaeger_ui_bundle_is_served_under_jaeger_with_spa_fallback(reader: TraceReader, tmp_path: Path) -> None:
    ui = tmp_path / "ui"
    (ui / "static").mkdir(parents=True)
    (ui / "index.html").write_text('<html><base href="/" />jaeger ui</html>')
    (ui / "static" / "main.js").write_text("console.log('ui')")
    (ui / "favicon.ico").write_bytes(b"icon")
    client = await serve(reader, FrontendConfig(ui_dir=str(ui)))
    index = '<html><base href="/jaeger/" />jaeger ui</html>'  # the bundle routes and calls APIs under /jaeger/
    try:
        for path in ("/jaeger", "/jaeger/", "/jaeger/search", "/jaeger/trace/ff20000000e1e3e70000000000000001"):
            response = await client.get(path)
            assert response.status == 200 and await response.text() == index, path
        for path in ("/jaeger/static/main.js", "/jaeger/trace/static/main.js"):
            response = await client.get(path)
            assert response.status == 200 and await response.text() == "console.log('ui')", path
        assert await (await client.get("/jaeger/favicon.ico")).read() == b"icon"
        assert (await client.get("/jaeger/static/missing.js")).status == 404
        escape = await client.get("/jaeger/static/../../etc/passwd")
        assert await escape.text() in (index, "404: Not Found")  # never the file itself
        # The root belongs to the built-in UI (not added here), not to the bundle.
        for path in ("/search", "/static/main.js", "/trace/ff20000000e1e3e70000000000000001"):
            assert (await client.get(path)).status == 404, path
        for path in ("/api/nothing-here", "/jaeger/api/nothing-here"):
            api_missing = await client.get(path)
            assert api_missing.status == 404 and "jaeger ui" not in await api_missing.text()
        for path in ("/api/services", "/jaeger/api/services"):
            services = await client.get(path)
            assert (await services.json())["total"] == 16
        assert (await client.get("/jaeger/api/v3/services")).status == 200
    finally:
        await client.close()
