"""Linkers relate objects (owner, parent-link annotation, plugins); the object graph keeps the live relations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from kelemetry_py.model import Link, ObjectRef

METADATA_ONLY = "metadata"


@runtime_checkable
class Linker(Protocol):
    """Maps an object to related objects. Registered under the ``kelemetry_py.linkers`` entry-point group.

    ``body`` is the redacted object as the observation saw it. Return an empty sequence when nothing applies.

    A linker that reads nothing of ``body`` but its ``metadata`` may say so with a class attribute
    ``reads = METADATA_ONLY``: when every linker does and no decorator is installed, audit observations carry only
    their objects' ``apiVersion``, ``kind`` and ``metadata`` through the observation log (bodies are never exported,
    so the spans are the same), which is less to write, keep and decode.
    """

    name: str

    async def links(self, ref: ObjectRef, body: Mapping[str, Any]) -> Sequence[Link]: ...
