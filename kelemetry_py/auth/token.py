"""``auth.mode: token``: static bearer tokens, each with a user name and a scope said as clusters and namespaces."""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from kelemetry_py.auth import Scope, StaticScope
from kelemetry_py.config import AuthToken
from kelemetry_py.model import ObjectRef

ALL = "*"


@dataclass(slots=True)
class TokenScope:
    """A scope that is a filter: clusters, namespaces (None = any) and whether cluster-scoped objects count."""

    user: str
    scope: StaticScope

    @property
    def sees_everything(self) -> bool:
        return self.scope.clusters is None and self.scope.namespaces is None and self.scope.cluster_scoped

    def static(self) -> StaticScope | None:
        return self.scope

    def allows_cluster(self, cluster: str) -> bool:
        return self.scope.clusters is None or cluster in self.scope.clusters

    def permits(self, ref: ObjectRef) -> bool:
        if not self.allows_cluster(ref.cluster):
            return False
        if not ref.namespace:
            return self.scope.cluster_scoped
        return self.scope.namespaces is None or ref.namespace in self.scope.namespaces

    async def allows(self, ref: ObjectRef) -> bool:
        return self.permits(ref)

    async def visible(self, refs: Iterable[ObjectRef]) -> set[ObjectRef]:
        return {ref for ref in refs if self.permits(ref)}


def _names(values: list[str]) -> frozenset[str] | None:
    return None if ALL in values else frozenset(values)


class TokenAuthenticator:
    """Looks a bearer token up among the configured ones (constant-time comparison)."""

    def __init__(self, tokens: Iterable[AuthToken]) -> None:
        self._tokens = [
            (
                token.token.encode(),
                TokenScope(
                    token.user,
                    StaticScope(_names(token.clusters), _names(token.namespaces), token.cluster_scoped),
                ),
            )
            for token in tokens
        ]

    async def authenticate(self, token: str) -> Scope | None:
        presented = token.encode()
        found: Scope | None = None
        for secret, scope in self._tokens:
            if hmac.compare_digest(presented, secret):  # every token is compared: no early exit to time
                found = scope
        return found

    async def close(self) -> None:
        return None
