"""A kelemetry-py linker: each Pod is linked to the Node it is scheduled on (``spec.nodeName``).

The Node is the Pod's ``parent`` with link class ``node``, so a Node's trace lists the pods that ran on it and a
Pod's trace names its Node. Settings (``plugins.settings.pod-node``): ``link_class``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kelemetry_py.plugins import Link, ObjectRef

__all__ = ["PodNodeLinker"]


class PodNodeLinker:
    name = "pod-node"

    def __init__(self, *, link_class: str = "node") -> None:
        if not link_class:
            raise ValueError("link_class must not be empty")
        self.link_class = link_class

    async def links(self, ref: ObjectRef, body: Mapping[str, Any]) -> Sequence[Link]:
        if ref.group or ref.resource != "pods":
            return []
        spec = body.get("spec")
        node = spec.get("nodeName") if isinstance(spec, Mapping) else None
        if not isinstance(node, str) or not node or "/" in node:
            return []  # not scheduled yet (or not a valid node name)
        node_ref = ObjectRef(cluster=ref.cluster, group="", version="v1", resource="nodes", namespace="", name=node)
        return [Link(target=node_ref, role="parent", link_class=self.link_class)]
