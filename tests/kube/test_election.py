from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kelemetry_py.config import ClusterConfig
from kelemetry_py.kube.client import KubeClient
from kelemetry_py.kube.election import LeaderElector
from tests.kube.helpers import SleepGate, write_kubeconfig
from tests.support.kube_double import KubeApiDouble


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def lease_api(tmp_path: Path) -> AsyncIterator[tuple[KubeApiDouble, KubeClient]]:
    async with KubeApiDouble() as server:
        kube = await KubeClient.connect(
            ClusterConfig(name="c1", kubeconfig=str(write_kubeconfig(tmp_path / "kc", server.url)))
        )
        yield server, kube
        await kube.close()


def candidate(
    kube: KubeClient,
    identity: str,
    clock: ManualClock | None = None,
    *,
    lease_duration: float = 15.0,
    renew_deadline: float | None = None,
    retry_period: float | None = None,
) -> LeaderElector:
    return LeaderElector(
        kube,
        namespace="kube-system",
        name="kelemetry-objects-c1",
        identity=identity,
        lease_duration=lease_duration,
        renew_deadline=renew_deadline,
        retry_period=retry_period,
        clock=clock or time.monotonic,
    )


async def test_one_of_two_candidates_leads_and_takes_over_after_expiry(
    lease_api: tuple[KubeApiDouble, KubeClient],
) -> None:
    server, kube = lease_api
    clock = ManualClock()
    a = candidate(kube, "replica-a", clock, lease_duration=15)
    b = candidate(kube, "replica-b", clock, lease_duration=15)
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    clock.now += 10
    assert await a.try_acquire_or_renew()  # renewal: b's observation restarts
    assert not await b.try_acquire_or_renew()
    clock.now += 14.9
    assert not await b.try_acquire_or_renew(), "not expired yet on b's own clock"
    # a stops renewing (it died); a full lease duration after b last saw a change, b takes over.
    clock.now += 0.2
    assert await b.try_acquire_or_renew()
    lease = server.get_object("coordination.k8s.io", "v1", "leases", "kube-system", "kelemetry-objects-c1")
    assert lease["spec"]["holderIdentity"] == "replica-b"
    assert lease["spec"]["leaseTransitions"] == 1
    assert lease["spec"]["leaseDurationSeconds"] == 15
    assert not await a.try_acquire_or_renew(), "the old leader sees b's fresh record and backs off"


async def test_simultaneous_updates_conflict_and_only_one_wins(
    lease_api: tuple[KubeApiDouble, KubeClient],
) -> None:
    _, kube = lease_api
    clock = ManualClock()
    first = candidate(kube, "first", clock)
    assert await first.try_acquire_or_renew()
    await first.release()
    contenders = [candidate(kube, f"c{i}", clock) for i in range(5)]
    results = await asyncio.gather(*(c.try_acquire_or_renew() for c in contenders))
    assert sum(results) == 1


async def test_released_lease_is_taken_at_once(lease_api: tuple[KubeApiDouble, KubeClient]) -> None:
    _, kube = lease_api
    clock = ManualClock()
    a, b = candidate(kube, "a", clock), candidate(kube, "b", clock)
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    await a.release()
    assert await b.try_acquire_or_renew()


async def test_run_leads_then_hands_over_when_the_leader_dies(
    lease_api: tuple[KubeApiDouble, KubeClient],
) -> None:
    _, kube = lease_api
    started: list[str] = []
    stopped: list[str] = []

    def work(name: str):  # type: ignore[no-untyped-def]
        async def lead() -> None:
            started.append(name)
            try:
                await asyncio.Event().wait()
            finally:
                stopped.append(name)

        return lead

    a = candidate(kube, "a", lease_duration=0.6, renew_deadline=0.4, retry_period=0.05)
    b = candidate(kube, "b", lease_duration=0.6, renew_deadline=0.4, retry_period=0.05)
    task_a = asyncio.create_task(a.run(work("a")))
    await asyncio.wait_for(a.leading.wait(), 10)
    task_b = asyncio.create_task(b.run(work("b")))
    # b campaigns while a leads: it must not lead before a is gone.
    a.release_on_cancel = False  # a crash: no goodbye
    task_a.cancel()
    await asyncio.gather(task_a, return_exceptions=True)
    assert started == ["a"] and stopped == ["a"]
    assert not b.is_leader
    await asyncio.wait_for(b.leading.wait(), 10)
    assert started == ["a", "b"]
    task_b.cancel()
    await asyncio.gather(task_b, return_exceptions=True)
    assert stopped == ["a", "b"]


async def test_leader_whose_lease_is_taken_stops_working(lease_api: tuple[KubeApiDouble, KubeClient]) -> None:
    server, kube = lease_api
    cancelled = asyncio.Event()

    async def lead() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    a = candidate(kube, "a", lease_duration=0.6, renew_deadline=0.3, retry_period=0.05)
    task = asyncio.create_task(a.run(lead))
    await asyncio.wait_for(a.leading.wait(), 10)
    lease = server.get_object("coordination.k8s.io", "v1", "leases", "kube-system", "kelemetry-objects-c1")
    # Someone else writes the lease (as after a partition): a can no longer renew and must stop leading.
    server.put_object(
        "coordination.k8s.io", "v1", "leases", {**lease, "spec": {**lease["spec"], "holderIdentity": "z"}}
    )
    await asyncio.wait_for(cancelled.wait(), 10)
    assert not a.is_leader
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_inconsistent_timings_are_rejected() -> None:
    with pytest.raises(ValueError, match="retry_period"):
        LeaderElector(None, namespace="n", name="l", identity="x", lease_duration=5, renew_deadline=6)  # type: ignore[arg-type]


async def test_a_candidate_watching_its_lease_takes_it_when_released_without_waiting_a_retry_period(
    lease_api: tuple[KubeApiDouble, KubeClient],
) -> None:
    _, kube = lease_api
    a = candidate(kube, "a")
    assert await a.try_acquire_or_renew()
    b = LeaderElector(
        kube,
        namespace="kube-system",
        name="kelemetry-objects-c1",
        identity="b",
        sleep=SleepGate(hold=True),  # a retry period that never ends: only the release can wake b
        wake_on_release=True,
    )
    asked = b._sleep
    assert isinstance(asked, SleepGate)
    async def lead() -> None:
        await asyncio.Event().wait()

    running = asyncio.create_task(b.run(lead))
    try:
        await asyncio.wait_for(asked.asked.wait(), 10)  # b tried, lost, and waits
        await a.release()
        await asyncio.wait_for(b.leading.wait(), 10)
        assert b.previous_holder == ""
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
