"""Views as the wire formats readers expect: Jaeger v1 JSON, OTLP JSON (Jaeger api_v3) and OTLP protobuf."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from kelemetry_py.model import Attributes, AttrValue, Span
from kelemetry_py.storage.otlp_json import encode_resource_spans

SCOPE_NAME = "kelemetry-py"
_SPAN_KIND_INTERNAL = 1
_STATUS_ERROR = 2


def _by_service(spans: Sequence[Span]) -> dict[str, list[Span]]:
    grouped: dict[str, list[Span]] = {}
    for span in spans:
        grouped.setdefault(span.service, []).append(span)
    return grouped


# ------------------------------------------------------------------------------------------------ Jaeger v1


def _jaeger_tag(key: str, value: AttrValue) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"key": key, "type": "bool", "value": value}
    if isinstance(value, int):
        return {"key": key, "type": "int64", "value": value}
    if isinstance(value, float):
        return {"key": key, "type": "float64", "value": value}
    if isinstance(value, list):
        return {"key": key, "type": "string", "value": ", ".join(value)}
    return {"key": key, "type": "string", "value": value}


def _jaeger_tags(attributes: Attributes) -> list[dict[str, Any]]:
    return [_jaeger_tag(key, value) for key, value in attributes.items()]


def to_jaeger_v1(trace_id: int, spans: Sequence[Span]) -> dict[str, Any]:
    """One trace in the JSON model of Jaeger's ``/api/traces`` (microsecond times, processes by service)."""
    trace_hex = f"{trace_id:032x}"
    process_ids = {service: f"p{i + 1}" for i, service in enumerate(_by_service(spans))}
    out_spans = []
    for span in spans:
        tags = _jaeger_tags(span.attributes)
        if span.error and "error" not in span.attributes:
            tags.append({"key": "error", "type": "bool", "value": True})
            if span.status_message:
                tags.append(
                    {"key": "otel.status_description", "type": "string", "value": span.status_message}
                )
        references = (
            [{"refType": "CHILD_OF", "traceID": trace_hex, "spanID": f"{span.parent_id:016x}"}]
            if span.parent_id is not None
            else []
        )
        logs = []
        for log in span.logs:
            fields = _jaeger_tags(log.fields)
            if "event" not in log.fields:
                fields.insert(0, {"key": "event", "type": "string", "value": log.name})
            logs.append({"timestamp": log.time_ns // 1000, "fields": fields})
        start_us = span.start_ns // 1000
        out_spans.append(
            {
                "traceID": trace_hex,
                "spanID": f"{span.span_id:016x}",
                "operationName": span.name,
                "flags": 1,
                "references": references,
                "startTime": start_us,
                "duration": max(0, span.end_ns // 1000 - start_us),
                "tags": tags,
                "logs": logs,
                "processID": process_ids[span.service],
                "warnings": None,
            }
        )
    processes = {pid: {"serviceName": service, "tags": []} for service, pid in process_ids.items()}
    return {"traceID": trace_hex, "spans": out_spans, "processes": processes, "warnings": None}


# ------------------------------------------------------------------------------------------------ OTLP JSON


def to_otlp_json(spans: Sequence[Span]) -> dict[str, Any]:
    """``{"resourceSpans": [...]}`` in OTLP JSON as Jaeger api_v3 writes it: hex ids, nanosecond strings."""
    return {"resourceSpans": encode_resource_spans(spans, "jaeger")}


# ------------------------------------------------------------------------------------------ OTLP protobuf


def _otlp_value(value: AttrValue) -> common_pb2.AnyValue:
    if isinstance(value, bool):
        return common_pb2.AnyValue(bool_value=value)
    if isinstance(value, int):
        return common_pb2.AnyValue(int_value=value)
    if isinstance(value, float):
        return common_pb2.AnyValue(double_value=value)
    if isinstance(value, list):
        return common_pb2.AnyValue(
            array_value=common_pb2.ArrayValue(
                values=[common_pb2.AnyValue(string_value=item) for item in value]
            )
        )
    return common_pb2.AnyValue(string_value=value)


def _otlp_attributes(attributes: Attributes) -> list[common_pb2.KeyValue]:
    return [common_pb2.KeyValue(key=key, value=_otlp_value(value)) for key, value in attributes.items()]


def to_otlp_proto(spans: Sequence[Span]) -> trace_pb2.TracesData:
    """The spans as OTLP ``TracesData`` (one ResourceSpans per service), e.g. for the remote storage API."""
    data = trace_pb2.TracesData()
    for service, group in _by_service(spans).items():
        resource_spans = data.resource_spans.add()
        resource_spans.resource.CopyFrom(
            resource_pb2.Resource(
                attributes=[
                    common_pb2.KeyValue(key="service.name", value=common_pb2.AnyValue(string_value=service))
                ]
            )
        )
        scope_spans = resource_spans.scope_spans.add()
        scope_spans.scope.name = SCOPE_NAME
        for span in group:
            out = scope_spans.spans.add()
            out.trace_id = span.trace_id.to_bytes(16, "big")
            out.span_id = span.span_id.to_bytes(8, "big")
            if span.parent_id is not None:
                out.parent_span_id = span.parent_id.to_bytes(8, "big")
            out.name = span.name
            out.kind = _SPAN_KIND_INTERNAL
            out.start_time_unix_nano = span.start_ns
            out.end_time_unix_nano = span.end_ns
            out.attributes.extend(_otlp_attributes(span.attributes))
            for log in span.logs:
                event = out.events.add()
                event.time_unix_nano = log.time_ns
                event.name = log.name
                event.attributes.extend(_otlp_attributes(log.fields))
            if span.error:
                out.status.code = _STATUS_ERROR
                out.status.message = span.status_message
    return data
