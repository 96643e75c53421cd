"""Plugins a fake distribution registers in the registry tests (entry points point here)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from kelemetry_py.model import Link, ObjectRef


class RaisingLinker:
    name = "raising"

    async def links(self, ref: ObjectRef, body: Mapping[str, Any]) -> Sequence[Link]:
        raise RuntimeError(f"cannot link {ref.name}")


class HangingLinker:
    """Never answers until released."""

    name = "hanging"

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def links(self, ref: ObjectRef, body: Mapping[str, Any]) -> Sequence[Link]:
        self.entered.set()
        await self.release.wait()
        return []


class WrongResultLinker:
    name = "wrong-result"

    async def links(self, ref: ObjectRef, body: Mapping[str, Any]) -> Sequence[Link]:
        return ["not a link"]  # type: ignore[list-item]


class LabelLinker:
    """Links to the object named by a label; configurable through plugin settings."""

    def __init__(self, label: str = "parent", resource: str = "configmaps") -> None:
        self.label = label
        self.resource = resource

    async def links(self, ref: ObjectRef, body: Mapping[str, Any]) -> Sequence[Link]:
        name = body.get("metadata", {}).get("labels", {}).get(self.label)
        if not name:
            return []
        target = ObjectRef(ref.cluster, "", "v1", self.resource, ref.namespace, name)
        return [Link(target, "parent", "label")]


class NotALinker:
    name = "not-a-linker"


class Decorator:
    """A plugin of another group, to show load_plugins is not linker-specific."""

    def __init__(self, **options: Any) -> None:
        self.options = options
