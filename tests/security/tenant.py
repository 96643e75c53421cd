"""What a tenant scoped to namespace ``shop`` of cluster ``fixture`` sees after all three recordings are replayed,
checked on every read surface (v1, v3, /redirect, /api/analysis, gRPC) the same way for every auth mode."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from aiohttp import ClientSession

from kelemetry_py.app import App
from kelemetry_py.frontend.proto import trace_storage_pb2 as pb
from kelemetry_py.frontend.proto import trace_storage_pb2_grpc
from kelemetry_py.model import ObjectRef, object_trace_id, window_of
from tests.conftest import SCENARIOS
from tests.e2e.conftest import replay_scenario
from tests.frontend.scenario import CLUSTER, ScenarioFacts, audit_events, object_key, object_tree, rfc3339
from tests.frontend.views import V1Trace

pb_grpc: Any = trace_storage_pb2_grpc
WEB = object_key("apps", "deployments", "shop", "web")
DB = {"resource": "statefulsets", "namespace": "jobs", "name": "db"}
FULL_TREE = "tracing [full tree]"


@dataclass
class Recorded:
    """Facts of all three recordings: the range, the objects of namespace ``jobs`` and the Deployment's tree."""

    start_ns: int
    end_ns: int
    jobs_names: set[str]
    web_tree: set[str]
    window_seconds: int = 1800

    @property
    def range_us(self) -> dict[str, str]:
        return {"start": str(self.start_ns // 1000), "end": str(self.end_ns // 1000)}


def recorded(fixtures_dir: Path, facts: dict[str, ScenarioFacts]) -> Recorded:
    start = min(f.search_start_ns for f in facts.values())
    end = max(f.search_end_ns for f in facts.values())
    names: dict[str, set[str]] = {}
    for scenario in SCENARIOS:
        for event in audit_events(fixtures_dir, scenario):
            ref = event.get("objectRef") or {}
            metadata = (event.get("responseObject") or {}).get("metadata") or {}
            name = ref.get("name") or metadata.get("name")
            if name:
                names.setdefault(ref.get("namespace", ""), set()).add(name)
    # Names that also belong to objects the tenant may see (kube-root-ca.crt, default) say nothing about jobs.
    jobs = names.get("jobs", set()) - names.get("shop", set())
    lifecycle = facts["deployment-lifecycle"]
    tree = {WEB}
    frontier = {WEB}
    while frontier:
        frontier = {child for parent in frontier for child in lifecycle.owned_by(parent)} - tree
        tree |= frontier
    return Recorded(start, end, jobs, tree)


async def replay_all(app: App, fixtures_dir: Path) -> None:
    for scenario in SCENARIOS:
        await replay_scenario(app, fixtures_dir, scenario)


@dataclass
class Reader:
    """One caller's view of the server over HTTP, keeping every byte it was answered."""

    session: ClientSession
    base_url: str
    token: str
    seen: list[bytes] = field(default_factory=list)

    async def get(self, path: str, params: dict[str, str] | None = None, status: int = 200) -> bytes:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with self.session.get(
            self.base_url + path, params=params, headers=headers, allow_redirects=False
        ) as response:
            body = await response.read()
            assert response.status == status, (path, params, response.status, body[:300])
            self.seen.append(body)
            if "Location" in response.headers:
                self.seen.append(response.headers["Location"].encode())
            return body

    async def search(self, mode: str, tags: dict[str, str], facts: Recorded, limit: int = 20) -> list[V1Trace]:
        params = {"service": mode, "tags": json.dumps(tags), "limit": str(limit), **facts.range_us}
        body = orjson.loads(await self.get("/api/traces", params))
        return [V1Trace(trace) for trace in body["data"]]

    async def summaries(self, mode: str, tags: dict[str, str], facts: Recorded) -> list[dict[str, Any]]:
        params = {
            "query.serviceName": mode,
            "query.attributes": json.dumps(tags),
            "query.startTimeMin": rfc3339(facts.start_ns),
            "query.startTimeMax": rfc3339(facts.end_ns),
            "query.searchDepth": "1000",
        }
        body = orjson.loads(await self.get("/api/v3/trace-summaries", params))
        summaries: list[dict[str, Any]] = body["summaries"]
        return summaries


def read_surfaces(facts: Recorded) -> list[tuple[str, dict[str, str]]]:
    """Every read route with working parameters."""
    mid = str((facts.start_ns + facts.end_ns) // 2 // 10**9)
    return [
        ("/api/services", {}),
        ("/api/services/tracing/operations", {}),
        ("/api/operations", {"service": "tracing"}),
        ("/api/traces", {"service": FULL_TREE, "tags": json.dumps({"name": "web"}), **facts.range_us}),
        ("/api/traces/ff21000000e1e3e70000000000000001", {}),
        ("/api/dependencies", {}),
        ("/api/v3/services", {}),
        ("/api/v3/operations", {"service": "tracing"}),
        ("/api/v3/trace-summaries", {"query.serviceName": "tracing"}),
        ("/api/v3/traces", {"query.serviceName": "tracing"}),
        ("/api/v3/traces/ff21000000e1e3e70000000000000001", {}),
        ("/redirect", {"resource": "deployments", "namespace": "shop", "name": "web", "ts": mid}),
        ("/api/analysis", {"resource": "deployments", "namespace": "shop", "name": "web", "start": mid}),
        ("/api/analysis/schema", {}),
        ("/metrics", {}),
    ]


def raw_trace_id(facts: Recorded, ref: ObjectRef) -> str:
    return f"{object_trace_id(ref.key, window_of(facts.start_ns + 600 * 10**9, facts.window_seconds)):032x}"


def assert_nothing_of_jobs(seen: list[bytes], facts: Recorded) -> None:
    """No byte of any answer names an object of namespace jobs, nor the namespace."""
    blob = b"\n".join(seen)
    for name in sorted(facts.jobs_names):
        pattern = rb"(?<![A-Za-z0-9.-])" + re.escape(name.encode()) + rb"(?![A-Za-z0-9-])"
        assert re.search(pattern, blob) is None, f"{name!r} of namespace jobs leaked into a tenant answer"
    assert b'"jobs"' not in blob and b"jobs/" not in blob
    # Nor any other namespace outside the scope, not even in the user names of the controllers that acted.
    for namespace in (b"jobs", b"kube-system", b"kube-node-lease", b"kube-public"):
        assert re.search(rb"(?<![A-Za-z0-9-])" + namespace + rb"(?![A-Za-z0-9-])", blob) is None, namespace
    assert b"system:serviceaccount:<other-namespace>:deployment-controller" in blob  # who acted is still told


def object_resources(trace: V1Trace) -> set[str]:
    return {str(trace.tags(span).get("resource")) for span in trace.spans.values()}


async def check_tenant_view(tenant: Reader, admin: Reader, facts: Recorded, grpc_port: int) -> None:
    # Anyone without a token: 401 on every read surface, while probes stay open.
    anonymous = Reader(tenant.session, tenant.base_url, "")
    for path, params in read_surfaces(facts):
        await anonymous.get(path, params, status=401)
    await anonymous.get("/healthz")
    await anonymous.get("/readyz")
    stranger = Reader(tenant.session, tenant.base_url, "not-a-valid-token-at-all")
    await stranger.get("/api/services", status=401)

    # The tenant finds deployments/web in shop with its whole tree, as the admin does.
    (web,) = await tenant.search(FULL_TREE, {"resource": "deployments", "namespace": "shop", "name": "web"}, facts)
    assert set(object_tree(web)) == facts.web_tree
    (admin_web,) = await admin.search(FULL_TREE, {"resource": "deployments", "namespace": "shop", "name": "web"}, facts)
    assert object_tree(admin_web) == object_tree(web)
    again = V1Trace(orjson.loads(await tenant.get(f"/api/traces/{web.trace_id}"))["data"][0])
    assert object_tree(again) == object_tree(web)

    # ... and nothing of namespace jobs, however it asks.
    assert await tenant.search(FULL_TREE, {"namespace": "jobs"}, facts) == []
    assert await tenant.search("tree", DB, facts) == []
    assert await tenant.summaries("tracing", {"namespace": "jobs"}, facts) == []
    (admin_db,) = await admin.search(FULL_TREE, DB, facts)
    assert "statefulsets" in object_resources(admin_db)  # it is there: the admin sees it
    await tenant.get(f"/api/traces/{admin_db.trace_id}", status=404)  # a view id someone else opened
    await tenant.get(f"/api/v3/traces/{admin_db.trace_id}", status=404)
    node = ObjectRef(CLUSTER, "", "v1", "nodes", "", "node-1")
    await admin.get(f"/api/traces/{raw_trace_id(facts, node)}")  # the Node's raw trace exists
    await tenant.get(f"/api/traces/{raw_trace_id(facts, node)}", status=404)
    await tenant.get("/redirect", {**DB, "ts": str(facts.end_ns // 10**9)}, status=404)
    await tenant.get("/redirect", {"resource": "nodes", "name": "node-1", "ts": str(facts.end_ns // 10**9)}, status=404)
    await tenant.get(
        "/redirect",
        {"resource": "deployments", "namespace": "shop", "name": "web", "ts": str(facts.end_ns // 10**9 - 600)},
        status=302,
    )
    assert tenant.seen[-1].startswith(b"/trace/ff")  # its Location
    analysis_range = {"start": str(facts.start_ns // 10**9), "end": str(facts.end_ns // 10**9)}
    await tenant.get("/api/analysis", {"kind": "statefulset", "namespace": "jobs", "name": "db", **analysis_range}, 404)
    await admin.get("/api/analysis", {"kind": "statefulset", "namespace": "jobs", "name": "db", **analysis_range})
    document = orjson.loads(
        await tenant.get(
            "/api/analysis",
            {"kind": "deployment", "namespace": "shop", "name": "web", "scope": "full", **analysis_range},
        )
    )
    assert document

    # Everything the tenant may search at once: only shop objects, no span for a Node or a ClusterRole.
    for mode in ("tree", FULL_TREE, "timeline"):
        every = await tenant.search(mode, {}, facts, limit=1000)
        assert every, mode
        for trace in every:
            for span in trace.spans.values():
                tags = trace.tags(span)
                if "namespace" in tags:
                    assert tags["namespace"] == "shop", (mode, tags)
                assert tags.get("resource") not in ("nodes", "clusterroles", "namespaces"), (mode, tags)
                assert tags.get("linkedResource") not in ("nodes", "clusterroles"), (mode, tags)
    everything_v3 = orjson.loads(
        await tenant.get(
            "/api/v3/traces",
            {
                "query.serviceName": "tree",
                "query.startTimeMin": rfc3339(facts.start_ns),
                "query.startTimeMax": rfc3339(facts.end_ns),
                "query.searchDepth": "1000",
            },
        )
    )
    namespaces = {
        attribute["value"]["stringValue"]
        for resource_spans in everything_v3["result"]["resourceSpans"]
        for scope_spans in resource_spans["scopeSpans"]
        for span in scope_spans["spans"]
        for attribute in span["attributes"]
        if attribute["key"] == "namespace"
    }
    assert namespaces == {"shop"}

    # A ConfigMap owned by a ClusterRole: the tenant sees the ConfigMap alone, its ownerReference (its own
    # field) stays in its snapshot; the admin sees the ClusterRole above it.
    owned = {"resource": "configmaps", "namespace": "shop", "name": "owned-by-viewer-extra"}
    (tenant_cm,) = await tenant.search(FULL_TREE, owned, facts)
    (admin_cm,) = await admin.search(FULL_TREE, owned, facts)
    assert object_resources(admin_cm) >= {"clusterroles", "configmaps"}
    assert set(object_tree(tenant_cm)) == {object_key("", "configmaps", "shop", "owned-by-viewer-extra")}
    assert b"viewer-extra" in orjson.dumps(tenant_cm.raw)

    operations = orjson.loads(await tenant.get("/api/services/tracing/operations"))
    assert operations["data"] == [CLUSTER]
    await tenant.get("/metrics", status=403)
    assert b"kelemetry_" in await admin.get("/metrics")

    await check_grpc(tenant.token, grpc_port, facts, admin_db.trace_id, tenant.seen)
    assert_nothing_of_jobs(tenant.seen, facts)
    # The check itself can fail: the admin's answers do name the objects of jobs.
    assert len(facts.jobs_names) >= 8
    with pytest.raises(AssertionError, match="leaked"):
        assert_nothing_of_jobs(admin.seen, facts)


async def check_grpc(token: str, port: int, facts: Recorded, hidden_view: str, seen: list[bytes]) -> None:
    def query(**tags: str) -> Any:
        params = pb.TraceQueryParameters(service_name="tree", search_depth=1000)
        params.start_time_min.FromNanoseconds(facts.start_ns)
        params.start_time_max.FromNanoseconds(facts.end_ns)
        for key, value in tags.items():
            params.attributes.add(key=key, value=pb.AnyValue(string_value=value))
        return params

    metadata = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.TraceReaderStub(channel)
        try:
            await stub.GetServices(pb.GetServicesRequest())
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
        else:
            raise AssertionError("gRPC answered without a token")
        operations = await stub.GetOperations(pb.GetOperationsRequest(service="tree"), metadata=metadata)
        assert [op.name for op in operations.operations] == [CLUSTER]
        chunks = [c async for c in stub.FindTraces(pb.FindTracesRequest(query=query()), metadata=metadata)]
        assert chunks
        namespaces = set()
        for chunk in chunks:
            seen.append(chunk.SerializeToString())
            for resource_spans in chunk.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        attributes = {kv.key: kv.value.string_value for kv in span.attributes}
                        namespaces.add(attributes.get("namespace"))
                        assert attributes.get("resource") not in ("nodes", "clusterroles", "namespaces")
        assert namespaces == {"shop"}
        in_jobs = pb.FindTracesRequest(query=query(namespace="jobs"))
        assert [c async for c in stub.FindTraces(in_jobs, metadata=metadata)] == []
        hidden = pb.GetTracesRequest(query=[pb.GetTraceParams(trace_id=bytes.fromhex(hidden_view))])
        assert [c async for c in stub.GetTraces(hidden, metadata=metadata)] == []
