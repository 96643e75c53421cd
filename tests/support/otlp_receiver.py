"""Real OTLP receivers that run inside the test process: gRPC (``grpc.aio``) and HTTP/protobuf (aiohttp).

Both keep every request's serialized protobuf bytes (grep them for secrets) and the spans decoded back into
:class:`kelemetry_py.model.Span`, let a test wait for N spans, and can be told to fail requests (gRPC
UNAVAILABLE / HTTP 503) to exercise a writer's retries and backpressure.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterable

import grpc
from aiohttp import web
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from kelemetry_py.model import Attributes, AttrValue, LogEntry, Span

ExportRequest = trace_service_pb2.ExportTraceServiceRequest


def any_value_to_python(value: AnyValue) -> AttrValue:
    """Decode an OTLP attribute value into the model's attribute types (arrays become lists of strings)."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return str(value.string_value)
    if kind == "bool_value":
        return bool(value.bool_value)
    if kind == "int_value":
        return int(value.int_value)
    if kind == "double_value":
        return float(value.double_value)
    if kind == "array_value":
        return [str(any_value_to_python(item)) for item in value.array_value.values]
    if kind == "bytes_value":
        return bytes(value.bytes_value).decode(errors="replace")
    raise ValueError(f"unsupported OTLP attribute value kind {kind!r}")


def key_values_to_attributes(key_values: Iterable[KeyValue]) -> Attributes:
    return {kv.key: any_value_to_python(kv.value) for kv in key_values}


def request_to_spans(request: ExportRequest) -> list[Span]:
    """Convert received protobuf spans back into model spans; the service is the resource's service.name."""
    spans: list[Span] = []
    for resource_spans in request.resource_spans:
        resource = key_values_to_attributes(resource_spans.resource.attributes)
        service = str(resource.get("service.name", ""))
        for scope_spans in resource_spans.scope_spans:
            for pb in scope_spans.spans:
                spans.append(
                    Span(
                        trace_id=int.from_bytes(pb.trace_id, "big"),
                        span_id=int.from_bytes(pb.span_id, "big"),
                        parent_id=int.from_bytes(pb.parent_span_id, "big") if pb.parent_span_id else None,
                        service=service,
                        name=pb.name,
                        start_ns=pb.start_time_unix_nano,
                        end_ns=pb.end_time_unix_nano,
                        attributes=key_values_to_attributes(pb.attributes),
                        logs=[
                            LogEntry(
                                time_ns=event.time_unix_nano,
                                name=event.name,
                                fields=key_values_to_attributes(event.attributes),
                            )
                            for event in pb.events
                        ],
                        error=pb.status.code == Status.STATUS_CODE_ERROR,
                        status_message=pb.status.message,
                    )
                )
    return spans


class OtlpReceiver:
    """What both transports share: the record of received requests and the failure switch."""

    def __init__(self, *, keep_requests: bool = True) -> None:
        # Long fault runs keep only the decoded spans, and take those as they come (take_spans).
        self.keep_requests = keep_requests
        self.requests: list[bytes] = []  # serialized ExportTraceServiceRequest of each accepted request
        self.decoded: list[ExportRequest] = []
        self.spans: list[Span] = []
        self.request_headers: list[dict[str, str]] = []  # of every request, failed ones included
        self.failed_requests = 0
        self._fail_remaining = 0
        self._fail_forever = False
        self._changed = asyncio.Condition()

    def fail_next(self, count: int) -> None:
        """Reject the next ``count`` requests as temporarily unavailable."""
        self._fail_remaining = count

    def fail_forever(self) -> None:
        self._fail_forever = True

    async def recover(self) -> None:
        """Stop failing requests."""
        self._fail_forever = False
        self._fail_remaining = 0

    @property
    def raw_bytes(self) -> bytes:
        """Every accepted request's bytes joined, for ``secret not in receiver.raw_bytes`` checks."""
        return b"".join(self.requests)

    def take_spans(self) -> list[Span]:
        """The spans received since the last call, forgotten here."""
        spans, self.spans = self.spans, []
        return spans

    def spans_by_id(self) -> dict[int, Span]:
        return {span.span_id: span for span in self.spans}

    async def wait_for_spans(self, count: int, within: float = 10.0) -> list[Span]:
        """Wait until at least ``count`` spans arrived; raise TimeoutError saying how many did."""
        try:
            async with asyncio.timeout(within):
                async with self._changed:
                    await self._changed.wait_for(lambda: len(self.spans) >= count)
        except TimeoutError:
            raise TimeoutError(
                f"expected {count} spans within {within}s, received {len(self.spans)}"
            ) from None
        return list(self.spans)

    async def wait_until(self, predicate: Callable[[], bool], within: float) -> bool:
        """Wait until ``predicate()`` holds, checked after each request; False if it did not within ``within``."""
        try:
            async with asyncio.timeout(within):
                async with self._changed:
                    await self._changed.wait_for(predicate)
        except TimeoutError:
            return False
        return True

    async def wait_for_failures(self, count: int, within: float = 10.0) -> None:
        """Wait until at least ``count`` requests were rejected."""
        try:
            async with asyncio.timeout(within):
                async with self._changed:
                    await self._changed.wait_for(lambda: self.failed_requests >= count)
        except TimeoutError:
            raise TimeoutError(
                f"expected {count} failed requests within {within}s, saw {self.failed_requests}"
            ) from None

    async def _receive(self, payload: bytes, headers: dict[str, str]) -> bool:
        """Record one request; False means the caller must answer it with a retryable error."""
        self.request_headers.append(headers)
        if self._fail_forever or self._fail_remaining > 0:
            self._fail_remaining = max(0, self._fail_remaining - 1)
            self.failed_requests += 1
            async with self._changed:
                self._changed.notify_all()
            return False
        request = ExportRequest.FromString(payload)
        if self.keep_requests:
            self.requests.append(payload)
            self.decoded.append(request)
        self.spans.extend(request_to_spans(request))
        async with self._changed:
            self._changed.notify_all()
        return True


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    async def Export(
        self, request: ExportRequest, context: grpc.aio.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        headers = {str(key): str(value) for key, value in context.invocation_metadata() or ()}
        if not await self._receiver._receive(request.SerializeToString(), headers):
            await context.abort(grpc.StatusCode.UNAVAILABLE, "test receiver told to fail")
        return trace_service_pb2.ExportTraceServiceResponse()


class GrpcOtlpReceiver(OtlpReceiver):
    """OTLP/gRPC on 127.0.0.1:<free port>; ``endpoint`` is what OtlpConfig.endpoint takes.

    ``stop()`` then ``start()`` serves again on the same port: a back end that went away and came back."""

    def __init__(self, *, keep_requests: bool = True) -> None:
        super().__init__(keep_requests=keep_requests)
        self._server: grpc.aio.Server | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            _TraceService(self), self._server
        )
        port = self._server.add_insecure_port(f"127.0.0.1:{self.port}")
        if self.port and port != self.port:
            raise RuntimeError(f"could not serve again on port {self.port}")
        self.port = port
        await self._server.start()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None


class HttpOtlpReceiver(OtlpReceiver):
    """OTLP/HTTP protobuf at ``POST /v1/traces`` on 127.0.0.1:<free port>, gzip or deflate bodies accepted."""

    def __init__(self) -> None:
        super().__init__()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = int(sock.getsockname()[1])
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        if request.content_type != "application/x-protobuf":
            return web.Response(status=415, text=f"unsupported content type {request.content_type}")
        # aiohttp's parser already undoes gzip/deflate Content-Encoding, so the body is the protobuf itself.
        body = await request.read()
        encoding = request.headers.get("Content-Encoding", "").lower()
        if encoding not in ("", "identity", "gzip", "deflate"):
            return web.Response(status=415, text=f"unsupported content encoding {encoding}")
        try:
            ExportRequest.FromString(body)
        except DecodeError as exc:
            return web.Response(status=400, text=f"body is not an ExportTraceServiceRequest: {exc}")
        if not await self._receive(body, dict(request.headers)):
            return web.Response(status=503, text="test receiver told to fail")
        return web.Response(
            body=trace_service_pb2.ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )
