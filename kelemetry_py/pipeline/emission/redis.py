"""An emission set shared by replicas through Redis ``SET NX EX``."""

from __future__ import annotations

import redis.asyncio as aioredis


class RedisEmissionSet:
    def __init__(self, client: aioredis.Redis, key_prefix: str = "kelemetry:") -> None:
        self._client = client
        self._prefix = f"{key_prefix}emit:"

    @classmethod
    def from_url(cls, url: str, key_prefix: str = "kelemetry:") -> RedisEmissionSet:
        return cls(aioredis.from_url(url), key_prefix)

    async def claim(self, key: str, ttl_seconds: int) -> bool:
        return bool(await self._client.set(self._prefix + key, b"1", nx=True, ex=max(1, ttl_seconds)))

    async def close(self) -> None:
        await self._client.aclose()
