"""The ``owner-references`` linker: every ``metadata.ownerReferences`` entry is a parent of the object."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from kelemetry_py.kube.catalog import CatalogSource, ResourceCatalog, guess_plural, split_api_version
from kelemetry_py.linking import METADATA_ONLY
from kelemetry_py.model import Link, ObjectRef

logger = logging.getLogger(__name__)

LINK_CLASS = "owner"
_MEMO_SIZE = 50_000  # ownerReferences remembered; cleared when full


class OwnerReferenceLinker:
    """Links an object to its owners (controller and non-controller), resolved through API discovery.

    ``catalog`` is a :class:`ResourceCatalog` or per-cluster :class:`ClusterCatalogs`; without one the builtin
    Kubernetes catalog is used. ``controller_only`` keeps just the ``controller: true`` owner.
    """

    name = "owner-references"
    reads = METADATA_ONLY

    def __init__(self, catalog: CatalogSource | None = None, *, controller_only: bool = False) -> None:
        self._catalogs: CatalogSource = catalog if catalog is not None else ResourceCatalog.builtin()
        self._controller_only = controller_only
        self._memo: dict[tuple[Any, ...], tuple[ResourceCatalog, Link | None]] = {}

    async def links(self, ref: ObjectRef, body: Mapping[str, Any]) -> Sequence[Link]:
        return self.owner_links(ref, body)

    def owner_links(self, ref: ObjectRef, body: Mapping[str, Any]) -> list[Link]:
        """The synchronous core of :meth:`links` (pure dictionary work, no I/O)."""
        metadata = body.get("metadata")
        # Bodies come from JSON: the exact type check first, as the Mapping ABC's costs several times more.
        owners = metadata.get("ownerReferences") if type(metadata) is dict or isinstance(metadata, Mapping) else None
        if not owners:
            return []
        if not isinstance(owners, list):
            logger.debug("%s: ownerReferences is not a list: %r", ref, owners)
            return []
        catalog = self._catalogs.for_cluster(ref.cluster)
        links: list[Link] = []
        seen: set[str] = set()
        for owner in owners:
            link = self._link(ref, owner, catalog)
            if link is None:
                continue
            key = link.target.key
            if key in seen or key == ref.key:
                continue
            seen.add(key)
            links.append(link)
        return links

    def _link(self, ref: ObjectRef, owner: Any, catalog: ResourceCatalog) -> Link | None:
        """The link an ownerReference makes, remembered: the Pods of one ReplicaSet, and every status update of
        each, name the same owner, and resolving it builds two frozen objects and asks the catalog."""
        memo_key: tuple[Any, ...] | None = None
        if type(owner) is dict:
            memo_key = (
                ref.cluster,
                ref.namespace,
                owner.get("apiVersion"),
                owner.get("kind"),
                owner.get("name"),
                owner.get("uid"),
                owner.get("controller") is True,
            )
            try:
                cached = self._memo.get(memo_key)
            except TypeError:  # a value no apiserver sends (a list for a name): resolved, and refused, below
                memo_key, cached = None, None
            if cached is not None and cached[0] is catalog:  # a refreshed catalog may resolve it otherwise
                return cached[1]
        target = self._resolve(ref, owner, catalog)
        link = None if target is None else Link(target=target, role="parent", link_class=LINK_CLASS)
        if memo_key is not None:
            if len(self._memo) >= _MEMO_SIZE:
                self._memo.clear()
            self._memo[memo_key] = (catalog, link)
        return link

    def _resolve(self, ref: ObjectRef, owner: Any, catalog: ResourceCatalog) -> ObjectRef | None:
        if not isinstance(owner, Mapping):
            logger.debug("%s: ownerReference is not an object: %r", ref, owner)
            return None
        api_version, kind, name = owner.get("apiVersion"), owner.get("kind"), owner.get("name")
        if not all(isinstance(value, str) and value for value in (api_version, kind, name)):
            logger.debug("%s: ownerReference lacks apiVersion, kind or name: %r", ref, owner)
            return None
        assert isinstance(api_version, str) and isinstance(kind, str) and isinstance(name, str)
        if self._controller_only and owner.get("controller") is not True:
            return None
        group, version = split_api_version(api_version)
        info = catalog.by_kind(group, kind, version)
        if info is not None:
            resource, namespaced = info.resource, info.namespaced
        else:
            # Not served as far as we know (e.g. a CRD discovery has not caught up with). Kubernetes lets a
            # namespaced object be owned only within its own namespace, the best guess for a namespaced child.
            resource, namespaced = guess_plural(kind), bool(ref.namespace)
            logger.debug("%s: owner kind %s/%s unknown; guessing resource %r", ref, group, kind, resource)
        uid = owner.get("uid")
        return ObjectRef(
            cluster=ref.cluster,
            group=group,
            version=version,
            resource=resource,
            # A cluster-scoped owner (ClusterRole, Node, PV...) has no namespace, whatever the child has.
            namespace=ref.namespace if namespaced else "",
            name=name,
            uid=uid if isinstance(uid, str) else "",
        )
