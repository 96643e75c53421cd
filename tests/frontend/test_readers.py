"""The Tempo and Jaeger trace readers against doubles that answer with real back-end shapes."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from kelemetry_py.config import BackendConfig
from kelemetry_py.model import (
    SERVICE_AUDIT,
    SERVICE_EVENT,
    SERVICE_LINK,
    SERVICE_OBJECT,
    LogEntry,
    ObjectRef,
    Span,
    child_span_id,
    object_span_id,
    object_trace_id,
)
from kelemetry_py.storage import TraceQuery, TraceReader
from kelemetry_py.storage.jaeger import JaegerReader
from kelemetry_py.storage.otlp_json import BackendError, parse_hex_trace_id, ssl_context
from kelemetry_py.storage.tempo import TempoReader, build_traceql
from tests.support.jaeger_double import JaegerDouble
from tests.support.tempo_double import TempoDouble, TraceQLUnsupported, parse_traceql

WINDOW_S = 1800
WINDOW = 984_000  # an arbitrary 30-minute window
WINDOW_START_NS = WINDOW * WINDOW_S * 1_000_000_000
WINDOW_END_NS = WINDOW_START_NS + WINDOW_S * 1_000_000_000

DEPLOYMENT = ObjectRef("fixture", "apps", "v1", "deployments", "shop", "web", uid="d-uid")
REPLICASET = ObjectRef("fixture", "apps", "v1", "replicasets", "shop", "web-5d8f", uid="rs-uid")


def raw_trace(ref: ObjectRef, trace_id: int | None = None, window: int = WINDOW) -> list[Span]:
    """One object's raw trace in one window: the object span with audit, event and link children."""
    trace_id = trace_id or object_trace_id(ref.key, window)
    root_id = object_span_id(ref.key, window)
    start = window * WINDOW_S * 1_000_000_000
    tags = ref.tags()
    root = Span(
        trace_id=trace_id,
        span_id=root_id,
        parent_id=None,
        service=SERVICE_OBJECT,
        name=f"{ref.resource}/{ref.name}",
        start_ns=start,
        end_ns=start + WINDOW_S * 1_000_000_000,
        attributes=dict(tags),
    )
    audit = Span(
        trace_id=trace_id,
        span_id=child_span_id(trace_id, "audit-1"),
        parent_id=root_id,
        service=SERVICE_AUDIT,
        name="admin patch (Conflict)",
        start_ns=start + 5_000_123_456,
        end_ns=start + 5_020_000_001,
        attributes={
            **tags,
            "auditID": "a-1",
            "verb": "patch",
            "responseCode": 409,
            "sourceIPs": ["10.0.0.1", "10.0.0.2"],
            "ratio": 0.25,
            "dryRun": False,
        },
        logs=[
            LogEntry(
                start + 5_010_000_000,
                "error",
                {"reason": "Conflict", "message": "the object has been modified"},
            ),
            LogEntry(start + 5_011_000_000, "diff", {"diff": "spec.replicas 2 -> 4", "changes": 1}),
        ],
        error=True,
        status_message="Conflict",
    )
    event = Span(
        trace_id=trace_id,
        span_id=child_span_id(trace_id, "event-1"),
        parent_id=root_id,
        service=SERVICE_EVENT,
        name="ScalingReplicaSet",
        start_ns=start + 6_000_000_000,
        end_ns=start + 6_000_000_000,
        attributes={**tags, "type": "Normal", "reason": "ScalingReplicaSet", "count": 1},
        logs=[LogEntry(start + 6_000_000_000, "event", {"message": "Scaled up replica set web-5d8f to 4"})],
    )
    link = Span(
        trace_id=trace_id,
        span_id=child_span_id(trace_id, "link-1"),
        parent_id=root_id,
        service=SERVICE_LINK,
        name="owner",
        start_ns=start + 1_000_000_000,
        end_ns=start + 1_000_000_000,
        attributes={
            **tags,
            "linkedCluster": "fixture",
            "linkedGroup": "apps",
            "linkedResource": "replicasets",
            "linkRole": "child",
            "linkClass": "owner",
        },
    )
    return [root, audit, event, link]


def by_id(spans: list[Span]) -> list[Span]:
    return sorted(spans, key=lambda span: span.span_id)


# A trace id whose hex form starts with zeros, which Tempo's search drops.
LEADING_ZERO_ID = 0x00_07_1234_5678_9ABC_DEF0_1234_5678_9ABC
HEADERS = {"X-Scope-OrgID": "tenant-a", "Authorization": "Bearer t0ken"}


def recorded(fixtures_dir: Path, *parts: str) -> Any:
    return orjson.loads((fixtures_dir / "backends").joinpath(*parts).read_bytes())


MAP_FIELDS = ("serviceStats",)


class _Merged(dict[str, Any]):
    """Every key seen in a recorded list's items; ``required`` are those every item has."""

    required: frozenset[str] = frozenset()


def _merge(examples: list[Any]) -> Any:
    """One example standing for all items of a recorded list, to compare our list items against."""
    if examples and all(isinstance(item, dict) for item in examples):
        values: dict[str, list[Any]] = {}
        for item in examples:
            for key, value in item.items():
                values.setdefault(key, []).append(value)
        merged = _Merged({key: _merge(found) for key, found in values.items()})
        merged.required = frozenset.intersection(*(frozenset(item) for item in examples))
        return merged
    if examples and all(isinstance(item, list) for item in examples):
        elements = [element for item in examples for element in item]
        return [_merge(elements)] if elements else []
    return examples[0] if examples else None


def shape_mismatches(
    ours: Any, real: Any, path: str = "$", optional: frozenset[str] = frozenset()
) -> list[str]:
    """Field-by-field differences in names and JSON types between our response and a recorded one.

    ``optional`` holds path suffixes (".events") of fields the recorded example happens to lack or have.
    """

    def allowed(field_path: str) -> bool:
        return any(field_path.endswith(suffix) for suffix in optional)

    if isinstance(real, dict):
        if not isinstance(ours, dict):
            return [f"{path}: object expected, got {type(ours).__name__}"]
        if path.rsplit(".", 1)[-1] in MAP_FIELDS:
            # Keyed by service name: every value has the recorded value's shape.
            example = next(iter(real.values()))
            return [
                problem
                for key, value in ours.items()
                for problem in shape_mismatches(value, example, f"{path}[{key}]", optional)
            ]
        required = real.required if isinstance(real, _Merged) else frozenset(real)
        problems = [
            f"{path}.{key}: not in the recorded shape"
            for key in ours
            if key not in real and not allowed(f"{path}.{key}")
        ]
        problems += [
            f"{path}.{key}: missing" for key in required if key not in ours and not allowed(f"{path}.{key}")
        ]
        for key in ours.keys() & real.keys():
            problems += shape_mismatches(ours[key], real[key], f"{path}.{key}", optional)
        return problems
    if isinstance(real, list):
        if not isinstance(ours, list):
            return [f"{path}: array expected, got {type(ours).__name__}"]
        if not real:
            return []
        if isinstance(real[0], _Merged) or not isinstance(real[0], (dict, list)):
            example = real[0]  # already merged (a nested list of a merged example), or a scalar list
        else:
            example = _merge(real)
            example = example[0] if isinstance(example, list) else example
        return [
            problem for item in ours for problem in shape_mismatches(item, example, f"{path}[]", optional)
        ]
    kinds = {bool: "bool", int: "number", float: "number", str: "string", type(None): "null"}
    if kinds[type(ours)] != kinds[type(real)]:
        return [f"{path}: {kinds[type(ours)]} where the real one has {kinds[type(real)]}"]
    return []


async def _get(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200, await response.text()
        return await response.json()


# Our error spans carry a status code and message; our attributes use bool, double and array values too.
SPAN_OPTIONAL = frozenset(
    {
        "spans[].events",
        "spans[].status.code",
        "spans[].status.message",
        "value.stringValue",
        "value.intValue",
        "value.boolValue",
        "value.doubleValue",
        "value.arrayValue",
    }
)


async def test_tempo_double_answers_with_recorded_shapes(fixtures_dir: Path) -> None:
    spans = raw_trace(DEPLOYMENT, LEADING_ZERO_ID)
    async with TempoDouble(spans) as tempo:
        hex_id = f"{LEADING_ZERO_ID:032x}"
        v2 = await _get(f"{tempo.url}/api/v2/traces/{hex_id}")
        v1 = await _get(f"{tempo.url}/api/traces/{hex_id}")
        query = '{ resource.service.name = "object" }'
        search = await _get(f"{tempo.url}/api/search?q={query}&start=0&end=99999999999&limit=5")
        values = await _get(f"{tempo.url}/api/search/tag/cluster/values")
    assert (
        shape_mismatches(
            v2, recorded(fixtures_dir, "tempo", "tempo-api-v2-traces.json"), optional=SPAN_OPTIONAL
        )
        == []
    )
    assert (
        shape_mismatches(
            v1, recorded(fixtures_dir, "tempo", "tempo-api-traces-v1.json"), optional=SPAN_OPTIONAL
        )
        == []
    )
    assert shape_mismatches(search, recorded(fixtures_dir, "tempo", "tempo-search-traceql.json")) == []
    assert shape_mismatches(values, recorded(fixtures_dir, "tempo", "tempo-tag-values.json")) == []
    assert search["traces"][0]["traceID"] == f"{LEADING_ZERO_ID:x}"
    assert len(search["traces"][0]["traceID"]) < 32
    # The checker itself notices a changed shape.
    assert shape_mismatches(
        {"traces": [{"traceID": 5}]}, recorded(fixtures_dir, "tempo", "tempo-search-tags.json")
    )


async def test_jaeger_double_answers_with_recorded_shapes(fixtures_dir: Path) -> None:
    spans = raw_trace(DEPLOYMENT)
    async with JaegerDouble(spans) as jaeger:
        trace = await _get(f"{jaeger.url}/api/v3/traces/{spans[0].trace_id_hex}")
        found = await _get(
            f"{jaeger.url}/api/v3/traces?query.service_name=audit"
            "&query.start_time_min=1970-01-01T00:00:00Z&query.start_time_max=2100-01-01T00:00:00Z"
        )
        services = await _get(f"{jaeger.url}/api/v3/services")
        operations = await _get(f"{jaeger.url}/api/v3/operations?service=event")
    # The recorded Jaeger spans are minimal (no times, attributes, resource attributes): those may be extra.
    extra = frozenset(
        {
            "resource.attributes",
            "scope.name",
            "status.message",
            "status.code",
            *(
                f"spans[].{key}"
                for key in ("parentSpanId", "startTimeUnixNano", "endTimeUnixNano", "attributes", "events")
            ),
        }
    )
    for document, name in ((trace, "v3-GetTrace.json"), (found, "v3-FindTraces.json")):
        # Our spans without an error have an empty status; the error span is checked below.
        assert shape_mismatches(document, recorded(fixtures_dir, "jaeger", name), optional=extra) == []
    (audit,) = (
        span
        for resource_spans in found["result"]["resourceSpans"]
        for scope_spans in resource_spans["scopeSpans"]
        for span in scope_spans["spans"]
        if span["name"].startswith("admin patch")
    )
    assert audit["status"] == {"code": 2, "message": "Conflict"}
    assert len(audit["traceId"]) == 32 and len(audit["spanId"]) == 16 and isinstance(audit["kind"], int)
    assert shape_mismatches(services, recorded(fixtures_dir, "jaeger", "v3-GetServices.json")) == []
    assert shape_mismatches(operations, recorded(fixtures_dir, "jaeger", "v3-GetOperations.json")) == []


def test_traceql_double_understands_only_what_the_reader_emits() -> None:
    query = TraceQuery(
        tags={"cluster": "fixture", "odd key": 'say "hi"'}, start_ns=0, end_ns=1, service="audit"
    )
    parsed = parse_traceql(build_traceql(query))
    assert [(attr.scope, attr.key, value) for attr, value in parsed.conditions] == [
        ("span", "cluster", "fixture"),
        ("span", "odd key", 'say "hi"'),
        ("resource", "service.name", "audit"),
    ]
    assert [attr.key for attr in parsed.selected] == [
        "cluster",
        "group",
        "version",
        "resource",
        "namespace",
        "name",
        "uid",
    ]
    for unsupported in (
        '{ span.a != "x" }',
        '{ span.a = "x" || span.b = "y" }',
        "{ span.a = 3 }",
        '{ span.a = "x" } | count() > 1',
        '{ .a = "x" }',
        '{ span.a = "x" ',
    ):
        with pytest.raises(TraceQLUnsupported):
            parse_traceql(unsupported)


def tempo_config(url: str, **overrides: Any) -> BackendConfig:
    return BackendConfig(endpoint=url, headers=dict(HEADERS), **overrides)


async def test_tempo_search_finds_object_by_tags_with_leading_zero_trace_id() -> None:
    spans = raw_trace(DEPLOYMENT, LEADING_ZERO_ID) + raw_trace(REPLICASET)
    async with TempoDouble(spans) as tempo:
        reader = TempoReader(tempo_config(tempo.url))
        assert isinstance(reader, TraceReader)
        try:
            hits = await reader.find_traces(
                TraceQuery(
                    tags={
                        "cluster": "fixture",
                        "group": "apps",
                        "resource": "deployments",
                        "namespace": "shop",
                        "name": "web",
                    },
                    start_ns=WINDOW_START_NS + 60_000_000_000,
                    end_ns=WINDOW_START_NS + 120_000_000_000,
                )
            )
            assert [hit.trace_id for hit in hits] == [LEADING_ZERO_ID]
            assert hits[0].ref == DEPLOYMENT and hits[0].ref.uid == "d-uid" and hits[0].ref.version == "v1"
            assert (hits[0].start_ns, hits[0].end_ns) == (WINDOW_START_NS, WINDOW_END_NS)
            # The object came from the selected attributes: no trace was fetched to learn it.
            assert [request.path for request in tempo.requests] == ["/api/search"]
            search = tempo.requests[0]
            assert search.headers["X-Scope-OrgID"] == "tenant-a"
            assert search.headers["Authorization"] == "Bearer t0ken"
            assert int(search.query["start"]) <= (WINDOW_START_NS + 60_000_000_000) // 10**9
            # Any tag from any source: an audit span's auditID finds the trace it belongs to.
            by_audit = await reader.find_traces(
                TraceQuery(
                    tags={"auditID": "a-1"},
                    service=SERVICE_AUDIT,
                    start_ns=WINDOW_START_NS,
                    end_ns=WINDOW_END_NS,
                )
            )
            assert {hit.ref for hit in by_audit} == {DEPLOYMENT, REPLICASET}
            outside = await reader.find_traces(
                TraceQuery(
                    tags={"name": "web"}, start_ns=WINDOW_END_NS + 10**12, end_ns=WINDOW_END_NS + 2 * 10**12
                )
            )
            assert outside == []
        finally:
            await reader.close()


async def test_tempo_search_without_selected_attributes_reads_the_trace() -> None:
    async with TempoDouble(raw_trace(DEPLOYMENT, LEADING_ZERO_ID), serve_select=False) as tempo:
        reader = TempoReader(tempo_config(tempo.url))
        try:
            hits = await reader.find_traces(
                TraceQuery(
                    tags={"auditID": "a-1"},
                    service=SERVICE_AUDIT,
                    start_ns=WINDOW_START_NS,
                    end_ns=WINDOW_END_NS,
                )
            )
        finally:
            await reader.close()
    assert [(hit.trace_id, hit.ref) for hit in hits] == [(LEADING_ZERO_ID, DEPLOYMENT)]
    assert "/api/v2/traces/" + f"{LEADING_ZERO_ID:032x}" in [request.path for request in tempo.requests]


@pytest.mark.parametrize("serve_v2", [True, False])
async def test_tempo_get_trace_round_trips_spans(serve_v2: bool) -> None:
    spans = raw_trace(DEPLOYMENT, LEADING_ZERO_ID)
    async with TempoDouble(spans + raw_trace(REPLICASET), serve_v2=serve_v2) as tempo:
        reader = TempoReader(tempo_config(tempo.url))
        try:
            got = await reader.get_trace(LEADING_ZERO_ID)
            paths = [request.path for request in tempo.requests]
            unknown = await reader.get_trace(0xABC)
        finally:
            await reader.close()
    assert by_id(got) == by_id(spans)
    audit = next(span for span in got if span.service == SERVICE_AUDIT)
    assert audit.error and audit.status_message == "Conflict"
    assert audit.attributes["responseCode"] == 409 and audit.attributes["sourceIPs"] == [
        "10.0.0.1",
        "10.0.0.2",
    ]
    assert [log.name for log in audit.logs] == ["error", "diff"]
    assert unknown == []
    assert any(path.startswith("/api/traces/") for path in paths) == (not serve_v2)


async def test_tempo_tag_values_and_errors() -> None:
    async with TempoDouble(
        raw_trace(DEPLOYMENT) + raw_trace(ObjectRef("other", "", "v1", "pods", "a", "p"))
    ) as tempo:
        reader = TempoReader(tempo_config(tempo.url))
        broken = TempoReader(tempo_config(tempo.url + "/not-tempo"))
        try:
            assert await reader.tag_values("cluster", WINDOW_START_NS, WINDOW_END_NS) == ["fixture", "other"]
            with pytest.raises(BackendError, match="tempo"):
                await broken.find_traces(TraceQuery(tags={"name": "web"}, start_ns=0, end_ns=1))
        finally:
            await reader.close()
            await broken.close()
    unreachable = TempoReader(BackendConfig(endpoint="http://127.0.0.1:9", timeout_seconds=2))
    try:
        with pytest.raises(BackendError, match="failed"):
            await unreachable.get_trace(1)
    finally:
        await unreachable.close()


def test_tls_settings_shape_the_ssl_context(tmp_path: Path) -> None:
    assert ssl_context(BackendConfig(endpoint="https://tempo:3200")) is True
    skipping = ssl_context(BackendConfig(endpoint="https://tempo:3200", insecure_skip_verify=True))
    assert isinstance(skipping, ssl.SSLContext)
    assert skipping.verify_mode == ssl.CERT_NONE and not skipping.check_hostname
    with pytest.raises(OSError):
        ssl_context(BackendConfig(endpoint="https://jaeger", ca_file=str(tmp_path / "missing-ca.pem")))


def test_search_ids_are_padded_and_validated() -> None:
    assert parse_hex_trace_id("604e8cfa9013e6c714623444f89a305") == int(
        "0604e8cfa9013e6c714623444f89a305", 16
    )
    for bad in ("", "xyz", "1" * 33):
        with pytest.raises(BackendError):
            parse_hex_trace_id(bad)


async def test_jaeger_reader_finds_and_reads_traces() -> None:
    deployment = raw_trace(DEPLOYMENT)
    replicaset = raw_trace(REPLICASET)
    earlier_window = raw_trace(DEPLOYMENT, window=WINDOW - 1)
    async with JaegerDouble(deployment + replicaset + earlier_window) as jaeger:
        reader = JaegerReader(
            BackendConfig(endpoint=jaeger.url, headers=dict(HEADERS)), window_seconds=WINDOW_S
        )
        assert isinstance(reader, TraceReader)
        try:
            hits = await reader.find_traces(
                TraceQuery(
                    tags={
                        "cluster": "fixture",
                        "resource": "deployments",
                        "namespace": "shop",
                        "name": "web",
                    },
                    start_ns=WINDOW_START_NS + 60_000_000_000,
                    end_ns=WINDOW_START_NS + 120_000_000_000,
                )
            )
            assert [(hit.trace_id, hit.ref) for hit in hits] == [(deployment[0].trace_id, DEPLOYMENT)]
            assert (hits[0].start_ns, hits[0].end_ns) == (WINDOW_START_NS, WINDOW_END_NS)
            first = jaeger.requests[0]
            assert first.query["query.service_name"] == SERVICE_OBJECT
            assert first.headers["Authorization"] == "Bearer t0ken"
            # Both windows, newest first, when the range covers them.
            both = await reader.find_traces(
                TraceQuery(tags={"name": "web"}, start_ns=WINDOW_START_NS - 10**12, end_ns=WINDOW_END_NS)
            )
            assert [hit.trace_id for hit in both] == [deployment[0].trace_id, earlier_window[0].trace_id]
            # A tag only audit spans carry, with no service given: every service is searched.
            by_reason = await reader.find_traces(
                TraceQuery(
                    tags={"reason": "ScalingReplicaSet"},
                    start_ns=WINDOW_START_NS,
                    end_ns=WINDOW_END_NS,
                    limit=5,
                )
            )
            assert {hit.ref for hit in by_reason} == {DEPLOYMENT, REPLICASET}
            assert "/api/v3/services" in [request.path for request in jaeger.requests]
            got = await reader.get_trace(deployment[0].trace_id)
            assert by_id(got) == by_id(deployment)
            assert await reader.get_trace(0xABC) == []
            assert await reader.tag_values("cluster", WINDOW_START_NS, WINDOW_END_NS) == ["fixture"]
            assert await reader.tag_values("name", WINDOW_START_NS, WINDOW_END_NS) == ["web", "web-5d8f"]
            none = await reader.find_traces(
                TraceQuery(tags={"name": "nothing"}, start_ns=0, end_ns=WINDOW_END_NS)
            )
            assert none == []
        finally:
            await reader.close()
