"""The watcher service: every configured cluster's resources feed the object differ, its Events the tracker.

Per cluster one :class:`~kelemetry_py.kube.discovery.Discovery` publishes the watchable resources, and per
watcher (``objects``, ``events``) a set of :class:`~kelemetry_py.kube.watch.ResourceWatch` engines follows
them, started and stopped as discovery changes. An engine that crashes is restarted with backoff.

With ``kube.leader_election`` every replica watches (warm standbys: the same informer and differ state as
the leader), and each (cluster, watcher) pair *emits* only on the replica holding its Lease,
``kelemetry-<watcher>-<cluster>`` in ``kube.lease_namespace``. The leader saves how far it has handled each
resource (:mod:`kelemetry_py.sources.progress`); a standby drops what those marks cover, and when it takes
over it emits everything after them from its own warm state. A stopping leader releases its Lease, so a
standby takes over within one retry period instead of a lease duration.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol, runtime_checkable

from kelemetry_py.config import Config
from kelemetry_py.kube.catalog import ClusterCatalogs
from kelemetry_py.kube.client import KubeClient, connect_clusters
from kelemetry_py.kube.discovery import Discovery, ResourceSelector
from kelemetry_py.kube.election import LeaderElector
from kelemetry_py.kube.watch import (
    Backoff,
    ResourceType,
    ResourceWatch,
    WatchHandler,
    WatchMetrics,
    version_number,
)
from kelemetry_py.metrics import Metrics
from kelemetry_py.pipeline import ObservationSink
from kelemetry_py.sources.progress import ProgressMarks
from kelemetry_py.sources.progress.memory import MemoryProgressMarks

log = logging.getLogger(__name__)

WatcherKind = Literal["objects", "events"]
HandlersFactory = Callable[[WatcherKind], WatchHandler | None]

EVENT_RESOURCES = ("events", "events.events.k8s.io")
# Resources whose changes change what discovery serves.
_API_DEFINITIONS = ("customresourcedefinitions.apiextensions.k8s.io", "apiservices.apiregistration.k8s.io")


@runtime_checkable
class LeaderAware(Protocol):
    """A watch handler that watches on standbys too and emits only where it leads (differ, event tracker)."""

    def stand_by(self, cluster: str) -> None: ...

    def progress(self, cluster: str) -> dict[str, str]: ...

    def trim(self, cluster: str, marks: Mapping[str, str]) -> int: ...

    async def take_over(self, cluster: str, marks: Mapping[str, str]) -> int: ...


def default_identity() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class _RefreshOnApiChange:
    """Passes events on, and asks discovery to refresh when a CRD or APIService changes."""

    def __init__(self, inner: WatchHandler, discovery: Discovery) -> None:
        self.inner = inner
        self.discovery = discovery

    async def on_event(
        self, cluster: str, rtype: ResourceType, event_type: str, obj: dict[str, Any], *, relisted: bool
    ) -> None:
        if not relisted and rtype.group_resource in _API_DEFINITIONS:
            self.discovery.request_refresh()
        await self.inner.on_event(cluster, rtype, event_type, obj, relisted=relisted)

    async def on_relist_done(self, cluster: str, rtype: ResourceType, present_uids: set[str]) -> None:
        await self.inner.on_relist_done(cluster, rtype, present_uids)


class ClusterWatchers:
    """Discovery plus the engines of one cluster."""

    def __init__(
        self,
        client: KubeClient,
        config: Config,
        handlers: Mapping[WatcherKind, WatchHandler],
        metrics: Metrics,
        *,
        catalogs: ClusterCatalogs | None = None,
        identity: str = "",
        engine_options: Mapping[str, Any] | None = None,
        progress: ProgressMarks | None = None,
    ) -> None:
        self.client = client
        self.cluster = client.cluster
        self.progress: ProgressMarks = progress if progress is not None else MemoryProgressMarks()
        self.leader_aware: dict[WatcherKind, LeaderAware] = {
            kind: handler for kind, handler in handlers.items() if isinstance(handler, LeaderAware)
        }
        self.config = config
        self.metrics = metrics
        self.discovery = Discovery(
            client, catalogs=catalogs, interval_seconds=config.kube.discovery_interval_seconds
        )
        self.handlers: dict[WatcherKind, WatchHandler] = {
            kind: _RefreshOnApiChange(handler, self.discovery) if kind == "objects" else handler
            for kind, handler in handlers.items()
        }
        self.selector = ResourceSelector.from_config(config.kube)
        self.identity = identity or config.kube.identity or default_identity()
        self.engine_options = dict(engine_options or {})
        # The engines running now, per watcher, for inspection.
        self.engines: dict[WatcherKind, dict[ResourceType, ResourceWatch]] = {kind: {} for kind in handlers}
        # Set while a watcher runs its engines (after discovery, on every replica), for tests and readiness.
        self.running: dict[WatcherKind, asyncio.Event] = {kind: asyncio.Event() for kind in handlers}
        # With leader election: one candidate per watcher, made up front so callers can follow them.
        self.electors: dict[WatcherKind, LeaderElector] = {}
        if config.kube.leader_election:
            for kind in handlers:
                self.electors[kind] = LeaderElector(
                    client,
                    namespace=config.kube.lease_namespace,
                    name=f"kelemetry-{kind}-{self.cluster}",
                    identity=self.identity,
                    lease_duration=config.kube.lease_duration_seconds,
                    renew_deadline=config.kube.renew_deadline(),
                    retry_period=config.kube.retry_period(),
                    wake_on_release=True,
                )
                if kind in self.leader_aware:
                    # Standby from the start: nothing is emitted before this replica holds the Lease.
                    self.leader_aware[kind].stand_by(self.cluster)
        self.crashed = False  # the cluster's watchers failed as a whole and wait to be restarted
        self._watch_metrics = WatchMetrics.of(metrics)
        metrics.leader.labels(self.cluster).set(0)
        metrics.watchers_up.labels(self.cluster).set_function(lambda: 1.0 if self.healthy else 0.0)

    @property
    def healthy(self) -> bool:
        """Every engine is connected or between two successful connections, and discovery has resources."""
        if self.crashed or (self.discovery.failing and not self.discovery.resources):
            return False
        return not any(engine.down for engines in self.engines.values() for engine in engines.values())

    def selected(self, kind: WatcherKind, resources: tuple[ResourceType, ...]) -> list[ResourceType]:
        if kind == "events":
            return [r for r in resources if r.group_resource in EVENT_RESOURCES]
        return [r for r in resources if self.selector.selects(r)]

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self.discovery.run())
            for kind in self.handlers:
                group.create_task(self._campaign(kind))

    async def _campaign(self, kind: WatcherKind) -> None:
        elector = self.electors.get(kind)
        if elector is None:
            await self._watch(kind)
            return
        if kind not in self.leader_aware:
            # A handler that cannot stand by watches on the leader only.
            await elector.run(lambda: self._lead_and_watch(kind, elector))
            return
        async with asyncio.TaskGroup() as group:
            group.create_task(self._watch(kind))
            group.create_task(elector.run(lambda: self._lead(kind, elector)))
            group.create_task(self._follow(kind, elector))

    async def _lead_and_watch(self, kind: WatcherKind, elector: LeaderElector) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._lead(kind, elector))
            group.create_task(self._watch(kind))

    async def _lead(self, kind: WatcherKind, elector: LeaderElector) -> None:
        """While this replica holds the Lease: resume after the previous leader's marks, then save ours."""
        handler = self.leader_aware.get(kind)
        previous = elector.previous_holder
        if previous is not None:
            self.metrics.leader_handovers.labels(self.cluster).inc()
        self.metrics.leader.labels(self.cluster).inc()
        try:
            marks = await self.progress.load(self.cluster, kind) if handler is not None else {}
            resumed = await handler.take_over(self.cluster, marks) if handler is not None else 0
            log.info(
                "%s took over the %s watcher of cluster %s from %s, resuming after resourceVersion %s "
                "(%d changes seen since then handed on)",
                self.identity,
                kind,
                self.cluster,
                previous or ("a released lease" if previous == "" else "nobody (a new lease)"),
                _newest(marks) or "none (no marks: everything this replica holds)",
                resumed,
            )
            while True:
                await asyncio.sleep(elector.retry_period)
                if handler is not None:
                    await self._save_quietly(kind, handler)
        finally:
            if handler is not None:
                handler.stand_by(self.cluster)
                # Shielded: saved on the way out, before the Lease is released, so the next leader starts
                # from here rather than from a retry period ago.
                await asyncio.shield(self._save_quietly(kind, handler))
            self.metrics.leader.labels(self.cluster).dec()

    async def _save_quietly(self, kind: WatcherKind, handler: LeaderAware) -> None:
        try:
            await self.progress.save(self.cluster, kind, handler.progress(self.cluster))
        except Exception as exc:
            log.warning("%s: cannot save the %s watcher's progress: %s", self.cluster, kind, exc)

    async def _follow(self, kind: WatcherKind, elector: LeaderElector) -> None:
        """While standing by: let go of what the leader's marks say it has handled, every retry period."""
        handler = self.leader_aware[kind]
        while True:
            await asyncio.sleep(elector.retry_period)
            if elector.is_leader:
                continue
            try:
                handler.trim(self.cluster, await self.progress.load(self.cluster, kind))
            except Exception as exc:
                log.warning("%s: cannot read the %s watcher's progress: %s", self.cluster, kind, exc)

    async def _keep_running(self, engine: ResourceWatch) -> None:
        """Run an engine; if it crashes (a bug, an answer it did not expect), restart it with backoff."""
        backoff = Backoff()
        while True:
            try:
                await engine.run()
            except Exception:
                _unless_cancelling()
                engine.down = True
                delay = backoff.next_delay()
                self._watch_metrics.restarts.labels(self.cluster, engine.rtype.group_resource, "crash").inc()
                log.exception(
                    "%s %s: watch crashed; restarting in %.2fs", self.cluster, engine.rtype.group_resource, delay
                )
                await asyncio.sleep(delay)

    async def _watch(self, kind: WatcherKind) -> None:
        """Run one engine per selected resource, following discovery's changes, until cancelled."""
        tasks: dict[ResourceType, asyncio.Task[None]] = {}
        engines = self.engines[kind]
        generation = 0
        try:
            while True:
                if self.discovery.generation == generation:
                    await self.discovery.wait_for_change(generation)
                generation = self.discovery.generation
                wanted = set(self.selected(kind, self.discovery.resources))
                for rtype in set(tasks) - wanted:
                    tasks.pop(rtype).cancel()
                    engines.pop(rtype, None)
                for rtype in wanted - set(tasks):
                    engine = ResourceWatch(
                        self.client, rtype, self.handlers[kind], self.metrics, **self.engine_options
                    )
                    engines[rtype] = engine
                    tasks[rtype] = asyncio.create_task(
                        self._keep_running(engine), name=f"watch {self.cluster} {rtype}"
                    )
                self.running[kind].set()
        finally:
            self.running[kind].clear()
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
            engines.clear()


class WatcherService:
    """Watches every configured cluster; ``start()`` returns at once, ``stop()`` ends everything."""

    def __init__(
        self,
        config: Config,
        sink: ObservationSink,
        metrics: Metrics,
        handlers_factory: HandlersFactory,
        *,
        clients: Mapping[str, KubeClient] | None = None,
        catalogs: ClusterCatalogs | None = None,
        identity: str = "",
        engine_options: Mapping[str, Any] | None = None,
        progress: ProgressMarks | None = None,
    ) -> None:
        self.config = config
        self.sink = sink  # kept for handlers that the factory builds around it
        self.metrics = metrics
        self.handlers_factory = handlers_factory
        self.catalogs = catalogs
        self.identity = identity or config.kube.identity or default_identity()
        self.engine_options = engine_options
        self._given_clients = dict(clients) if clients is not None else None
        self._clients: dict[str, KubeClient] = {}
        self.clusters: dict[str, ClusterWatchers] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.progress = progress

    @property
    def down(self) -> list[str]:
        """Clusters whose watchers are not all up."""
        return [name for name, cluster in self.clusters.items() if not cluster.healthy]

    async def start(self) -> None:
        handlers: dict[WatcherKind, WatchHandler] = {}
        if self.config.kube.watch_objects and (objects := self.handlers_factory("objects")) is not None:
            handlers["objects"] = objects
        if self.config.kube.watch_events and (events := self.handlers_factory("events")) is not None:
            handlers["events"] = events
        if self._given_clients is not None:
            self._clients = dict(self._given_clients)
        else:
            self._clients = await connect_clusters(self.config.kube)
        for name, client in self._clients.items():
            cluster = ClusterWatchers(
                client,
                self.config,
                handlers,
                self.metrics,
                catalogs=self.catalogs,
                identity=self.identity,
                engine_options=self.engine_options,
                progress=self.progress,
            )
            self.clusters[name] = cluster
            self._tasks.append(asyncio.create_task(self._run_cluster(cluster), name=f"watchers {name}"))

    async def _run_cluster(self, cluster: ClusterWatchers) -> None:
        """Run a cluster's watchers; when they fail as a whole, start them again with backoff."""
        backoff = Backoff()
        while True:
            try:
                await cluster.run()
            except Exception:
                _unless_cancelling()
                cluster.crashed = True
                delay = backoff.next_delay()
                log.exception("%s: watchers stopped; restarting in %.2fs", cluster.cluster, delay)
                await asyncio.sleep(delay)
                cluster.crashed = False

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._given_clients is None:
            for client in self._clients.values():
                await client.close()
        self._clients.clear()


def _newest(marks: Mapping[str, str]) -> str:
    """The most advanced of a leader's per-resource marks, for the log."""
    numbered = [(version_number(rv), rv) for rv in marks.values()]
    known = [(number, rv) for number, rv in numbered if number is not None]
    return max(known)[1] if known else ""


def _unless_cancelling() -> None:
    """Re-raise when the current task is being cancelled: an error raised while stopping is no crash to restart."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
