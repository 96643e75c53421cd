"""Everything the Kubernetes watchers need, assembled from the configuration: the differ and its diff cache,
the diff attacher on audit spans, the event tracker and its cursor, the leaders' progress marks, the differ's
state file, and the per-cluster watcher service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from pathlib import Path
from typing import Any

from kelemetry_py.config import Config, records_wanted
from kelemetry_py.kube.catalog import ClusterCatalogs
from kelemetry_py.metrics import Metrics
from kelemetry_py.pipeline import ObservationSink
from kelemetry_py.pipeline.core import Pipeline
from kelemetry_py.sources.diffcache import DiffCache
from kelemetry_py.sources.differ import ObjectDiffer
from kelemetry_py.sources.differstate import SqliteDifferState
from kelemetry_py.sources.diffs import DiffAttacher
from kelemetry_py.sources.events import (
    EventCursor,
    EventTracker,
    MemoryEventCursor,
    RedisEventCursor,
    SqliteEventCursor,
)
from kelemetry_py.sources.progress import ProgressMarks
from kelemetry_py.sources.progress.memory import MemoryProgressMarks
from kelemetry_py.sources.watchers import WatcherKind, WatcherService

log = logging.getLogger(__name__)

STATE_FILE = "state.db"


class KubeWatching:
    """Start after the pipeline, stop before it. On the way out a leader saves its progress and releases its
    Leases; unclaimed diffs are flushed into the pipeline only without leader election (with it, the standby
    that takes over holds them too), and the differ's state file gets what it still holds."""

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
        self.differ_state = _differ_state(config)
        self.progress = _progress_marks(config)
        self.differ = ObjectDiffer(
            sink,
            metrics,
            self.diff_cache,
            redaction=config.redaction,
            claim_wait_seconds=kube.diff_wait_seconds,
            hold_seconds=kube.diff_hold_seconds,
            max_pending_bytes=kube.diff_pending_max_bytes,
            hot_state_bytes=kube.diff_hot_state_max_bytes,
            state=self.differ_state,
            learn=pipeline.learn,
        )
        self.events = EventTracker(
            sink,
            metrics,
            self.cursor,
            catalogs=catalogs,
            max_age_seconds=kube.event_max_age_seconds,
            max_backlog_bytes=kube.diff_pending_max_bytes,
            records=records_wanted(config),
        )
        if kube.watch_objects:
            # Only with a differ running is there a diff worth waiting for.
            pipeline.add_hook(DiffAttacher(self.diff_cache, kube.diff_wait_seconds, metrics))
        self.service = WatcherService(
            config, sink, metrics, self._handler, catalogs=catalogs, progress=self.progress
        )
        self._leader_election = kube.leader_election
        if kube.leader_election and not config.redis.url:
            log.warning(
                "kube.leader_election without redis.url: replicas share neither progress marks, diff claims nor "
                "the Event cursor, so a take-over may repeat changes and Events"
            )
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def healthy(self) -> bool:
        return not self.service.down

    def _handler(self, kind: WatcherKind) -> Any:
        return self.differ if kind == "objects" else self.events

    async def start(self) -> None:
        if isinstance(self.cursor, SqliteEventCursor):
            await self.cursor.open()
        if self.differ_state is not None:
            await self.differ_state.open()
            restored = await self.differ.restore()
            if restored:
                log.info("differ state restored for %d objects: the first list is diffed against it", restored)
        await self.service.start()
        self._tasks.append(asyncio.create_task(self.differ.run(), name="differ-unclaimed"))
        if self.differ_state is not None:
            self._tasks.append(asyncio.create_task(self.differ.persist_forever(), name="differ-state"))

    async def stop(self) -> None:
        await self.service.stop()  # a leader saves its progress and releases its Leases here
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if not self._leader_election:
            # Nobody else holds these changes: show them now rather than never. A leader leaves them to the
            # standby that took over (it holds them too) and to the state file.
            await self.differ.flush_unclaimed(now=math.inf)
        await self.differ.persist()
        for closeable in (self.diff_cache, self.cursor, self.progress, self.differ_state):
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


def _differ_state(config: Config) -> SqliteDifferState | None:
    """Beside the store, so one replica restarting diffs its first list against what it knew."""
    if not config.store.enabled or not config.kube.watch_objects:
        return None
    return SqliteDifferState(Path(config.store.path).parent / STATE_FILE)


def _progress_marks(config: Config) -> ProgressMarks:
    if config.redis.url:
        from kelemetry_py.sources.progress.redis import RedisProgressMarks

        return RedisProgressMarks(config.redis.url, config.redis.key_prefix)
    return MemoryProgressMarks()


def _event_cursor(config: Config) -> EventCursor:
    ttl = max(2 * config.kube.event_max_age_seconds, 3600.0)
    if config.redis.url:
        return RedisEventCursor(config.redis.url, config.redis.key_prefix, ttl_seconds=ttl)
    if config.store.enabled:
        # One replica without Redis: beside the store, so a restart neither repeats nor loses Events.
        return SqliteEventCursor(Path(config.store.path).parent / STATE_FILE, ttl_seconds=ttl)
    return MemoryEventCursor(ttl)
