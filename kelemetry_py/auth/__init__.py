"""Who is asking, and what they may see: the scope every read surface filters its answers by.

The auth middleware (``auth.mode``: none, token or kubernetes) puts a :class:`Scope` on each request; read
surfaces take it with :func:`request_scope` and keep only the objects it allows, so an object out of scope is
absent from every byte of an answer, not merely hidden.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from aiohttp import web

from kelemetry_py.model import ObjectRef


@dataclass(frozen=True, slots=True)
class StaticScope:
    """A scope that can be said as a filter (token mode; ``None`` for a field means any value)."""

    clusters: frozenset[str] | None
    namespaces: frozenset[str] | None
    cluster_scoped: bool


@runtime_checkable
class Scope(Protocol):
    user: str

    @property
    def sees_everything(self) -> bool:
        """True when no filtering is needed at all (auth off, or an admin)."""

    def static(self) -> StaticScope | None:
        """The scope as a filter a query can push down (SQL ``WHERE``), or None when only per-object checks
        (SubjectAccessReview) can tell."""

    async def allows(self, ref: ObjectRef) -> bool:
        """May the caller ``get`` this object?"""

    async def visible(self, refs: Iterable[ObjectRef]) -> set[ObjectRef]:
        """The subset of ``refs`` the caller may see (checked concurrently, decisions cached)."""

    def allows_cluster(self, cluster: str) -> bool:
        """May objects of this cluster be visible at all (what lists of clusters show)?"""


class _Everything:
    user = "anonymous"

    @property
    def sees_everything(self) -> bool:
        return True

    def static(self) -> StaticScope | None:
        return StaticScope(clusters=None, namespaces=None, cluster_scoped=True)

    async def allows(self, ref: ObjectRef) -> bool:
        return True

    async def visible(self, refs: Iterable[ObjectRef]) -> set[ObjectRef]:
        return set(refs)

    def allows_cluster(self, cluster: str) -> bool:
        return True


EVERYTHING: Scope = _Everything()
SCOPE_KEY = web.RequestKey("kelemetry_scope", Scope)


def request_scope(request: web.Request) -> Scope:
    """The caller's scope, as the auth middleware set it (everything when auth is off)."""
    scope = request.get(SCOPE_KEY)
    # Only a request no middleware scoped sees everything; a scope of the wrong shape is a bug, never "no limits".
    return EVERYTHING if scope is None else scope
