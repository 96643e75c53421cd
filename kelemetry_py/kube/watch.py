"""The watch engine shared by the object differ and the event tracker: LIST, then WATCH from its version.

Per resource: a paginated LIST delivers every object (``relisted=True``) and ends with ``on_relist_done``;
then a WATCH with bookmarks follows from the list's resourceVersion. A dropped or timed-out watch resumes from
the last version handled; ``410 Gone`` (an ERROR watch event or an HTTP status) forces a fresh LIST; any other
error waits with exponential backoff and jitter. Memory per resource is the set of known uids (16 bytes each
for UUIDs) and one line buffer bounded by ``max_line_bytes``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import aiohttp
import orjson
from prometheus_client import Counter, Gauge

from kelemetry_py.kube.client import KubeApiError, KubeClient
from kelemetry_py.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    resource: str
    kind: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def collection_path(self) -> str:
        """The all-namespaces collection URL: ``/api/v1/pods``, ``/apis/apps/v1/deployments``."""
        prefix = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        return f"{prefix}/{self.resource}"

    @property
    def group_resource(self) -> str:
        return f"{self.resource}.{self.group}" if self.group else self.resource


def version_number(resource_version: str) -> int | None:
    """A resourceVersion as the number etcd serves (Kubernetes documents them as comparable since 1.33);
    None when it is not one, and the caller must not assume any order. ``N+deleted`` (a deletion found by a
    relist, see the differ) orders as ``N``."""
    digits = resource_version.partition("+")[0]
    return int(digits) if digits.isdigit() else None


def handled_by(resource_version: str, mark: str | None) -> bool:
    """Whether a change at ``resource_version`` is at or before ``mark`` (how far a leader handled its
    resource); when either is not a number, it is not known to be, and is handled again (at least once)."""
    if mark is None:
        return False
    ours, theirs = version_number(resource_version), version_number(mark)
    return ours is not None and theirs is not None and ours <= theirs


@runtime_checkable
class WatchHandler(Protocol):
    async def on_event(
        self, cluster: str, rtype: ResourceType, event_type: str, obj: dict[str, Any], *, relisted: bool
    ) -> None:
        """``event_type``: ADDED / MODIFIED / DELETED; ``relisted``: delivered by a (re)list, not a watch."""

    async def on_relist_done(self, cluster: str, rtype: ResourceType, present_uids: set[str]) -> None:
        """A (re)list is complete: objects whose uid is not in ``present_uids`` are gone."""


class Gone(Exception):
    """The requested resourceVersion is no longer available (HTTP 410): list again."""


class WatchStreamError(Exception):
    """The watch stream carried an ERROR event other than 410, or an unreadable line."""


@dataclass
class Backoff:
    """Exponential backoff with jitter: ``initial * factor**n`` up to ``maximum``, spread by ±``jitter``."""

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.2
    rand: Callable[[], float] = random.random
    attempts: int = 0

    def next_delay(self) -> float:
        base = min(self.maximum, self.initial * self.factor**self.attempts)
        self.attempts += 1
        return base * (1 - self.jitter + 2 * self.jitter * self.rand())

    def reset(self) -> None:
        self.attempts = 0


class WatchMetrics:
    """The engine's Prometheus series, registered once per app's :class:`Metrics` registry."""

    _by_registry: weakref.WeakKeyDictionary[Any, WatchMetrics] = weakref.WeakKeyDictionary()

    def __init__(self, metrics: Metrics) -> None:
        r = metrics.registry
        self.lag = metrics.watch_lag
        self.events = Counter(
            "kelemetry_watch_events",
            "Objects delivered to watch handlers",
            ["cluster", "resource", "type"],
            registry=r,
        )
        self.restarts = Counter(
            "kelemetry_watch_restarts",
            "Watch streams restarted",
            ["cluster", "resource", "reason"],
            registry=r,
        )
        self.handler_errors = Counter(
            "kelemetry_watch_handler_errors",
            "Exceptions raised by watch handlers",
            ["cluster", "resource"],
            registry=r,
        )
        self.objects = Gauge(
            "kelemetry_watched_objects",
            "Objects currently known per watched resource",
            ["cluster", "resource"],
            registry=r,
        )

    @classmethod
    def of(cls, metrics: Metrics) -> WatchMetrics:
        found = cls._by_registry.get(metrics.registry)
        if found is None:
            found = cls._by_registry[metrics.registry] = cls(metrics)
        return found


class UidSet:
    """The uids of the objects a resource watch knows, compactly: UUIDs as 16-byte values."""

    __slots__ = ("_uids",)

    def __init__(self) -> None:
        self._uids: set[bytes | str] = set()

    @staticmethod
    def _pack(uid: str) -> bytes | str:
        try:
            return uuid.UUID(uid).bytes
        except ValueError:
            return uid

    def add(self, uid: str) -> None:
        self._uids.add(self._pack(uid))

    def discard(self, uid: str) -> None:
        self._uids.discard(self._pack(uid))

    def __contains__(self, uid: object) -> bool:
        return isinstance(uid, str) and self._pack(uid) in self._uids

    def __len__(self) -> int:
        return len(self._uids)

    def replace(self, uids: set[str]) -> None:
        self._uids = {self._pack(uid) for uid in uids}


class ResourceWatch:
    """Follows one resource of one cluster until cancelled, feeding ``handler``."""

    def __init__(
        self,
        client: KubeClient,
        rtype: ResourceType,
        handler: WatchHandler,
        metrics: Metrics,
        *,
        page_size: int = 500,
        watch_timeout_seconds: tuple[float, float] = (300.0, 600.0),
        max_line_bytes: int = 16 * 1024 * 1024,
        backoff: Backoff | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        metadata_only: bool | None = None,
    ) -> None:
        self.client = client
        # Secrets are only ever read as PartialObjectMetadata: their data never crosses the wire.
        self.metadata_only = rtype.group_resource == "secrets" if metadata_only is None else metadata_only
        self.cluster = client.cluster
        self.rtype = rtype
        self.handler = handler
        self.page_size = page_size
        self.watch_timeout_seconds = watch_timeout_seconds
        self.max_line_bytes = max_line_bytes
        self.backoff = backoff or Backoff()
        self._sleep = sleep
        self._metrics = WatchMetrics.of(metrics)
        self.resource_version: str | None = None
        self.uids = UidSet()
        self.relists = 0
        # Set whenever a list or watch connection has been established; tests and readiness checks wait on it.
        self.synced = asyncio.Event()
        self.watching = asyncio.Event()
        # True from a failed attempt until the next successful list or watch: readiness reports it.
        self.down = False
        self._advanced = asyncio.Event()

    async def wait_for_version(self, resource_version: str) -> None:
        """Wait until everything up to ``resource_version`` has been handed to the handler."""
        while self.resource_version != resource_version:
            self._advanced.clear()
            await self._advanced.wait()

    def _advance(self, resource_version: str) -> None:
        self.resource_version = resource_version
        self._advanced.set()

    async def run(self) -> None:
        """List and watch forever; only cancellation ends it."""
        while True:
            try:
                if self.resource_version is None:
                    await self.relist()
                if await self.watch_once() == 0:
                    # A watch the server ends at once without a line must not turn into a busy loop.
                    await self._sleep(self.backoff.next_delay())
            except Gone:
                log.info(
                    "%s %s: resourceVersion %s expired, listing again",
                    self.cluster,
                    self.rtype.group_resource,
                    self.resource_version,
                )
                self._restart("gone")
                self.resource_version = None
            except (KubeApiError, WatchStreamError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                self.down = True
                self._restart("error")
                delay = self.backoff.next_delay()
                log.warning(
                    "%s %s: %s; retrying in %.2fs", self.cluster, self.rtype.group_resource, exc, delay
                )
                self.watching.clear()
                await self._sleep(delay)

    def _restart(self, reason: str) -> None:
        self.watching.clear()
        self._metrics.restarts.labels(self.cluster, self.rtype.group_resource, reason).inc()

    async def relist(self) -> None:
        """LIST every object page by page, deliver each, then report which uids exist."""
        present: set[str] = set()
        list_rv = ""
        continue_token = ""
        while True:
            query = {"limit": str(self.page_size)}
            if continue_token:
                query["continue"] = continue_token
            try:
                page = await self.client.get_json(
                    self.rtype.collection_path, query, accept=_accept(self.metadata_only, "PartialObjectMetadataList")
                )
            except KubeApiError as exc:
                if exc.status == 410 and continue_token:
                    # The snapshot behind the continue token was compacted: start the list over.
                    present.clear()
                    continue_token = ""
                    continue
                raise
            metadata = page.get("metadata") or {}
            if not continue_token:
                list_rv = str(metadata.get("resourceVersion") or "")
            for item in page.get("items") or []:
                item.setdefault("apiVersion", self.rtype.api_version)
                item.setdefault("kind", self.rtype.kind)
                uid = str((item.get("metadata") or {}).get("uid") or "")
                present.add(uid)
                event_type = "MODIFIED" if uid in self.uids else "ADDED"
                await self._deliver(event_type, item, relisted=True)
            continue_token = str(metadata.get("continue") or "")
            if not continue_token:
                break
        if not list_rv:
            raise WatchStreamError(f"LIST {self.rtype.collection_path} returned no resourceVersion")
        self.uids.replace(present)
        self._metrics.objects.labels(self.cluster, self.rtype.group_resource).set(len(self.uids))
        try:
            await self.handler.on_relist_done(self.cluster, self.rtype, present)
        except Exception:
            self._metrics.handler_errors.labels(self.cluster, self.rtype.group_resource).inc()
            log.exception("%s %s: on_relist_done failed", self.cluster, self.rtype.group_resource)
        self._advance(list_rv)
        self.relists += 1
        self.down = False
        self.synced.set()

    async def watch_once(self) -> int:
        """One WATCH connection from ``resource_version``; returns the lines read once the server ends it."""
        low, high = self.watch_timeout_seconds
        timeout = low + (high - low) * self.backoff.rand()
        query = {
            "watch": "true",
            "allowWatchBookmarks": "true",
            "resourceVersion": str(self.resource_version),
            "timeoutSeconds": str(int(timeout)),
        }
        try:
            async with self.client.stream(
                self.rtype.collection_path,
                query,
                read_timeout=timeout + 30,
                accept=_accept(self.metadata_only, "PartialObjectMetadata"),
            ) as response:
                self.down = False
                self.watching.set()
                lines = 0
                async for line in _lines(response.content, self.max_line_bytes):
                    await self._handle_line(line)
                    lines += 1
                    self.backoff.reset()
                return lines
        except KubeApiError as exc:
            if exc.status == 410:
                raise Gone(str(exc)) from exc
            raise
        finally:
            self.watching.clear()

    async def _handle_line(self, line: bytes) -> None:
        try:
            event = orjson.loads(line)
            event_type = event["type"]
            obj = event["object"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise WatchStreamError(f"unreadable watch line: {line[:200]!r}") from exc
        if event_type == "ERROR":
            code = obj.get("code") if isinstance(obj, dict) else None
            if code == 410:
                raise Gone(str(obj.get("message")))
            raise WatchStreamError(f"watch error: {obj}")
        rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        if event_type == "BOOKMARK":
            if rv:
                self._advance(rv)
            return
        if event_type not in ("ADDED", "MODIFIED", "DELETED"):
            raise WatchStreamError(f"unknown watch event type {event_type!r}")
        uid = str((obj.get("metadata") or {}).get("uid") or "")
        self._observe_lag(obj)
        await self._deliver(event_type, obj, relisted=False)
        if event_type == "DELETED":
            self.uids.discard(uid)
        else:
            self.uids.add(uid)
        self._metrics.objects.labels(self.cluster, self.rtype.group_resource).set(len(self.uids))
        if rv:
            self._advance(rv)

    def _observe_lag(self, obj: dict[str, Any]) -> None:
        """How late this change reached us: now minus the newest write time its managedFields record."""
        metadata = obj.get("metadata")
        fields = metadata.get("managedFields") if isinstance(metadata, dict) else None
        if not isinstance(fields, list):
            return
        times = [entry["time"] for entry in fields if isinstance(entry, dict) and isinstance(entry.get("time"), str)]
        if not times:
            return
        try:
            changed = datetime.fromisoformat(max(times).replace("Z", "+00:00"))
        except ValueError:
            return
        lag = max(0.0, time.time() - changed.timestamp())
        self._metrics.lag.labels(self.cluster).set(lag)

    async def _deliver(self, event_type: str, obj: dict[str, Any], *, relisted: bool) -> None:
        self._metrics.events.labels(self.cluster, self.rtype.group_resource, event_type).inc()
        try:
            await self.handler.on_event(self.cluster, self.rtype, event_type, obj, relisted=relisted)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A handler bug must not stall the resource for every other object: count it and go on.
            self._metrics.handler_errors.labels(self.cluster, self.rtype.group_resource).inc()
            log.exception("%s %s: handler failed on %s", self.cluster, self.rtype.group_resource, event_type)


def _accept(metadata_only: bool, kind: str) -> str:
    return f"application/json;as={kind};g=meta.k8s.io;v=v1" if metadata_only else "application/json"


async def _lines(stream: aiohttp.StreamReader, max_line_bytes: int) -> AsyncIterator[bytes]:
    """Split a chunked body into lines without aiohttp's 64 KiB line limit, up to ``max_line_bytes``."""
    buffer = bytearray()
    async for chunk in stream.iter_any():
        buffer.extend(chunk)
        while True:
            newline = buffer.find(b"\n")
            if newline < 0:
                break
            line = bytes(buffer[:newline])
            del buffer[: newline + 1]
            if line.strip():
                yield line
        if len(buffer) > max_line_bytes:
            raise WatchStreamError(f"watch line longer than {max_line_bytes} bytes")
    if buffer.strip():
        yield bytes(buffer)
