"""Both diff cache implementations: records, TTL, claims exactly once, and waiters woken by arrivals."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kelemetry_py.model import ObjectRef, Observation
from kelemetry_py.sources.diffcache import Change, DiffCache, DiffRecord
from kelemetry_py.sources.diffcache.memory import MemoryDiffCache
from kelemetry_py.sources.diffcache.redis import RedisDiffCache
from kelemetry_py.sources.diffs import DiffAttacher
from tests.differ.support import ObservedMemoryCache

REF = ObjectRef("c1", "apps", "v1", "deployments", "shop", "web", "uid-1")


def _record(rv: str = "7") -> DiffRecord:
    change = Change("spec.replicas", "change", 2, 4)
    return DiffRecord(
        ref=REF,
        resource_version=rv,
        kind="diff",
        time_ns=1,
        field_manager="kubectl",
        operation="Update",
        changes=(change,),
        lines=("spec.replicas 2 -> 4",),
    )


def _audit(rv: str) -> Observation:
    return Observation(ref=REF, kind="audit", title="admin patch", start_ns=5, end_ns=9, resource_version=rv)


class ObservedRedisCache(RedisDiffCache):
    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.missed = asyncio.Event()

    async def get(self, object_key: str, resource_version: str) -> DiffRecord | None:
        found = await super().get(object_key, resource_version)
        if found is None:
            self.missed.set()  # RedisDiffCache.wait looks only after subscribing and registering its waiter
        return found


Observed = ObservedMemoryCache | ObservedRedisCache


@pytest.fixture(params=["memory", "redis"])
async def caches(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[tuple[DiffCache, Observed]]:
    """Two handles on one cache, as two replicas see it (the memory cache is one process: the same object)."""
    if request.param == "memory":
        cache = ObservedMemoryCache(ttl_seconds=60)
        yield cache, cache
        await cache.close()
        return
    first = RedisDiffCache(redis_url, key_prefix="t:", ttl_seconds=60)
    second = ObservedRedisCache(redis_url, key_prefix="t:", ttl_seconds=60)
    yield first, second
    await first.close()
    await second.close()


async def test_records_round_trip_and_claims_are_exclusive(caches: tuple[DiffCache, Observed]) -> None:
    writer, reader = caches
    assert await reader.get(REF.key, "7") is None
    await writer.put(_record())
    assert await reader.get(REF.key, "7") == _record()
    assert await reader.claim(REF.key, "7") is True
    assert await writer.claim(REF.key, "7") is False
    assert await reader.claim(REF.key, "8") is True


async def test_a_waiter_on_another_replica_is_woken_by_the_put(caches: tuple[DiffCache, Observed]) -> None:
    writer, reader = caches
    attacher = DiffAttacher(reader, wait_seconds=30)
    audit = _audit("7")
    pending = attacher.prepare(audit)
    assert pending is not None
    task = asyncio.ensure_future(pending)
    await asyncio.wait_for(reader.missed.wait(), 10)  # the attacher is now parked on its waiter
    reader.missed.clear()
    other = asyncio.ensure_future(reader.wait(REF.key, "8", 30))
    await asyncio.wait_for(reader.missed.wait(), 10)
    assert not task.done()
    await writer.put(_record())
    await asyncio.wait_for(task, 10)
    assert [entry.name for entry in audit.logs] == ["diff"]
    assert audit.logs[0].fields["diff"] == "spec.replicas 2 -> 4"
    assert audit.logs[0].time_ns == audit.end_ns
    assert not other.done()
    other.cancel()
    assert await writer.claim(REF.key, "7") is False  # the audit span has it; the differ must not emit it


async def test_the_attacher_gives_up_when_nothing_arrives(caches: tuple[DiffCache, Observed]) -> None:
    _, reader = caches
    attacher = DiffAttacher(reader, wait_seconds=0.01)
    audit = _audit("99")
    pending = attacher.prepare(audit)
    assert pending is not None
    await asyncio.wait_for(pending, 10)
    assert audit.logs == []
    assert attacher.given_up == 1


async def test_memory_cache_expires_and_stays_bounded() -> None:
    now = [0.0]
    cache = MemoryDiffCache(ttl_seconds=10, max_records=3, clock=lambda: now[0])
    for rv in ("1", "2", "3", "4"):
        await cache.put(_record(rv))
    assert len(cache) == 3
    assert await cache.get(REF.key, "1") is None
    assert await cache.get(REF.key, "4") is not None
    now[0] = 11.0
    assert await cache.get(REF.key, "4") is None
    assert cache.claim_nowait(REF.key, "4") is None


async def test_non_audit_and_versionless_observations_pass_straight_through() -> None:
    attacher = DiffAttacher(MemoryDiffCache())
    event = Observation(ref=REF, kind="event", title="Scheduled", start_ns=1, end_ns=1, resource_version="7")
    assert attacher.prepare(event) is None
    assert attacher.prepare(_audit("")) is None


async def test_an_unconfirmed_differ_claim_is_granted_again_and_a_confirmed_one_never(
    caches: tuple[DiffCache, Observed],
) -> None:
    first, second = caches
    assert await first.claim(REF.key, "7", "differ") is True
    # The emitting replica died (or the pipeline refused) before confirming: another differ may emit it.
    assert await second.claim(REF.key, "7", "differ") is True
    assert await second.claim(REF.key, "7") is False, "an audit span comes too late for a change being emitted"
    await second.confirm(REF.key, "7")
    assert await first.claim(REF.key, "7", "differ") is False
    # An audit span's claim is final at once.
    assert await first.claim(REF.key, "8") is True
    assert await second.claim(REF.key, "8", "differ") is False
