"""A corpus of hostile requests against a running App: each answers the status asserted for it (never a 5xx),
and the server is healthy afterwards and made no metric series for names it refused."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import ClientSession
from yarl import URL

from tests.e2e.conftest import AppFactory, replay_scenario

EMPTY = {"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": []}
TOKEN = "corpus-admin-token-0123456789abcdef"
NUMBER_NAME = {"metadata": {"name": 5}}


@dataclass
class Case:
    status: int
    path: str  # sent as is (already percent-encoded where it matters)
    method: str = "GET"
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.method} {self.path[:120]}"


def q(path: str, **params: str) -> str:
    """``path`` with percent-encoded query parameters."""
    return str(URL(path).with_query(params))


def event(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "level": "Metadata",
        "auditID": "3f0c1d4e-0000-4000-8000-000000000001",
        "stage": "ResponseComplete",
        "requestURI": "/api/v1/namespaces/shop/configmaps/x",
        "verb": "update",
        "user": {"username": "mallory"},
        "sourceIPs": ["10.0.0.1"],
        "objectRef": {"resource": "configmaps", "namespace": "shop", "name": "x", "apiVersion": "v1"},
        "responseStatus": {"metadata": {}, "code": 200},
        "requestReceivedTimestamp": "2026-12-02T02:00:00.000000Z",
        "stageTimestamp": "2026-12-02T02:00:00.100000Z",
    }
    base.update(overrides)
    return base


def batch(*items: dict[str, Any]) -> bytes:
    return orjson.dumps({**EMPTY, "items": list(items)})


def webhook_cases() -> list[Case]:
    empty = orjson.dumps(EMPTY)
    json_type = {"Content-Type": "application/json"}
    deep = b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    huge_name = event(objectRef={"resource": "configmaps", "namespace": "shop", "name": "n" * 300_000})
    slash_namespace = event(objectRef={"resource": "configmaps", "namespace": "x/y", "name": "z"})
    long_label = event(
        responseObject={"kind": "ConfigMap", "metadata": {"name": "x", "labels": {"a": "v" * 64}}}
    )
    return [
        Case(404, "/audit/a%2Fb", "POST", empty, json_type),
        Case(404, "/audit/UPPER", "POST", empty, json_type),
        Case(404, "/audit/-dash", "POST", empty, json_type),
        Case(404, "/audit/" + "a" * 64, "POST", empty, json_type),
        Case(404, "/audit/cl%C3%BCster", "POST", empty, json_type),
        Case(404, "/audit/a%00b", "POST", empty, json_type),
        Case(404, "/audit/..", "POST", empty, json_type),
        Case(404, "/audit/fixture/extra", "POST", empty, json_type),
        Case(200, "/audit/fixture", "POST", empty, json_type),
        Case(200, "/audit/fixture", "POST", batch(huge_name), json_type),
        Case(200, "/audit/fixture", "POST", batch(slash_namespace, event()), json_type),
        Case(200, "/audit/fixture", "POST", batch(long_label), json_type),
        Case(200, "/audit/fixture", "POST", batch(event(responseObject={"kind": "X", "metadata": 5})), json_type),
        Case(
            200,
            "/audit/fixture",
            "POST",
            batch(event(objectRef={"resource": "configmaps", "namespace": "shop"}, responseObject=NUMBER_NAME)),
            json_type,
        ),
        Case(
            200,
            "/audit/fixture",
            "POST",
            batch(event(verb="patch", requestObject={"metadata": []}, responseObject={"metadata": {"uid": 7}})),
            json_type,
        ),
        Case(400, "/audit/fixture", "POST", b"[]", json_type),
        Case(400, "/audit/fixture", "POST", deep, json_type),
        Case(400, "/audit/fixture", "POST", b"{" * 10_000, json_type),
        Case(400, "/audit/fixture", "POST", b'{"kind":"Pod","apiVersion":"v1"}', json_type),
        Case(400, "/audit/fixture", "POST", batch(event(stageTimestamp="99999-01-01T00:00:00Z")), json_type),
        Case(400, "/audit/fixture", "POST", batch(event(stageTimestamp="not a time")), json_type),
        Case(415, "/audit/fixture", "POST", empty, {"Content-Type": "text/plain"}),
        Case(415, "/audit/fixture", "POST", empty, {**json_type, "Content-Encoding": "br"}),
        Case(400, "/audit/fixture", "POST", b"\x1f\x8b garbage", {**json_type, "Content-Encoding": "gzip"}),
        Case(400, "/audit/fixture", "POST", gzip.compress(empty)[:-4], {**json_type, "Content-Encoding": "gzip"}),
        Case(405, "/audit/fixture"),
    ]


def v1_cases() -> list[Case]:
    t = "/api/traces"
    many = json.dumps({f"k{i}": "v" for i in range(17)})
    sixteen = json.dumps({f"k{i}": "v" for i in range(16)})
    return [
        Case(200, q(t, service="tracing")),
        Case(200, q(t, service="tracing", lookback="1h")),
        Case(200, q(t, service="tracing", limit="1000")),
        Case(200, q(t, service="tracing", tags=sixteen)),
        Case(200, q(t, limit="20", service="tree") + "&limit=5000"),
        Case(400, q(t, limit="1001")),
        Case(400, q(t, limit="-1")),
        Case(400, q(t, limit="99999999999999999999999")),
        Case(400, q(t, limit="abc")),
        Case(400, q(t, limit="1e3")),
        Case(400, q(t, start="99999999999999999999")),
        Case(400, q(t, start="9223372036854775807")),
        Case(400, q(t, end="-1")),
        Case(400, q(t, start="0", end="4611686018427387")),
        Case(400, q(t, lookback="100000000w")),
        Case(400, q(t, lookback="-1h")),
        Case(400, q(t, lookback="1x")),
        Case(400, q(t, lookback="9" * 100 + "h")),
        Case(400, q(t, lookback="1" + "0" * 400 + "ns")),
        Case(400, q(t, tags=many)),
        Case(400, q(t, tags="{not json")),
        Case(400, q(t, tags='{"a": {"b": 1}}')),
        Case(400, q(t, tags='{"a": [1, 2]}')),
        Case(400, q(t, tags='["a"]')),
        Case(400, q(t, tags='{"": "x"}')),
        Case(400, q(t, tags=json.dumps({"a": "v" * 5000}))),
        Case(400, q(t, tags="[" * 5000 + "]" * 5000)),
        Case(400, t + "?" + "&".join(f"tag=k{i}:v" for i in range(17))),
        Case(400, q(t, tag="nocolon")),
        Case(400, q(t, minDuration="1e400")),
        Case(400, q(t, minDuration="99999999999h")),
        Case(400, q(t, maxDuration="-5s")),
        Case(400, q(t, service="no such mode")),
        Case(400, q(t, service="x" * 300)),
        Case(400, q(t, operation="c" * 300)),
        Case(400, "/api/traces/zzzz"),
        Case(400, "/api/traces/" + "f" * 33),
        Case(400, "/api/traces/" + "a" * 5000),
        Case(404, "/api/traces/0"),
        Case(404, "/api/traces/ff21000000e1e3e70000000000000001"),
        Case(400, "/api/traces/ff99000000e1e3e70000000000000001"),
        Case(400, q("/api/dependencies", endTs="999999999999999999999")),
        Case(400, q("/api/dependencies", endTs="abc")),
        Case(400, "/api/services/%2e%2e/operations"),
        Case(400, "/api/services/" + "%C3%BC" * 50 + "/operations"),
        Case(200, "/api/services/tracing/operations"),
        Case(400, q("/api/operations", service="\u202etracing")),
    ]


def v3_cases() -> list[Case]:
    s = "/api/v3/trace-summaries"
    many = json.dumps({f"k{i}": "v" for i in range(17)})
    return [
        Case(200, s),
        Case(200, q(s, **{"query.searchDepth": "1000"})),
        Case(400, q(s, **{"query.searchDepth": "1001"})),
        Case(400, q(s, **{"query.searchDepth": "1000000000000"})),
        Case(400, q(s, **{"query.searchDepth": "-5"})),
        Case(400, q(s, **{"query.startTimeMin": "9999-12-31T23:59:59Z"})),
        Case(400, q(s, **{"query.startTimeMax": "9999-12-31T23:59:59Z"})),
        Case(400, q(s, **{"query.startTimeMin": "0001-01-01T00:00:00Z"})),
        Case(400, q(s, **{"query.startTimeMin": "garbage"})),
        Case(400, q(s, **{"query.startTimeMin": "2026-02-30T00:00:00Z"})),
        Case(400, q(s, **{"query.startTimeMin": "2026-01-01T00:00:00." + "9" * 100 + "Z"})),
        Case(400, q(s, **{"query.startTimeMin": "1971-01-01T00:00:00Z", "query.startTimeMax": "2026-01-01T00:00:00Z"})),
        Case(400, q(s, **{"query.attributes": many})),
        Case(400, q(s, **{"query.durationMin": "abc"})),
        Case(400, q(s, **{"query.serviceName": "nope"})),
        Case(400, "/api/v3/traces/xyz"),
        Case(200, q("/api/v3/traces", **{"query.serviceName": "tree"})),
        Case(200, "/api/v3/services"),
    ]


def redirect_and_analysis_cases() -> list[Case]:
    r, a = "/redirect", "/api/analysis"
    return [
        Case(400, q(r, ts="99999999999999")),
        Case(400, q(r, resource="pods", name="x", ts="99999999999999")),
        Case(400, q(r, resource="pods", name="x", ts="99999999999999.5")),
        Case(400, q(r, resource="pods", name="x", ts="1e10")),
        Case(400, q(r, resource="pods", name="x", ts="-5")),
        Case(400, q(r, resource="pods", name="x", ts="2026-13-45T00:00:00Z")),
        Case(404, q(r, resource="pods", name="x")),
        Case(404, q(r, resource="pods", name="\u00fc\u00f1\u00ee\u00e7\u00f8d\u00e9")),
        Case(404, q(r, resource="pods", name="x\x00y")),
        Case(400, r),
        Case(400, q(r, resource="pods", name="n" * 300)),
        Case(400, q(r, resource="pods", name="x", mode="bogus")),
        Case(400, a),
        Case(400, q(a, kind="deploy", name="web", lookback="100000000w")),
        Case(400, q(a, kind="nonexistent", name="x")),
        Case(400, q(a, kind="deploy", name="web", start="99999999999999")),
        Case(400, q(a, kind="deploy", name="web", scope="bogus")),
        Case(400, q(a, kind="deploy", name="web", end="abc")),
        Case(400, q(a, resource="deployments", name="web", start="0", end="2000000000")),
        Case(400, q(a, resource="deployments", name="n" * 300)),
        Case(404, q(a, resource="deployments", name="\u00fc" * 10)),
        Case(200, "/api/analysis/schema"),
    ]


def path_and_header_cases() -> list[Case]:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    return [
        Case(404, "/%2e%2e/%2e%2e/etc/passwd"),
        Case(404, "/api/traces%2F..%2F..%2Fmetrics"),
        Case(404, "/" + "a" * 7000),
        Case(400, "/\u00fc\u00f1\u00ee"),  # raw non-ASCII in a request line
        Case(200, "/api/services?%ff=%ff"),
        Case(400, "/api/traces?service=%ff"),
        Case(405, "/api/services", "POST", b"{}"),
        Case(405, "/api/traces", "PATCH", b"{}"),
        Case(405, "/healthz", "DELETE"),
        Case(200, "/healthz", "HEAD"),
        Case(200, "/healthz", headers={f"X-Noise-{i}": "y" * 50 for i in range(90)}),
        Case(400, "/healthz", headers={"X-Big": "z" * 9000}),
        Case(401, "/api/services", headers={"X-Auth": "1"}),
        Case(401, "/api/services", headers={"Authorization": "Bearer " + "t" * 8000}),
        Case(401, "/api/services", headers={"Authorization": f"Basic {TOKEN}"}),
        Case(401, "/api/services", headers={"Authorization": "Bearer"}),
        Case(401, "/api/services", headers={"Authorization": f"Bearer {TOKEN}x"}),
        Case(401, "/api/services", headers={"Authorization": f"Bearer {TOKEN[:-1]}"}),
        Case(401, "//api//services", headers={}),
        Case(401, "/metrics"),
        Case(200, "/api/services", headers={"Authorization": f"bearer {TOKEN}"}),
        Case(200, "/metrics", headers=auth),
    ]


async def send(session: ClientSession, base_url: str, case: Case, token: str) -> int:
    headers = dict(case.headers)
    wants_token = case.status != 401 and not case.path.startswith(("/audit", "/healthz"))
    if token and wants_token and "Authorization" not in headers:
        headers["Authorization"] = f"Bearer {token}"
    async with session.request(
        case.method, URL(base_url + case.path, encoded=True), data=case.body, headers=headers, allow_redirects=False
    ) as response:
        body = await response.read()
        assert response.status < 500, (str(case), response.status, body[:200])
        return response.status


async def test_hostile_requests_get_their_asserted_status(fixtures_dir: Path, make_app: AppFactory) -> None:
    app = await make_app(
        **{
            "auth.mode": "token",
            "auth.tokens": [{"token": TOKEN, "user": "admin", "cluster_scoped": True}],
            "store.retention_hours": 72,
        }
    )
    await replay_scenario(app, fixtures_dir, "deployment-lifecycle")
    cases = webhook_cases() + v1_cases() + v3_cases() + redirect_and_analysis_cases() + path_and_header_cases()
    assert len(cases) >= 80
    wrong: list[str] = []
    async with ClientSession() as session:
        for case in cases:
            status = await send(session, app.base_url, case, TOKEN)
            if status != case.status:
                wrong.append(f"{case}: {status}, expected {case.status}")
        assert wrong == []

        # A bad event is dropped alone: the good one beside it is kept.
        bad = event(objectRef={"resource": "configmaps", "namespace": "x/y", "name": "z"})
        good = event(auditID="3f0c1d4e-0000-4000-8000-000000000099")
        async with session.post(
            app.base_url + "/audit/fixture", data=batch(bad, good), headers={"Content-Type": "application/json"}
        ) as response:
            assert response.status == 200
            assert (await response.json()) == {"accepted": 2, "observations": 1}

        # Healthy afterwards, still answering real queries; nothing failed inside.
        for path in ("/healthz", "/readyz"):
            async with session.get(app.base_url + path) as response:
                assert response.status == 200
        params = {"service": "tracing", "tags": json.dumps({"name": "web", "resource": "deployments"})}
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with session.get(app.base_url + "/api/traces", params={**params, "lookback": "1h"}, headers=auth) as ok:
            assert ok.status == 200
        async with session.get(
            app.base_url + "/api/traces", params={**params, "lookback": "1000h"}, headers=auth
        ) as response:
            assert response.status == 400  # beyond the 72 h the store keeps
        async with session.get(
            app.base_url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as response:
            metrics = await response.text()
    assert "kelemetry_http_internal_errors_total 0.0" in metrics
    # Refused cluster names made no series; the bad events were dropped alone and counted by field.
    clusters = {line.split('cluster="')[1].split('"')[0] for line in metrics.splitlines() if 'cluster="' in line}
    assert clusters == {"fixture"}
    assert 'kelemetry_audit_events_invalid_total{field="objectRef.name"} 1.0' in metrics
    assert 'kelemetry_audit_events_invalid_total{field="objectRef.namespace"} 2.0' in metrics
    assert 'kelemetry_audit_events_invalid_total{field="responseObject.metadata.labels"} 1.0' in metrics
    assert 'kelemetry_audit_batches_rejected_total{reason="unknown_cluster"}' in metrics
    assert 'kelemetry_audit_events_invalid_total{field="object"} 3.0' in metrics
