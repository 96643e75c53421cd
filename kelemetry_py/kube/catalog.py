"""Which resources a cluster serves: kind <-> resource plural, version, scope and verbs, from API discovery.

Linkers need it to turn an ownerReference (``apiVersion`` + ``kind``) into an object key, and to know whether
the owner is cluster-scoped; watchers need it to know which resources can be listed and watched. A table
recorded from a Kubernetes v1.24 apiserver ships with the package (:meth:`ResourceCatalog.builtin`); watchers
refresh a per-cluster copy from the live apiserver through :class:`ClusterCatalogs`.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

_KUBE_VERSION = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")


class DiscoveryError(ValueError):
    """A discovery document does not have the shape of an APIResourceList / APIGroupList."""


@dataclass(frozen=True, slots=True)
class ResourceInfo:
    """One served resource in one group version."""

    group: str
    version: str
    resource: str  # the plural, as in URLs and audit objectRefs: "deployments"
    kind: str
    namespaced: bool
    verbs: frozenset[str] = frozenset()
    short_names: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def watchable(self) -> bool:
        """Whether a watcher can follow it with LIST + WATCH."""
        return {"list", "watch"} <= self.verbs

    @property
    def group_resource(self) -> str:
        """``resource.group`` (just ``resource`` for the core group), the spelling kube config filters use."""
        return f"{self.resource}.{self.group}" if self.group else self.resource


def split_api_version(api_version: str) -> tuple[str, str]:
    """``"apps/v1"`` -> ``("apps", "v1")``; ``"v1"`` -> ``("", "v1")``."""
    group, sep, version = api_version.rpartition("/")
    return (group, version) if sep else ("", api_version)


def version_priority(version: str) -> tuple[int, int, int, str]:
    """Kubernetes' version order (v2 > v1 > v1beta2 > v1beta1 > v1alpha1 > anything else); larger wins."""
    match = _KUBE_VERSION.match(version)
    if not match:
        return (0, 0, 0, version)
    major, stage, minor = match.groups()
    stage_rank = {"alpha": 1, "beta": 2, None: 3}[stage]
    return (stage_rank, int(major), int(minor or 0), version)


def guess_plural(kind: str) -> str:
    """The lowercase plural an unknown kind most likely has (the guess rules of kubectl's RESTMapper)."""
    lower = kind.lower()
    if not lower:
        return lower
    if lower.endswith(("s", "x", "z", "ch", "sh")):
        return lower + "es"
    if lower.endswith("y") and len(lower) > 1 and lower[-2] not in "aeiou":
        return lower[:-1] + "ies"
    return lower + "s"


class ResourceCatalog:
    """An immutable-by-swap index of served resources; lookups are dictionary reads."""

    def __init__(
        self, resources: Iterable[ResourceInfo] = (), preferred_versions: Mapping[str, str] | None = None
    ):
        self._install(list(resources), dict(preferred_versions or {}))

    def _install(self, resources: list[ResourceInfo], preferred: dict[str, str]) -> None:
        by_gvr: dict[tuple[str, str, str], ResourceInfo] = {}
        versions: dict[str, set[str]] = {}
        for info in resources:
            by_gvr[(info.group, info.version, info.resource)] = info
            versions.setdefault(info.group, set()).add(info.version)
        for group, served in versions.items():
            if preferred.get(group) not in served:
                preferred[group] = max(served, key=version_priority)
        # Per (group, resource) and (group, kind) keep the entry of the most preferred version that serves it.
        ranked = sorted(
            by_gvr.values(),
            key=lambda i: (i.version == preferred[i.group], version_priority(i.version)),
        )
        by_resource: dict[tuple[str, str], ResourceInfo] = {}
        by_kind: dict[tuple[str, str], ResourceInfo] = {}
        by_gvk: dict[tuple[str, str, str], ResourceInfo] = {}
        for info in ranked:  # ascending, so the best one is written last
            by_resource[(info.group, info.resource)] = info
            by_kind[(info.group, info.kind)] = info
            by_gvk[(info.group, info.version, info.kind)] = info
        # One assignment per index: a reader on the event loop never sees a half-built catalog.
        self._by_gvr, self._by_resource, self._by_kind, self._by_gvk = by_gvr, by_resource, by_kind, by_gvk
        self._preferred = preferred

    # construction
    @classmethod
    def builtin(cls) -> ResourceCatalog:
        """The resources of a stock Kubernetes v1.24 apiserver (recorded discovery shipped in the package)."""
        from kelemetry_py.kube import _builtin_resources as data

        # A fresh instance each time: callers may update() theirs without touching anyone else's.
        return cls(
            (
                ResourceInfo(
                    group, version, resource, kind, namespaced, frozenset(verbs.split()), tuple(short.split())
                )
                for group, version, resource, kind, namespaced, verbs, short in data.RESOURCES
            ),
            data.PREFERRED_VERSIONS,
        )

    @classmethod
    def from_discovery_dir(cls, path: str | Path) -> ResourceCatalog:
        """Build from saved ``api_v1.json``, ``apis.json`` and ``apis_<group>_<version>.json`` documents."""
        directory = Path(path)
        api_v1 = json.loads((directory / "api_v1.json").read_text())
        group_list_file = directory / "apis.json"
        group_list = json.loads(group_list_file.read_text()) if group_list_file.exists() else None
        group_versions = [json.loads(f.read_text()) for f in sorted(directory.glob("apis_*.json"))]
        return cls.from_discovery(api_v1, group_versions, group_list)

    @classmethod
    def from_discovery(
        cls,
        api_v1: Mapping[str, Any],
        group_versions: Sequence[Mapping[str, Any]],
        group_list: Mapping[str, Any] | None = None,
    ) -> ResourceCatalog:
        """Build from ``/api/v1`` and the ``/apis/<group>/<version>`` APIResourceLists.

        ``group_list`` (the ``/apis`` APIGroupList) supplies each group's preferred version; without it the
        highest version by Kubernetes' ordering is preferred.
        """
        resources = list(_resources_of(api_v1))
        for document in group_versions:
            resources.extend(_resources_of(document))
        return cls(resources, _preferred_versions(group_list) if group_list is not None else None)

    def update(
        self,
        api_v1: Mapping[str, Any],
        group_versions: Sequence[Mapping[str, Any]],
        group_list: Mapping[str, Any] | None = None,
    ) -> None:
        """Replace the contents with fresh discovery (resources no longer served disappear)."""
        fresh = ResourceCatalog.from_discovery(api_v1, group_versions, group_list)
        self._install(list(fresh), dict(fresh._preferred))

    def merge(self, other: ResourceCatalog) -> ResourceCatalog:
        """A new catalog with everything of both; ``other`` wins where both serve the same
        group/version/resource, and its preferred versions win."""
        combined = {**self._by_gvr, **other._by_gvr}
        return ResourceCatalog(combined.values(), {**self._preferred, **other._preferred})

    # lookups
    def for_cluster(self, cluster: str) -> ResourceCatalog:
        """A lone catalog answers for every cluster (:class:`ClusterCatalogs` keeps one per cluster)."""
        return self

    def by_kind(self, group: str, kind: str, version: str | None = None) -> ResourceInfo | None:
        """The resource of ``kind`` in ``group``: in ``version`` when served, else the preferred version."""
        if version:
            exact = self._by_gvk.get((group, version, kind))
            if exact is not None:
                return exact
        return self._by_kind.get((group, kind))

    def by_resource(self, group: str, resource: str, version: str | None = None) -> ResourceInfo | None:
        """``group``/``resource``: in ``version`` when it is served, else the preferred version."""
        if version:
            exact = self._by_gvr.get((group, version, resource))
            if exact is not None:
                return exact
        return self._by_resource.get((group, resource))

    def lookup(self, text: str) -> ResourceInfo | None:
        """Resolve what a user types: ``deployments``, ``deployment``, ``Deployment``, ``deploy`` or
        ``deployments.apps``. Core resources win a tie, as in kubectl."""
        wanted = text.strip()
        resource_part, _, group_part = wanted.partition(".")
        candidates = [(group_part, resource_part)] if group_part else []
        candidates.append(("", wanted))
        lowered = [(group, name.lower()) for group, name in candidates]
        for group, name in lowered:
            exact = self._by_resource.get((group, name))
            if exact is not None:
                return exact
        matches = [
            info
            for info in self.preferred()
            for group, name in lowered
            if (not group or info.group == group)
            and (name == info.kind.lower() or name in info.short_names or name == info.resource)
        ]
        if not matches:
            return None
        return min(matches, key=lambda i: (i.group != "", i.group))

    def preferred_version(self, group: str) -> str | None:
        return self._preferred.get(group)

    def preferred(self) -> list[ResourceInfo]:
        """Each resource once, in its preferred (or best served) version, sorted by group then resource."""
        return sorted(self._by_resource.values(), key=lambda i: (i.group, i.resource))

    def watchable(self) -> list[ResourceInfo]:
        """Resources a watcher can LIST + WATCH, each once in its preferred version."""
        return [info for info in self.preferred() if info.watchable]

    def __iter__(self) -> Iterator[ResourceInfo]:
        return iter(self._by_gvr.values())

    def __len__(self) -> int:
        return len(self._by_gvr)

    def __repr__(self) -> str:
        return f"ResourceCatalog({len(self)} resources in {len(self._preferred)} groups)"


@runtime_checkable
class CatalogSource(Protocol):
    """Hands out a cluster's catalog: a lone :class:`ResourceCatalog` or :class:`ClusterCatalogs`."""

    def for_cluster(self, cluster: str) -> ResourceCatalog: ...


class ClusterCatalogs:
    """One catalog per cluster, refreshed by watchers; undiscovered clusters use the fallback (builtin)."""

    def __init__(self, fallback: ResourceCatalog | None = None) -> None:
        self._fallback = fallback if fallback is not None else ResourceCatalog.builtin()
        self._clusters: dict[str, ResourceCatalog] = {}

    def for_cluster(self, cluster: str) -> ResourceCatalog:
        return self._clusters.get(cluster, self._fallback)

    def set(self, cluster: str, catalog: ResourceCatalog) -> None:
        """Use ``catalog`` for ``cluster``; kinds it lacks still resolve through the fallback."""
        self._clusters[cluster] = self._fallback.merge(catalog)

    def update_from_discovery(
        self,
        cluster: str,
        api_v1: Mapping[str, Any],
        group_versions: Sequence[Mapping[str, Any]],
        group_list: Mapping[str, Any] | None = None,
    ) -> ResourceCatalog:
        """Refresh ``cluster`` from live discovery documents and return its new catalog."""
        self.set(cluster, ResourceCatalog.from_discovery(api_v1, group_versions, group_list))
        return self._clusters[cluster]

    def forget(self, cluster: str) -> None:
        self._clusters.pop(cluster, None)

    def clusters(self) -> list[str]:
        return sorted(self._clusters)


def _resources_of(document: Mapping[str, Any]) -> Iterator[ResourceInfo]:
    group_version = document.get("groupVersion")
    entries = document.get("resources")
    if not isinstance(group_version, str) or not group_version or not isinstance(entries, list):
        raise DiscoveryError(
            f"not an APIResourceList (needs groupVersion and resources): kind={document.get('kind')!r}"
        )
    group, version = split_api_version(group_version)
    for entry in entries:
        if not isinstance(entry, Mapping):
            raise DiscoveryError(f"{group_version}: resource entry is not an object: {entry!r}")
        name, kind = entry.get("name"), entry.get("kind")
        if not isinstance(name, str) or not isinstance(kind, str) or not name or not kind:
            raise DiscoveryError(f"{group_version}: resource entry without name or kind: {entry!r}")
        if "/" in name:
            continue  # a subresource (pods/status, deployments/scale): not an object of its own
        verbs = entry.get("verbs") or []
        short_names = entry.get("shortNames") or []
        yield ResourceInfo(
            group=group,
            version=version,
            resource=name,
            kind=kind,
            namespaced=bool(entry.get("namespaced", False)),
            verbs=frozenset(str(v) for v in verbs),
            short_names=tuple(str(s) for s in short_names),
        )


def _preferred_versions(group_list: Mapping[str, Any]) -> dict[str, str]:
    groups = group_list.get("groups")
    if not isinstance(groups, list):
        raise DiscoveryError(f"not an APIGroupList (needs groups): kind={group_list.get('kind')!r}")
    preferred: dict[str, str] = {}
    for group in groups:
        name = group.get("name") if isinstance(group, Mapping) else None
        version = (group.get("preferredVersion") or {}).get("version") if isinstance(group, Mapping) else None
        if isinstance(name, str) and isinstance(version, str) and version:
            preferred[name] = version
    preferred.setdefault("", "v1")
    return preferred


def render_builtin_module(catalog: ResourceCatalog, source: str) -> str:
    """The text of ``_builtin_resources.py`` for ``catalog`` (regenerate with ``python -m
    kelemetry_py.kube.catalog DISCOVERY_DIR > kelemetry_py/kube/_builtin_resources.py``)."""
    lines = [
        f'"""Generated by kelemetry_py.kube.catalog from {source}; do not edit by hand."""',
        "# ruff: noqa: E501",
        "",
        "# (group, version, resource, kind, namespaced, verbs, short names)",
        "RESOURCES: tuple[tuple[str, str, str, str, bool, str, str], ...] = (",
    ]
    for info in sorted(catalog, key=lambda i: (i.group, i.version, i.resource)):
        row = (
            info.group,
            info.version,
            info.resource,
            info.kind,
            info.namespaced,
            " ".join(sorted(info.verbs)),
            " ".join(info.short_names),
        )
        lines.append(f"    {row!r},".replace("'", '"'))
    lines.append(")")
    lines.append("")
    lines.append("PREFERRED_VERSIONS: dict[str, str] = {")
    for group in sorted({i.group for i in catalog}):
        lines.append(f'    "{group}": "{catalog.preferred_version(group)}",')
    lines.append("}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    directory = Path(sys.argv[1])
    source = "/".join(directory.parts[-2:])
    print(render_builtin_module(ResourceCatalog.from_discovery_dir(directory), source), end="")
