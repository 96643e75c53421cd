"""OtlpSpanWriter against the real in-process OTLP receivers (gRPC and HTTP)."""

from __future__ import annotations

import dataclasses

import pytest

from kelemetry_py.config import ConfigError, OtlpConfig
from kelemetry_py.export import SpanWriter
from kelemetry_py.export.otlp import OtlpExportFailed, OtlpSpanWriter
from kelemetry_py.metrics import Metrics
from kelemetry_py.model import LogEntry, ObjectRef, Span, child_span_id, object_span_id, object_trace_id
from tests.support.otlp_receiver import GrpcOtlpReceiver, HttpOtlpReceiver, OtlpReceiver

REF = ObjectRef("prod", "apps", "v1", "deployments", "default", "web", uid="u-1")
T0 = 1_790_000_000_000_000_000


def _sample_spans(count: int = 3) -> list[Span]:
    """An object span and children with every attribute type, logs, and one error."""
    window = T0 // 1_000_000_000 // 1800
    trace_id = object_trace_id(REF.key, window)
    root_id = object_span_id(REF.key, window)
    spans = [
        Span(
            trace_id=trace_id,
            span_id=root_id,
            parent_id=None,
            service="object",
            name="deployments/web",
            start_ns=window * 1800 * 1_000_000_000,
            end_ns=(window + 1) * 1800 * 1_000_000_000,
            attributes=dict(REF.tags()),
        )
    ]
    for i in range(count - 1):
        attributes = dict(REF.tags())
        attributes.update(
            {"verb": "update", "responseCode": 409 if i == 0 else 200, "sourceIPs": ["10.0.0.1", "10.0.0.2"]}
        )
        attributes.update({"ratio": 0.25, "dryRun": False, "auditID": f"audit-{i}"})
        spans.append(
            Span(
                trace_id=trace_id,
                span_id=child_span_id(trace_id, f"audit-{i}"),
                parent_id=root_id,
                service="audit",
                name=f"admin update{' (409)' if i == 0 else ''}",
                start_ns=T0 + i * 1000,
                end_ns=T0 + i * 1000 + 750,
                attributes=attributes,
                logs=[LogEntry(T0 + i * 1000 + 10, "diff", {"diff": "spec.replicas 2 -> 4", "changes": 1})],
                error=i == 0,
                status_message="Conflict: the object has been modified" if i == 0 else "",
            )
        )
    return spans


def _config(receiver: OtlpReceiver, **overrides: object) -> OtlpConfig:
    endpoint = receiver.endpoint  # type: ignore[attr-defined]
    base = OtlpConfig(endpoint=endpoint, timeout_seconds=2.0)
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def _count(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(f"kelemetry_{name}_total", {"writer": "otlp"}) or 0.0


@pytest.fixture(params=["grpc", "http"])
def receiver(
    request: pytest.FixtureRequest, otlp_grpc_receiver: GrpcOtlpReceiver, otlp_http_receiver: HttpOtlpReceiver
) -> OtlpReceiver:
    return otlp_grpc_receiver if request.param == "grpc" else otlp_http_receiver


async def test_spans_survive_the_trip(receiver: OtlpReceiver) -> None:
    metrics = Metrics()
    writer = OtlpSpanWriter(
        _config(receiver, headers={"X-Scope-OrgID": "tenant-a"}),
        metrics,
        resource_attributes={"k8s.cluster.name": "prod"},
    )
    assert isinstance(writer, SpanWriter)
    sent = _sample_spans(5)
    await writer.write(sent)  # returns once delivered
    received = receiver.spans_by_id()
    assert len(receiver.spans) == len(sent)
    for span in sent:
        assert received[span.span_id] == span
    assert received[sent[1].span_id].error and not received[sent[2].span_id].error
    assert _count(metrics, "spans_exported") == len(sent)
    assert _count(metrics, "export_errors") == 0
    headers = {key.lower(): value for key, value in receiver.request_headers[0].items()}
    assert headers["x-scope-orgid"] == "tenant-a"
    resource = {
        kv.key: kv.value.string_value for kv in receiver.decoded[0].resource_spans[0].resource.attributes
    }
    assert resource["k8s.cluster.name"] == "prod"
    await writer.close()


async def test_batches_are_cut_at_batch_size(receiver: OtlpReceiver) -> None:
    writer = OtlpSpanWriter(_config(receiver, batch_size=3), Metrics())
    await writer.write(_sample_spans(7))
    sizes = [
        sum(len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans)
        for request in receiver.decoded
    ]
    assert sizes == [3, 3, 1]
    await writer.close()


async def test_a_refused_export_raises_and_is_counted_never_dropped(receiver: OtlpReceiver) -> None:
    """The span log in front of the writer keeps and retries what a write did not deliver."""
    metrics = Metrics()
    # A timeout shorter than the SDK's first backoff keeps the SDK from retrying on its own.
    writer = OtlpSpanWriter(_config(receiver, timeout_seconds=0.5), metrics)
    receiver.fail_next(1)
    sent = _sample_spans(4)
    with pytest.raises(OtlpExportFailed):
        await writer.write(sent)
    assert receiver.spans == []
    assert _count(metrics, "export_errors") == 1
    await writer.write(sent)  # the retry goes through
    assert sorted(s.span_id for s in receiver.spans) == sorted(s.span_id for s in sent)
    assert _count(metrics, "spans_exported") == len(sent)
    await writer.close()


async def test_close_refuses_more(receiver: OtlpReceiver) -> None:
    writer = OtlpSpanWriter(_config(receiver), Metrics())
    sent = _sample_spans(3)
    await writer.write(sent)
    await writer.close()
    assert len(receiver.spans) == len(sent)
    with pytest.raises(RuntimeError, match="closed"):
        await writer.write(sent)
    await writer.close()  # closing twice is harmless


def test_bad_endpoint_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"otlp\.endpoint"):
        OtlpSpanWriter(OtlpConfig(endpoint="tcp://collector:4317"), Metrics())


def test_unreadable_certificate_is_a_config_error(tmp_path: object) -> None:
    config = OtlpConfig(endpoint="grpcs://collector:4317", ca_file="/nonexistent/ca.pem")
    with pytest.raises(ConfigError, match=r"otlp\.ca_file"):
        OtlpSpanWriter(config, Metrics())


def _large_spans(count: int, size: int) -> list[Span]:
    spans = _sample_spans(count)
    for span in spans[1:]:
        span.logs.append(LogEntry(span.start_ns, "snapshot", {"snapshot": "x" * size}))
    return spans


async def test_a_write_larger_than_one_request_may_be_is_sent_in_several(receiver: OtlpReceiver) -> None:
    """Tempo's and the collector's OTLP receivers take 4 MiB per request by default and refuse a larger one for
    good (RESOURCE_EXHAUSTED): one batch of large snapshots must not be retried for ever."""
    writer = OtlpSpanWriter(_config(receiver), Metrics())
    sent = _large_spans(41, 200_000)  # 8 MB in one write, under the 512 spans of a batch
    await writer.write(sent)
    assert sorted(span.span_id for span in receiver.spans) == sorted(span.span_id for span in sent)
    assert len(receiver.decoded) >= 2
    assert all(len(request.SerializeToString()) <= 4 << 20 for request in receiver.decoded)
    await writer.close()


async def test_a_span_larger_than_any_request_may_be_is_dropped_and_counted(receiver: OtlpReceiver) -> None:
    metrics = Metrics()
    # A timeout shorter than the SDK's first backoff keeps the SDK from retrying on its own.
    writer = OtlpSpanWriter(_config(receiver, max_request_bytes=64 * 1024, timeout_seconds=0.5), metrics)
    sent = _sample_spans(3)
    sent[1].logs.append(LogEntry(sent[1].start_ns, "snapshot", {"snapshot": "x" * 100_000}))
    receiver.fail_next(1)
    with pytest.raises(OtlpExportFailed):  # the span log retries the whole write: the large span counts once
        await writer.write(sent)
    await writer.write(sent)
    assert sorted(span.span_id for span in receiver.spans) == sorted(span.span_id for span in (sent[0], sent[2]))
    assert _count(metrics, "spans_dropped") == 1
    await writer.close()
