"""``auth.mode: kubernetes``: the cluster's own RBAC decides what a caller sees.

The caller's bearer token is checked with a TokenReview; every object an answer would show is checked with a
SubjectAccessReview for ``get`` on that object, as that user and its groups. Both decisions are cached for
``auth.kubernetes.cache_ttl_seconds``. Objects of clusters other than the reviewing one are not visible: an
identity from one cluster says nothing about another's RBAC.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from kelemetry_py.auth import Scope, StaticScope
from kelemetry_py.config import ClusterConfig, KubeConfig, KubernetesAuthConfig
from kelemetry_py.model import ObjectRef

log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")
_CONCURRENT_REVIEWS = 16


class AuthUnavailable(Exception):
    """The reviewing apiserver could not be asked; the request is answered 503, never let through."""


class TtlCache(Generic[K, V]):
    """A bounded map whose entries expire ``ttl`` seconds after they were put."""

    def __init__(self, ttl: float, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[key]
            return None
        return entry[1]

    def put(self, key: K, value: V) -> None:
        if self._ttl <= 0:
            return
        self._entries[key] = (self._clock() + self._ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)


@dataclass(frozen=True, slots=True)
class KubeUser:
    username: str
    uid: str
    groups: tuple[str, ...]
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()


class KubernetesScope:
    """What one authenticated Kubernetes user may ``get``, asked object by object (cached)."""

    def __init__(self, identity: KubeUser, authenticator: KubernetesAuthenticator) -> None:
        self.identity = identity
        self.user = identity.username
        self._authenticator = authenticator

    @property
    def sees_everything(self) -> bool:
        return False

    def static(self) -> StaticScope | None:
        return None

    def allows_cluster(self, cluster: str) -> bool:
        return cluster == self._authenticator.cluster

    async def allows(self, ref: ObjectRef) -> bool:
        if ref.cluster != self._authenticator.cluster:
            return False
        return await self._authenticator.may_get(self.identity, ref)

    async def may_get_path(self, path: str) -> bool:
        """A non-resource URL (``/metrics``), as RBAC's nonResourceURLs decide."""
        return await self._authenticator.may_get_path(self.identity, path)

    async def visible(self, refs: Iterable[ObjectRef]) -> set[ObjectRef]:
        wanted = list(dict.fromkeys(refs))
        limit = asyncio.Semaphore(_CONCURRENT_REVIEWS)

        async def check(ref: ObjectRef) -> bool:
            async with limit:
                return await self.allows(ref)

        verdicts = await asyncio.gather(*(check(ref) for ref in wanted))
        return {ref for ref, allowed in zip(wanted, verdicts, strict=True) if allowed}


class KubernetesAuthenticator:
    """TokenReview and SubjectAccessReview against one cluster's apiserver."""

    def __init__(self, config: KubernetesAuthConfig, client: Any) -> None:
        self.cluster = config.cluster
        self._client = client  # a KubeClient
        self._audiences = list(config.audiences)
        # Keyed by the token's digest; a one-tuple so that "not authenticated" is cached too.
        self._users: TtlCache[bytes, tuple[KubeUser | None]] = TtlCache(
            config.cache_ttl_seconds, config.cache_max_entries
        )
        self._decisions: TtlCache[tuple[KubeUser, str, str, str, str], bool] = TtlCache(
            config.cache_ttl_seconds, config.cache_max_entries
        )

    @classmethod
    async def connect(cls, config: KubernetesAuthConfig, kube: KubeConfig) -> KubernetesAuthenticator:
        from kelemetry_py.kube.client import KubeClient

        own = ClusterConfig(
            name=config.cluster, kubeconfig=config.kubeconfig, context=config.context, in_cluster=config.in_cluster
        )
        if not (config.kubeconfig or config.context or config.in_cluster):
            own = next(cluster for cluster in kube.clusters if cluster.name == config.cluster)
        return cls(config, await KubeClient.connect(own))

    async def close(self) -> None:
        await self._client.close()

    async def authenticate(self, token: str) -> Scope | None:
        digest = hashlib.sha256(token.encode()).digest()
        cached = self._users.get(digest)
        if cached is None:
            cached = (await self._review_token(token),)
            self._users.put(digest, cached)
        identity = cached[0]
        return KubernetesScope(identity, self) if identity is not None else None

    async def _review_token(self, token: str) -> KubeUser | None:
        spec: dict[str, Any] = {"token": token}
        if self._audiences:
            spec["audiences"] = self._audiences
        review = await self._post(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec},
        )
        status = review.get("status") or {}
        if not status.get("authenticated"):
            return None
        user = status.get("user") or {}
        extra = user.get("extra") or {}
        return KubeUser(
            username=str(user.get("username", "")),
            uid=str(user.get("uid", "")),
            groups=tuple(str(group) for group in user.get("groups") or ()),
            extra=tuple(sorted((str(k), tuple(str(v) for v in values)) for k, values in extra.items())),
        )

    async def may_get(self, identity: KubeUser, ref: ObjectRef) -> bool:
        key = (identity, ref.group, ref.resource, ref.namespace, ref.name)
        cached = self._decisions.get(key)
        if cached is not None:
            return cached
        attributes = {"verb": "get", "resource": ref.resource, "name": ref.name}
        if ref.group:
            attributes["group"] = ref.group
        if ref.namespace:
            attributes["namespace"] = ref.namespace
        allowed = await self._access_review(identity, {"resourceAttributes": attributes})
        if allowed is not None:
            self._decisions.put(key, allowed)
        return bool(allowed)

    async def may_get_path(self, identity: KubeUser, path: str) -> bool:
        key = (identity, "", "", "", path)
        cached = self._decisions.get(key)
        if cached is not None:
            return cached
        allowed = await self._access_review(identity, {"nonResourceAttributes": {"path": path, "verb": "get"}})
        if allowed is not None:
            self._decisions.put(key, allowed)
        return bool(allowed)

    async def _access_review(self, identity: KubeUser, attributes: dict[str, Any]) -> bool | None:
        """The verdict of a SubjectAccessReview, or None when it could not be asked (then the caller denies)."""
        spec: dict[str, Any] = {"user": identity.username, "groups": list(identity.groups), **attributes}
        if identity.uid:
            spec["uid"] = identity.uid
        if identity.extra:
            spec["extra"] = {key: list(values) for key, values in identity.extra}
        try:
            review = await self._post(
                "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec},
            )
        except AuthUnavailable:
            return None  # fail closed, and do not remember it
        return bool((review.get("status") or {}).get("allowed"))

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            result: dict[str, Any] = await self._client.request_json("POST", path, body=body, request_timeout=10.0)
        except Exception as exc:
            log.warning("auth: %s against cluster %s failed: %s", path.rsplit("/", 1)[-1], self.cluster, exc)
            raise AuthUnavailable(path) from None
        return result
