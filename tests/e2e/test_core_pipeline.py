"""Issue 2 end to end: recorded audit batches through the real webhook, OTLP/gRPC and the SQLite store."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest
from aiohttp import ClientSession

from kelemetry_py.export.otlp import WRITER_LABEL as OTLP_WRITER
from kelemetry_py.metrics import Metrics
from kelemetry_py.model import Span, object_span_id, object_trace_id, window_of
from kelemetry_py.storage import TraceQuery
from kelemetry_py.times import kube_time_ns as parse_time_ns
from tests.conftest import FAKE_SECRET_VALUES, SCENARIOS
from tests.e2e.conftest import AppFactory, replay_scenario
from tests.support.otlp_receiver import GrpcOtlpReceiver

WINDOW = 1800


def key_of(span: Span) -> str:
    a = span.attributes
    return f"{a['cluster']}/{a['group']}/{a['resource']}/{a['namespace']}/{a['name']}"


async def exported(app_receiver: GrpcOtlpReceiver, app: object) -> list[Span]:
    metrics = app.components.metrics  # type: ignore[attr-defined]
    return await app_receiver.wait_for_spans(otlp_exported(metrics))


def otlp_exported(metrics: Metrics) -> int:
    return int(metrics.spans_exported.labels(OTLP_WRITER)._value.get())


def raw_events(fixtures_dir: Path, scenario: str) -> dict[str, dict]:  # type: ignore[type-arg]
    events = {}
    for line in (fixtures_dir / scenario / "audit.jsonl").read_bytes().splitlines():
        for event in orjson.loads(line)["items"]:
            events[event["auditID"]] = event
    return events


@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_replayed_scenario_becomes_one_trace_per_object_window(
    scenario: str, fixtures_dir: Path, make_app: AppFactory, otlp_receiver: GrpcOtlpReceiver
) -> None:
    app = await make_app(**{"otlp.endpoint": otlp_receiver.endpoint})
    await replay_scenario(app, fixtures_dir, scenario, use_gzip=scenario == "errors-and-links")
    spans = await exported(otlp_receiver, app)
    assert app.components is not None and app.components.store is not None
    store = app.components.store

    roots = [s for s in spans if s.service == "object"]
    per_object_window = Counter((key_of(s), s.start_ns // 1_000_000_000 // WINDOW) for s in roots)
    assert roots and max(per_object_window.values()) == 1, "exactly one object span per object per window"
    root_ids = {(s.trace_id, s.span_id) for s in roots}
    for root in roots:
        window = root.start_ns // 1_000_000_000 // WINDOW
        assert root.trace_id == object_trace_id(key_of(root), window)
        assert root.name == f"{root.attributes['resource']}/{root.attributes['name']}"
        assert root.parent_id is None and root.end_ns - root.start_ns == WINDOW * 1_000_000_000

    events = raw_events(fixtures_dir, scenario)
    audits = [s for s in spans if s.service == "audit"]
    assert audits
    for span in audits:
        assert (span.trace_id, span.parent_id) in root_ids, "every audit span hangs off its object's span"
        event = events[str(span.attributes["auditID"])]
        assert span.start_ns == parse_time_ns(event["requestReceivedTimestamp"])
        assert span.end_ns == parse_time_ns(event["stageTimestamp"])
        assert span.attributes["verb"] == event["verb"]
        assert span.attributes["responseCode"] == event["responseStatus"]["code"]
        assert span.attributes["userAgent"] == event["userAgent"]
        for tag in ("cluster", "group", "version", "resource", "namespace", "name"):
            assert tag in span.attributes
        window = window_of(span.start_ns, WINDOW)
        assert span.parent_id == object_span_id(key_of(span), window)

    # The store holds exactly what was exported.
    for root in roots[:20]:
        stored = await store.get_trace(root.trace_id)
        exported_ids = {s.span_id for s in spans if s.trace_id == root.trace_id}
        assert {s.span_id for s in stored} == exported_ids


async def test_audit_spans_of_the_deployment_lifecycle(
    fixtures_dir: Path, make_app: AppFactory, otlp_receiver: GrpcOtlpReceiver
) -> None:
    app = await make_app(**{"otlp.endpoint": otlp_receiver.endpoint})
    await replay_scenario(app, fixtures_dir, "deployment-lifecycle")
    spans = await exported(otlp_receiver, app)
    deployment = [
        s for s in spans if s.service == "audit" and key_of(s) == "fixture/apps/deployments/shop/web"
    ]
    admin = [
        (s.name, s.attributes.get("subresource")) for s in deployment if s.attributes["username"] == "admin"
    ]
    assert admin == [
        ("admin create", None),
        ("admin patch scale", "scale"),
        ("admin patch", None),
        ("admin patch scale", "scale"),
        ("admin delete", None),
    ]
    by_name = {s.name: s for s in deployment}
    created = by_name["admin create"]
    snapshot = next(log for log in created.logs if log.name == "snapshot")
    assert orjson.loads(str(snapshot.fields["snapshot"]))["spec"]["replicas"] == 2
    # A Deployment's delete answers with a Status, so its final state comes from the object differ, not audit.
    assert not any(log.name == "snapshot" for log in by_name["admin delete"].logs)
    controllers = {s.name for s in deployment if s.attributes["username"] != "admin"}
    assert "system:serviceaccount:kube-system:deployment-controller update status" in controllers

    pods = [
        s
        for s in spans
        if s.service == "audit"
        and s.attributes["resource"] == "pods"
        and s.attributes["verb"] == "create"
        and "subresource" not in s.attributes
    ]
    assert len(pods) == 8 and all(s.attributes["name"].startswith("web-") for s in pods)  # type: ignore[union-attr]


async def test_failed_requests_carry_error_status_and_reason(
    fixtures_dir: Path, make_app: AppFactory, otlp_receiver: GrpcOtlpReceiver
) -> None:
    app = await make_app(**{"otlp.endpoint": otlp_receiver.endpoint})
    await replay_scenario(app, fixtures_dir, "errors-and-links")
    spans = await exported(otlp_receiver, app)
    failed = {(key_of(s), s.name): s for s in spans if s.service == "audit" and s.error}
    invalid = failed[("fixture/apps/deployments/shop/broken", "admin create (Invalid)")]
    assert invalid.status_message.startswith('Invalid: Deployment.apps "broken" is invalid')
    conflict = failed[("fixture//configmaps/shop/settings", "admin update (Conflict)")]
    assert "the object has been modified" in conflict.status_message
    forbidden_create = failed[
        ("fixture//namespaces//shop", "system:serviceaccount:shop:nobody create configmaps (Forbidden)")
    ]
    forbidden_get = failed[
        ("fixture/apps/deployments/shop/web2", "system:serviceaccount:shop:nobody get (Forbidden)")
    ]
    for span in (invalid, conflict, forbidden_create, forbidden_get):
        error_log = next(log for log in span.logs if log.name == "error")
        assert error_log.fields["reason"] in ("Invalid", "Conflict", "Forbidden")
        assert error_log.fields["code"] == span.attributes["responseCode"]
        assert error_log.fields["message"]
    assert forbidden_get.attributes["impersonatedUser"] == "system:serviceaccount:shop:nobody"
    assert all(s.attributes["error"] is True for s in failed.values())
    assert not any("error" in s.attributes for s in spans if not s.error)
    hits = await app.components.store.find_traces(  # type: ignore[union-attr]
        TraceQuery(tags={"error": "true", "name": "broken"}, start_ns=0, end_ns=2**63 - 1)
    )
    assert [hit.ref.name for hit in hits] == ["broken"], "Jaeger UI's error=true search finds failed requests"
    assert all(s.attributes["responseCode"] >= 400 for s in failed.values())  # type: ignore[operator]


def links_of(spans: list[Span]) -> set[tuple[str, str, str, str]]:
    out = set()
    for s in spans:
        if s.service == "link":
            a = s.attributes
            other = "/".join(
                str(a[f"linked{part}"]) for part in ("Cluster", "Group", "Resource", "Namespace", "Name")
            )
            out.add((key_of(s), str(a["linkRole"]), str(a["linkClass"]), other))
    return out


async def test_link_spans_under_both_ends(
    fixtures_dir: Path, make_app: AppFactory, otlp_receiver: GrpcOtlpReceiver
) -> None:
    app = await make_app(**{"otlp.endpoint": otlp_receiver.endpoint})
    await replay_scenario(app, fixtures_dir, "deployment-lifecycle")
    await replay_scenario(app, fixtures_dir, "errors-and-links")
    spans = await exported(otlp_receiver, app)
    links = links_of(spans)

    def both(child: str, parent: str, link_class: str) -> None:
        assert (child, "parent", link_class, parent) in links, (child, parent)
        assert (parent, "child", link_class, child) in links, (parent, child)

    rs = next(s.attributes["name"] for s in spans if s.attributes.get("resource") == "replicasets")
    both(f"fixture/apps/replicasets/shop/{rs}", "fixture/apps/deployments/shop/web", "owner")
    pod = next(k for k, role, _, parent in links if "/pods/" in k and parent.endswith(f"/{rs}"))
    both(pod, f"fixture/apps/replicasets/shop/{rs}", "owner")
    slice_key = next(
        k for k, _, _, parent in links if "/endpointslices/" in k and parent.endswith("/services/shop/web2")
    )
    both(slice_key, "fixture//services/shop/web2", "owner")
    both(
        "fixture//configmaps/shop/owned-by-viewer-extra",
        "fixture/rbac.authorization.k8s.io/clusterroles//viewer-extra",
        "owner",
    )
    both("fixture//configmaps/shop/child-of-web", "fixture/apps/deployments/shop/web2", "annotation")

    per_window = Counter(
        (s.trace_id, s.attributes["linkRole"], s.attributes["linkedName"])
        for s in spans
        if s.service == "link"
    )
    assert max(per_window.values()) == 1, "a link is written once per object per window"
    # the parent's end of a link lives in the parent's trace
    parent_roots = {
        s.trace_id
        for s in spans
        if s.service == "object" and key_of(s) == "fixture/apps/deployments/shop/web2"
    }
    assert any(
        s.trace_id in parent_roots
        for s in spans
        if s.service == "link" and s.attributes["linkRole"] == "child"
    )


async def test_fake_secrets_appear_nowhere(
    fixtures_dir: Path, make_app: AppFactory, otlp_receiver: GrpcOtlpReceiver, tmp_path: Path
) -> None:
    app = await make_app(**{"otlp.endpoint": otlp_receiver.endpoint})
    for scenario in SCENARIOS:
        await replay_scenario(app, fixtures_dir, scenario)
    spans = await exported(otlp_receiver, app)
    assert any(s.attributes.get("resource") == "secrets" for s in spans), "the secret's story is told"
    store_dir = Path(app.config.store.path).parent
    await app.stop()  # closes the store, so everything is on disk
    raw = otlp_receiver.raw_bytes
    files = b"".join(path.read_bytes() for path in store_dir.iterdir() if path.is_file())
    assert files
    for value in FAKE_SECRET_VALUES:
        assert value not in raw, value
        assert value not in files, value


async def test_two_replicas_sharing_redis_write_each_object_span_once(
    fixtures_dir: Path, make_app: AppFactory, otlp_receiver: GrpcOtlpReceiver, redis_url: str
) -> None:
    apps = [
        await make_app(**{"otlp.endpoint": otlp_receiver.endpoint, "redis.url": redis_url}) for _ in range(2)
    ]
    bodies = (fixtures_dir / "deployment-lifecycle" / "audit.jsonl").read_bytes().splitlines()
    async with ClientSession(headers={"Content-Type": "application/json"}) as session:
        for i, body in enumerate(bodies):  # a load balancer spreading batches over the replicas
            async with session.post(f"{apps[i % 2].base_url}/audit/fixture", data=body) as response:
                assert response.status == 200
    total = 0
    for app in apps:
        await app.settle()
        total += otlp_exported(app.components.metrics)  # type: ignore[union-attr]
    spans = await otlp_receiver.wait_for_spans(total)
    roots = Counter(s.span_id for s in spans if s.service == "object")
    assert roots and max(roots.values()) == 1
    deployment_roots = [
        s for s in spans if s.service == "object" and key_of(s) == "fixture/apps/deployments/shop/web"
    ]
    assert len(deployment_roots) == 1
    hits = await apps[0].components.store.find_traces(  # type: ignore[union-attr]
        TraceQuery(tags={"name": "web", "resource": "deployments"}, start_ns=0, end_ns=2**63 - 1)
    )
    assert hits  # each replica's store holds what that replica wrote


async def test_operational_endpoints_and_bad_input(make_app: AppFactory) -> None:
    app = await make_app()
    async with ClientSession() as session:
        async with session.get(f"{app.base_url}/healthz") as response:
            assert response.status == 200
        async with session.get(f"{app.base_url}/readyz") as response:
            assert response.status == 200
        async with session.post(
            f"{app.base_url}/audit/x", data=b"garbage", headers={"Content-Type": "application/json"}
        ) as response:
            assert response.status == 400 and "not valid JSON" in (await response.json())["error"]
        async with session.get(f"{app.base_url}/metrics") as response:
            text = await response.text()
            assert 'kelemetry_audit_batches_rejected_total{reason="malformed"} 1.0' in text
            assert "kelemetry_pipeline_queue_depth" in text
