"""A durable log on Redis Streams, shared by replicas: one consumer group per consumer name, one consumer per
replica. An entry a replica read but never acknowledged (it died) is claimed by another replica with
``XAUTOCLAIM`` once it has been idle for ``claim_idle_seconds``, and handled again (marked replayed).

Entries are trimmed (``XTRIM MINID``) once every group has acknowledged them. Bounded by the stream's memory in
Redis (``MEMORY USAGE``, read at each maintenance and counted up between reads) and by its entry count: past
``spool.max_stream_bytes`` or ``spool.max_stream_records`` an append raises :class:`SpoolFull`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from kelemetry_py.spool import Record, RecordTooLarge, SpoolFull

if TYPE_CHECKING:
    from kelemetry_py.config import Config

log = logging.getLogger(__name__)

_FIELD = b"d"
_BLOCK_MS = 500
_MAINTAIN_SECONDS = 0.5


def _id_tuple(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class RedisLog:
    def __init__(
        self,
        client: aioredis.Redis,
        *,
        name: str,
        key: str,
        replica: str,
        claim_idle_seconds: float,
        max_records: int,
        max_bytes: int,
    ) -> None:
        self.name = name
        self.key = key
        self.max_bytes = max_bytes
        self._used = 0  # the stream's memory in Redis at the last maintenance, plus what was appended since
        self._client = client
        self._replica = replica
        self._claim_idle_ms = max(1, int(claim_idle_seconds * 1000))
        self._max_records = max_records
        self._consumers: dict[str, RedisConsumer] = {}
        self._length = 0
        self._closing = False
        self._closed = asyncio.Event()
        self._maintainer: asyncio.Task[None] | None = None

    @classmethod
    def from_config(cls, config: Config, *, name: str) -> RedisLog:
        client = aioredis.from_url(config.redis.url, socket_timeout=10, socket_connect_timeout=5)
        return cls(
            client,
            name=name,
            key=f"{config.redis.key_prefix}spool:{name}",
            replica=config.spool.replica_id or f"{socket.gethostname()}-{os.getpid()}",
            claim_idle_seconds=config.spool.claim_idle_seconds,
            max_records=config.spool.max_stream_records,
            max_bytes=config.spool.max_stream_bytes,
        )

    async def open(self) -> None:
        self._length = int(await self._client.xlen(self.key))
        await self._measure()
        self._maintainer = asyncio.get_running_loop().create_task(self._maintain(), name=f"redis-spool-{self.name}")

    def consumer(self, name: str) -> RedisConsumer:
        if name not in self._consumers:
            self._consumers[name] = RedisConsumer(self, name)
        return self._consumers[name]

    def used_bytes(self) -> int:
        return self._used

    def has_room(self) -> bool:
        return self._length < self._max_records and self._used < self.max_bytes

    async def _measure(self) -> None:
        self._used = int(await self._client.memory_usage(self.key) or 0)

    async def append(self, payloads: Sequence[bytes], values: Sequence[Any] | None = None) -> None:
        if self._closing:
            raise SpoolFull("the spool is closing")
        size = sum(len(payload) for payload in payloads)
        if size > self.max_bytes:
            raise RecordTooLarge(f"{size} bytes can never fit a stream of {self.max_bytes} bytes")
        if self._length + len(payloads) > self._max_records:
            self._length = int(await self._client.xlen(self.key))
            if self._length + len(payloads) > self._max_records:
                raise SpoolFull(f"stream {self.key} holds {self._length} of {self._max_records} records")
        if self._used + size > self.max_bytes:
            await self._measure()  # other replicas append, and the maintenance trims, between two readings
            if self._used + size > self.max_bytes:
                raise SpoolFull(f"stream {self.key} holds {self._used} of {self.max_bytes} bytes")
        async with self._client.pipeline(transaction=False) as pipe:
            for payload in payloads:
                pipe.xadd(self.key, {_FIELD: payload})
            await pipe.execute()
        self._length += len(payloads)
        self._used += size

    def stop_reading(self) -> None:
        self._closing = True
        self._closed.set()

    async def close(self) -> None:
        self.stop_reading()
        if self._maintainer is not None:
            # Let a command in flight finish: cancelling redis-py mid-command can leave its connection hanging.
            try:
                await asyncio.wait_for(asyncio.shield(self._maintainer), timeout=15)
            except TimeoutError:
                self._maintainer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._maintainer
        await self._client.aclose()

    async def _ensure_group(self, group: str) -> None:
        try:
            # From the beginning: entries appended before the group existed are this consumer's too.
            await self._client.xgroup_create(self.key, group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _maintain(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), timeout=_MAINTAIN_SECONDS)
            if self._closing:
                return
            try:
                await self._trim()  # first: the backlog counts below are exact once acknowledged entries are gone
                for consumer in list(self._consumers.values()):
                    await consumer.refresh()
            except (RedisError, OSError) as exc:
                log.warning("redis spool %s: maintenance failed (%s); will retry", self.name, exc)

    async def _trim(self) -> None:
        """Drop entries every group has acknowledged."""
        groups = await self._client.xinfo_groups(self.key)
        if not groups:
            return
        floor: tuple[int, int] | None = None
        for group in groups:
            name = group["name"]
            pending = await self._client.xpending(self.key, name)
            mark = _id_tuple(pending["min"]) if pending["pending"] else _id_tuple(group["last-delivered-id"])
            floor = mark if floor is None else min(floor, mark)
        if floor is not None and floor > (0, 0):
            await self._client.xtrim(self.key, minid=f"{floor[0]}-{floor[1]}", approximate=False)
        self._length = int(await self._client.xlen(self.key))
        await self._measure()


class RedisConsumer:
    def __init__(self, log: RedisLog, name: str) -> None:
        self.name = name
        self._log = log
        self._ready = False
        self._own_pending_checked = False
        self._next_claim = 0.0
        self._backlog = (0, 0)

    async def read(self, max_records: int) -> list[Record]:
        log_ = self._log
        client = log_._client
        while not log_._closing:
            try:
                if not self._ready:
                    await log_._ensure_group(self.name)
                    self._ready = True
                now = time.monotonic()
                if now >= self._next_claim:
                    # Work a dead replica took and never finished.
                    self._next_claim = now + log_._claim_idle_ms / 2000
                    claimed = await client.xautoclaim(
                        log_.key,
                        self.name,
                        log_._replica,
                        min_idle_time=log_._claim_idle_ms,
                        start_id="0-0",
                        count=max_records,
                    )
                    records = self._records(claimed[1], replayed=True)
                    if records:
                        log.info("redis spool %s: claimed %d records of a silent replica", log_.name, len(records))
                        return records
                if not self._own_pending_checked:
                    # What this replica (same name) read before a restart and never acknowledged.
                    response: Any = await client.xreadgroup(
                        self.name, log_._replica, {log_.key: "0"}, count=max_records
                    )
                    records = self._records(response[0][1] if response else [], replayed=True)
                    if records:
                        return records
                    self._own_pending_checked = True
                response = await client.xreadgroup(
                    self.name, log_._replica, {log_.key: ">"}, count=max_records, block=_BLOCK_MS
                )
                if response:
                    return self._records(response[0][1], replayed=False)
            except (RedisError, OSError) as exc:
                log.warning("redis spool %s: read failed (%s); retrying", log_.name, exc)
                await asyncio.sleep(1.0)
        return []

    @staticmethod
    def _records(entries: list[Any], *, replayed: bool) -> list[Record]:
        records = []
        for entry_id, fields in entries:
            if fields and _FIELD in fields:  # a trimmed entry comes back without fields
                records.append(Record(entry_id, fields[_FIELD], None, replayed))
        return records

    async def ack(self, records: Sequence[Record]) -> None:
        if not records:
            return
        delay = 0.1
        while True:
            try:
                await self._log._client.xack(self._log.key, self.name, *[record.id for record in records])
                return
            except (RedisError, OSError) as exc:
                if self._log._closing:
                    return  # not acknowledged: another replica (or this one, restarted) handles it again
                log.warning("redis spool %s: ack failed (%s); retrying", self._log.name, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def refresh(self) -> None:
        """Counted from the stream's and the group's summaries, never by reading entries: a backlog is exactly when
        this runs most, and its entries can be gigabytes."""
        client = self._log._client
        try:
            stream = await client.xinfo_stream(self._log.key)
            groups = {group["name"]: group for group in await client.xinfo_groups(self._log.key)}
        except ResponseError:
            return  # no stream or group yet
        group = groups.get(self.name.encode()) or groups.get(self.name)
        if group is None:
            self._backlog = (int(stream["length"]), 0)  # everything: the group reads from the beginning
            return
        pending = int(group["pending"])
        if _id_tuple(group["last-delivered-id"]) >= _id_tuple(stream["last-generated-id"]):
            unread = 0
        elif group.get("lag") is not None:  # Redis 7 and later
            unread = int(group["lag"])
        else:
            # At most what the stream holds beyond this group's pending entries (exact while this group is the
            # slowest consumer, as the stream is trimmed to what every group has acknowledged); at least one.
            unread = max(1, int(stream["length"]) - pending)
        self._backlog = (pending + unread, 0)

    def backlog(self) -> tuple[int, int]:
        return self._backlog
