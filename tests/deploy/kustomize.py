"""A small Kustomize renderer: exactly the features deploy/ uses, and an error for any other.

Why our own: the tests must run where no kustomize/kubectl binary can be installed. It implements
- ``resources`` (YAML files, and directories holding a kustomization.yaml) and ``components``;
- ``patches`` with ``path`` (strategic merge: maps merge, ``null`` deletes a key, lists of containers, env,
  volumes, mounts and ports merge by their key with new items first, as kustomize orders them; other lists are
  replaced);
- ``namespace`` (set on every namespaced object of that kustomization and below) and ``labels`` with ``pairs``
  (metadata labels only, never selectors).
Output matches ``kubectl kustomize`` (v5) for deploy/ object for object.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

KNOWN_FIELDS = {"apiVersion", "kind", "namespace", "labels", "resources", "components", "patches"}
# The strategic-merge keys of the list fields deploy/ patches.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "volumeClaimTemplates": "metadata.name",
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass"}


class KustomizeError(ValueError):
    pass


def render(directory: Path) -> list[dict[str, Any]]:
    return _render(directory.resolve(), expect_kind="Kustomization")


def _render(directory: Path, expect_kind: str) -> list[dict[str, Any]]:
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(spec) - KNOWN_FIELDS
    if unknown:
        raise KustomizeError(f"{directory}: fields this renderer does not implement: {sorted(unknown)}")
    if spec.get("kind", "Kustomization") != expect_kind:
        raise KustomizeError(f"{directory}: expected a {expect_kind}, found {spec.get('kind')}")
    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        if path.is_dir():
            objects.extend(_render(path.resolve(), "Kustomization"))
        else:
            objects.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    for entry in spec.get("components", []):
        objects = _apply_component((directory / entry).resolve(), objects)
    _apply_own(directory, spec, objects)
    _check_unique(objects)
    return objects


def _apply_component(directory: Path, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # A component adds its resources to, and patches, what the including kustomization has so far.
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    if spec.get("kind") != "Component":
        raise KustomizeError(f"{directory}: expected a Component, found {spec.get('kind')}")
    unknown = set(spec) - KNOWN_FIELDS
    if unknown:
        raise KustomizeError(f"{directory}: fields this renderer does not implement: {sorted(unknown)}")
    objects = list(objects)
    for entry in spec.get("resources", []):
        objects.extend(doc for doc in yaml.safe_load_all((directory / entry).read_text()) if doc)
    _apply_own(directory, spec, objects)
    return objects


def _apply_own(directory: Path, spec: dict[str, Any], objects: list[dict[str, Any]]) -> None:
    for patch in spec.get("patches", []):
        if set(patch) != {"path"}:
            raise KustomizeError(f"{directory}: only patches with a path are implemented, not {patch}")
        for document in yaml.safe_load_all((directory / patch["path"]).read_text()):
            target = _find(objects, document)
            merged = strategic_merge(copy.deepcopy(target), document)
            target.clear()
            target.update(merged)
    namespace = spec.get("namespace")
    for obj in objects:
        if namespace and obj["kind"] not in CLUSTER_SCOPED:
            obj.setdefault("metadata", {})["namespace"] = namespace
        for labels in spec.get("labels", []):
            if set(labels) - {"pairs"}:
                raise KustomizeError(f"{directory}: only labels.pairs is implemented, not {labels}")
            obj.setdefault("metadata", {}).setdefault("labels", {}).update(labels["pairs"])


def _find(objects: list[dict[str, Any]], document: dict[str, Any]) -> dict[str, Any]:
    kind, name = document["kind"], document["metadata"]["name"]
    found = [obj for obj in objects if obj["kind"] == kind and obj["metadata"]["name"] == name]
    if len(found) != 1:
        raise KustomizeError(f"patch target {kind}/{name}: {len(found)} matches")
    return found[0]


def _check_unique(objects: list[dict[str, Any]]) -> None:
    seen: set[tuple[str, str, str]] = set()
    for obj in objects:
        key = (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        if key in seen:
            raise KustomizeError(f"{key} is defined twice")
        seen.add(key)


def strategic_merge(base: Any, patch: Any, field: str = "") -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value, key)
            else:
                merged[key] = value
        return merged
    if isinstance(base, list) and isinstance(patch, list) and field in MERGE_KEYS:
        key = MERGE_KEYS[field]
        originals = {_key(item, key): item for item in base}
        added = [item for item in patch if _key(item, key) not in originals]
        patched = {_key(item, key): item for item in patch}
        kept = [
            strategic_merge(item, patched[_key(item, key)], "") if _key(item, key) in patched else item
            for item in base
        ]
        return added + kept
    return patch


def _key(item: dict[str, Any], dotted: str) -> Any:
    value: Any = item
    for part in dotted.split("."):
        value = value[part]
    return value
