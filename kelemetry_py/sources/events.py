"""The event tracker: core/v1 and events.k8s.io/v1 Events become ``event`` observations on their object.

Every Event is served by both resources (same uid), and a list or resync delivers it again; what makes a new
span is a new *occurrence*: ``series.count``, else ``count`` (``deprecatedCount``), else 1. The tracker emits
each (uid, occurrence) once, remembered in an :class:`EventCursor`:

- the cursor is "the highest occurrence emitted per Event uid", kept for twice ``kube.event_max_age_seconds``
  (Kubernetes itself drops Events after an hour). In memory for one process, in Redis to survive restarts and
  leader changes: a standby watches too and keeps what it saw until the leader's progress marks cover it; on
  taking over it emits what it kept, skipping what the cursor says was emitted;
- it is written *after* the pipeline accepted the observation, so a crash in between re-emits rather than
  loses; a re-emission has the same ``dedup_key`` (uid + occurrence), hence the same span id, and overwrites;
- occurrences older than ``kube.event_max_age_seconds`` are skipped, so a start-up relist does not replay an
  hour of history as new spans.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import redis.asyncio as aioredis

from kelemetry_py.kube.catalog import CatalogSource, ClusterCatalogs, guess_plural, split_api_version
from kelemetry_py.kube.watch import ResourceType, handled_by
from kelemetry_py.metrics import Metrics
from kelemetry_py.model import Attributes, LogEntry, ObjectRef, Observation
from kelemetry_py.pipeline import ObservationSink
from kelemetry_py.storage.sqlite_file import SqliteFile
from kelemetry_py.times import kube_time_ns

EVENTS_GROUP = "events.k8s.io"


# ------------------------------------------------------------------------------------------------ the cursor


@runtime_checkable
class EventCursor(Protocol):
    async def emitted(self, cluster: str, uid: str) -> int:
        """The highest occurrence of Event ``uid`` already emitted (0: none)."""

    async def mark(self, cluster: str, uid: str, occurrence: int) -> None:
        """Remember that ``occurrence`` was emitted; never lowers what is stored."""

    async def close(self) -> None: ...


class MemoryEventCursor:
    """One process's cursor: bounded, entries expire after ``ttl_seconds``."""

    def __init__(
        self,
        ttl_seconds: float = 7200.0,
        max_entries: int = 200_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl_seconds
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], tuple[int, float]] = OrderedDict()

    async def emitted(self, cluster: str, uid: str) -> int:
        entry = self._entries.get((cluster, uid))
        if entry is None or entry[1] <= self._clock():
            return 0
        return entry[0]

    async def mark(self, cluster: str, uid: str, occurrence: int) -> None:
        key = (cluster, uid)
        current = await self.emitted(cluster, uid)
        self._entries.pop(key, None)
        self._entries[key] = (max(current, occurrence), self._clock() + self._ttl)
        now = self._clock()
        while self._entries:
            first_key, (_, expires) = next(iter(self._entries.items()))
            if expires > now and len(self._entries) <= self._max:
                break
            del self._entries[first_key]

    async def close(self) -> None:
        return None


# Atomic "store the maximum" so two replicas overlapping during a leader change cannot lower the cursor.
_MARK_MAX = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local wanted = tonumber(ARGV[1])
if wanted > current then current = wanted end
redis.call('SET', KEYS[1], current, 'PX', ARGV[2])
return current
"""


class RedisEventCursor:
    """The cursor in Redis (keys ``<prefix>eventcursor:<cluster>:<uid>``), shared by replicas and restarts."""

    def __init__(self, url: str, key_prefix: str = "kelemetry:", ttl_seconds: float = 7200.0) -> None:
        self._client = aioredis.from_url(url)
        self._prefix = key_prefix
        self._ttl_ms = max(1, int(ttl_seconds * 1000))

    def _key(self, cluster: str, uid: str) -> str:
        return f"{self._prefix}eventcursor:{cluster}:{uid}"

    async def emitted(self, cluster: str, uid: str) -> int:
        value = await self._client.get(self._key(cluster, uid))
        return int(value) if value is not None else 0

    async def mark(self, cluster: str, uid: str, occurrence: int) -> None:
        await self._client.eval(_MARK_MAX, 1, self._key(cluster, uid), occurrence, self._ttl_ms)

    async def close(self) -> None:
        await self._client.aclose()


_CURSOR_SCHEMA = """
CREATE TABLE IF NOT EXISTS event_cursor (
    cluster TEXT NOT NULL,
    uid TEXT NOT NULL,
    occurrence INTEGER NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (cluster, uid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS event_cursor_by_expiry ON event_cursor (expires);
"""

_CURSOR_MARK = """
INSERT INTO event_cursor (cluster, uid, occurrence, expires) VALUES (:cluster, :uid, :occurrence, :expires)
ON CONFLICT (cluster, uid) DO UPDATE SET
    -- an expired row must not keep its old occurrence through the max()
    occurrence = iif(event_cursor.expires <= :now, excluded.occurrence,
                     max(event_cursor.occurrence, excluded.occurrence)),
    expires = excluded.expires
"""


class SqliteEventCursor:
    """The cursor in a small SQLite file beside the embedded store, so one replica without Redis survives
    restarts. Every sqlite call runs on one dedicated thread; expiry uses the wall clock, which (unlike a
    monotonic clock) means the same thing after a restart."""

    def __init__(
        self,
        path: str | Path,
        ttl_seconds: float = 7200.0,
        *,
        purge_every: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self._ttl = ttl_seconds
        self._purge_every = purge_every
        self._clock = clock
        self._marks = 0
        self._db = SqliteFile(path, _CURSOR_SCHEMA, thread_name="event-cursor")

    async def open(self) -> SqliteEventCursor:
        await self._db.open()
        return self

    async def emitted(self, cluster: str, uid: str) -> int:
        return await self._db.run(self._emitted_sync, cluster, uid)

    def _emitted_sync(self, cluster: str, uid: str) -> int:
        row = (
            self._db.connection
            .execute(
                "SELECT occurrence FROM event_cursor WHERE cluster = ? AND uid = ? AND expires > ?",
                (cluster, uid, self._clock()),
            )
            .fetchone()
        )
        return int(row[0]) if row is not None else 0

    async def mark(self, cluster: str, uid: str, occurrence: int) -> None:
        await self._db.run(self._mark_sync, cluster, uid, occurrence)

    def _mark_sync(self, cluster: str, uid: str, occurrence: int) -> None:
        conn = self._db.connection
        now = self._clock()
        values = {"cluster": cluster, "uid": uid, "occurrence": occurrence, "expires": now + self._ttl, "now": now}
        conn.execute(_CURSOR_MARK, values)
        self._marks += 1
        if self._marks % self._purge_every == 0:
            conn.execute("DELETE FROM event_cursor WHERE expires <= ?", (now,))

    async def close(self) -> None:
        await self._db.close()


# ------------------------------------------------------------------------------------------------ parsing


def parse_time_ns(value: Any) -> int | None:
    """RFC 3339 (``2026-11-21T05:26:14.123456Z`` or whole seconds) to unix nanoseconds; None when absent."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return kube_time_ns(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


class EventView:
    """One Event read the same way whichever resource served it."""

    def __init__(self, obj: Mapping[str, Any], new_api: bool) -> None:
        metadata = _dict(obj.get("metadata"))
        self.record: dict[str, Any] | None = None  # the search record, when search or alerts want one
        self.uid = str(metadata.get("uid", ""))
        self.rv = str(metadata.get("resourceVersion", ""))
        self.namespace = str(metadata.get("namespace", ""))
        self.name = str(metadata.get("name", ""))
        series = _dict(obj.get("series"))
        if new_api:
            self.regarding = _dict(obj.get("regarding"))
            self.message = str(obj.get("note") or "")
            self.reporting_controller = str(obj.get("reportingController") or "")
            source = _dict(obj.get("deprecatedSource"))
            count = obj.get("deprecatedCount")
            first = obj.get("deprecatedFirstTimestamp")
            last = obj.get("deprecatedLastTimestamp")
        else:
            self.regarding = _dict(obj.get("involvedObject"))
            self.message = str(obj.get("message") or "")
            self.reporting_controller = str(obj.get("reportingComponent") or "")
            source = _dict(obj.get("source"))
            count = obj.get("count")
            first = obj.get("firstTimestamp")
            last = obj.get("lastTimestamp")
        self.reason = str(obj.get("reason") or "")
        self.type = str(obj.get("type") or "")
        self.action = str(obj.get("action") or "")
        component, host = str(source.get("component") or ""), str(source.get("host") or "")
        self.source = f"{component}/{host}" if component and host else component or host
        if not self.reporting_controller:
            self.reporting_controller = component
        series_count = series.get("count")
        if isinstance(series_count, int) and series_count > 0:
            self.occurrence = series_count
        elif isinstance(count, int) and count > 0:
            self.occurrence = count
        else:
            self.occurrence = 1
        event_time = parse_time_ns(obj.get("eventTime"))
        first_ns, last_ns = parse_time_ns(first), parse_time_ns(last)
        created = parse_time_ns(metadata.get("creationTimestamp"))
        candidates: tuple[int | None, ...]
        if self.occurrence > 1:
            # A repeat happened when it was last observed, not when the Event was first recorded.
            candidates = (
                parse_time_ns(series.get("lastObservedTime")),
                last_ns,
                event_time,
                first_ns,
                created,
            )
        else:
            candidates = (event_time, first_ns, last_ns, created)
        self.time_ns = next((t for t in candidates if t is not None), None)


_NEW_TO_CORE = (
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
    ("reportingController", "reportingComponent"),
)
_CORE_FIELDS = (
    "involvedObject", "reason", "message", "source", "firstTimestamp", "lastTimestamp", "count", "type",
    "eventTime", "series", "action", "related", "reportingComponent", "reportingInstance",
)


def event_record(obj: Mapping[str, Any], *, new_api: bool) -> dict[str, Any]:
    """The Event as a core/v1 Event (the search API's record shape) whichever resource served it, without
    managedFields."""
    metadata = {k: v for k, v in _dict(obj.get("metadata")).items() if k != "managedFields"}
    source = dict(obj)
    if new_api:
        for new, core in _NEW_TO_CORE:
            source[core] = obj.get(new)
    record: dict[str, Any] = {"kind": "Event", "apiVersion": "v1", "metadata": metadata}
    for name in _CORE_FIELDS:
        value = source.get(name)
        if value is not None:
            record[name] = value
    return record


# ------------------------------------------------------------------------------------------------ the tracker


@dataclass(slots=True)
class _Seen:
    """An Event a standby saw and the leader may not have emitted yet."""

    resource: str
    ref: ObjectRef
    view: EventView

    @property
    def size(self) -> int:
        return 400 + len(self.view.message)


class EventTracker:
    """A :class:`kelemetry_py.kube.watch.WatchHandler` for ``events`` and ``events.events.k8s.io``."""

    def __init__(
        self,
        sink: ObservationSink,
        metrics: Metrics,
        cursor: EventCursor | None = None,
        *,
        catalogs: CatalogSource | None = None,
        max_age_seconds: float = 3600.0,
        wall_clock_ns: Callable[[], int] = time.time_ns,
        max_backlog_bytes: int = 64 * 1024 * 1024,
        records: bool = False,
    ) -> None:
        self._records = records
        self._sink = sink
        self._metrics = metrics
        self._cursor: EventCursor = cursor if cursor is not None else MemoryEventCursor(max_age_seconds * 2)
        self._catalogs: CatalogSource = catalogs if catalogs is not None else ClusterCatalogs()
        self._max_age_ns = int(max_age_seconds * 1_000_000_000)
        self._wall_clock_ns = wall_clock_ns
        # (cluster, uid, occurrence) being emitted now: its twin from the other resource must not go too.
        self._inflight: set[tuple[str, str, int]] = set()
        self.emitted = 0
        self.skipped_old = 0
        self.skipped_seen = 0
        # Leadership per cluster (kelemetry_py.sources.watchers): a standby keeps the Events it saw, newest
        # last, until the leader's progress marks say they are handled; a bound on bytes caps it.
        self._standby: set[str] = set()
        self._backlog: dict[str, deque[_Seen]] = {}
        self._backlog_bytes = 0
        self._max_backlog_bytes = max_backlog_bytes
        metrics.watch_held_bytes.labels("events").set_function(lambda: self._backlog_bytes)
        self._handled: dict[str, dict[str, str]] = {}
        self.dropped = 0

    async def on_event(
        self,
        cluster: str,
        rtype: ResourceType,
        event_type: str,
        obj: dict[str, Any],
        *,
        relisted: bool,
    ) -> None:
        if event_type == "DELETED":
            return  # Events expire; the deletion of an Event is not news about its object
        view = EventView(obj, new_api=rtype.group == EVENTS_GROUP)
        if self._records:
            view.record = event_record(obj, new_api=rtype.group == EVENTS_GROUP)
        if not view.uid:
            raise ValueError(f"event {view.namespace}/{view.name} has no metadata.uid")
        ref = self.involved_ref(cluster, view)
        if ref is None:
            return
        if view.time_ns is not None and view.time_ns < self._wall_clock_ns() - self._max_age_ns:
            self.skipped_old += 1
            self._done(cluster, rtype.group_resource, view.rv)
            return
        if cluster in self._standby:
            self._keep(cluster, _Seen(rtype.group_resource, ref, view))
            return
        await self._emit_once(cluster, ref, view)
        self._done(cluster, rtype.group_resource, view.rv)

    async def _emit_once(self, cluster: str, ref: ObjectRef, view: EventView) -> None:
        token = (cluster, view.uid, view.occurrence)
        if token in self._inflight:
            self.skipped_seen += 1
            return
        # Taken before the cursor is asked: a cursor read yields (Redis, SQLite), and the twin from the other
        # Event resource must not slip through while it does.
        self._inflight.add(token)
        try:
            if await self._cursor.emitted(cluster, view.uid) >= view.occurrence:
                self.skipped_seen += 1
                return
            observation = self._observation(ref, view)
            observation.record = view.record
            await self._sink.submit([observation], wait=True)
            await self._cursor.mark(cluster, view.uid, view.occurrence)
            self.emitted += 1
        finally:
            self._inflight.discard(token)

    async def on_relist_done(self, cluster: str, rtype: ResourceType, present_uids: set[str]) -> None:
        return None  # an Event gone from a list expired; nothing happened to its object

    # ---- leadership

    def _done(self, cluster: str, resource: str, rv: str) -> None:
        if rv:
            self._handled.setdefault(cluster, {})[resource] = rv

    def _keep(self, cluster: str, seen: _Seen) -> None:
        backlog = self._backlog.setdefault(cluster, deque())
        backlog.append(seen)
        self._backlog_bytes += seen.size
        while self._backlog_bytes > self._max_backlog_bytes and backlog:
            self._backlog_bytes -= backlog.popleft().size
            self.dropped += 1
            self._metrics.watch_held_dropped.labels("events").inc()

    def leads(self, cluster: str) -> bool:
        return cluster not in self._standby

    def stand_by(self, cluster: str) -> None:
        self._standby.add(cluster)

    def progress(self, cluster: str) -> dict[str, str]:
        """Per Event resource, the newest resourceVersion up to which every Event of ``cluster`` is handled."""
        return dict(self._handled.get(cluster, {}))

    def trim(self, cluster: str, marks: Mapping[str, str]) -> int:
        backlog = self._backlog.get(cluster)
        if not backlog:
            return 0
        kept = deque(seen for seen in backlog if not handled_by(seen.view.rv, marks.get(seen.resource)))
        trimmed = len(backlog) - len(kept)
        self._backlog_bytes -= sum(seen.size for seen in backlog) - sum(seen.size for seen in kept)
        self._backlog[cluster] = kept
        return trimmed

    async def take_over(self, cluster: str, marks: Mapping[str, str]) -> int:
        """Lead ``cluster``: emit every Event seen since the previous leader's ``marks`` that the cursor does not
        already have. Returns how many were looked at again."""
        self.trim(cluster, marks)
        self._standby.discard(cluster)
        backlog = self._backlog.pop(cluster, deque())
        self._backlog_bytes -= sum(seen.size for seen in backlog)
        for seen in backlog:
            await self._emit_once(cluster, seen.ref, seen.view)
            self._done(cluster, seen.resource, seen.view.rv)
        return len(backlog)

    def involved_ref(self, cluster: str, view: EventView) -> ObjectRef | None:
        involved = view.regarding
        kind = str(involved.get("kind") or "")
        name = str(involved.get("name") or "")
        if not kind or not name:
            return None
        group, version = split_api_version(str(involved.get("apiVersion") or ""))
        info = self._catalogs.for_cluster(cluster).by_kind(group, kind, version or None)
        if info is not None:
            resource, namespaced, version = info.resource, info.namespaced, version or info.version
        else:
            resource, namespaced = guess_plural(kind), bool(involved.get("namespace"))
        namespace = str(involved.get("namespace") or "") if namespaced else ""
        uid = str(involved.get("uid") or "")
        if uid == name:
            uid = ""  # the kubelet names its node by name in the uid field; that is not a uid
        return ObjectRef(cluster, group, version, resource, namespace, name, uid)

    def _observation(self, ref: ObjectRef, view: EventView) -> Observation:
        time_ns = view.time_ns if view.time_ns is not None else self._wall_clock_ns()
        tags: Attributes = {
            "type": view.type,
            "reason": view.reason,
            "action": view.action,
            "reportingController": view.reporting_controller,
            "source": view.source,
            "count": view.occurrence,
            "eventName": f"{view.namespace}/{view.name}",
        }
        logs = [LogEntry(time_ns, "event", {"message": view.message})] if view.message else []
        return Observation(
            ref=ref,
            kind="event",
            title=view.reason or "event",
            start_ns=time_ns,
            end_ns=time_ns,
            tags=tags,
            logs=logs,
            dedup_key=f"event/{view.uid}/{view.occurrence}",
        )
