"""Everything the Kubernetes watchers need, assembled from the configuration: the differ and its diff cache,
the diff attacher on audit spans, the event tracker and its cursor, and the per-cluster watcher service."""

from __future__ import annotations

import asyncio
import contextlib
import math
from pathlib import Path
from typing import Any

from kelemetry_py.config import Config
from kelemetry_py.kube.catalog import ClusterCatalogs
from kelemetry_py.metrics import Metrics
from kelemetry_py.pipeline import ObservationSink
from kelemetry_py.pipeline.core import Pipeline
from kelemetry_py.sources.diffcache import DiffCache
from kelemetry_py.sources.differ import ObjectDiffer
from kelemetry_py.sources.diffs import DiffAttacher
from kelemetry_py.sources.events import (
    EventCursor,
    EventTracker,
    MemoryEventCursor,
    RedisEventCursor,
    SqliteEventCursor,
)
from kelemetry_py.sources.watchers import WatcherKind, WatcherService

STATE_FILE = "state.db"


class KubeWatching:
    """Start after the pipeline, stop before it: unclaimed diffs are flushed into the pipeline on the way out."""

    def __init__(
        self,
        config: Config,
        pipeline: Pipeline,
        metrics: Metrics,
        catalogs: ClusterCatalogs,
        sink: ObservationSink | None = None,
    ) -> None:
        kube = config.kube
        sink = sink or pipeline  # the durable intake: observations are on disk before a cursor moves
        self.diff_cache = _diff_cache(config)
        self.cursor = _event_cursor(config)
        self.differ = ObjectDiffer(
            sink, metrics, self.diff_cache, redaction=config.redaction, claim_wait_seconds=kube.diff_wait_seconds
        )
        self.events = EventTracker(
            sink, metrics, self.cursor, catalogs=catalogs, max_age_seconds=kube.event_max_age_seconds
        )
        if kube.watch_objects:
            # Only with a differ running is there a diff worth waiting for.
            pipeline.add_hook(DiffAttacher(self.diff_cache, kube.diff_wait_seconds))
        self.service = WatcherService(config, sink, metrics, self._handler, catalogs=catalogs)
        self._flusher: asyncio.Task[None] | None = None

    def _handler(self, kind: WatcherKind) -> Any:
        return self.differ if kind == "objects" else self.events

    async def start(self) -> None:
        if isinstance(self.cursor, SqliteEventCursor):
            await self.cursor.open()
        await self.service.start()
        self._flusher = asyncio.create_task(self.differ.run(), name="differ-unclaimed")

    async def stop(self) -> None:
        await self.service.stop()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        await self.differ.flush_unclaimed(now=math.inf)
        for closeable in (self.diff_cache, self.cursor):
            close = getattr(closeable, "close", None)
            if close is not None:
                await close()


def _diff_cache(config: Config) -> DiffCache:
    ttl = config.kube.diff_cache_ttl_seconds
    if config.redis.url:
        from kelemetry_py.sources.diffcache.redis import RedisDiffCache

        return RedisDiffCache(config.redis.url, config.redis.key_prefix, ttl_seconds=ttl)
    from kelemetry_py.sources.diffcache.memory import MemoryDiffCache

    return MemoryDiffCache(ttl_seconds=ttl)


def _event_cursor(config: Config) -> EventCursor:
    ttl = max(2 * config.kube.event_max_age_seconds, 3600.0)
    if config.redis.url:
        return RedisEventCursor(config.redis.url, config.redis.key_prefix, ttl_seconds=ttl)
    if config.store.enabled:
        # One replica without Redis: beside the store, so a restart neither repeats nor loses Events.
        return SqliteEventCursor(Path(config.store.path).parent / STATE_FILE, ttl_seconds=ttl)
    return MemoryEventCursor(ttl)
