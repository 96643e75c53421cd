"""A trace cache in Redis, shared by every replica; entries expire with a Redis TTL."""

from __future__ import annotations

import math

import redis.asyncio as aioredis

from kelemetry_py.frontend.tracecache import CacheEntry


class RedisTraceCache:
    def __init__(self, url: str, ttl_seconds: float, key_prefix: str = "kelemetry:") -> None:
        if ttl_seconds <= 0:
            raise ValueError("trace cache TTL must be greater than 0")
        self._client: aioredis.Redis = aioredis.from_url(url)
        self._ttl_ms = max(1, math.ceil(ttl_seconds * 1000))
        self._prefix = f"{key_prefix}tracecache:"

    def redis_key(self, key: str) -> str:
        return self._prefix + key

    async def put(self, entry: CacheEntry) -> str:
        key = entry.key
        await self._client.set(self.redis_key(key), entry.to_bytes(), px=self._ttl_ms)
        return key

    async def get(self, key: str) -> CacheEntry | None:
        raw = await self._client.get(self.redis_key(key))
        if raw is None:
            return None
        return CacheEntry.from_bytes(raw if isinstance(raw, bytes) else str(raw).encode())

    async def close(self) -> None:
        await self._client.aclose()
