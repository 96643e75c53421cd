"""Helpers for the differ/event tests: a collecting sink and readers of the recorded fixture streams."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from kelemetry_py.kube.watch import ResourceType
from kelemetry_py.model import Observation
from kelemetry_py.sources.diffcache import DiffRecord
from kelemetry_py.sources.diffcache.memory import MemoryDiffCache

DEPLOYMENTS = ResourceType("apps", "v1", "deployments", "Deployment", True)
REPLICASETS = ResourceType("apps", "v1", "replicasets", "ReplicaSet", True)
PODS = ResourceType("", "v1", "pods", "Pod", True)
SECRETS = ResourceType("", "v1", "secrets", "Secret", True)
CONFIGMAPS = ResourceType("", "v1", "configmaps", "ConfigMap", True)
CORE_EVENTS = ResourceType("", "v1", "events", "Event", True)
NEW_EVENTS = ResourceType("events.k8s.io", "v1", "events", "Event", True)
CLUSTER = "fixture"


class CollectingSink:
    """An ObservationSink that keeps everything it is given; ``arrived`` is set by every submit."""

    def __init__(self) -> None:
        self.observations: list[Observation] = []
        self.arrived = asyncio.Event()

    async def submit(self, observations: Sequence[Observation], *, wait: bool = False) -> None:
        self.observations.extend(observations)
        self.arrived.set()


class ObservedMemoryCache(MemoryDiffCache):
    """Tells the test when a lookup missed, i.e. when a waiter has registered and must be woken by a put."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.missed = asyncio.Event()

    def _lookup(self, key: tuple[str, str]) -> DiffRecord | None:
        found = super()._lookup(key)
        if found is None:
            self.missed.set()
        return found


def stream_name(rtype: ResourceType) -> str:
    return f"{rtype.group or 'core'}_{rtype.version}_{rtype.resource}"


def watch_lines(scenario_dir: Path, rtype: ResourceType) -> Iterator[tuple[str, dict[str, Any]]]:
    with (scenario_dir / "watch" / f"{stream_name(rtype)}.jsonl").open() as lines:
        for line in lines:
            event = json.loads(line)
            if event["type"] != "BOOKMARK":
                yield event["type"], event["object"]


def list_items(scenario_dir: Path, rtype: ResourceType) -> list[dict[str, Any]]:
    """LIST items with apiVersion/kind filled in, as the watch engine delivers them."""
    document = json.loads((scenario_dir / "list" / f"{stream_name(rtype)}.json").read_text())
    api_version = f"{rtype.group}/{rtype.version}" if rtype.group else rtype.version
    return [{"apiVersion": api_version, "kind": rtype.kind, **item} for item in document["items"]]


def audit_events(scenario_dir: Path) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    with (scenario_dir / "audit.jsonl").open() as lines:
        for line in lines:
            events.extend(json.loads(line)["items"])
    return events
