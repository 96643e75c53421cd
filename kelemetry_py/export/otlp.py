"""OTLP span writer: raw spans to Tempo, Jaeger or any OpenTelemetry collector over gRPC or HTTP/protobuf.

The OpenTelemetry SDK's exporters send; our own protobuf encoder builds the request (byte-identical to the SDK's,
several times faster). Retries belong to the durable span log that feeds the writer, so a failed export is
reported, not dropped.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import struct
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import grpc
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode

from kelemetry_py.config import ConfigError, OtlpConfig, parse_otlp_endpoint
from kelemetry_py.metrics import Metrics
from kelemetry_py.model import Span

log = logging.getLogger(__name__)

WRITER_LABEL = "otlp"
_SCOPE = InstrumentationScope("kelemetry_py")
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_STATUS_UNSET = Status(StatusCode.UNSET)


class _Exporter(Protocol):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult: ...

    def shutdown(self) -> None: ...


class _ServiceResource(Resource):
    """A Resource whose hash is computed once: the SDK encoder hashes the resource of every span it groups."""

    def __init__(self, attributes: Mapping[str, str]) -> None:
        super().__init__(dict(attributes))
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other or super().__eq__(other)


class SpanConverter:
    """Turns model spans into SDK ReadableSpans, one cached Resource per service."""

    def __init__(self, resource_attributes: Mapping[str, str] | None = None) -> None:
        self._base = Resource.create(dict(resource_attributes or {}))
        self._resources: dict[str, Resource] = {}

    def resource(self, service: str) -> Resource:
        resource = self._resources.get(service)
        if resource is None:
            attributes = {str(k): str(v) for k, v in self._base.attributes.items()}
            attributes["service.name"] = service
            resource = self._resources[service] = _ServiceResource(attributes)
        return resource

    def convert(self, span: Span) -> ReadableSpan:
        trace_id = span.trace_id
        return ReadableSpan(
            name=span.name,
            context=SpanContext(trace_id, span.span_id, False, _SAMPLED),
            parent=SpanContext(trace_id, span.parent_id, False, _SAMPLED) if span.parent_id else None,
            resource=self._resources.get(span.service) or self.resource(span.service),
            attributes=span.attributes,
            events=[Event(entry.name, entry.fields, entry.time_ns) for entry in span.logs],
            kind=SpanKind.INTERNAL,
            status=Status(StatusCode.ERROR, span.status_message or None) if span.error else _STATUS_UNSET,
            start_time=span.start_ns,
            end_time=span.end_ns,
            instrumentation_scope=_SCOPE,
        )


# -- fast OTLP encoding -------------------------------------------------------------------------------------
# The SDK encoder builds one protobuf object per attribute and manages about 13k spans/s; the webhook targets
# 20k audit events/s per core. Spans here are written straight as protobuf wire bytes, and the encoded
# key/value pairs are cached because most repeat (cluster, resource, verb, user agent...). The result is
# byte-compatible with the SDK's (tests compare both).

_pack_fixed64 = struct.Struct("<Q").pack
_pack_double = struct.Struct("<d").pack
_KEY_VALUE_CACHE_LIMIT = 100_000
_key_value_cache: dict[tuple[str, Any], bytes] = {}


def _varint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: ``tag`` is the already encoded (field number << 3 | 2)."""
    return tag + _varint(len(payload)) + payload


def _any_value(value: object) -> bytes:
    cls = value.__class__
    if cls is str:
        return _field(b"\x0a", value.encode())  # type: ignore[attr-defined]
    if cls is bool:
        return b"\x10\x01" if value else b"\x10\x00"
    if cls is int:
        return b"\x18" + _varint(value & 0xFFFF_FFFF_FFFF_FFFF)  # type: ignore[operator]
    if cls is float:
        return b"\x21" + _pack_double(value)
    if isinstance(value, (list, tuple)):
        return _field(b"\x2a", b"".join(_field(b"\x0a", _any_value(item)) for item in value))
    return _any_value(str(value))


def _key_value(key: str, value: object) -> bytes:
    """KeyValue message body (without its own tag), cached."""
    cache_key = (key, tuple(value) if isinstance(value, list) else value)
    encoded = _key_value_cache.get(cache_key)
    if encoded is None:
        encoded = _field(b"\x0a", key.encode()) + _field(b"\x12", _any_value(value))
        if len(_key_value_cache) < _KEY_VALUE_CACHE_LIMIT:
            _key_value_cache[cache_key] = encoded
    return encoded


def _attributes(tag: bytes, attributes: Mapping[str, object] | None) -> list[bytes]:
    if not attributes:
        return []
    return [_field(tag, _key_value(key, value)) for key, value in attributes.items()]


_SPAN_KIND_INTERNAL = b"\x30\x01"
_SPAN_FLAGS_HAS_IS_REMOTE = b"\x85\x01" + struct.pack("<I", 0x100)  # field 16, fixed32


def _span(span: ReadableSpan) -> bytes:
    context = span.context
    assert context is not None
    parts = [
        b"\x0a\x10",
        context.trace_id.to_bytes(16, "big"),
        b"\x12\x08",
        context.span_id.to_bytes(8, "big"),
    ]
    if span.parent is not None:
        parts += (b"\x22\x08", span.parent.span_id.to_bytes(8, "big"))
    parts += (
        _field(b"\x2a", span.name.encode()),
        _SPAN_KIND_INTERNAL,
        b"\x39",
        _pack_fixed64(span.start_time or 0),
        b"\x41",
        _pack_fixed64(span.end_time or 0),
    )
    parts += _attributes(b"\x4a", span.attributes)
    for event in span.events:
        header = b"\x09" + _pack_fixed64(event.timestamp) + _field(b"\x12", event.name.encode())
        body = header + b"".join(_attributes(b"\x1a", event.attributes))
        parts.append(_field(b"\x5a", body))
    status = span.status
    if status.status_code is not StatusCode.UNSET:
        body = _field(b"\x12", status.description.encode()) if status.description else b""
        parts.append(_field(b"\x7a", body + b"\x18" + _varint(status.status_code.value)))
    else:
        parts.append(b"\x7a\x00")
    parts.append(_SPAN_FLAGS_HAS_IS_REMOTE)
    return b"".join(parts)


def _resource_header(resource: Resource) -> bytes:
    return _field(b"\x0a", b"".join(_attributes(b"\x0a", resource.attributes)))


_SCOPE_BYTES = _field(b"\x0a", _field(b"\x0a", _SCOPE.name.encode()))


def encode_request(spans: Sequence[ReadableSpan]) -> bytes:
    """Serialized ExportTraceServiceRequest for ``spans``, grouped by resource like the SDK does."""
    by_resource: dict[Resource, list[bytes]] = {}
    for span in spans:
        encoded = _field(b"\x12", _span(span))
        group = by_resource.get(span.resource)
        if group is None:
            by_resource[span.resource] = [encoded]
        else:
            group.append(encoded)
    out = []
    for resource, encoded_spans in by_resource.items():
        scope_spans = _field(b"\x12", _SCOPE_BYTES + b"".join(encoded_spans))
        out.append(_field(b"\x0a", _resource_header(resource) + scope_spans))
    return b"".join(out)


class _FastGrpcSpanExporter(GrpcSpanExporter):
    def _translate_data(self, data: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
        request: ExportTraceServiceRequest = ExportTraceServiceRequest.FromString(encode_request(data))
        return request


class _FastHttpSpanExporter(HttpSpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        client = getattr(self, "_client", None)
        if client is None or self._shutdown:  # an SDK that changed its internals: take the slow path
            return super().export(spans)
        return (
            SpanExportResult.SUCCESS
            if client.export(encode_request(spans)).success
            else SpanExportResult.FAILURE
        )


def _read_file(key: str, path: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"otlp.{key}: cannot read {path}: {exc.strerror}") from exc


def build_exporter(config: OtlpConfig) -> _Exporter:
    """The SDK exporter for ``config.endpoint``; its own retries are kept short so ours stay in charge."""
    endpoint = parse_otlp_endpoint(config.endpoint)
    if bool(config.client_cert_file) != bool(config.client_key_file):
        raise ConfigError(
            "otlp.client_cert_file: a client certificate needs both client_cert_file and key file"
        )
    gzip = config.compression == "gzip"
    if endpoint.protocol == "grpc":
        credentials = None
        if endpoint.secure:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read_file("ca_file", config.ca_file),
                private_key=_read_file("client_key_file", config.client_key_file),
                certificate_chain=_read_file("client_cert_file", config.client_cert_file),
            )
        return _FastGrpcSpanExporter(
            endpoint=endpoint.url,
            insecure=not endpoint.secure,
            credentials=credentials,
            # gRPC metadata keys must be lower case.
            headers={key.lower(): value for key, value in config.headers.items()},
            timeout=config.timeout_seconds,
            compression=grpc.Compression.Gzip if gzip else grpc.Compression.NoCompression,
            # OK never arrives as an error, so the SDK retries nothing: the span log retries with backoff and
            # every failed attempt is counted.
            retryable_error_codes=[grpc.StatusCode.OK],
        )
    for key in ("ca_file", "client_cert_file", "client_key_file"):
        _read_file(key, getattr(config, key))  # fail at start, not at the first export
    # The HTTP exporter retries 429/502/503/504 itself, but only while its backoff (about 1 s, doubling) fits
    # in timeout_seconds, so one attempt never takes longer than the timeout.
    return _FastHttpSpanExporter(
        endpoint=endpoint.url,
        certificate_file=config.ca_file or None,
        client_key_file=config.client_key_file or None,
        client_certificate_file=config.client_cert_file or None,
        headers=dict(config.headers),
        timeout=config.timeout_seconds,
        compression=HttpCompression.Gzip if gzip else HttpCompression.NoCompression,
    )


_FIELD_BYTES = 16  # a key-value's framing, or a number


def _value_bytes(value: Any) -> int:
    if isinstance(value, str):
        return len(value) if value.isascii() else len(value.encode())
    if isinstance(value, (list, tuple)):
        return sum(_value_bytes(item) + _FIELD_BYTES for item in value)
    return _FIELD_BYTES


def _fields_bytes(fields: Mapping[str, Any]) -> int:
    return sum(len(key) + _value_bytes(value) + _FIELD_BYTES for key, value in fields.items())


def _estimated_size(span: Span) -> int:
    """About what the span takes in an export request: its strings, and a little framing for each field."""
    size = 64 + len(span.name) + len(span.status_message) + _fields_bytes(span.attributes)
    for entry in span.logs:
        size += len(entry.name) + _fields_bytes(entry.fields) + 32
    return size


class OtlpExportFailed(Exception):
    """The backend did not take a batch; the spans wait in the span log and are sent again."""


class OtlpSpanWriter:
    """SpanWriter exporting over OTLP in batches of ``batch_size`` on a worker thread.

    ``write`` returns once every span is delivered and raises :class:`OtlpExportFailed` otherwise. It keeps no
    queue of its own: the durable span log in front of it is the queue, retries with backoff, and keeps the
    backlog on disk while the backend is away.
    """

    def __init__(
        self,
        config: OtlpConfig,
        metrics: Metrics,
        *,
        resource_attributes: Mapping[str, str] | None = None,
        exporter_factory: Callable[[OtlpConfig], _Exporter] = build_exporter,
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._exporter = exporter_factory(config)
        self._converter = SpanConverter(resource_attributes)
        self._closed = False
        # Spans already dropped as too large: a failed write is retried whole, and each is counted once.
        self._dropped: collections.OrderedDict[tuple[int, int], None] = collections.OrderedDict()

    async def write(self, spans: Sequence[Span]) -> None:
        if self._closed:
            raise RuntimeError("OtlpSpanWriter is closed")
        # Cut on the export thread too: sizing every span is no work for the event loop.
        for batch in await asyncio.to_thread(self._requests, spans):
            if not await asyncio.to_thread(self._convert_and_export, batch):
                self._metrics.export_errors.labels(WRITER_LABEL).inc()
                raise OtlpExportFailed(f"OTLP export of {len(batch)} spans to {self._config.endpoint} failed")
            self._metrics.spans_exported.labels(WRITER_LABEL).inc(len(batch))

    def _requests(self, spans: Sequence[Span]) -> list[list[Span]]:
        """Batches of at most ``batch_size`` spans and, by estimate, ``max_request_bytes``: a receiver refuses a
        larger request for good, so retrying it would hold up every span behind it."""
        limit = self._config.max_request_bytes
        budget = limit * 3 // 4  # a quarter of headroom for what the estimate leaves out
        requests: list[list[Span]] = []
        batch: list[Span] = []
        used = 0
        for span in spans:
            size = _estimated_size(span)
            if size > limit:
                self._drop(span, size)
                continue
            if batch and (len(batch) >= self._config.batch_size or used + size > budget):
                requests.append(batch)
                batch, used = [], 0
            batch.append(span)
            used += size
        if batch:
            requests.append(batch)
        return requests

    def _drop(self, span: Span, size: int) -> None:
        key = (span.trace_id, span.span_id)
        if key in self._dropped:
            return
        self._dropped[key] = None
        if len(self._dropped) > 1024:
            self._dropped.popitem(last=False)
        log.error("OTLP: a %s span of about %d bytes can never be sent; dropped", span.service, size)
        self._metrics.spans_dropped.labels(WRITER_LABEL).inc()

    async def flush(self) -> None:
        return None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._exporter.shutdown)

    def _convert_and_export(self, batch: Sequence[Span]) -> bool:
        convert = self._converter.convert
        try:
            return self._exporter.export([convert(span) for span in batch]) is SpanExportResult.SUCCESS
        except Exception:
            log.exception("OTLP exporter raised")
            return False
