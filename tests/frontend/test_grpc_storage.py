"""The Jaeger v2 remote-storage gRPC server, called by a real grpc.aio client, over the Tempo reader."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from kelemetry_py.config import BackendConfig, FrontendConfig
from kelemetry_py.frontend.grpc_storage import SERVICE_NAME, GrpcStorageServer, serve_grpc_storage
from kelemetry_py.frontend.proto import trace_storage_pb2 as pb
from kelemetry_py.frontend.proto import trace_storage_pb2_grpc
from kelemetry_py.frontend.service import FrontendService
from kelemetry_py.frontend.tracecache.memory import MemoryTraceCache
from kelemetry_py.model import SERVICE_LINK, ObjectRef, Span, child_span_id, object_span_id, object_trace_id
from kelemetry_py.storage.tempo import TempoReader
from tests.frontend.test_readers import (
    DEPLOYMENT,
    REPLICASET,
    WINDOW,
    WINDOW_END_NS,
    WINDOW_START_NS,
    raw_trace,
)
from tests.support.tempo_double import TempoDouble

pb_grpc: Any = trace_storage_pb2_grpc  # generated without type hints


def link(owner_of: ObjectRef, linked: ObjectRef, role: str) -> Span:
    trace_id = object_trace_id(owner_of.key, WINDOW)
    return Span(
        trace_id=trace_id,
        span_id=child_span_id(trace_id, f"link {linked.key}"),
        parent_id=object_span_id(owner_of.key, WINDOW),
        service=SERVICE_LINK,
        name=f"{role} {linked.resource}/{linked.name}",
        start_ns=WINDOW_START_NS + 1_000_000_000,
        end_ns=WINDOW_START_NS + 1_000_000_000,
        attributes={
            **owner_of.tags(),
            "linkedCluster": linked.cluster,
            "linkedGroup": linked.group,
            "linkedVersion": linked.version,
            "linkedResource": linked.resource,
            "linkedNamespace": linked.namespace,
            "linkedName": linked.name,
            "linkRole": role,
            "linkClass": "owner",
        },
    )


def stored_spans() -> list[Span]:
    """A Deployment owning a ReplicaSet, in one window; raw_trace's own link spans name no object."""
    deployment = [span for span in raw_trace(DEPLOYMENT) if span.service != SERVICE_LINK]
    replicaset = [span for span in raw_trace(REPLICASET) if span.service != SERVICE_LINK]
    return [
        *deployment,
        link(DEPLOYMENT, REPLICASET, "child"),
        *replicaset,
        link(REPLICASET, DEPLOYMENT, "parent"),
    ]


@dataclass
class Running:
    tempo: TempoDouble
    server: GrpcStorageServer
    channel: grpc.aio.Channel
    stub: Any  # TraceReaderStub


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    async with TempoDouble(stored_spans()) as tempo:
        reader = TempoReader(BackendConfig(endpoint=tempo.url))
        service = FrontendService(reader, MemoryTraceCache(ttl_seconds=600), FrontendConfig())
        server = await serve_grpc_storage(service, "127.0.0.1", 0)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        try:
            yield Running(tempo, server, channel, pb_grpc.TraceReaderStub(channel))
        finally:
            await channel.close()
            await server.stop(0)
            await reader.close()


def stamp(time_ns: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=time_ns // 10**9, nanos=time_ns % 10**9)


def search(service: str, **attributes: str) -> pb.TraceQueryParameters:
    return pb.TraceQueryParameters(
        service_name=service,
        attributes=[pb.KeyValue(key=k, value=pb.AnyValue(string_value=v)) for k, v in attributes.items()],
        start_time_min=stamp(WINDOW_START_NS),
        start_time_max=stamp(WINDOW_END_NS),
        search_depth=10,
    )


def spans_of(chunk: trace_pb2.TracesData) -> list[tuple[str, trace_pb2.Span]]:
    out: list[tuple[str, trace_pb2.Span]] = []
    for resource_spans in chunk.resource_spans:
        service = next(
            kv.value.string_value for kv in resource_spans.resource.attributes if kv.key == "service.name"
        )
        out.extend((service, span) for scope in resource_spans.scope_spans for span in scope.spans)
    return out


def attribute(span: trace_pb2.Span, key: str) -> str:
    return next(str(kv.value.string_value) for kv in span.attributes if kv.key == key)


async def test_health_services_and_operations(running: Running) -> None:
    health = health_pb2_grpc.HealthStub(running.channel)
    for name in ("", SERVICE_NAME):
        answer = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

    services = (await running.stub.GetServices(pb.GetServicesRequest())).services
    assert len(services) == 16 and "tracing" in services and "tracing [full tree]" in services

    operations = (await running.stub.GetOperations(pb.GetOperationsRequest(service="tracing"))).operations
    assert [(op.name, op.span_kind) for op in operations] == [("fixture", "internal")]
    servers = await running.stub.GetOperations(pb.GetOperationsRequest(service="tracing", span_kind="server"))
    assert list(servers.operations) == []
    with pytest.raises(grpc.aio.AioRpcError) as bad_mode:
        await running.stub.GetOperations(pb.GetOperationsRequest(service="no such mode"))
    assert bad_mode.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_find_traces_ids_and_get_traces_agree(running: Running) -> None:
    query = search("tracing [full tree]", resource="deployments", namespace="shop", name="web")
    chunks = [chunk async for chunk in running.stub.FindTraces(pb.FindTracesRequest(query=query))]
    assert len(chunks) == 1
    spans = spans_of(chunks[0])
    trace_ids = {span.trace_id for _, span in spans}
    assert len(trace_ids) == 1
    (trace_id,) = trace_ids
    hex_id = trace_id.hex()
    assert hex_id.startswith("ff") and hex_id[10:16] == "e1e3e7"
    # Tracing mode: an object span's service is its resource, and the ReplicaSet hangs under the Deployment.
    roots = [(service, span) for service, span in spans if not span.parent_span_id]
    assert [(service, span.name) for service, span in roots] == [("deployments", "shop web")]
    root = roots[0][1]
    replicasets = [span for service, span in spans if service == "replicasets"]
    assert [span.parent_span_id for span in replicasets] == [root.span_id]
    assert attribute(replicasets[0], "name") == "web-5d8f"
    # The Deployment's audit request (with its error and diff) and its event are logs on its span.
    assert [event.name for event in root.events] == ["audit", "error", "diff", "event"]
    audit_fields = {kv.key: kv.value for kv in root.events[0].attributes}
    assert audit_fields["auditID"].string_value == "a-1" and audit_fields["responseCode"].int_value == 409

    found = await running.stub.FindTraceIDs(pb.FindTraceIDsRequest(query=query))
    assert [found_id.trace_id for found_id in found.trace_ids] == [trace_id]
    first_ns = min(span.start_time_unix_nano for _, span in spans)
    last_ns = max(span.end_time_unix_nano for _, span in spans)
    found_start = found.trace_ids[0].start
    found_end = found.trace_ids[0].end
    assert (found_start.seconds * 10**9 + found_start.nanos, found_end.seconds * 10**9 + found_end.nanos) == (
        first_ns,
        last_ns,
    )

    unknown = bytes(16)
    got = [
        chunk
        async for chunk in running.stub.GetTraces(
            pb.GetTracesRequest(
                query=[pb.GetTraceParams(trace_id=trace_id), pb.GetTraceParams(trace_id=unknown)]
            )
        )
    ]
    assert len(got) == 1
    assert sorted(span.span_id for _, span in spans_of(got[0])) == sorted(span.span_id for _, span in spans)

    # Searching the ReplicaSet in ancestors mode gives a tree rooted at its Deployment.
    ancestors = search("tracing [ancestors]", resource="replicasets", name="web-5d8f")
    (chunk,) = [chunk async for chunk in running.stub.FindTraces(pb.FindTracesRequest(query=ancestors))]
    root_services = [service for service, span in spans_of(chunk) if not span.parent_span_id]
    assert root_services == ["deployments"]


async def test_bad_requests_and_back_end_failures_have_clear_statuses(running: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as short_id:
        async for _ in running.stub.GetTraces(
            pb.GetTracesRequest(query=[pb.GetTraceParams(trace_id=b"abc")])
        ):
            pass
    assert short_id.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "16 bytes" in (short_id.value.details() or "")

    nothing = search("tracing", name="nothing-here")
    assert [chunk async for chunk in running.stub.FindTraces(pb.FindTracesRequest(query=nothing))] == []

    dead_reader = TempoReader(BackendConfig(endpoint="http://127.0.0.1:9", timeout_seconds=2))
    service = FrontendService(dead_reader, MemoryTraceCache(ttl_seconds=600), FrontendConfig())
    server = await serve_grpc_storage(service, "127.0.0.1", 0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.TraceReaderStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as unavailable:
                await stub.FindTraceIDs(pb.FindTraceIDsRequest(query=search("tracing", name="web")))
            assert unavailable.value.code() == grpc.StatusCode.UNAVAILABLE
            # A generic message with a request id: the back end's address and words stay in the log.
            details = unavailable.value.details() or ""
            assert "request id" in details and "127.0.0.1" not in details
    finally:
        await server.stop(0)
        await dead_reader.close()
