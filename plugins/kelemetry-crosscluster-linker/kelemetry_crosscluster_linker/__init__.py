"""A kelemetry-py linker for objects propagated from one cluster to another by a multi-cluster controller.

The convention (names configurable):

- label ``multicluster.kelemetry.io/origin-cluster: <cluster>``: this object is a copy of an object in
  ``<cluster>`` (a label, so ``kubectl get -l`` finds every propagated object);
- annotation ``multicluster.kelemetry.io/origin-name``: ``<namespace>/<name>``, or ``<name>`` for a cluster-scoped
  origin; absent, the origin has this object's namespace and name;
- annotation ``multicluster.kelemetry.io/origin-resource``: ``<resource>.<group>`` (``deployments.apps``,
  ``configmaps``); absent, the origin is of this object's resource.

The origin is the object's ``parent``, link class ``cross-cluster``. ``cluster_aliases`` maps label values to
the cluster names kelemetry-py uses, when the two differ.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from kelemetry_py.plugins import Link, ObjectRef

__all__ = ["CrossClusterLinker"]

logger = logging.getLogger(__name__)

PREFIX = "multicluster.kelemetry.io"


class CrossClusterLinker:
    name = "cross-cluster"

    def __init__(
        self,
        *,
        cluster_label: str = f"{PREFIX}/origin-cluster",
        name_annotation: str = f"{PREFIX}/origin-name",
        resource_annotation: str = f"{PREFIX}/origin-resource",
        cluster_aliases: Mapping[str, str] | None = None,
        link_class: str = "cross-cluster",
    ) -> None:
        if not cluster_label or not link_class:
            raise ValueError("cluster_label and link_class must not be empty")
        self.cluster_label = cluster_label
        self.name_annotation = name_annotation
        self.resource_annotation = resource_annotation
        self.cluster_aliases = dict(cluster_aliases or {})
        self.link_class = link_class

    async def links(self, ref: ObjectRef, body: Mapping[str, Any]) -> Sequence[Link]:
        origin = self.origin_of(ref, body)
        return [] if origin is None else [Link(target=origin, role="parent", link_class=self.link_class)]

    def origin_of(self, ref: ObjectRef, body: Mapping[str, Any]) -> ObjectRef | None:
        """The object this one was propagated from, or None (no label, or an unusable convention)."""
        metadata = body.get("metadata")
        if not isinstance(metadata, Mapping):
            return None
        labels = metadata.get("labels")
        cluster = labels.get(self.cluster_label) if isinstance(labels, Mapping) else None
        if not isinstance(cluster, str) or not cluster:
            return None
        cluster = self.cluster_aliases.get(cluster, cluster)
        annotations = metadata.get("annotations")
        if not isinstance(annotations, Mapping):
            annotations = {}
        namespace, name = ref.namespace, ref.name
        raw_name = annotations.get(self.name_annotation)
        if raw_name is not None:
            parsed = _namespace_and_name(raw_name)
            if parsed is None:
                logger.debug("%s: %s=%r is not <namespace>/<name> or <name>", ref, self.name_annotation, raw_name)
                return None
            namespace, name = parsed
        group, version, resource = ref.group, ref.version, ref.resource
        raw_resource = annotations.get(self.resource_annotation)
        if raw_resource is not None:
            if not isinstance(raw_resource, str) or not raw_resource or "/" in raw_resource:
                logger.debug("%s: %s=%r is not <resource>.<group>", ref, self.resource_annotation, raw_resource)
                return None
            resource, _, group = raw_resource.partition(".")
            if (group, resource) != (ref.group, ref.resource):
                version = ""  # another kind: its version in the other cluster is not known here
        if "/" in cluster:
            logger.debug("%s: origin cluster %r contains '/'", ref, cluster)
            return None
        origin = ObjectRef(cluster, group, version, resource, namespace, name)
        return None if origin.key == ref.key else origin


def _namespace_and_name(value: object) -> tuple[str, str] | None:
    if not isinstance(value, str) or not value:
        return None
    namespace, slash, name = value.rpartition("/")
    if slash and (not namespace or "/" in namespace):
        return None
    return (namespace, name) if name else None
