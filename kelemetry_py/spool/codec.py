"""How observations and spans are laid out in a durable log: msgpack, with 128-bit trace ids as bytes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from kelemetry_py.model import Attributes, LogEntry, Observation, Span

_encoder = msgspec.msgpack.Encoder()
_decode_observations = msgspec.msgpack.Decoder(list[Observation]).decode

_SpanRow = tuple[
    bytes, int, int | None, str, str, int, int, Attributes, list[tuple[int, str, Attributes]], bool, str
]
_decode_span_rows = msgspec.msgpack.Decoder(list[_SpanRow]).decode


def encode_observations(observations: Sequence[Observation]) -> bytes:
    return _encoder.encode(observations)


def decode_observations(payload: bytes) -> list[Observation]:
    return _decode_observations(payload)


def span_row(span: Span) -> tuple[Any, ...]:
    """The span as plain MessagePack values, as the span log stores it (the 128-bit trace id as 16 bytes)."""
    return (
        span.trace_id.to_bytes(16, "big"),
        span.span_id,
        span.parent_id,
        span.service,
        span.name,
        span.start_ns,
        span.end_ns,
        span.attributes,
        [(entry.time_ns, entry.name, entry.fields) for entry in span.logs],
        span.error,
        span.status_message,
    )


def encode_spans(spans: Sequence[Span]) -> bytes:
    return _encoder.encode([span_row(span) for span in spans])


def decode_spans(payload: bytes) -> list[Span]:
    return [
        Span(
            trace_id=int.from_bytes(trace_id, "big"),
            span_id=span_id,
            parent_id=parent_id,
            service=service,
            name=name,
            start_ns=start_ns,
            end_ns=end_ns,
            attributes=attributes,
            logs=[LogEntry(time_ns, log_name, fields) for time_ns, log_name, fields in logs],
            error=error,
            status_message=status_message,
        )
        for (
            trace_id,
            span_id,
            parent_id,
            service,
            name,
            start_ns,
            end_ns,
            attributes,
            logs,
            error,
            status_message,
        ) in _decode_span_rows(payload)
    ]
