"""Linkers relate objects (owner, parent-link annotation, plugins); the object graph keeps the live relations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from kelemetry_py.model import Link, ObjectRef


@runtime_checkable
class Linker(Protocol):
    """Maps an object to related objects. Registered under the ``kelemetry_py.linkers`` entry-point group.

    ``body`` is the redacted object as the observation saw it. Return an empty sequence when nothing applies.
    """

    name: str

    async def links(self, ref: ObjectRef, body: Mapping[str, Any]) -> Sequence[Link]: ...
