"""The Redis diff cache, shared by replicas: records with SET EX, claims with SET NX, arrivals by PUBLISH.

An audit span may be handled by a replica other than the one whose differ saw the change, so waiting replicas
subscribe to one channel and wake their local waiters when a record for their key arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio as aioredis

from kelemetry_py.sources.diffcache import EMITTED, Claimant, DiffRecord, Waiters

log = logging.getLogger(__name__)

_Key = tuple[str, str]

# SET NX, except that an unconfirmed differ claim is granted to a differ again (an interrupted emission).
_CLAIM = """
local held = redis.call('GET', KEYS[1])
if not held then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if held == 'differ' and ARGV[1] == 'differ' then return 1 end
return 0
"""


class RedisDiffCache:
    def __init__(self, url: str, key_prefix: str = "kelemetry:", ttl_seconds: float = 3600.0) -> None:
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be greater than 0")
        self._client = aioredis.from_url(url)
        self._prefix = key_prefix
        self._ttl_ms = max(1, int(ttl_seconds * 1000))
        self._channel = f"{key_prefix}diffs"
        self._waiters = Waiters()
        self._listener: asyncio.Task[None] | None = None
        self._subscribed: asyncio.Event | None = None

    def _record_key(self, object_key: str, resource_version: str) -> str:
        return f"{self._prefix}diff:{object_key}:{resource_version}"

    def _claim_key(self, object_key: str, resource_version: str) -> str:
        return f"{self._prefix}diffclaim:{object_key}:{resource_version}"

    async def put(self, record: DiffRecord) -> None:
        key = self._record_key(record.object_key, record.resource_version)
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.set(key, record.to_json(), px=self._ttl_ms)
            pipe.publish(self._channel, f"{record.object_key}\x00{record.resource_version}")
            await pipe.execute()

    async def get(self, object_key: str, resource_version: str) -> DiffRecord | None:
        data = await self._client.get(self._record_key(object_key, resource_version))
        return None if data is None else DiffRecord.from_json(data)

    async def claim(self, object_key: str, resource_version: str, claimant: Claimant = "audit") -> bool:
        key = self._claim_key(object_key, resource_version)
        claimed = await self._client.eval(_CLAIM, 1, key, claimant, self._ttl_ms)
        return bool(claimed)

    async def confirm(self, object_key: str, resource_version: str) -> None:
        key = self._claim_key(object_key, resource_version)
        await self._client.set(key, EMITTED, xx=True, keepttl=True)

    def claim_nowait(self, object_key: str, resource_version: str) -> DiffRecord | None:
        return None  # a shared claim always needs a round trip

    async def _ensure_listening(self) -> None:
        if self._listener is None or self._listener.done():
            self._subscribed = asyncio.Event()
            self._listener = asyncio.create_task(self._listen(self._subscribed), name="diffcache-listener")
        assert self._subscribed is not None
        await self._subscribed.wait()

    async def _listen(self, subscribed: asyncio.Event) -> None:
        pubsub = self._client.pubsub()
        try:
            await pubsub.subscribe(self._channel)
            subscribed.set()
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                data = message["data"]
                text = data.decode() if isinstance(data, bytes) else str(data)
                object_key, _, resource_version = text.partition("\x00")
                self._waiters.wake((object_key, resource_version), None)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("diff cache subscription failed; waiters fall back to their timeout")
            subscribed.set()
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def wait(self, object_key: str, resource_version: str, wait_seconds: float) -> DiffRecord | None:
        key = (object_key, resource_version)
        waiter = self._waiters.add(key)
        try:
            async with asyncio.timeout(wait_seconds):  # one bound for subscribing, looking and waiting
                # Subscribed before looking, so a record stored after the GET still wakes us.
                await self._ensure_listening()
                record = await self.get(object_key, resource_version)
                if record is not None:
                    return record
                await asyncio.shield(waiter)
        except TimeoutError:
            return None
        finally:
            self._waiters.discard(key, waiter)
        return await self.get(object_key, resource_version)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
        await self._client.aclose()
