"""The frontend over other back ends, end to end: one App exports the replayed scenario over OTLP into a Tempo
stand-in and a second App reads it back through the Tempo reader; and jaeger-query's gRPC remote storage."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import grpc
from aiohttp import ClientSession
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from kelemetry_py.app import App
from kelemetry_py.export.otlp import WRITER_LABEL as OTLP_WRITER
from kelemetry_py.frontend.grpc_storage import SERVICE_NAME
from kelemetry_py.frontend.proto import trace_storage_pb2 as pb
from kelemetry_py.frontend.proto import trace_storage_pb2_grpc
from tests.e2e.conftest import AppFactory, replay_scenario
from tests.frontend.scenario import (
    CLUSTER,
    FrontendClient,
    ScenarioFacts,
    key_tags,
    object_key,
    object_tree,
    scenario_facts,
)
from tests.support.tempo_double import TempoDouble

pb_grpc: Any = trace_storage_pb2_grpc  # generated without type hints
LIFECYCLE = "deployment-lifecycle"
WEB = object_key("apps", "deployments", "shop", "web")
WEB_TAGS = {"resource": "deployments", "namespace": "shop", "name": "web"}
MODES = ("tracing [full tree]", "tracing [ancestors]", "tree [owned objects]", "grouped", "timeline [full tree]")


async def exported_everything(app: App, tempo: TempoDouble) -> None:
    assert app.components is not None
    sent = int(app.components.metrics.spans_exported.labels(OTLP_WRITER)._value.get())
    assert sent > 0
    await tempo.wait_for_spans(sent)


async def test_the_same_views_read_back_through_tempo(fixtures_dir: Path, make_app: AppFactory) -> None:
    facts = scenario_facts(fixtures_dir, LIFECYCLE)
    async with TempoDouble() as tempo:
        writer = await make_app(**{"otlp.endpoint": tempo.otlp_endpoint})
        await replay_scenario(writer, fixtures_dir, LIFECYCLE)
        await exported_everything(writer, tempo)
        reader = await make_app(
            **{
                "frontend.reader": "tempo",
                "frontend.tempo.endpoint": tempo.url,
                "frontend.tempo.headers": {"X-Scope-OrgID": "shop-team"},
            }
        )
        assert reader.components is not None and reader.components.store is not None
        pod = sorted(facts.owned_by(sorted(facts.owned_by(WEB))[0]))[0]
        async with ClientSession() as session:
            embedded = FrontendClient(session, writer.base_url, facts)
            through_tempo = FrontendClient(session, reader.base_url, facts)
            for mode in MODES:
                for tags in (WEB_TAGS, key_tags(pod)):
                    ours = await embedded.search(mode, tags)
                    theirs = await through_tempo.search(mode, tags)
                    assert len(ours) == 1, (mode, tags)
                    assert [trace.raw for trace in theirs] == [trace.raw for trace in ours], (mode, tags)
            (full,) = await through_tempo.search("tracing [full tree]", WEB_TAGS)
            assert set(object_tree(full)) == {WEB} | facts.owned_by(WEB) | {
                p for rs in facts.owned_by(WEB) for p in facts.owned_by(rs)
            }
            # The id read back through Tempo gives the same trace again; the clusters come from Tempo's tags.
            assert (await through_tempo.trace(full.trace_id)).raw == full.raw
            operations = await through_tempo.get_json("/api/services/tracing/operations")
            assert operations["data"] == [CLUSTER]
            v3 = await through_tempo.summaries("tracing [full tree]", WEB_TAGS)
            assert [summary["traceId"] for summary in v3] == [full.trace_id]
        # Every call to Tempo carried the configured tenant header and was a TraceQL search or a trace read.
        queries = [r for r in tempo.requests if r.path != "/v1/traces"]
        assert queries and all(r.headers.get("X-Scope-OrgID") == "shop-team" for r in queries)
        searches = [r for r in tempo.requests if r.path == "/api/search"]
        assert searches and all(r.query["q"].startswith("{ ") for r in searches)
        # The reading App's own store stayed empty: everything came from Tempo.
        assert await reader.components.store.tag_values("cluster", 0, 2**62) == []


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stamp(time_ns: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=time_ns // 10**9, nanos=time_ns % 10**9)


def grpc_query(facts: ScenarioFacts, mode: str, **attributes: str) -> pb.TraceQueryParameters:
    return pb.TraceQueryParameters(
        service_name=mode,
        operation_name=CLUSTER,
        attributes=[pb.KeyValue(key=k, value=pb.AnyValue(string_value=v)) for k, v in attributes.items()],
        start_time_min=stamp(facts.search_start_ns),
        start_time_max=stamp(facts.search_end_ns),
        search_depth=20,
    )


def otlp_spans(chunk: trace_pb2.TracesData) -> dict[str, tuple[str, trace_pb2.Span]]:
    """span id (hex) -> (service, span)."""
    out: dict[str, tuple[str, trace_pb2.Span]] = {}
    for resource_spans in chunk.resource_spans:
        (service,) = [kv.value.string_value for kv in resource_spans.resource.attributes if kv.key == "service.name"]
        for scope in resource_spans.scope_spans:
            for span in scope.spans:
                out[span.span_id.hex()] = (service, span)
    return out


async def test_grpc_remote_storage_serves_the_replayed_scenario(fixtures_dir: Path, make_app: AppFactory) -> None:
    facts = scenario_facts(fixtures_dir, LIFECYCLE)
    port = free_port()
    app = await make_app(**{"frontend.grpc_port": port, "http.host": "127.0.0.1"})
    assert app.ports["grpc"] == port
    await replay_scenario(app, fixtures_dir, LIFECYCLE)
    async with ClientSession() as session:
        (over_http,) = await FrontendClient(session, app.base_url, facts).search("tracing [full tree]", WEB_TAGS)

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE_NAME):
            answer = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        stub = pb_grpc.TraceReaderStub(channel)

        services = (await stub.GetServices(pb.GetServicesRequest())).services
        assert len(services) == 16 and "tracing [full tree]" in services
        operations = (await stub.GetOperations(pb.GetOperationsRequest(service="tracing [full tree]"))).operations
        assert [(op.name, op.span_kind) for op in operations] == [(CLUSTER, "internal")]

        query = grpc_query(facts, "tracing [full tree]", **WEB_TAGS)
        chunks = [chunk async for chunk in stub.FindTraces(pb.FindTracesRequest(query=query))]
        assert len(chunks) == 1
        spans = otlp_spans(chunks[0])
        assert {span.trace_id.hex() for _, span in spans.values()} == {over_http.trace_id}
        # The same tree as the HTTP API: same spans, same parents, same services, same logs.
        assert set(spans) == set(over_http.spans)
        for span_id, (service, span) in spans.items():
            http_span = over_http.spans[span_id]
            assert service == over_http.service(http_span) and span.name == http_span["operationName"]
            assert (span.parent_span_id.hex() or None) == over_http.parent(http_span)
            assert len(span.events) == len(http_span["logs"])
            assert {kv.key for kv in span.attributes} >= {
                "cluster",
                "group",
                "version",
                "resource",
                "namespace",
                "name",
            }

        found = await stub.FindTraceIDs(pb.FindTraceIDsRequest(query=query))
        assert [item.trace_id.hex() for item in found.trace_ids] == [over_http.trace_id]

        got = [
            chunk
            async for chunk in stub.GetTraces(
                pb.GetTracesRequest(query=[pb.GetTraceParams(trace_id=bytes.fromhex(over_http.trace_id))])
            )
        ]
        assert len(got) == 1 and otlp_spans(got[0]).keys() == spans.keys()

        # A Pod's ancestors over gRPC: rooted at the Deployment, only the Pod's own ReplicaSet on the path.
        replicaset = sorted(facts.owned_by(WEB))[-1]
        pod = sorted(facts.owned_by(replicaset))[-1]
        pod_query = grpc_query(facts, "tracing [ancestors]", **key_tags(pod))
        (chunk,) = [chunk async for chunk in stub.FindTraces(pb.FindTracesRequest(query=pod_query))]
        names = sorted((service, span.name) for service, span in otlp_spans(chunk).values())
        assert names == sorted(
            [
                ("deployments", "shop web"),
                ("replicasets", f"shop {replicaset.rsplit('/', 1)[1]}"),
                ("pods", f"shop {pod.rsplit('/', 1)[1]}"),
            ]
        )

        nothing = grpc_query(facts, "tracing", name="no-such-object")
        assert [chunk async for chunk in stub.FindTraces(pb.FindTracesRequest(query=nothing))] == []
        bad = grpc_query(facts, "no such mode", **WEB_TAGS)
        try:
            await stub.FindTraceIDs(pb.FindTraceIDsRequest(query=bad))
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "no such mode" in (error.details() or "")
        else:
            raise AssertionError("an unknown display mode must be INVALID_ARGUMENT")
