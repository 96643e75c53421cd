"""Jaeger v2 remote storage (``jaeger.storage.v2.TraceReader``, read-only) serving the frontend's views.

For users who run jaeger-query in front of us: its ``grpc`` storage points here. Services are display modes,
operations are clusters, traces are assembled views with their user-facing ids, so a trace id jaeger-query
got from FindTraceIDs reads back through GetTraces in the same mode. grpc.health.v1 answers for the server
("") and for the TraceReader service.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from kelemetry_py.auth import EVERYTHING, Scope
from kelemetry_py.auth.middleware import Authenticator, bearer_token
from kelemetry_py.frontend.convert import to_otlp_proto
from kelemetry_py.frontend.modes import DisplayMode, FrontendError
from kelemetry_py.frontend.proto import trace_storage_pb2 as pb
from kelemetry_py.frontend.proto import trace_storage_pb2_grpc
from kelemetry_py.frontend.service import View, ViewQuery
from kelemetry_py.storage.otlp_json import BackendError
from kelemetry_py.times import DEFAULT_LOOKBACK_NS

log = logging.getLogger(__name__)

SERVICE_NAME = "jaeger.storage.v2.TraceReader"
DEFAULT_SEARCH_DEPTH = 20
# Every span we serve is an internal one.
_SPAN_KINDS = ("", "internal")

T = TypeVar("T")
# The generated gRPC module has no type hints.
pb_grpc: Any = trace_storage_pb2_grpc


class ViewSource(Protocol):
    """What the server needs from the frontend (``FrontendService`` provides it)."""

    def mode_names(self) -> list[str]: ...

    def mode(self, name: str | None) -> DisplayMode: ...

    async def clusters(self, start_ns: int, end_ns: int, scope: Scope = ...) -> list[str]: ...

    async def search(self, query: ViewQuery, scope: Scope = ...) -> list[View]: ...

    async def get(self, trace_id: str, scope: Scope = ...) -> View | None: ...


def _now_ns() -> int:
    return time.time_ns()


_MAX_TIME_NS = 2**62
_MAX_SEARCH_DEPTH = 1000
_MAX_ATTRIBUTES = 16


def _timestamp_ns(message: Any, field: str) -> int | None:
    if not message.HasField(field):
        return None
    stamp: timestamp_pb2.Timestamp = getattr(message, field)
    value = int(stamp.seconds) * 1_000_000_000 + int(stamp.nanos)
    if not 0 <= value <= _MAX_TIME_NS:
        raise FrontendError(f"{field}: out of range (the epoch to the year 2116)")
    return value


def _duration_ns(message: Any, field: str) -> int | None:
    if not message.HasField(field):
        return None
    duration: duration_pb2.Duration = getattr(message, field)
    value = int(duration.seconds) * 1_000_000_000 + int(duration.nanos)
    if not 0 <= value <= _MAX_TIME_NS:
        raise FrontendError(f"{field}: out of range")
    return value


def _timestamp(time_ns: int) -> timestamp_pb2.Timestamp:
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def _attribute_text(value: pb.AnyValue) -> str:
    kind = value.WhichOneof("value")
    if kind is None:
        return ""
    if kind == "string_value":
        return str(value.string_value)
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind in ("int_value", "double_value"):
        return str(getattr(value, kind))
    raise FrontendError(f"query attribute values must be scalars, not {kind}")


def view_query(source: ViewSource, params: pb.TraceQueryParameters) -> ViewQuery:
    """A storage-v2 search as a frontend view query (service = display mode, operation = cluster)."""
    end_ns = _timestamp_ns(params, "start_time_max") or _now_ns()
    start_ns = _timestamp_ns(params, "start_time_min")
    if start_ns is None:
        start_ns = end_ns - DEFAULT_LOOKBACK_NS
    depth = int(params.search_depth)
    if params.HasField("pagination") and params.pagination.page_size:
        depth = int(params.pagination.page_size)
    if not 0 <= depth <= _MAX_SEARCH_DEPTH:
        raise FrontendError(f"search_depth: must be between 0 and {_MAX_SEARCH_DEPTH}, not {depth}")
    if len(params.attributes) > _MAX_ATTRIBUTES:
        raise FrontendError(f"attributes: at most {_MAX_ATTRIBUTES}, not {len(params.attributes)}")
    if end_ns - start_ns > getattr(source, "max_range_ns", _MAX_TIME_NS):
        raise FrontendError("start_time_min: the range is longer than the store keeps")
    return ViewQuery(
        mode=source.mode(params.service_name or None),
        start_ns=start_ns,
        end_ns=end_ns,
        tags={kv.key: _attribute_text(kv.value) for kv in params.attributes},
        cluster=params.operation_name,
        limit=depth or DEFAULT_SEARCH_DEPTH,
        min_duration_ns=_duration_ns(params, "duration_min"),
        max_duration_ns=_duration_ns(params, "duration_max"),
    )


def _trace_id_hex(raw: bytes) -> str:
    if len(raw) != 16:
        raise FrontendError(f"trace_id must be 16 bytes, not {len(raw)}")
    return raw.hex()


async def _guard(context: grpc.aio.ServicerContext[Any, Any], call: Callable[[], Awaitable[T]]) -> T:
    """Bad input is INVALID_ARGUMENT with its reason; a failing back end UNAVAILABLE and anything else INTERNAL,
    each with a generic message and a request id (the details stay in the log)."""
    try:
        return await call()
    except FrontendError as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    except BackendError as exc:
        rid = secrets.token_hex(8)
        log.warning("gRPC request failed on the trace back end (request id %s): %s", rid, exc)
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"the trace back end failed; request id {rid}")
    except Exception:
        rid = secrets.token_hex(8)
        log.exception("gRPC request failed (request id %s)", rid)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error; request id {rid}")
    raise AssertionError("unreachable: abort raises")


class TraceReaderServicer:
    """jaeger.storage.v2.TraceReader; FindTraceSummaries is not offered, so callers get UNIMPLEMENTED."""

    def __init__(self, source: ViewSource, authenticator: Authenticator | None = None) -> None:
        self._source = source
        self._authenticator = authenticator

    async def _scope(self, context: grpc.aio.ServicerContext[Any, Any]) -> Scope:
        """The caller's scope from its ``authorization: Bearer ...`` metadata (everything when auth is off)."""
        if self._authenticator is None:
            return EVERYTHING
        from kelemetry_py.auth.kubernetes import AuthUnavailable

        header = ""
        for key, value in context.invocation_metadata() or ():
            if key.lower() == "authorization":
                header = value if isinstance(value, str) else value.decode(errors="replace")
        token = bearer_token(header)
        if not token:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a bearer token is required (authorization metadata)")
        try:
            scope = await self._authenticator.authenticate(token)
        except AuthUnavailable:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "authentication is unavailable")
        if scope is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "the bearer token is not valid")
        assert scope is not None
        return scope

    async def GetServices(
        self, request: pb.GetServicesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetServicesResponse:
        await self._scope(context)
        return pb.GetServicesResponse(services=self._source.mode_names())

    async def GetOperations(
        self, request: pb.GetOperationsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetOperationsResponse:
        scope = await self._scope(context)

        async def operations() -> pb.GetOperationsResponse:
            self._source.mode(request.service or None)  # an unknown mode is a bad request
            if request.span_kind.lower() not in _SPAN_KINDS:
                return pb.GetOperationsResponse()
            clusters = await self._source.clusters(0, _now_ns() + DEFAULT_LOOKBACK_NS, scope)
            return pb.GetOperationsResponse(
                operations=[pb.Operation(name=cluster, span_kind="internal") for cluster in clusters]
            )

        return await _guard(context, operations)

    async def _search(
        self, params: pb.TraceQueryParameters, context: grpc.aio.ServicerContext[Any, Any]
    ) -> list[View]:
        scope = await self._scope(context)
        return await _guard(context, lambda: self._source.search(view_query(self._source, params), scope))

    async def FindTraces(
        self, request: pb.FindTracesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[trace_pb2.TracesData]:
        # One chunk per trace, never an empty one (the contract's chunking rules).
        for view in await self._search(request.query, context):
            if view.spans:
                yield to_otlp_proto(view.spans)

    async def FindTraceIDs(
        self, request: pb.FindTraceIDsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.FindTraceIDsResponse:
        views = await self._search(request.query, context)
        return pb.FindTraceIDsResponse(
            trace_ids=[
                pb.FoundTraceID(
                    trace_id=view.trace_id.to_bytes(16, "big"),
                    start=_timestamp(min(span.start_ns for span in view.spans)),
                    end=_timestamp(max(span.end_ns for span in view.spans)),
                )
                for view in views
                if view.spans
            ]
        )

    async def GetTraces(
        self, request: pb.GetTracesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[trace_pb2.TracesData]:
        scope = await self._scope(context)
        if len(request.query) > _MAX_SEARCH_DEPTH:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"query: at most {_MAX_SEARCH_DEPTH} trace ids")
        for params in request.query:
            trace_id = params.trace_id

            async def read(raw: bytes = trace_id) -> View | None:
                return await self._source.get(_trace_id_hex(raw), scope)

            view = await _guard(context, read)
            if view is not None and view.spans:  # unknown ids are skipped, as the contract says
                yield to_otlp_proto(view.spans)


class GrpcStorageServer:
    """The remote-storage gRPC server with health checking; ``start`` returns the bound port."""

    def __init__(
        self, source: ViewSource, host: str = "127.0.0.1", port: int = 0, authenticator: Authenticator | None = None
    ) -> None:
        self._source = source
        self._authenticator = authenticator
        self._address = f"{host}:{port}"
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self.port = 0

    async def start(self) -> int:
        server = grpc.aio.server()
        pb_grpc.add_TraceReaderServicer_to_server(TraceReaderServicer(self._source, self._authenticator), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        self.port = server.add_insecure_port(self._address)
        if not self.port:
            raise OSError(f"gRPC remote storage could not bind {self._address}")
        await server.start()
        self._server = server
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("jaeger remote storage (gRPC) listening on port %d", self.port)
        return self.port

    async def stop(self, grace_seconds: float = 2.0) -> None:
        if self._server is None:
            return
        # Tell health checkers first so that callers move away before the port closes.
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace_seconds)
        self._server = None


async def serve_grpc_storage(
    source: ViewSource, host: str = "127.0.0.1", port: int = 0, authenticator: Authenticator | None = None
) -> GrpcStorageServer:
    """Start the remote-storage server (``frontend.grpc_port``; 0 picks a free port) and return it."""
    server = GrpcStorageServer(source, host, port, authenticator)
    await server.start()
    return server
