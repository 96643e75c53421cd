"""Alert rule state in Redis, shared by every replica."""

from __future__ import annotations

from typing import Any

import orjson
import redis.asyncio as aioredis

# Counted once per (rule, record): the seen key is the claim, the sorted set holds the group's record times.
_COUNT = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[4]) then return -1 end
local time = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], time, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. (time - window))
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return redis.call('ZCOUNT', KEYS[2], time - window, '+inf')
"""
_RESOLVE = """
local alert = redis.call('HGET', KEYS[1], ARGV[1])
if not alert then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
return alert
"""


class RedisAlertState:
    def __init__(self, url: str, key_prefix: str = "kelemetry:", dedup_ms: int = 86_400_000) -> None:
        self._client = aioredis.from_url(url)
        self._prefix = f"{key_prefix}alerts:"
        self._dedup_ms = dedup_ms

    def _hits(self, rule: str, group: str) -> str:
        return f"{self._prefix}hits:{rule}:{group}"

    async def count(self, rule: str, group: str, record_id: int, time_ms: int, window_ms: int) -> int | None:
        ttl = max(self._dedup_ms, 2 * window_ms)
        seen = f"{self._prefix}seen:{rule}:{record_id}"
        found = int(
            await self._client.eval(_COUNT, 2, seen, self._hits(rule, group), record_id, time_ms, window_ms, ttl)
        )
        return None if found < 0 else found

    async def count_since(self, rule: str, group: str, since_ms: int) -> int:
        key = self._hits(rule, group)
        await self._client.zremrangebyscore(key, "-inf", f"({since_ms}")
        return int(await self._client.zcard(key))

    async def start_firing(self, rule: str, group: str, alert: dict[str, Any]) -> bool:
        return bool(await self._client.hsetnx(f"{self._prefix}firing", f"{rule}\x00{group}", orjson.dumps(alert)))

    async def firing(self) -> list[tuple[str, str, dict[str, Any]]]:
        entries = await self._client.hgetall(f"{self._prefix}firing")
        out = []
        for field, value in entries.items():
            name = field.decode() if isinstance(field, bytes) else str(field)
            rule, _, group = name.partition("\x00")
            out.append((rule, group, orjson.loads(value)))
        return out

    async def resolve(self, rule: str, group: str) -> dict[str, Any] | None:
        found = await self._client.eval(_RESOLVE, 1, f"{self._prefix}firing", f"{rule}\x00{group}")
        return None if found is None else dict(orjson.loads(found))

    async def claim_tick(self, tick: int, ttl_ms: int) -> bool:
        return bool(await self._client.set(f"{self._prefix}tick:{tick}", b"1", nx=True, px=ttl_ms))

    async def close(self) -> None:
        await self._client.aclose()
