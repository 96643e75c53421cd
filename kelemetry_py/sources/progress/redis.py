"""Progress marks in Redis: a hash per (cluster, watcher), ``<prefix>progress:<cluster>:<watcher>``."""

from __future__ import annotations

from collections.abc import Mapping

import redis.asyncio as aioredis

# Per field, keep the larger of the stored and the given resourceVersion when both are numbers.
_SAVE_MAX = """
for i = 1, #ARGV, 2 do
  local current = redis.call('HGET', KEYS[1], ARGV[i])
  local a, b = tonumber(current), tonumber(ARGV[i + 1])
  if not current or not a or not b or b > a then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return 1
"""


class RedisProgressMarks:
    def __init__(self, url: str, key_prefix: str = "kelemetry:") -> None:
        self._client = aioredis.from_url(url)
        self._prefix = key_prefix

    def _key(self, cluster: str, watcher: str) -> str:
        return f"{self._prefix}progress:{cluster}:{watcher}"

    async def load(self, cluster: str, watcher: str) -> dict[str, str]:
        raw = await self._client.hgetall(self._key(cluster, watcher))
        return {_text(key): _text(value) for key, value in raw.items()}

    async def save(self, cluster: str, watcher: str, marks: Mapping[str, str]) -> None:
        if not marks:
            return
        args = [part for pair in marks.items() for part in pair]
        await self._client.eval(_SAVE_MAX, 1, self._key(cluster, watcher), *args)

    async def close(self) -> None:
        await self._client.aclose()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
