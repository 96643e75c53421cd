from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from kelemetry_py.kube.client import KubeClient
from kelemetry_py.kube.watch import Backoff, ResourceType, ResourceWatch, UidSet
from kelemetry_py.metrics import Metrics
from tests.kube.helpers import RecordingHandler, SleepGate
from tests.support.kube_double import KubeApiDouble

PODS = ResourceType("", "v1", "pods", "Pod", True)
DEPLOYMENTS = ResourceType("apps", "v1", "deployments", "Deployment", True)
CONFIGMAPS = ResourceType("", "v1", "configmaps", "ConfigMap", True)


def recorded(fixtures_dir: Path, scenario: str, stream: str) -> list[dict[str, object]]:
    lines = (fixtures_dir / scenario / "watch" / f"{stream}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@asynccontextmanager
async def running(
    client: KubeClient, rtype: ResourceType, handler: RecordingHandler, **kwargs: object
) -> AsyncIterator[ResourceWatch]:
    engine = ResourceWatch(client, rtype, handler, Metrics(), **kwargs)  # type: ignore[arg-type]
    task = asyncio.create_task(engine.run())
    try:
        yield engine
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def changes(handler: RecordingHandler, resource: str) -> list[tuple[str, str]]:
    return [(e.event_type, e.rv) for e in handler.watched(resource, relisted=False)]


def count_at_least(resource: str, n: int) -> Callable[[RecordingHandler], bool]:
    return lambda h: len(h.watched(resource, relisted=False)) >= n


async def test_list_then_watch_delivers_every_recorded_change_once(
    double: KubeApiDouble, client: KubeClient, fixtures_dir: Path
) -> None:
    expected = [
        (str(line["type"]), str(line["object"]["metadata"]["resourceVersion"]))  # type: ignore[index]
        for line in recorded(fixtures_dir, "deployment-lifecycle", "core_v1_pods")
    ]
    handler = RecordingHandler()
    async with running(client, PODS, handler):
        await double.wait_for_watches(1)
        assert double.release(resource="pods") == len(expected)
        await handler.wait_for(count_at_least("pods", len(expected)))
    assert changes(handler, "pods") == expected
    # The initial LIST was delivered (empty in this recording) and completed.
    assert handler.relists and handler.relists[0][2] == set()
    watch = double.watch_requests("/api/v1/pods")[0]
    assert watch.query["allowWatchBookmarks"] == "true"
    assert watch.query["resourceVersion"] == "245"


async def test_relist_fills_in_api_version_and_kind(double: KubeApiDouble, client: KubeClient) -> None:
    handler = RecordingHandler()
    async with running(client, ResourceType("", "v1", "namespaces", "Namespace", False), handler) as engine:
        await handler.wait_for(lambda h: bool(h.relists))
        listed = handler.watched("namespaces", relisted=True)
        assert {e.obj["metadata"]["name"] for e in listed} >= {"default", "kube-system"}
        assert all(e.obj["kind"] == "Namespace" and e.obj["apiVersion"] == "v1" for e in listed)
        assert handler.relists[0][2] == {e.uid for e in listed}
        assert len(engine.uids) == len(listed)


async def test_dropped_connection_resumes_from_last_version(
    double: KubeApiDouble, client: KubeClient, fixtures_dir: Path
) -> None:
    expected = [
        str(line["object"]["metadata"]["resourceVersion"])  # type: ignore[index]
        for line in recorded(fixtures_dir, "deployment-lifecycle", "apps_v1_replicasets")
    ]
    handler = RecordingHandler()
    gate = SleepGate()
    async with running(client, ResourceType("apps", "v1", "replicasets", "ReplicaSet", True), handler, sleep=gate):
        await double.wait_for_watches(1)
        double.release(5, resource="replicasets")
        await handler.wait_for(count_at_least("replicasets", 5))
        assert double.drop_watches(abrupt=True) == 1
        double.release(resource="replicasets")  # these happen while the connection is down
        await handler.wait_for(count_at_least("replicasets", len(expected)))
    assert [rv for _, rv in changes(handler, "replicasets")] == expected
    watches = double.watch_requests("/apis/apps/v1/replicasets")
    assert [w.query["resourceVersion"] for w in watches] == ["245", expected[4]]
    assert len(handler.relists) == 1, "a dropped connection resumes, it does not relist"
    assert len(gate.delays) == 1


async def test_gone_relists_and_reports_deletions_during_the_gap(double: KubeApiDouble, client: KubeClient) -> None:
    double.release()  # the whole recording: the namespace shop exists, configmaps in it
    handler = RecordingHandler()
    gate = SleepGate(hold=True)
    async with running(client, CONFIGMAPS, handler, sleep=gate) as engine:
        await handler.wait_for(lambda h: len(h.relists) == 1)
        await double.wait_for_watches(1)
        first_list = handler.relists[0][2]
        victim = double.objects("", "v1", "configmaps")[0]
        double.drop_watches()
        await asyncio.wait_for(gate.asked.wait(), 10)
        # While the watcher is away: history is compacted, one object goes, one arrives.
        double.delete_object("", "v1", "configmaps", victim["metadata"]["namespace"], victim["metadata"]["name"])
        added = double.put_object(
            "", "v1", "configmaps", {"metadata": {"name": "late", "namespace": "default"}, "data": {"a": "1"}}
        )
        double.compact()
        gate.opened.set()
        await handler.wait_for(lambda h: len(h.relists) == 2)
        assert engine.relists == 2
        await double.wait_for_watches(2)
    second_list = handler.relists[1][2]
    assert first_list - second_list == {victim["metadata"]["uid"]}
    assert second_list - first_list == {added["metadata"]["uid"]}
    relisted_late = [e for e in handler.watched("configmaps", relisted=True) if e.uid == added["metadata"]["uid"]]
    assert [e.event_type for e in relisted_late] == ["ADDED"]
    # Objects known before the gap come back as MODIFIED, not as new ones.
    second_round = handler.watched("configmaps", relisted=True)[len(first_list) :]
    assert {e.event_type for e in second_round if e.uid in first_list} == {"MODIFIED"}
    watches = double.watch_requests("/api/v1/configmaps")
    # The first watch, the resume answered with 410, the watch after the relist from the new list's version.
    assert len(watches) == 3
    assert watches[1].query["resourceVersion"] == watches[0].query["resourceVersion"]
    # The list answers with the revision current after the compaction, newer than any object in it.
    assert int(watches[2].query["resourceVersion"]) > int(added["metadata"]["resourceVersion"])


async def test_bookmark_advances_the_resume_version(double: KubeApiDouble, client: KubeClient) -> None:
    handler = RecordingHandler()
    async with running(client, CONFIGMAPS, handler, sleep=SleepGate()) as engine:
        await double.wait_for_watches(1)
        bookmark_rv = double.send_bookmark("", "v1", "configmaps")
        double.drop_watches(abrupt=False)
        await double.wait_for_watches(2)
        double.put_object("", "v1", "configmaps", {"metadata": {"name": "after", "namespace": "default"}})
        await handler.wait_for(count_at_least("configmaps", 1))
        assert engine.resource_version != bookmark_rv  # moved on past the object after it
    watches = double.watch_requests("/api/v1/configmaps")
    assert watches[1].query["resourceVersion"] == bookmark_rv
    assert [e.event_type for e in handler.watched("configmaps", relisted=False)] == ["ADDED"]


async def test_recorded_bookmarks_are_consumed_not_delivered(fixtures_dir: Path, tmp_path: Path) -> None:
    from kelemetry_py.config import ClusterConfig
    from tests.kube.helpers import write_kubeconfig

    lines = recorded(fixtures_dir, "batch-and-stateful", "apps_v1_statefulsets")
    bookmarks = [line for line in lines if line["type"] == "BOOKMARK"]
    assert bookmarks
    async with KubeApiDouble(fixtures_dir / "batch-and-stateful") as server:
        kube = await KubeClient.connect(
            ClusterConfig(name="fixture", kubeconfig=str(write_kubeconfig(tmp_path / "kc", server.url)))
        )
        handler = RecordingHandler()
        try:
            async with running(kube, ResourceType("apps", "v1", "statefulsets", "StatefulSet", True), handler) as e:
                await server.wait_for_watches(1)
                server.release(resource="statefulsets")
                await handler.wait_for(count_at_least("statefulsets", len(lines) - len(bookmarks)))
                last = lines[-1]["object"]["metadata"]["resourceVersion"]  # type: ignore[index]
                assert e.resource_version == last
        finally:
            await kube.close()
    assert "BOOKMARK" not in {ev.event_type for ev in handler.events}


async def test_errors_back_off_exponentially_with_jitter(double: KubeApiDouble, client: KubeClient) -> None:
    double.fail_next("/apis/apps/v1/deployments", 500, times=3)
    gate = SleepGate()
    handler = RecordingHandler()
    backoff = Backoff(initial=0.5, maximum=30, factor=2, jitter=0.2, rand=lambda: 1.0)
    async with running(client, DEPLOYMENTS, handler, sleep=gate, backoff=backoff):
        await handler.wait_for(lambda h: bool(h.relists))
    assert gate.delays == pytest.approx([0.6, 1.2, 2.4])


def test_backoff_caps_and_resets() -> None:
    values = iter([0.0, 0.5, 1.0] * 10)
    backoff = Backoff(initial=1, maximum=8, factor=2, jitter=0.25, rand=lambda: next(values))
    delays = [backoff.next_delay() for _ in range(6)]
    assert delays == pytest.approx([0.75, 2.0, 5.0, 6.0, 8.0, 10.0])
    backoff.reset()
    assert backoff.next_delay() == pytest.approx(0.75)


async def test_watch_error_event_other_than_gone_retries(double: KubeApiDouble, client: KubeClient) -> None:
    double.fail_next("/api/v1/configmaps", 503)
    gate = SleepGate()
    handler = RecordingHandler()
    async with running(client, CONFIGMAPS, handler, sleep=gate):
        await double.wait_for_watches(1)
    assert len(gate.delays) == 1
    assert len(handler.relists) == 1


def test_uid_set_is_compact_and_exact() -> None:
    uids = UidSet()
    uids.add("cced63f1-f27d-4ee1-8052-84eb3e7d1892")
    uids.add("not-a-uuid")
    assert "cced63f1-f27d-4ee1-8052-84eb3e7d1892" in uids
    assert "not-a-uuid" in uids
    uids.discard("cced63f1-f27d-4ee1-8052-84eb3e7d1892")
    assert len(uids) == 1


async def test_wrong_token_is_rejected(double: KubeApiDouble, tmp_path: Path) -> None:
    from kelemetry_py.config import ClusterConfig
    from kelemetry_py.kube.client import KubeApiError
    from tests.kube.helpers import write_kubeconfig

    kube = await KubeClient.connect(
        ClusterConfig(name="x", kubeconfig=str(write_kubeconfig(tmp_path / "kc", double.url, token="nope")))
    )
    try:
        with pytest.raises(KubeApiError) as caught:
            await kube.get_json("/api/v1/pods")
        assert caught.value.status == 401
    finally:
        await kube.close()
