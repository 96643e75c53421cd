"""Observations that carry only their objects' metadata make the same spans when nothing reads more."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from kelemetry_py.config import AuditConfig, RedactionConfig
from kelemetry_py.linking.annotation import ParentAnnotationLinker
from kelemetry_py.linking.owners import OwnerReferenceLinker
from kelemetry_py.metrics import Metrics
from kelemetry_py.model import SERVICE_LINK, Link, ObjectRef, Observation, Span
from kelemetry_py.pipeline.core import Pipeline
from kelemetry_py.pipeline.decorators import Decoration, SpanInfo
from kelemetry_py.pipeline.emission.memory import MemoryEmissionSet
from kelemetry_py.sources.audit import AuditConverter, parse_batch
from kelemetry_py.sources.auditdecode.inline import InlineDecoder
from kelemetry_py.spool.codec import decode_observations
from tests.conftest import SCENARIOS
from tests.support.writers import CollectingWriter


class SpecReader:
    name = "spec-reader"

    async def links(self, ref: ObjectRef, body: Mapping[str, Any]) -> Sequence[Link]:
        return []


class Tagger:
    name = "tagger"

    async def decorate(self, span: SpanInfo) -> Decoration:
        return Decoration()


def built_in_linkers() -> list[OwnerReferenceLinker | ParentAnnotationLinker]:
    return [OwnerReferenceLinker(), ParentAnnotationLinker()]


def pipeline(writer: CollectingWriter, **kwargs: Any) -> Pipeline:
    return Pipeline(writer=writer, emission=MemoryEmissionSet(), metrics=Metrics(), **kwargs)


def test_bodies_are_whole_unless_every_reader_says_it_needs_only_metadata() -> None:
    writer = CollectingWriter()
    assert not pipeline(writer, linkers=built_in_linkers()).reads_whole_bodies
    assert pipeline(writer, linkers=[*built_in_linkers(), SpecReader()]).reads_whole_bodies
    assert pipeline(writer, linkers=built_in_linkers(), decorators=[Tagger()]).reads_whole_bodies


def observations_of(fixtures_dir: Path, *, whole_bodies: bool) -> list[Observation]:
    converter = AuditConverter(AuditConfig(), RedactionConfig(), whole_bodies=whole_bodies)
    found: list[Observation] = []
    for scenario in SCENARIOS:
        for line in (fixtures_dir / scenario / "audit.jsonl").read_bytes().splitlines():
            if line.strip():
                events, _ = parse_batch(line)
                found.extend(converter.convert(scenario, events))
    return found


async def spans_of(observations: list[Observation]) -> list[Span]:
    writer = CollectingWriter()
    tracer = pipeline(writer, linkers=built_in_linkers())
    await tracer.start()
    await tracer.submit(observations)
    await tracer.drain()
    await tracer.stop()
    return sorted(writer.spans, key=lambda span: (span.trace_id, span.span_id, span.start_ns))


async def test_the_built_in_linkers_make_the_same_spans_from_metadata_alone(fixtures_dir: Path) -> None:
    whole = observations_of(fixtures_dir, whole_bodies=True)
    lean = observations_of(fixtures_dir, whole_bodies=False)
    assert len(lean) == len(whole)
    lean_bodies = [o.body for o in lean if o.body is not None]
    assert lean_bodies and all(set(body) <= {"apiVersion", "kind", "metadata"} for body in lean_bodies)
    assert any(o.body is not None and "spec" in o.body for o in whole)  # the fixtures have more to drop
    whole_spans = await spans_of(whole)
    classes = {span.attributes.get("linkClass") for span in whole_spans if span.service == SERVICE_LINK}
    assert classes == {"owner", "annotation"} or classes == {"owner"}  # the linkers had something to find
    assert await spans_of(lean) == whole_spans


def test_lean_bodies_are_the_heads_of_whole_ones_and_logs_are_unchanged(fixtures_dir: Path) -> None:
    whole = observations_of(fixtures_dir, whole_bodies=True)
    lean = observations_of(fixtures_dir, whole_bodies=False)
    heads = [
        None if o.body is None else {k: o.body[k] for k in ("apiVersion", "kind", "metadata") if k in o.body}
        for o in whole
    ]
    assert [o.body for o in lean] == heads
    assert [o.logs for o in lean] == [o.logs for o in whole]  # snapshots and patches stay whole
    assert any(o.logs and o.logs[0].name == "snapshot" for o in lean)


def _event(response: object, *, verb: str = "update", name: str = "c") -> dict[str, Any]:
    return {
        "auditID": f"{verb}-{name}",
        "stage": "ResponseComplete",
        "verb": verb,
        "stageTimestamp": "2024-05-01T10:00:00.000000Z",
        "objectRef": {"resource": "configmaps", "namespace": "default", "name": name, "apiVersion": "v1"},
        "responseStatus": {"code": 200},
        "responseObject": response,
    }


def _update(response: object) -> bytes:
    return orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": [_event(response)]})


def test_a_body_of_a_shape_no_apiserver_stores_is_judged_alike_lean_or_whole() -> None:
    cases = [
        {"kind": "ConfigMap", "apiVersion": "v1", "metadata": "not an object"},  # dropped as malformed
        {"kind": "ConfigMap", "apiVersion": "v1", "metadata": None},  # no metadata to read
        ["not", "an", "object"],
        {"kind": "ConfigMap", "metadata": {"name": "c", "labels": {"a": "b" * 64}}},  # an invalid label value
    ]
    for response in cases:
        events, _ = parse_batch(_update(response))
        results = []
        for whole_bodies in (True, False):
            converter = AuditConverter(AuditConfig(), RedactionConfig(), whole_bodies=whole_bodies)
            observations, dropped = converter.convert_reporting("c", events)
            results.append(([(o.ref, o.body) for o in observations], [(d.field, d.reason) for d in dropped]))
        assert results[0] == results[1], response


async def test_an_integer_beyond_64_bits_in_metadata_costs_no_batch_its_neighbours() -> None:
    """No apiserver stores one, but a sender could: read from the metadata as it was, it failed the encoding of the
    whole batch (a 500, and the same batch sent again and again)."""
    huge = {"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "huge", "generation": -1}}
    plain = {"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "plain", "generation": 2}}
    items = [_event(huge, verb=verb, name="huge") for verb in ("update", "create")] + [_event(plain, name="plain")]
    listed = orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": items})
    body = listed.replace(b'"generation":-1', f'"generation":{1 << 70}'.encode())  # orjson writes none so large
    assert body.count(str(1 << 70).encode()) == 2
    for whole_bodies in (True, False):
        decoder = InlineDecoder(AuditConfig(), RedactionConfig(), records=True, whole_bodies=whole_bodies)
        batch = await decoder.decode("c", body)
        observations = [o for payload in batch.payloads for o in decode_observations(payload)]
        assert [o.ref.name for o in observations] == ["huge", "huge", "plain"]
        generations = [o.body["metadata"]["generation"] for o in observations if o.body is not None]
        assert generations == [float(1 << 70), float(1 << 70), 2]  # as JSON numbers beyond 64 bits always read
