from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from kelemetry_py.config import PipelineConfig
from kelemetry_py.metrics import Metrics
from kelemetry_py.model import (
    Link,
    ObjectRef,
    Observation,
    child_span_id,
    object_span_id,
    object_trace_id,
)
from kelemetry_py.pipeline import Overloaded, core
from kelemetry_py.pipeline.core import Pipeline, Ticket
from kelemetry_py.pipeline.emission.memory import MemoryEmissionSet
from kelemetry_py.pipeline.emission.redis import RedisEmissionSet
from tests.support.waiting import until
from tests.support.writers import CollectingWriter

WINDOW = 1800
SECOND = 1_000_000_000
POD = ObjectRef("c1", "", "v1", "pods", "shop", "web-1", uid="u1")
DEPLOY = ObjectRef("c1", "apps", "v1", "deployments", "shop", "web")
NODE = ObjectRef("c1", "", "v1", "nodes", "", "node-1")


def observation(ref: ObjectRef, at_s: float, key: str, kind: str = "audit") -> Observation:
    start = int(at_s * SECOND)
    return Observation(
        ref=ref,
        kind=kind,
        title=f"admin {key}",
        start_ns=start,
        end_ns=start + 5,
        dedup_key=key,
        tags={"verb": key},
    )


async def run(pipeline: Pipeline, observations: list[Observation]) -> None:
    await pipeline.start()
    await pipeline.submit(observations)
    await pipeline.drain()
    await pipeline.stop()


def windowed_pipeline(writer: CollectingWriter) -> Pipeline:
    return Pipeline(
        writer=writer, emission=MemoryEmissionSet(), metrics=Metrics(), config=PipelineConfig(window_seconds=WINDOW)
    )


async def test_one_object_span_per_object_per_window() -> None:
    writer = CollectingWriter()
    pipeline = windowed_pipeline(writer)
    base = 1_000 * WINDOW
    await run(
        pipeline,
        [
            observation(POD, base + 1, "a"),
            observation(POD, base + 2, "b"),
            observation(DEPLOY, base + 3, "c"),
            observation(POD, base + WINDOW + 1, "d"),  # next window: a new raw trace
        ],
    )
    roots = writer.by_service("object")
    assert sorted((s.name, s.start_ns // SECOND) for s in roots) == [
        ("deployments/web", base),
        ("pods/web-1", base),
        ("pods/web-1", base + WINDOW),
    ]
    for root in roots:
        assert root.parent_id is None and root.end_ns - root.start_ns == WINDOW * SECOND
    pod_root = next(s for s in roots if s.name == "pods/web-1" and s.start_ns == base * SECOND)
    assert pod_root.trace_id == object_trace_id(POD.key, 1_000)
    assert pod_root.span_id == object_span_id(POD.key, 1_000)
    assert pod_root.attributes == {
        "cluster": "c1",
        "group": "",
        "version": "v1",
        "resource": "pods",
        "namespace": "shop",
        "name": "web-1",
        "uid": "u1",
    }
    audits = writer.by_service("audit")
    assert len(audits) == 4
    for span in audits:
        window = span.start_ns // SECOND // WINDOW
        ref = POD if span.attributes["resource"] == "pods" else DEPLOY
        assert span.trace_id == object_trace_id(ref.key, window)
        assert span.parent_id == object_span_id(ref.key, window)
        assert span.attributes["verb"] == span.name.split()[-1]


async def test_a_window_is_remembered_until_two_newer_ones_start_and_its_claims_still_hold_after() -> None:
    writer = CollectingWriter()
    pipeline = windowed_pipeline(writer)
    base = 1_000 * WINDOW

    async def handle(at_s: float, key: str) -> None:
        await pipeline.submit([observation(POD, at_s, key)])
        await pipeline.drain()

    await pipeline.start()
    await handle(base + 1, "a")
    await handle(base + WINDOW + 1, "b")
    assert sorted(pipeline._windows) == [1_000, 1_001]
    await handle(base + 3 * WINDOW + 1, "c")
    assert sorted(pipeline._windows) == [1_003], "the two windows before the one before the newest are let go"
    await handle(base + 2, "late")
    await pipeline.stop()
    assert sorted(pipeline._windows) == [1_000, 1_003], "a late observation's window, until another one starts"
    windows = sorted((span.start_ns // SECOND - base) // WINDOW for span in writer.by_service("object"))
    assert windows == [0, 1, 3], "no second object span for the late window: the emission set holds its claim"
    assert len(writer.by_service("audit")) == 4


async def test_redelivered_observation_gets_the_same_span_id() -> None:
    writer = CollectingWriter()
    pipeline = Pipeline(writer=writer, emission=MemoryEmissionSet(), metrics=Metrics())
    await run(pipeline, [observation(POD, 100, "same"), observation(POD, 100, "same")])
    ids = [s.span_id for s in writer.by_service("audit")]
    assert len(ids) == 2 and ids[0] == ids[1]


def test_ids_are_the_ones_every_version_derives() -> None:
    """Replicas of different versions (a rolling upgrade) and traces already stored must agree on every id: these
    are the values earlier versions derived, whatever the hashing code looks like now."""
    key, window = "prod/apps/deployments/shop/web", 29_583_333
    trace_id = object_trace_id(key, window)
    assert trace_id == 286756479175855924605188383007566377043
    assert object_span_id(key, window) == 11705030823736315403
    assert child_span_id(trace_id, "audit:5f1c0a1e-7d0c-4a55-9d3c-2b4c0e6f9a10:web") == 16443726869865303884


async def test_two_pipelines_sharing_redis_emit_each_object_span_once(redis_url: str) -> None:
    writers = [CollectingWriter(), CollectingWriter()]
    emissions = [RedisEmissionSet.from_url(redis_url), RedisEmissionSet.from_url(redis_url)]
    pipelines = [
        Pipeline(writer=w, emission=e, metrics=Metrics()) for w, e in zip(writers, emissions, strict=True)
    ]
    refs = [ObjectRef("c1", "", "v1", "configmaps", "ns", f"cm-{i}") for i in range(50)]
    for pipeline in pipelines:
        await pipeline.start()
    await asyncio.gather(
        *(
            p.submit([observation(ref, 5000 + i, f"{ref.name}-{n}") for ref in refs])
            for n, p in enumerate(pipelines)
            for i in range(3)
        )
    )
    for pipeline in pipelines:
        await pipeline.drain()
        await pipeline.stop()
    roots = [s for w in writers for s in w.by_service("object")]
    assert sorted(s.name for s in roots) == sorted(f"configmaps/{ref.name}" for ref in refs)
    assert len([s for w in writers for s in w.by_service("audit")]) == 300
    for emission in emissions:
        await emission.close()


async def test_full_pipeline_refuses_whole_batches_and_recovers() -> None:
    writer = CollectingWriter()
    writer.gate.clear()  # the writer is stuck, as with a dead back end
    metrics = Metrics()
    pipeline = Pipeline(
        writer=writer,
        emission=MemoryEmissionSet(),
        metrics=metrics,
        config=PipelineConfig(queue_capacity=10, partitions=2),
    )
    await pipeline.start()
    await pipeline.submit([observation(POD, 1, f"a{i}") for i in range(8)])
    with pytest.raises(Overloaded):
        await pipeline.submit([observation(DEPLOY, 1, f"b{i}") for i in range(3)])
    assert pipeline.pending == 8
    waiting = asyncio.create_task(pipeline.submit([observation(DEPLOY, 1, "c")] * 5, wait=True))
    await asyncio.sleep(0)
    assert not waiting.done()
    writer.gate.set()
    await waiting
    await pipeline.drain()
    await pipeline.stop()
    assert len(writer.by_service("audit")) == 13


class CountingLinker:
    """Finds no links; tells when it has been asked about ``expected`` observations (each partition's spans are
    made in the same step as its last linker call, so by then every partition has handed its spans over)."""

    name = "counting"

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.asked = 0
        self.all_asked = asyncio.Event()

    async def links(self, ref: ObjectRef, body: Mapping[str, Any]) -> Sequence[Link]:
        self.asked += 1
        if self.asked == self.expected:
            self.all_asked.set()
        return []


def configmaps(count: int, at_s: float) -> list[Observation]:
    found = []
    for index in range(count):
        ref = ObjectRef("c1", "", "v1", "configmaps", "ns", f"cm-{index}")
        seen = observation(ref, at_s, ref.name)
        seen.body = {"metadata": {"name": ref.name}}
        found.append(seen)
    return found


async def written_while_the_first_write_is_held(count: int) -> CollectingWriter:
    """``count`` config maps through 8 partitions, the writer held until every partition has made its spans."""
    writer = CollectingWriter()
    writer.gate.clear()
    linker = CountingLinker(count)
    pipeline = Pipeline(
        writer=writer,
        emission=MemoryEmissionSet(),
        metrics=Metrics(),
        config=PipelineConfig(window_seconds=WINDOW, partitions=8),
        linkers=[linker],
    )
    await pipeline.start()
    await pipeline.submit(configmaps(count, 1_000 * WINDOW))  # an object span and an audit span each
    await linker.all_asked.wait()
    writer.gate.set()
    await pipeline.drain()
    await pipeline.stop()
    return writer


async def test_the_partitions_batches_ready_during_a_write_go_out_in_one_writer_call() -> None:
    writer = await written_while_the_first_write_is_held(64)
    assert len(writer.by_service("audit")) == 64 and len(writer.by_service("object")) == 64
    calls = [len(write) for write in writer.writes]
    # One call per partition (8) would make a span log record, and a store transaction, of each.
    assert len(calls) <= 2 and sum(calls) == len(writer.spans)


async def test_a_group_of_partitions_batches_is_written_in_writes_of_at_most_the_group_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The span log's encoding of a group runs on the event loop: a backlog's groups stay bounded by spans."""
    monkeypatch.setattr(core, "GROUP_SPANS", 40)
    writer = await written_while_the_first_write_is_held(64)
    calls = [len(write) for write in writer.writes]
    assert sum(calls) == 128 and max(calls) <= 40 and len(calls) >= 128 // 40


class LingeringWriter(CollectingWriter):
    """A writer that asks the pipeline to gather its writes, as the embedded store written directly does; this
    one for longer than any test waits, so that only a full group ends it."""

    linger_seconds = 3600.0


async def test_a_writer_with_a_linger_gets_what_came_during_it_in_one_write_unless_a_full_group_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(core, "GROUP_SPANS", 4)
    writer = LingeringWriter()
    pipeline = windowed_pipeline(writer)
    base = 1_000 * WINDOW
    await pipeline.start()
    try:
        await pipeline.submit([observation(POD, base + 1, "a")])  # its object span and its own: 2 spans
        await until("the first write, at once", lambda: len(writer.writes) == 1)
        await pipeline.submit([observation(DEPLOY, base + 2, "b")])  # 2 spans
        await pipeline.submit([observation(POD, base + 3, "c")])  # 1: the pod's object span is written
        await until("b and c waiting for the linger", lambda: len(pipeline._unwritten) == 2)
        assert len(writer.writes) == 1, "3 spans, less than a group: nothing is written before the linger is over"
        await pipeline.submit([observation(NODE, base + 4, "d")])  # 2 more: a full group waits
        await until("the second write", lambda: len(writer.writes) == 2)
        second = {span.name for span in writer.spans if span.span_id in writer.writes[1]}
        assert {"admin b", "admin c", "deployments/web"} <= second and "admin d" not in second
    finally:
        await pipeline.stop(deadline=time.monotonic())


async def test_stopping_while_a_write_is_stuck_writes_nothing_more_and_releases_the_claims() -> None:
    writer = CollectingWriter()
    writer.gate.clear()  # the span log is full, as behind a dead back end
    emission = MemoryEmissionSet()
    linker = CountingLinker(16)
    pipeline = Pipeline(
        writer=writer,
        emission=emission,
        metrics=Metrics(),
        config=PipelineConfig(window_seconds=WINDOW, partitions=4),
        linkers=[linker],
    )
    await pipeline.start()
    await pipeline.submit(configmaps(16, 1_000 * WINDOW))
    await linker.all_asked.wait()
    await pipeline.stop(deadline=0.0)  # returns: the write in flight and those waiting for it are cancelled
    writer.gate.set()
    assert writer.spans == [] and pipeline.pending == 16  # unacknowledged: the observation log still holds them
    # The object spans were never written, so their claims were given back for the next run to take.
    again = Pipeline(
        writer=writer, emission=emission, metrics=Metrics(), config=PipelineConfig(window_seconds=WINDOW)
    )
    await run(again, configmaps(16, 1_000 * WINDOW))
    assert len(writer.by_service("object")) == 16


class SlowHook:
    """Parks observations of one object until released, like the diff attacher waiting for the differ."""

    name = "slow"

    def __init__(self, slow_name: str) -> None:
        self.slow_name = slow_name
        self.release = asyncio.Event()

    def prepare(self, obs: Observation):  # type: ignore[no-untyped-def]
        if obs.ref.name != self.slow_name:
            return None

        async def wait() -> None:
            await self.release.wait()
            obs.tags["waited"] = True

        return wait()


class BrokenHook:
    name = "broken"

    def prepare(self, obs: Observation) -> None:
        raise RuntimeError("plugin bug")


async def test_parked_observations_do_not_hold_up_other_objects() -> None:
    writer = CollectingWriter()
    hook = SlowHook("web-1")
    metrics = Metrics()
    pipeline = Pipeline(
        writer=writer,
        emission=MemoryEmissionSet(),
        metrics=metrics,
        config=PipelineConfig(partitions=1),
        hooks=[BrokenHook(), hook],
    )
    await pipeline.start()
    fast_done = asyncio.Event()
    await pipeline.submit([observation(POD, 1, "slow")])
    await pipeline.feed([observation(DEPLOY, 2, "fast")], Ticket(1, fast_done.set))
    await fast_done.wait()
    assert [s.attributes["verb"] for s in writer.by_service("audit")] == ["fast"]
    assert pipeline.pending == 1
    hook.release.set()
    await pipeline.drain()
    await pipeline.stop()
    slow = next(s for s in writer.by_service("audit") if s.attributes["verb"] == "slow")
    assert slow.attributes["waited"] is True
    assert metrics.plugin_errors.labels("broken")._value.get() == 2


async def test_a_hanging_and_a_raising_linker_are_counted_and_skipped_without_stalling_a_partition() -> None:
    from kelemetry_py.linking.owners import OwnerReferenceLinker
    from tests.linking.sample_plugins import HangingLinker, RaisingLinker

    writer = CollectingWriter()
    metrics = Metrics()
    hanging = HangingLinker()  # never released: it sleeps forever
    pipeline = Pipeline(
        writer=writer,
        emission=MemoryEmissionSet(),
        metrics=metrics,
        config=PipelineConfig(window_seconds=WINDOW, partitions=1),  # one partition: a stall would stop everything
        linkers=[hanging, RaisingLinker(), OwnerReferenceLinker()],
        linker_timeout_seconds=0.05,
    )
    owner = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "controller": True}
    pods = []
    for index in range(10):
        pod = ObjectRef("c1", "", "v1", "pods", "shop", f"web-1-{index}", uid=f"u{index}")
        seen = observation(pod, 1_000 * WINDOW + index, f"p{index}")
        seen.body = {"metadata": {"name": pod.name, "ownerReferences": [owner]}}
        pods.append(seen)
    await run(pipeline, pods)

    assert len(writer.by_service("audit")) == 10
    links = writer.by_service("link")
    assert sum(1 for s in links if s.attributes["linkedResource"] == "replicasets") == 10  # the good linker's
    errors = {
        name: metrics.registry.get_sample_value("kelemetry_plugin_errors_total", {"plugin": name})
        for name in ("hanging", "raising", "owner-references")
    }
    assert errors == {"hanging": 10.0, "raising": 10.0, "owner-references": None}
    assert hanging.entered.is_set() and not hanging.release.is_set()


async def test_a_linker_plugin_can_follow_a_chain_in_the_graph() -> None:
    from kelemetry_py.linking.graph import ObjectGraph
    from kelemetry_py.linking.owners import OwnerReferenceLinker

    class TopOwnerLinker:
        """Links an object to the root of its ownership chain, as the graph knows it (a plugin reading the graph)."""

        name = "top-owner"

        def __init__(self, graph: ObjectGraph) -> None:
            self.graph = graph

        async def links(self, ref: ObjectRef, body: Mapping[str, Any]) -> Sequence[Link]:
            tops = [top for top in self.graph.roots(ref) if top.key != ref.key]
            parents = {parent.key for parent in self.graph.parents(ref)}
            return [Link(top, "parent", "top-owner") for top in tops if top.key not in parents]

    graph = ObjectGraph()
    writer = CollectingWriter()
    pipeline = Pipeline(
        writer=writer,
        emission=MemoryEmissionSet(),
        metrics=Metrics(),
        config=PipelineConfig(window_seconds=WINDOW),
        linkers=[OwnerReferenceLinker(), TopOwnerLinker(graph)],
        graph=graph,
    )
    replicaset = ObjectRef("c1", "apps", "v1", "replicasets", "shop", "web-1", uid="r1")

    def owned(ref: ObjectRef, kind: str, owner: str, at: float, key: str) -> Observation:
        seen = observation(ref, 1_000 * WINDOW + at, key)
        seen.body = {"metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": kind, "name": owner}]}}
        return seen

    await pipeline.start()
    for seen in (
        owned(replicaset, "Deployment", "web", 1, "rs"),
        owned(POD, "ReplicaSet", "web-1", 2, "pod-1"),
        owned(POD, "ReplicaSet", "web-1", 3, "pod-2"),  # the graph now knows the Pod's chain
    ):
        await pipeline.submit([seen])
        await pipeline.drain()
    await pipeline.stop()
    top = [s for s in writer.by_service("link") if s.attributes["linkClass"] == "top-owner"]
    assert {(s.attributes["name"], s.attributes["linkRole"], s.attributes["linkedName"]) for s in top} == {
        ("web-1", "parent", "web"),  # the Pod's link span ...
        ("web", "child", "web-1"),  # ... and the Deployment's
    }
    relation = graph.relation(DEPLOY, POD)
    assert relation is not None and relation.link_class == "top-owner"


def test_the_graph_bound_is_configured_and_checked() -> None:
    from kelemetry_py.config import ConfigError, load_config

    assert load_config(env={}, overrides={"pipeline.graph_max_nodes": 5000}).pipeline.graph_max_nodes == 5000
    with pytest.raises(ConfigError, match=r"pipeline\.graph_max_nodes"):
        load_config(env={}, overrides={"pipeline.graph_max_nodes": 1})


async def test_a_delete_ends_relations_only_once_the_object_is_gone() -> None:
    from kelemetry_py.linking.owners import OwnerReferenceLinker

    writer = CollectingWriter()
    pipeline = Pipeline(
        writer=writer,
        emission=MemoryEmissionSet(),
        metrics=Metrics(),
        config=PipelineConfig(window_seconds=WINDOW),
        linkers=[OwnerReferenceLinker()],
    )
    owner = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1"}
    created = observation(POD, 1_000 * WINDOW + 1, "create")
    created.body = {"metadata": {"ownerReferences": [owner]}}
    graceful = observation(POD, 1_000 * WINDOW + 2, "delete")  # tags verb=delete
    graceful.body = {"metadata": {"ownerReferences": [owner], "deletionGracePeriodSeconds": 30}}
    gone = observation(POD, 1_000 * WINDOW + 40, "delete")  # answered with a Status: no body
    gone.dedup_key = "delete-2"
    await pipeline.start()
    for seen in (created, graceful):
        await pipeline.submit([seen])
        await pipeline.drain()
    assert [p.name for p in pipeline.graph.parents(POD)] == ["web-1"], "a graceful delete leaves the Pod running"
    await pipeline.submit([gone])
    await pipeline.drain()
    await pipeline.stop()
    assert pipeline.graph.parents(POD) == []
    assert pipeline.graph.deleted_at(POD) == 1_000 * WINDOW + 40
