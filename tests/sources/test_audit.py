from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from kelemetry_py.config import AuditConfig, RedactionConfig
from kelemetry_py.model import Observation
from kelemetry_py.sources.audit import (
    AuditConverter,
    InvalidAuditBatch,
    parse_batch,
    parse_event_list,
    parse_traced_batch,
)
from kelemetry_py.times import kube_time_ns as parse_time_ns
from tests.conftest import FAKE_SECRET_VALUES, SCENARIOS


def observations_of(fixtures_dir: Path, scenario: str, **audit: object) -> list[Observation]:
    converter = AuditConverter(AuditConfig(**audit), RedactionConfig())  # type: ignore[arg-type]
    out: list[Observation] = []
    for line in (fixtures_dir / scenario / "audit.jsonl").read_bytes().splitlines():
        out.extend(converter.convert("fixture", parse_event_list(line)))
    return out


def test_time_parsing_keeps_microseconds() -> None:
    assert parse_time_ns("2026-11-21T05:26:14.123456Z") == 1795238774_123456000
    assert parse_time_ns("1970-01-01T00:00:01Z") == 1_000_000_000


@pytest.mark.parametrize(
    ("stamp", "representable"),
    [
        ("1970-01-01T00:00:00Z", True),
        ("1969-12-31T23:59:59.999999Z", False),
        ("1970-01-01T00:30:00+01:00", False),  # the year is 1970, the instant before the epoch
        ("1971-01-01T00:00:00+23:59", True),
        ("2261-12-31T23:00:00-05:00", True),  # in 2262 once in UTC, well before its end
        ("2262-04-11T23:47:16.854775Z", True),  # the last microsecond a signed 64-bit nanosecond count holds
        ("2262-04-11T23:47:17Z", False),
        ("2262-04-11T20:47:17-03:00", False),
        ("2300-01-01T00:00:00Z", False),
    ],
)
def test_timestamps_outside_what_a_span_holds_are_rejected_alone(stamp: str, representable: bool) -> None:
    event = {
        "auditID": "a",
        "stage": "ResponseComplete",
        "verb": "create",
        "user": {"username": "admin"},
        "objectRef": {"resource": "configmaps", "namespace": "default", "name": "n", "apiVersion": "v1"},
        "responseStatus": {"code": 201},
        "requestReceivedTimestamp": "2026-01-01T00:00:00Z",
        "stageTimestamp": stamp,
    }
    events, rejected = parse_batch(
        orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": [event]})
    )
    assert (len(events), [item.reason for item in rejected]) == (
        (1, []) if representable else (0, ["time_out_of_range"])
    )


@pytest.mark.parametrize(
    ("field", "value", "reported"),
    [
        ("name", "n" * 254, "objectRef.name"),
        ("namespace", "Not_A_Label", "objectRef.namespace"),
        ("resource", "r" * 64, "objectRef.resource"),
        ("subresource", "s" * 64, "objectRef.subresource"),
        ("apiGroup", "g" * 254, "objectRef.apiGroup"),
        ("apiVersion", "v" * 64, "objectRef.apiVersion"),
    ],
)
def test_an_object_reference_kubernetes_would_refuse_is_dropped_alone(field: str, value: str, reported: str) -> None:
    def event(audit_id: str, **ref: str) -> dict[str, object]:
        return {
            "auditID": audit_id,
            "stage": "ResponseComplete",
            "verb": "create",
            "user": {"username": "admin"},
            "objectRef": {"resource": "configmaps", "namespace": "default", "name": "n", "apiVersion": "v1", **ref},
            "responseStatus": {"code": 201},
            "stageTimestamp": "2026-01-01T00:00:00.000001Z",
        }

    # Valid events first, so that the bad one (but for a bad namespace) is in a namespace already found valid.
    items = [event("a"), event("b", namespace="other"), event("c", **{field: value}), event("d")]
    events, _ = parse_batch(orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": items}))
    observations, dropped = AuditConverter(AuditConfig(), RedactionConfig()).convert_reporting("c", events)
    assert [o.dedup_key for o in observations] == ["audit:a:n", "audit:b:n", "audit:d:n"]
    assert [(drop.audit_id, drop.field) for drop in dropped] == [("c", reported)]


def test_generate_name_pods_take_their_name_from_the_response(fixtures_dir: Path) -> None:
    creates = [
        o
        for o in observations_of(fixtures_dir, "deployment-lifecycle")
        if o.ref.resource == "pods" and o.tags["verb"] == "create" and "subresource" not in o.tags
    ]
    assert len(creates) == 8
    for o in creates:
        assert o.ref.name.startswith("web-") and o.ref.uid
        assert o.title == "system:serviceaccount:kube-system:replicaset-controller create"
        assert [log.name for log in o.logs] == ["snapshot"]
        snapshot = orjson.loads(str(o.logs[0].fields["snapshot"]))
        assert snapshot["metadata"]["name"] == o.ref.name
        assert "managedFields" not in snapshot["metadata"]


def test_only_mutations_and_denials_are_kept(fixtures_dir: Path) -> None:
    for scenario in SCENARIOS:
        for o in observations_of(fixtures_dir, scenario):
            verb = o.tags["verb"]
            assert (
                verb in ("create", "update", "patch", "delete", "deletecollection")
                or o.tags["responseCode"] == 403
            )
            assert o.ref.resource not in ("events", "leases")


def test_error_requests_carry_reason_and_message(fixtures_dir: Path) -> None:
    obs = observations_of(fixtures_dir, "errors-and-links")
    by_code: dict[int, list[Observation]] = {}
    for o in obs:
        by_code.setdefault(int(o.tags["responseCode"]), []).append(o)  # type: ignore[arg-type]

    (invalid,) = by_code[422]
    assert (
        invalid.ref.name == "broken" and invalid.ref.resource == "deployments" and invalid.ref.group == "apps"
    )
    assert invalid.title == "admin create (Invalid)"
    assert invalid.error is not None and invalid.error.startswith(
        'Invalid: Deployment.apps "broken" is invalid'
    )
    assert invalid.logs[-1].name == "error" and invalid.logs[-1].fields["code"] == 422

    denied = {(o.ref.resource, o.ref.name, o.tags["verb"]) for o in by_code[403]}
    # the nameless create is told on the namespace it targeted; the denied read on the deployment itself
    assert denied == {("namespaces", "shop", "create"), ("deployments", "web2", "get")}
    for o in by_code[403]:
        assert o.tags["impersonatedUser"] == "system:serviceaccount:shop:nobody"
        assert o.tags["username"] == "admin"
        assert o.title.startswith("system:serviceaccount:shop:nobody ") and o.title.endswith("(Forbidden)")
        assert o.error and "forbidden" in o.error

    conflicts = [o for o in by_code[409] if o.ref.resource == "configmaps"]
    assert [(o.ref.name, o.title) for o in conflicts] == [("settings", "admin update (Conflict)")]
    status_conflicts = [o for o in by_code[409] if o.tags.get("subresource") == "status"]
    assert {o.title for o in status_conflicts} == {
        "system:serviceaccount:kube-system:deployment-controller update status (Conflict)",
        "system:serviceaccount:kube-system:replicaset-controller update status (Conflict)",
    }


def test_secret_values_never_reach_an_observation(fixtures_dir: Path) -> None:
    for scenario in SCENARIOS:
        for o in observations_of(fixtures_dir, scenario):
            text = orjson.dumps(
                {
                    "tags": o.tags,
                    "logs": [[log.name, log.fields] for log in o.logs],
                    "body": o.body,
                    "title": o.title,
                    "error": o.error,
                }
            )
            for value in FAKE_SECRET_VALUES:
                assert value not in text, (scenario, o.ref.key, value)
    secrets = [o for o in observations_of(fixtures_dir, "errors-and-links") if o.ref.resource == "secrets"]
    assert {o.tags["verb"] for o in secrets} >= {"create", "update", "delete"}
    created = next(o for o in secrets if o.tags["verb"] == "create")
    assert created.body is not None and set(created.body["data"].values()) == {"<redacted>"}
    assert "password" in created.body["data"]


def test_deletecollection_tells_each_deleted_object(fixtures_dir: Path) -> None:
    obs = observations_of(fixtures_dir, "batch-and-stateful")
    collected = [o for o in obs if o.tags["verb"] == "deletecollection"]
    assert collected, "the namespace controller empties the namespace with deletecollection"
    assert all(o.ref.name and o.ref.namespace == "jobs" for o in collected)
    assert all(
        o.title == "system:serviceaccount:kube-system:namespace-controller deletecollection"
        for o in collected
    )
    assert {o.ref.resource for o in collected} >= {"configmaps", "serviceaccounts"}
    assert len({o.dedup_key for o in collected}) == len(collected)


def test_audit_times_tags_and_resource_versions(fixtures_dir: Path) -> None:
    raw = {}
    for line in (fixtures_dir / "deployment-lifecycle" / "audit.jsonl").read_bytes().splitlines():
        for event in orjson.loads(line)["items"]:
            raw[event["auditID"]] = event
    for o in observations_of(fixtures_dir, "deployment-lifecycle"):
        event = raw[str(o.tags["auditID"])]
        assert o.start_ns == parse_time_ns(event["requestReceivedTimestamp"])
        assert o.end_ns == parse_time_ns(event["stageTimestamp"])
        assert o.tags["userAgent"] == event["userAgent"]
        assert o.tags["sourceIPs"] == ",".join(event["sourceIPs"])
        response = event.get("responseObject") or {}
        if response.get("kind") not in (None, "Status") and event["verb"] != "deletecollection":
            assert o.resource_version == response["metadata"]["resourceVersion"]


def test_configured_filters_and_redaction_paths(fixtures_dir: Path) -> None:
    converter = AuditConverter(
        AuditConfig(verbs=["patch"], exclude_users=["system:node:node-1"], include_denied=False),
        RedactionConfig(paths=["metadata.labels"]),
    )
    obs = []
    for line in (fixtures_dir / "deployment-lifecycle" / "audit.jsonl").read_bytes().splitlines():
        obs.extend(converter.convert("c1", parse_event_list(line)))
    assert obs and all(o.tags["verb"] == "patch" and o.tags["username"] != "system:node:node-1" for o in obs)
    assert all(o.body is None or o.body["metadata"].get("labels") in (None, "<redacted>") for o in obs)
    assert all(o.ref.cluster == "c1" for o in obs)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"kind":"PodList","apiVersion":"v1","items":[]}', "kind must be EventList"),
        (b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1beta1","items":[]}', "apiVersion must be"),
        (b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":{}}', "got `object` - at `items`"),
        (
            b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[1]}',
            "Expected `object`, got `int` - at `items[0]`",
        ),
        (
            b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{"auditID":"a","stage":"x",'
            b'"verb":"get","stageTimestamp":"yesterday"}]}',
            "items[0]: timestamps must be RFC 3339",
        ),
        (
            b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{"stage":"x","verb":"get"}]}',
            "Object missing required field `auditID` - at `items[0]`",
        ),
    ],
)
def test_malformed_batches_are_explained(body: bytes, message: str) -> None:
    with pytest.raises(InvalidAuditBatch, match=re.escape(message)):
        parse_event_list(body)


def test_without_search_records_only_what_spans_read_is_decoded_and_they_are_the_same(fixtures_dir: Path) -> None:
    tracing = AuditConverter(AuditConfig(), RedactionConfig(), records=False)
    for scenario in SCENARIOS:
        for line in (fixtures_dir / scenario / "audit.jsonl").read_bytes().splitlines():
            whole, rejected = parse_batch(line)
            traced, traced_rejected = tracing.parse(line)
            assert traced_rejected == rejected
            assert not hasattr(traced[0], "requestURI")  # decoded by the traced parse, not the whole one
            assert tracing.convert("c", traced) == tracing.convert("c", whole)


def test_a_field_no_span_reads_is_judged_only_where_records_keep_it() -> None:
    event = {"auditID": "a", "stage": "ResponseComplete", "verb": "get", "stageTimestamp": "2026-11-21T05:26:14Z"}
    body = orjson.dumps(
        {"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": [{**event, "level": 5, "requestURI": []}]}
    )
    assert len(parse_traced_batch(body)[0]) == 1
    with pytest.raises(InvalidAuditBatch, match=re.escape("Expected `str`, got `int` - at `items[0].level`")):
        AuditConverter(AuditConfig(), RedactionConfig(), records=True).parse(body)
    # A record is the whole event: a converter that keeps them refuses one decoded without it.
    with pytest.raises(TypeError, match="whole audit event"):
        AuditConverter(AuditConfig(), RedactionConfig(), records=True).convert("c", parse_traced_batch(body)[0])
