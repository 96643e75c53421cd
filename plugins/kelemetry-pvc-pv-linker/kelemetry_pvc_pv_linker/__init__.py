"""A kelemetry-py linker: a PersistentVolumeClaim and the PersistentVolume bound to it.

The volume is the claim's ``child`` (it is provisioned for, or bound to, the claim), link class ``volume``.
Both ends say so: a claim's ``spec.volumeName`` and a volume's ``spec.claimRef`` give the same link, so the
relation is known whichever object is seen first. Settings (``plugins.settings.pvc-pv``): ``link_class``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeGuard

from kelemetry_py.plugins import Link, ObjectRef

__all__ = ["PvcPvLinker"]

_CLAIMS = "persistentvolumeclaims"
_VOLUMES = "persistentvolumes"


class PvcPvLinker:
    name = "pvc-pv"

    def __init__(self, *, link_class: str = "volume") -> None:
        if not link_class:
            raise ValueError("link_class must not be empty")
        self.link_class = link_class

    async def links(self, ref: ObjectRef, body: Mapping[str, Any]) -> Sequence[Link]:
        if ref.group:
            return []
        spec = body.get("spec")
        if not isinstance(spec, Mapping):
            return []
        if ref.resource == _CLAIMS:
            volume = spec.get("volumeName")
            if not _valid_name(volume):
                return []  # not bound yet
            target = ObjectRef(ref.cluster, "", "v1", _VOLUMES, "", volume)
            return [Link(target=target, role="child", link_class=self.link_class)]
        if ref.resource == _VOLUMES:
            claim = spec.get("claimRef")
            if not isinstance(claim, Mapping):
                return []  # Available, not bound
            namespace, name = claim.get("namespace"), claim.get("name")
            kind = claim.get("kind", "PersistentVolumeClaim")
            if kind != "PersistentVolumeClaim" or not _valid_name(namespace) or not _valid_name(name):
                return []
            target = ObjectRef(ref.cluster, "", "v1", _CLAIMS, namespace, name, uid=_text(claim.get("uid")))
            return [Link(target=target, role="parent", link_class=self.link_class)]
        return []


def _valid_name(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and bool(value) and "/" not in value


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""
