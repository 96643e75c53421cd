"""The trace cache: what a user-facing trace id refers to, so it can be re-assembled in any display mode."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import orjson

from kelemetry_py.config import FrontendConfig, RedisConfig


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """The object a view was searched for and the time range it covers."""

    object_key: str
    start_ns: int
    end_ns: int

    def to_bytes(self) -> bytes:
        return orjson.dumps({"object": self.object_key, "start": self.start_ns, "end": self.end_ns})

    @classmethod
    def from_bytes(cls, raw: bytes) -> CacheEntry:
        data = orjson.loads(raw)
        return cls(object_key=str(data["object"]), start_ns=int(data["start"]), end_ns=int(data["end"]))

    @property
    def key(self) -> str:
        """16 hex digits derived from the content, so the same search gives the same id on every replica."""
        digest = hashlib.blake2b(self.to_bytes(), digest_size=8, person=b"kelemetry-tcache").digest()
        return digest.hex()


@runtime_checkable
class TraceCache(Protocol):
    async def put(self, entry: CacheEntry) -> str:
        """Store ``entry`` (refreshing its TTL) and return its 16-hex-digit key."""

    async def get(self, key: str) -> CacheEntry | None:
        """The entry under ``key``, or None if unknown or expired."""

    async def close(self) -> None: ...


def create_trace_cache(frontend: FrontendConfig, redis: RedisConfig) -> TraceCache:
    """Redis when ``redis.url`` is set (shared by replicas), else in memory; both expire after the TTL."""
    if redis.url:
        from kelemetry_py.frontend.tracecache.redis import RedisTraceCache

        return RedisTraceCache(redis.url, frontend.trace_cache_ttl_seconds, redis.key_prefix)
    from kelemetry_py.frontend.tracecache.memory import MemoryTraceCache

    return MemoryTraceCache(frontend.trace_cache_ttl_seconds)
