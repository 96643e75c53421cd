"""Shared pieces of the kube tests: a recording watch handler and kubeconfig writing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kelemetry_py.kube.watch import ResourceType


@dataclass
class Delivered:
    cluster: str
    rtype: ResourceType
    event_type: str
    obj: dict[str, Any]
    relisted: bool

    @property
    def rv(self) -> str:
        return str(self.obj["metadata"]["resourceVersion"])

    @property
    def uid(self) -> str:
        return str(self.obj["metadata"]["uid"])


@dataclass
class RecordingHandler:
    """A WatchHandler that keeps everything it is given and lets tests wait for it."""

    events: list[Delivered] = field(default_factory=list)
    relists: list[tuple[str, ResourceType, set[str]]] = field(default_factory=list)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def on_event(
        self, cluster: str, rtype: ResourceType, event_type: str, obj: dict[str, Any], *, relisted: bool
    ) -> None:
        async with self._changed:
            self.events.append(Delivered(cluster, rtype, event_type, obj, relisted))
            self._changed.notify_all()

    async def on_relist_done(self, cluster: str, rtype: ResourceType, present_uids: set[str]) -> None:
        async with self._changed:
            self.relists.append((cluster, rtype, set(present_uids)))
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[RecordingHandler], bool], within: float = 10.0) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: predicate(self)), within)

    def watched(self, resource: str, *, relisted: bool | None = None) -> list[Delivered]:
        return [e for e in self.events if e.rtype.resource == resource and (relisted is None or e.relisted == relisted)]


def write_kubeconfig(path: Path, server: str, *, token: str = "", user: dict[str, Any] | None = None) -> Path:
    user_entry = user if user is not None else {"token": token}
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "double", "cluster": {"server": server}}],
        "users": [{"name": "watcher", "user": user_entry}],
        "contexts": [{"name": "fixture", "context": {"cluster": "double", "user": "watcher"}}],
        "current-context": "fixture",
    }
    path.write_text(yaml.safe_dump(document))
    return path


class SleepGate:
    """An injectable sleep: records every requested delay and returns at once, or waits for the test."""

    def __init__(self, hold: bool = False) -> None:
        self.delays: list[float] = []
        self.opened = asyncio.Event()
        self.asked = asyncio.Event()
        if not hold:
            self.opened.set()

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        self.asked.set()
        await self.opened.wait()


# ------------------------------------------------------------------------------------------------ whole Apps

WATCHED_CLUSTER = "fixture"
DOUBLE_TOKEN = "e2e-watcher-token"


def watcher_settings(directory: Path, double_url: str, **overrides: Any) -> dict[str, Any]:
    """App overrides that watch the double as cluster ``fixture``. Recorded Events are months old by the time
    a test runs on some machines, so the start-up age limit is lifted."""
    kubeconfig = write_kubeconfig(directory / "kubeconfig", double_url, token=DOUBLE_TOKEN)
    settings: dict[str, Any] = {
        "kube.clusters": [{"name": WATCHED_CLUSTER, "kubeconfig": str(kubeconfig)}],
        "kube.event_max_age_seconds": 10 * 365 * 86400.0,
        "kube.discovery_interval_seconds": 3600.0,
    }
    settings.update(overrides)
    return settings


def cluster_watchers(app: Any) -> Any:
    """The App's ClusterWatchers of the watched cluster."""
    assert app.watching is not None, "the App runs no watchers"
    return app.watching.service.clusters[WATCHED_CLUSTER]


async def all_watching(app: Any, kinds: tuple[str, ...] = ("objects", "events"), within: float = 15.0) -> int:
    """Wait until every engine of ``kinds`` has its watch open; returns how many engines that is."""
    cluster = cluster_watchers(app)
    engines = 0
    async with asyncio.timeout(within):
        for kind in kinds:
            await cluster.running[kind].wait()
            for engine in list(cluster.engines[kind].values()):
                await engine.watching.wait()
                engines += 1
    return engines


async def caught_up(app: Any, double: Any, within: float = 15.0) -> None:
    """Wait until every running engine has handed everything the double released to its handler."""
    cluster = cluster_watchers(app)
    async with asyncio.timeout(within):
        for engines in cluster.engines.values():
            for rtype, engine in list(engines.items()):
                await engine.wait_for_version(double.latest_version(rtype.group, rtype.version, rtype.resource))
