"""The in-process OTLP receivers themselves: other tests rely on them telling the truth."""

from __future__ import annotations

import gzip

import aiohttp
import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1 import trace_pb2

from tests.support.otlp_receiver import GrpcOtlpReceiver, HttpOtlpReceiver


def _text(value: str) -> AnyValue:
    return AnyValue(string_value=value)


def _request() -> trace_service_pb2.ExportTraceServiceRequest:
    span = trace_pb2.Span(
        trace_id=(7).to_bytes(16, "big"),
        span_id=(9).to_bytes(8, "big"),
        parent_span_id=(3).to_bytes(8, "big"),
        name="admin update",
        start_time_unix_nano=100,
        end_time_unix_nano=200,
        attributes=[
            KeyValue(key="verb", value=AnyValue(string_value="update")),
            KeyValue(key="code", value=AnyValue(int_value=409)),
            KeyValue(
                key="ips", value=AnyValue(array_value=ArrayValue(values=[AnyValue(string_value="1.2.3.4")]))
            ),
        ],
        events=[
            trace_pb2.Span.Event(
                name="diff",
                time_unix_nano=150,
                attributes=[KeyValue(key="n", value=AnyValue(double_value=1.5))],
            )
        ],
        status=trace_pb2.Status(code=trace_pb2.Status.STATUS_CODE_ERROR, message="conflict"),
    )
    return trace_service_pb2.ExportTraceServiceRequest(
        resource_spans=[
            trace_pb2.ResourceSpans(
                resource=Resource(attributes=[KeyValue(key="service.name", value=_text("audit"))]),
                scope_spans=[trace_pb2.ScopeSpans(spans=[span])],
            )
        ]
    )


def _assert_decoded(receiver: GrpcOtlpReceiver | HttpOtlpReceiver) -> None:
    (span,) = receiver.spans
    assert (span.trace_id, span.span_id, span.parent_id) == (7, 9, 3)
    assert (span.service, span.name, span.start_ns, span.end_ns) == ("audit", "admin update", 100, 200)
    assert span.attributes == {"verb": "update", "code": 409, "ips": ["1.2.3.4"]}
    assert [(log.name, log.time_ns, log.fields) for log in span.logs] == [("diff", 150, {"n": 1.5})]
    assert span.error and span.status_message == "conflict"
    assert b"admin update" in receiver.raw_bytes


async def test_grpc_receiver_decodes_and_fails_on_request(otlp_grpc_receiver: GrpcOtlpReceiver) -> None:
    otlp_grpc_receiver.fail_next(1)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{otlp_grpc_receiver.port}") as channel:
        stub = trace_service_pb2_grpc.TraceServiceStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await stub.Export(_request(), metadata=(("x-tenant", "t1"),))
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
        assert otlp_grpc_receiver.spans == []
        await stub.Export(_request(), metadata=(("x-tenant", "t1"),))
    await otlp_grpc_receiver.wait_for_spans(1, within=5)
    assert otlp_grpc_receiver.failed_requests == 1
    assert otlp_grpc_receiver.request_headers[-1]["x-tenant"] == "t1"
    _assert_decoded(otlp_grpc_receiver)


async def test_http_receiver_accepts_gzip_and_fails_on_request(otlp_http_receiver: HttpOtlpReceiver) -> None:
    body = gzip.compress(_request().SerializeToString())
    headers = {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"}
    otlp_http_receiver.fail_forever()
    async with aiohttp.ClientSession() as session:
        async with session.post(otlp_http_receiver.endpoint, data=body, headers=headers) as response:
            assert response.status == 503
        await otlp_http_receiver.recover()
        async with session.post(otlp_http_receiver.endpoint, data=body, headers=headers) as response:
            assert response.status == 200
        async with session.post(
            otlp_http_receiver.endpoint, data=b"{}", headers={"Content-Type": "application/json"}
        ) as response:
            assert response.status == 415
    assert otlp_http_receiver.failed_requests == 1
    _assert_decoded(otlp_http_receiver)


async def test_wait_for_spans_reports_shortfall(otlp_http_receiver: HttpOtlpReceiver) -> None:
    with pytest.raises(TimeoutError, match="received 0"):
        await otlp_http_receiver.wait_for_spans(1, within=0.05)
