"""The watcher service: every configured cluster's resources feed the object differ, its Events the tracker.

Per cluster one :class:`~kelemetry_py.kube.discovery.Discovery` publishes the watchable resources, and per
watcher (``objects``, ``events``) a set of :class:`~kelemetry_py.kube.watch.ResourceWatch` engines follows
them, started and stopped as discovery changes. With ``kube.leader_election`` each (cluster, watcher) pair
runs only on the replica holding its Lease, ``kelemetry-<watcher>-<cluster>`` in ``kube.lease_namespace``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Literal

from kelemetry_py.config import Config
from kelemetry_py.kube.catalog import ClusterCatalogs
from kelemetry_py.kube.client import KubeClient, connect_clusters
from kelemetry_py.kube.discovery import Discovery, ResourceSelector
from kelemetry_py.kube.election import LeaderElector
from kelemetry_py.kube.watch import ResourceType, ResourceWatch, WatchHandler
from kelemetry_py.metrics import Metrics
from kelemetry_py.pipeline import ObservationSink

log = logging.getLogger(__name__)

WatcherKind = Literal["objects", "events"]
HandlersFactory = Callable[[WatcherKind], WatchHandler | None]

EVENT_RESOURCES = ("events", "events.events.k8s.io")
# Resources whose changes change what discovery serves.
_API_DEFINITIONS = ("customresourcedefinitions.apiextensions.k8s.io", "apiservices.apiregistration.k8s.io")


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
    ) -> None:
        self.client = client
        self.cluster = client.cluster
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
        # Set while a watcher runs its engines (after discovery, and on the leader only), for tests and readiness.
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
                )

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
        await elector.run(lambda: self._watch(kind))

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
                    tasks[rtype] = asyncio.create_task(engine.run(), name=f"watch {self.cluster} {rtype}")
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
            )
            self.clusters[name] = cluster
            self._tasks.append(asyncio.create_task(self._run_cluster(cluster), name=f"watchers {name}"))

    async def _run_cluster(self, cluster: ClusterWatchers) -> None:
        try:
            await cluster.run()
        except asyncio.CancelledError:
            raise
        except BaseException:
            log.exception("%s: watchers stopped", cluster.cluster)
            raise

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._given_clients is None:
            for client in self._clients.values():
                await client.close()
        self._clients.clear()
