"""The ``parent-annotation`` linker: ``kelemetry.kubewharf.io/parent-link`` names the object's parent.

The annotation holds a JSON ObjectRef, ``{"cluster", "group", "version", "resource", "namespace", "name"}``.
An empty or missing ``cluster`` means the child's own cluster; another cluster's name links across clusters.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from kelemetry_py.kube.catalog import CatalogSource, ResourceCatalog
from kelemetry_py.linking import METADATA_ONLY
from kelemetry_py.model import Link, ObjectRef

logger = logging.getLogger(__name__)

PARENT_LINK_ANNOTATION = "kelemetry.kubewharf.io/parent-link"
LINK_CLASS = "annotation"
_REQUIRED_FIELDS = ("group", "version", "resource", "namespace", "name")


class ParentAnnotationLinker:
    """Links an object to the parent its annotation names. Bad annotations are logged at debug and ignored.

    With a ``catalog``, an empty ``version`` is filled with the resource's preferred version.
    """

    name = "parent-annotation"
    reads = METADATA_ONLY

    def __init__(
        self, catalog: CatalogSource | None = None, *, annotation: str = PARENT_LINK_ANNOTATION
    ) -> None:
        self._catalogs: CatalogSource = catalog if catalog is not None else ResourceCatalog.builtin()
        self._annotation = annotation

    async def links(self, ref: ObjectRef, body: Mapping[str, Any]) -> Sequence[Link]:
        target = self.parent_of(ref, body)
        return [] if target is None else [Link(target=target, role="parent", link_class=LINK_CLASS)]

    def parent_of(self, ref: ObjectRef, body: Mapping[str, Any]) -> ObjectRef | None:
        """The parent the annotation names, or None when there is none or it is unusable."""
        metadata = body.get("metadata")
        # Bodies come from JSON: the exact type checks first, as the Mapping ABC's costs several times more.
        annotations = metadata.get("annotations") if type(metadata) is dict or isinstance(metadata, Mapping) else None
        if annotations is None or not (type(annotations) is dict or isinstance(annotations, Mapping)):
            return None
        raw = annotations.get(self._annotation)
        if raw is None:
            return None
        if not isinstance(raw, str):
            logger.debug("%s: %s is not a string: %r", ref, self._annotation, raw)
            return None
        try:
            value = json.loads(raw)
        except ValueError as exc:
            logger.debug("%s: %s is not valid JSON (%s): %r", ref, self._annotation, exc, raw)
            return None
        if not isinstance(value, dict):
            logger.debug("%s: %s is not a JSON object: %r", ref, self._annotation, raw)
            return None
        problem = _problem_with(value)
        if problem:
            logger.debug("%s: %s %s: %r", ref, self._annotation, problem, raw)
            return None
        cluster = value.get("cluster") or ref.cluster
        version = value["version"]
        if not version:
            info = self._catalogs.for_cluster(cluster).by_resource(value["group"], value["resource"])
            version = info.version if info is not None else ""
        target = ObjectRef(
            cluster=cluster,
            group=value["group"],
            version=version,
            resource=value["resource"],
            namespace=value["namespace"],
            name=value["name"],
        )
        if target.key == ref.key:
            logger.debug("%s: %s names the object itself", ref, self._annotation)
            return None
        return target


def _problem_with(value: Mapping[str, Any]) -> str | None:
    missing = [name for name in _REQUIRED_FIELDS if name not in value]
    if missing:
        return f"lacks {', '.join(missing)}"
    for name in _REQUIRED_FIELDS:
        if not isinstance(value[name], str):
            return f"has a non-string {name}"
    if value.get("cluster") is not None and not isinstance(value["cluster"], str):
        return "has a non-string cluster"
    if not value["resource"] or not value["name"]:
        return "has an empty resource or name"
    # "/" separates the parts of an object key; only the name (the last part) may contain one.
    for name in ("cluster", "group", "resource", "namespace"):
        if "/" in (value.get(name) or ""):
            return f"has a '/' in {name}"
    return None
