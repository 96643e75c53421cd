"""API discovery per cluster: which resources can be listed and watched, refreshed periodically and on demand.

Each refresh rebuilds the cluster's :class:`~kelemetry_py.kube.catalog.ResourceCatalog` (shared with the
linkers through :class:`~kelemetry_py.kube.catalog.ClusterCatalogs`) and publishes the watchable resources,
each once in its preferred version. A group version that fails to answer (an aggregated API that is down) is
left out of that round, as kubectl does, instead of failing discovery as a whole.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp

from kelemetry_py.config import KubeConfig
from kelemetry_py.kube.catalog import ClusterCatalogs, ResourceCatalog, ResourceInfo
from kelemetry_py.kube.client import KubeApiError, KubeClient
from kelemetry_py.kube.watch import ResourceType

log = logging.getLogger(__name__)


def resource_type_of(info: ResourceInfo) -> ResourceType:
    return ResourceType(info.group, info.version, info.resource, info.kind, info.namespaced)


@dataclass(frozen=True)
class ResourceSelector:
    """Include/exclude lists of ``resource`` (any group) or ``resource.group``; empty include: all."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, kube: KubeConfig) -> ResourceSelector:
        exclude = kube.exclude_resources
        if kube.watch_secret_metadata:  # the opt-in: Secrets watched, as metadata only (see ResourceWatch)
            exclude = [entry for entry in exclude if entry != "secrets"]
        return cls(tuple(kube.include_resources), tuple(exclude))

    @staticmethod
    def _matches(entries: Iterable[str], rtype: ResourceType) -> bool:
        return any(entry in (rtype.resource, rtype.group_resource) for entry in entries)

    def selects(self, rtype: ResourceType) -> bool:
        if self.include and not self._matches(self.include, rtype):
            return False
        return not self._matches(self.exclude, rtype)


async def fetch_catalog(client: KubeClient) -> ResourceCatalog:
    """Read ``/api/v1``, ``/apis`` and every served ``/apis/<group>/<version>``."""
    api_v1 = await client.get_json("/api/v1")
    group_list = await client.get_json("/apis")
    group_versions: list[dict[str, Any]] = []
    for group in group_list.get("groups") or []:
        for version in group.get("versions") or []:
            group_version = version.get("groupVersion")
            if not group_version:
                continue
            try:
                group_versions.append(await client.get_json(f"/apis/{group_version}"))
            except KubeApiError as exc:
                log.warning(
                    "%s: discovery of %s failed, skipped this round: %s", client.cluster, group_version, exc
                )
    return ResourceCatalog.from_discovery(api_v1, group_versions, group_list)


class Discovery:
    """Keeps one cluster's watchable resources current; waiters learn of every change."""

    def __init__(
        self,
        client: KubeClient,
        *,
        catalogs: ClusterCatalogs | None = None,
        interval_seconds: float = 300.0,
        retry_seconds: float = 10.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.client = client
        self.catalogs = catalogs
        self.interval_seconds = interval_seconds
        self.retry_seconds = retry_seconds
        self._sleep = sleep
        self.resources: tuple[ResourceType, ...] = ()
        self.generation = 0  # bumped whenever ``resources`` changes
        self.failing = False  # the last refresh failed
        self._changed = asyncio.Condition()
        self._refresh_requested = asyncio.Event()

    async def refresh(self) -> bool:
        """Discover now; True when the set of watchable resources changed."""
        catalog = await fetch_catalog(self.client)
        if self.catalogs is not None:
            self.catalogs.set(self.client.cluster, catalog)
        resources = tuple(resource_type_of(info) for info in catalog.watchable())
        if resources == self.resources:
            return False
        async with self._changed:
            self.resources = resources
            self.generation += 1
            self._changed.notify_all()
        log.info("%s: %d watchable resources discovered", self.client.cluster, len(resources))
        return True

    def request_refresh(self) -> None:
        """Ask for a refresh before the next period (e.g. a CustomResourceDefinition changed)."""
        self._refresh_requested.set()

    async def wait_for_change(self, seen_generation: int) -> int:
        """Wait until the resources differ from generation ``seen_generation``; returns the new generation."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.generation != seen_generation)
            return self.generation

    async def run(self) -> None:
        """Refresh every ``interval_seconds`` or sooner when asked; retry failures after ``retry_seconds``."""
        while True:
            self._refresh_requested.clear()
            try:
                await self.refresh()
                self.failing = False
                delay = self.interval_seconds
            except (KubeApiError, aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                log.warning("%s: discovery failed: %s", self.client.cluster, exc)
                self.failing = True
                delay = self.retry_seconds
            sleeper = asyncio.ensure_future(self._sleep(delay))
            requested = asyncio.ensure_future(self._refresh_requested.wait())
            try:
                await asyncio.wait({sleeper, requested}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                requested.cancel()
