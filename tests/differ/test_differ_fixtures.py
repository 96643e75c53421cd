"""The differ fed the recorded watch streams; the attacher fed the recorded audit stream of the same run."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from kelemetry_py.config import AuditConfig, RedactionConfig
from kelemetry_py.kube.watch import ResourceType
from kelemetry_py.metrics import Metrics
from kelemetry_py.model import LogEntry, Observation
from kelemetry_py.sources.audit import AuditConverter, parse_event_list
from kelemetry_py.sources.diffcache.memory import MemoryDiffCache
from kelemetry_py.sources.differ import ObjectDiffer
from kelemetry_py.sources.diffs import DiffAttacher
from tests.conftest import FAKE_SECRET_VALUES
from tests.differ.support import (
    CLUSTER,
    CONFIGMAPS,
    DEPLOYMENTS,
    PODS,
    REPLICASETS,
    SECRETS,
    CollectingSink,
    ObservedMemoryCache,
    list_items,
    watch_lines,
)
from tests.support.clock import FakeClock

FAR_FUTURE = 1e12


def _differ(cache: MemoryDiffCache, sink: CollectingSink | None = None) -> ObjectDiffer:
    return ObjectDiffer(sink or CollectingSink(), Metrics(), cache, claim_wait_seconds=3.0, clock=FakeClock())


async def _feed(differ: ObjectDiffer, scenario: Path, *rtypes: ResourceType) -> None:
    for rtype in rtypes:
        for event_type, obj in watch_lines(scenario, rtype):
            await differ.on_event(CLUSTER, rtype, event_type, obj, relisted=False)


def _audit_observations(scenario: Path) -> list[Observation]:
    converter = AuditConverter(AuditConfig(), RedactionConfig())
    observations: list[Observation] = []
    with (scenario / "audit.jsonl").open("rb") as batches:
        for body in batches:
            observations.extend(converter.convert(CLUSTER, parse_event_list(body)))
    return observations


def _kubectl(observations: list[Observation], resource: str) -> list[Observation]:
    return [
        o
        for o in observations
        if o.ref.resource == resource and o.tags.get("username") == "admin" and o.resource_version
    ]


@pytest.fixture
def lifecycle(fixtures_dir: Path) -> Path:
    return fixtures_dir / "deployment-lifecycle"


async def test_scale_and_image_change_land_on_the_kubectl_audit_spans(lifecycle: Path) -> None:
    cache = MemoryDiffCache()
    differ = _differ(cache)
    await _feed(differ, lifecycle, DEPLOYMENTS, REPLICASETS, PODS)
    attacher = DiffAttacher(cache, wait_seconds=3.0)

    kubectl_writes = _kubectl(_audit_observations(lifecycle), "deployments")
    for observation in kubectl_writes:
        # The watch had every change before the audit event: attached at once, nothing to wait for.
        assert attacher.prepare(observation) is None
    diffs = {
        o.tags.get("subresource") or o.tags["verb"]: [entry.fields["diff"] for entry in _diff_logs(o)]
        for o in kubectl_writes
        if o.tags["verb"] == "patch"
    }
    scale_diffs = [o for o in kubectl_writes if o.tags.get("subresource") == "scale"]
    assert len(scale_diffs) == 2
    first_scale = next(log for log in scale_diffs[0].logs if log.name == "diff")
    assert "spec.replicas 2 -> 4" in str(first_scale.fields["diff"]).splitlines()
    changes = orjson.loads(str(first_scale.fields["changes"]))
    assert {"path": "spec.replicas", "op": "change", "old": 2, "new": 4} in changes
    assert 'spec.template.spec.containers[nginx].image "nginx:1.25" -> "nginx:1.26"' in str(diffs["patch"])
    for observation in kubectl_writes:
        for log in observation.logs:
            assert "managedFields" not in str(log.fields)
            assert "resourceVersion" not in str(log.fields.get("diff", ""))

    # What kubectl's requests claimed is not emitted again as diff spans; everything else is.
    sink = CollectingSink()
    differ._sink = sink  # the same differ, now draining its unclaimed changes
    await differ.flush_unclaimed(now=FAR_FUTURE)
    emitted = {(o.ref.key, o.tags["resourceVersion"]) for o in sink.observations}
    for observation in kubectl_writes:
        assert (observation.ref.key, observation.resource_version) not in emitted


async def test_the_image_change_creates_a_new_replicaset_snapshot(lifecycle: Path) -> None:
    sink = CollectingSink()
    differ = _differ(MemoryDiffCache(), sink)
    await _feed(differ, lifecycle, REPLICASETS)
    await differ.flush_unclaimed(now=FAR_FUTURE)
    created = [o for o in sink.observations if o.tags["change"] == "create"]
    assert {o.ref.name for o in created} == {"web-6b9546bc54", "web-7d8d478f45"}
    images = [
        orjson.loads(str(log.fields["snapshot"]))["spec"]["template"]["spec"]["containers"][0]["image"]
        for o in created
        for log in o.logs
    ]
    assert sorted(images) == ["nginx:1.25", "nginx:1.26"]
    assert all(o.title == "kube-controller-manager create" for o in created)


async def test_unclaimed_diffs_are_attributed_to_their_field_managers(lifecycle: Path) -> None:
    """No audit stream at all: the watch alone still says who changed what."""
    sink = CollectingSink()
    differ = _differ(MemoryDiffCache(), sink)
    await _feed(differ, lifecycle, DEPLOYMENTS, PODS)
    assert await differ.flush_unclaimed(now=999.0) == 0  # nothing is due before its claim window passes
    await differ.flush_unclaimed(now=FAR_FUTURE)
    by_rv = {(o.ref.resource, o.tags["resourceVersion"]): o for o in sink.observations}

    created = by_rv[("deployments", "251")]
    assert created.tags["change"] == "create"
    assert created.tags["fieldManager"] == "kubectl-client-side-apply"
    assert by_rv[("deployments", "283")].tags["fieldManager"] == "kubectl"  # kubectl scale, via /scale
    assert "spec.replicas 2 -> 4" in str(by_rv[("deployments", "283")].logs[0].fields["diff"])
    assert by_rv[("deployments", "313")].tags["fieldManager"] == "kubectl-set"
    status_updates = [o for o in sink.observations if o.ref.resource == "deployments" and "status." in _diff(o)]
    assert status_updates
    assert {o.tags["fieldManager"] for o in status_updates} == {"kube-controller-manager"}
    assert by_rv[("deployments", "448")].tags["change"] == "delete"

    running = [o for o in sink.observations if o.ref.resource == "pods" and '"Pending" -> "Running"' in _diff(o)]
    assert len(running) == 8  # every pod of both ReplicaSets
    assert {(o.tags["fieldManager"], o.title) for o in running} == {("kubelet", "kubelet Update")}
    assert all(o.kind == "diff" and o.dedup_key for o in sink.observations)


def _diff_logs(observation: Observation) -> list[LogEntry]:
    return [entry for entry in observation.logs if entry.name == "diff"]


def _first_scale(scenario: Path) -> Observation:
    writes = _kubectl(_audit_observations(scenario), "deployments")
    return next(o for o in writes if o.tags.get("subresource") == "scale")


def _diff(observation: Observation) -> str:
    return "\n".join(str(log.fields.get("diff", "")) for log in observation.logs)


async def test_relists_refresh_state_and_diff_only_real_gaps(lifecycle: Path) -> None:
    cache = MemoryDiffCache()
    sink = CollectingSink()
    differ = _differ(cache, sink)
    events = list(watch_lines(lifecycle, DEPLOYMENTS))
    await differ.on_event(CLUSTER, DEPLOYMENTS, "ADDED", events[0][1], relisted=True)
    assert differ.pending == 0  # a listed object is state, not news
    await differ.on_event(CLUSTER, DEPLOYMENTS, "ADDED", events[0][1], relisted=True)
    assert differ.pending == 0
    # A relist after a gap (the scale happened while the watch was down) diffs against the last known state.
    after_scale = next(obj for _, obj in events if obj["metadata"]["resourceVersion"] == "283")
    await differ.on_event(CLUSTER, DEPLOYMENTS, "ADDED", after_scale, relisted=True)
    record = await cache.get(f"{CLUSTER}/apps/deployments/shop/web", "283")
    assert record is not None
    assert "spec.replicas 2 -> 4" in record.lines
    assert differ.watched_objects == 1
    # Deleted while the watch was down: the relist no longer has it.
    await differ.on_relist_done(CLUSTER, DEPLOYMENTS, set())
    assert differ.watched_objects == 0
    await differ.flush_unclaimed(now=FAR_FUTURE)
    assert [o.tags["change"] for o in sink.observations] == ["diff", "delete"]


async def test_secret_values_never_reach_a_diff_snapshot_or_observation(fixtures_dir: Path) -> None:
    scenario = fixtures_dir / "errors-and-links"
    cache = MemoryDiffCache()
    sink = CollectingSink()
    differ = _differ(cache, sink)
    listed = list_items(scenario, SECRETS)
    for obj in listed:
        await differ.on_event(CLUSTER, SECRETS, "ADDED", obj, relisted=True)
    await _feed(differ, scenario, SECRETS, CONFIGMAPS)
    attacher = DiffAttacher(cache, wait_seconds=0)
    audits = [o for o in _audit_observations(scenario) if o.ref.resource == "secrets" and o.resource_version]
    assert audits
    for observation in audits:
        pending = attacher.prepare(observation)
        if pending is not None:
            await pending
    await differ.flush_unclaimed(now=FAR_FUTURE)
    records = [record for _, record in cache._records.values() if record.ref.resource == "secrets"]
    assert {record.kind for record in records} >= {"create", "delete"}
    blob = (
        repr(sink.observations).encode()
        + b"".join(repr(o.logs).encode() for o in audits)
        + b"".join(record.to_json() for _, record in cache._records.values())
    )
    for secret in FAKE_SECRET_VALUES:
        assert secret not in blob
    assert b"<redacted>" in blob  # the secret was there and was stripped, not simply absent


async def test_attacher_waits_for_a_late_diff_without_blocking(lifecycle: Path) -> None:
    cache = ObservedMemoryCache()
    differ = _differ(cache)
    scale = _first_scale(lifecycle)
    attacher = DiffAttacher(cache, wait_seconds=30.0)
    pending = attacher.prepare(scale)
    assert pending is not None  # the watch has not caught up yet: parked, not blocking
    task = asyncio.ensure_future(pending)
    await asyncio.wait_for(cache.missed.wait(), 5)  # parked on its waiter before the change arrives
    namespace_write = next(o for o in _audit_observations(lifecycle) if o.ref.resource == "namespaces")
    other = attacher.prepare(namespace_write)
    assert other is not None
    other_task = asyncio.ensure_future(other)
    await _feed(differ, lifecycle, DEPLOYMENTS)
    await asyncio.wait_for(task, 5)
    # Each waiter waits for its own key only: the deployment's diff did not wait on the namespace's.
    assert not other_task.done()
    other_task.cancel()
    assert "spec.replicas 2 -> 4" in str(next(log for log in scale.logs if log.name == "diff").fields["diff"])
    assert attacher.attached == 1


async def test_attacher_gives_up_after_its_bound(lifecycle: Path) -> None:
    cache = MemoryDiffCache()
    scale = _first_scale(lifecycle)
    before = list(scale.logs)
    attacher = DiffAttacher(cache, wait_seconds=0.01)
    pending = attacher.prepare(scale)
    assert pending is not None
    await asyncio.wait_for(pending, 5)
    assert scale.logs == before
    assert attacher.given_up == 1
    # The change arriving after the bound is not lost: it becomes the differ's own diff span.
    sink = CollectingSink()
    differ = _differ(cache, sink)
    await _feed(differ, lifecycle, DEPLOYMENTS)
    await differ.flush_unclaimed(now=FAR_FUTURE)
    assert any(o.tags["resourceVersion"] == scale.resource_version for o in sink.observations)


async def test_run_loop_emits_when_the_claim_window_passes(lifecycle: Path) -> None:
    clock = FakeClock()
    sink = CollectingSink()
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds  # time passes exactly as long as the loop asked

    differ = ObjectDiffer(sink, Metrics(), MemoryDiffCache(), claim_wait_seconds=3.0, margin_seconds=1.0, clock=clock)
    runner = asyncio.create_task(differ.run(sleep=fake_sleep))
    _, first = next(watch_lines(lifecycle, DEPLOYMENTS))
    await differ.on_event(CLUSTER, DEPLOYMENTS, "ADDED", first, relisted=False)
    await asyncio.wait_for(sink.arrived.wait(), 5)
    runner.cancel()
    assert slept == [4.0]
    assert [o.tags["change"] for o in sink.observations] == ["create"]


async def test_a_watched_pods_secret_env_is_redacted_on_every_change() -> None:
    # A hot pod's spec is compared with its previous (redacted) JSON before redaction: an unchanged spec skips the
    # env walk. The raw spec never equals the redacted one while it holds a secret, so each event below must still
    # be redacted: in the diff, the records and the state the differ keeps.
    cache = MemoryDiffCache()
    sink = CollectingSink()
    differ = _differ(cache, sink)

    def pod(version: int, password: str, image: str, phase: str) -> dict[str, object]:
        env = [{"name": "DB_PASSWORD", "value": password}, {"name": "LOG_LEVEL", "value": "debug"}]
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web", "namespace": "shop", "uid": "pod-uid", "resourceVersion": str(version)},
            "spec": {"containers": [{"name": "app", "image": image, "env": env}]},
            "status": {"phase": phase},
        }

    secrets = [b"first-hunter2", b"second-hunter2"]
    await differ.on_event(CLUSTER, PODS, "ADDED", pod(1, "first-hunter2", "app:1", "Pending"), relisted=False)
    await differ.on_event(CLUSTER, PODS, "MODIFIED", pod(2, "first-hunter2", "app:1", "Running"), relisted=False)
    await differ.on_event(CLUSTER, PODS, "MODIFIED", pod(3, "second-hunter2", "app:2", "Running"), relisted=False)
    kept = b"".join(b"".join((state.sections or {}).values()) + state.blob for state in differ._states.values())
    await differ.flush_unclaimed(now=FAR_FUTURE)
    records = b"".join(record.to_json() for _, record in cache._records.values())
    blob = repr(sink.observations).encode() + records + kept
    assert b'"status.phase"' in records and b"app:2" in records  # the changes themselves are there
    assert b"<redacted>" in kept
    for secret in secrets:
        assert secret not in blob


async def test_a_secret_env_in_a_watched_objects_applied_copy_is_redacted_on_every_change() -> None:
    # kubectl apply keeps the applied Deployment as JSON in an annotation. Status updates leave the spec unchanged
    # (the env walk is skipped for it), but the annotation is judged on every event, here and as it changes.
    cache = MemoryDiffCache()
    sink = CollectingSink()
    differ = _differ(cache, sink)

    def deployment(version: int, password: str, ready: int) -> dict[str, object]:
        env = [{"name": "DB_PASSWORD", "value": password}, {"name": "LOG_LEVEL", "value": "debug"}]
        spec = {"replicas": 2, "template": {"spec": {"containers": [{"name": "app", "image": "app:1"}]}}}
        applied = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "api", "namespace": "shop"}}
        applied["spec"] = {"template": {"spec": {"containers": [{"name": "app", "env": env}]}}}
        text = orjson.dumps(applied).decode() + "\n"
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "api",
                "namespace": "shop",
                "uid": "deploy-uid",
                "resourceVersion": str(version),
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": text},
            },
            "spec": spec,
            "status": {"readyReplicas": ready},
        }

    secrets = [b"first-hunter2", b"second-hunter2"]
    await differ.on_event(CLUSTER, DEPLOYMENTS, "ADDED", deployment(1, "first-hunter2", 0), relisted=False)
    await differ.on_event(CLUSTER, DEPLOYMENTS, "MODIFIED", deployment(2, "first-hunter2", 1), relisted=False)
    await differ.on_event(CLUSTER, DEPLOYMENTS, "MODIFIED", deployment(3, "second-hunter2", 2), relisted=False)
    kept = b"".join(b"".join((state.sections or {}).values()) + state.blob for state in differ._states.values())
    await differ.flush_unclaimed(now=FAR_FUTURE)
    records = b"".join(record.to_json() for _, record in cache._records.values())
    blob = repr(sink.observations).encode() + records + kept
    assert b"readyReplicas" in records and b"last-applied-configuration" in records  # the changes are there
    for secret in secrets:
        assert secret not in blob
