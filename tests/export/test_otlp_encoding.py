"""The fast OTLP encoder must produce what the SDK's own encoder produces."""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from kelemetry_py.export.otlp import SpanConverter, encode_request
from kelemetry_py.model import LogEntry, Span


def _varied_spans() -> list[Span]:
    spans = []
    for i in range(6):
        spans.append(
            Span(
                trace_id=(1 << 127) + i,
                span_id=(1 << 64) - 1 - i,  # top bit set
                parent_id=None if i % 3 == 0 else 42 + i,
                service=("object", "audit", "event")[i % 3],
                name=f"span ünïcode {i}",
                start_ns=1_790_000_000_000_000_000 + i,
                end_ns=1_790_000_000_000_000_000 + 10 * i + 5,
                attributes={
                    "s": "x" * (i * 50),  # lengths past one varint byte
                    "n": -i,
                    "big": 1 << 62,
                    "f": i / 3,
                    "b": i % 2 == 0,
                    "list": [f"v{j}" for j in range(i)],
                    "empty": "",
                },
                logs=[LogEntry(5 + j, f"log{j}", {"k": j, "t": "text"}) for j in range(i % 3)],
                error=i == 4,
                status_message="boom" if i == 4 else "",
            )
        )
    spans.append(Span(trace_id=9, span_id=9, parent_id=None, service="audit", name="", start_ns=0, end_ns=0))
    error_without_message = Span(
        trace_id=9, span_id=10, parent_id=9, service="audit", name="e", start_ns=1, end_ns=2, error=True
    )
    return [*spans, error_without_message]


def test_fast_encoder_matches_the_sdk_encoder() -> None:
    converter = SpanConverter({"deployment.environment": "test"})
    readable = [converter.convert(span) for span in _varied_spans()]
    ours = ExportTraceServiceRequest.FromString(encode_request(readable))
    theirs = encode_spans(readable)
    assert ours == theirs
    assert len(ours.resource_spans) == 3  # grouped by service


def test_encoding_the_same_batch_twice_is_stable() -> None:
    converter = SpanConverter()
    readable = [converter.convert(span) for span in _varied_spans()]
    assert encode_request(readable) == encode_request(readable)
