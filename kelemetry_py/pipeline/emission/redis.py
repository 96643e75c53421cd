"""An emission set shared by replicas through Redis ``SET NX EX``; it fails open."""

from __future__ import annotations

import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

# Every call is bounded: a slow or unreachable Redis must not stall a pipeline partition.
REDIS_TIMEOUT_SECONDS = 2.0


class RedisEmissionSet:
    def __init__(self, client: aioredis.Redis, key_prefix: str = "kelemetry:") -> None:
        self._client = client
        self._prefix = f"{key_prefix}emit:"
        self.failures = 0

    @classmethod
    def from_url(cls, url: str, key_prefix: str = "kelemetry:") -> RedisEmissionSet:
        client = aioredis.from_url(
            url, socket_timeout=REDIS_TIMEOUT_SECONDS, socket_connect_timeout=REDIS_TIMEOUT_SECONDS
        )
        return cls(client, key_prefix)

    async def claim(self, key: str, ttl_seconds: int) -> bool:
        try:
            return bool(await self._client.set(self._prefix + key, b"1", nx=True, ex=max(1, ttl_seconds)))
        except (RedisError, OSError, TimeoutError) as exc:
            self.failures += 1
            log.warning("emission set: Redis failed (%s); writing the span anyway", exc)
            return True

    async def release(self, key: str) -> None:
        try:
            await self._client.delete(self._prefix + key)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("emission set: could not release a claim in Redis (%s)", exc)

    async def close(self) -> None:
        await self._client.aclose()
