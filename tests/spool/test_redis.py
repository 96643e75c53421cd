"""The Redis Streams log on a real Redis: replicas share the work, and a dead replica's work is claimed."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from kelemetry_py.spool import Record, RecordTooLarge, SpoolFull
from kelemetry_py.spool.redis import RedisLog


def _replica(
    url: str, name: str, *, claim_idle_seconds: float = 30.0, max_records: int = 100, max_bytes: int = 1 << 30
) -> RedisLog:
    return RedisLog(
        aioredis.from_url(url),
        name="observations",
        key="test:spool:observations",
        replica=name,
        claim_idle_seconds=claim_idle_seconds,
        max_records=max_records,
        max_bytes=max_bytes,
    )


async def test_work_a_silent_replica_took_is_claimed_by_another(redis_url: str) -> None:
    a = _replica(redis_url, "a")
    b = _replica(redis_url, "b", claim_idle_seconds=0.2)
    await a.open()
    await b.open()
    await a.append([b"one", b"two", b"three"])
    taken = await a.consumer("pipeline").read(10)
    assert [record.payload for record in taken] == [b"one", b"two", b"three"]
    # a dies without acknowledging; b finds the entries once they have been idle long enough.
    claimed = await asyncio.wait_for(b.consumer("pipeline").read(10), timeout=10)
    assert [record.payload for record in claimed] == [b"one", b"two", b"three"]
    assert all(record.replayed for record in claimed)
    await b.consumer("pipeline").ack(claimed)
    await b.consumer("pipeline").refresh()
    assert b.consumer("pipeline").backlog()[0] == 0
    await a.close()
    await b.close()


async def test_acknowledged_entries_are_trimmed_and_the_bound_holds(redis_url: str) -> None:
    log = _replica(redis_url, "a")
    await log.open()
    consumer = log.consumer("pipeline")
    await log.append([f"r{i}".encode() for i in range(100)])
    assert not log.has_room()
    records: list[Record] = []
    while len(records) < 100:
        records.extend(await consumer.read(100))
    await consumer.ack(records)
    await log._trim()
    assert log.has_room()
    client = aioredis.from_url(redis_url)
    assert await client.xlen("test:spool:observations") <= 1
    await client.aclose()
    await log.close()


async def test_a_backlog_is_counted_without_reading_its_entries(redis_url: str) -> None:
    """The backlog is refreshed every half second, and most often while a backlog of large entries waits: counting
    must not fetch them (a 200 MB backlog once took seconds of the event loop per count)."""
    log = _replica(redis_url, "a", max_records=1000)
    await log.open()
    consumer = log.consumer("pipeline")
    for _ in range(3):
        await log.append([b"x" * 100_000] * 100)  # 30 MB
    taken = await consumer.read(100)
    await consumer.ack(taken[:50])
    client = aioredis.from_url(redis_url)
    await log._trim()  # as the log's maintenance does before it counts
    sent_before = int((await client.info("stats"))["total_net_output_bytes"])
    await consumer.refresh()
    sent = int((await client.info("stats"))["total_net_output_bytes"]) - sent_before
    assert consumer.backlog()[0] == 250  # 50 read and not acknowledged, 200 not read
    assert sent < 1_000_000
    rest: list[Record] = []
    while len(rest) < 200:
        rest.extend(await consumer.read(200))
    await consumer.ack([*taken[50:], *rest])
    await consumer.refresh()
    assert consumer.backlog()[0] == 0
    await client.aclose()
    await log.close()


async def test_the_stream_is_bounded_by_its_memory_in_redis(redis_url: str) -> None:
    """Entries are batches of observations of any size: a count alone does not bound what Redis holds."""
    log = _replica(redis_url, "a", max_records=1000, max_bytes=1_000_000)
    await log.open()
    consumer = log.consumer("pipeline")
    with pytest.raises(RecordTooLarge):
        await log.append([b"y" * 1_000_001])
    accepted = 0
    with pytest.raises(SpoolFull):
        while True:
            await log.append([b"x" * 100_000])
            accepted += 1
    assert 5 <= accepted <= 10  # far below the 1,000 entries the count allows
    assert log.used_bytes() >= 900_000
    records: list[Record] = []
    while len(records) < accepted:
        records.extend(await consumer.read(100))
    await consumer.ack(records)
    await log._trim()
    assert log.has_room() and log.used_bytes() < 200_000  # the last entry delivered stays (XTRIM MINID)
    await log.append([b"x" * 100_000])
    await log.close()
