from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kelemetry_py.kube import ClusterCatalogs, DiscoveryError, ResourceCatalog, guess_plural
from kelemetry_py.kube.catalog import render_builtin_module, version_priority

WIDGETS: dict[str, Any] = {
    "kind": "APIResourceList",
    "groupVersion": "example.com/v1",
    "resources": [
        {"name": "widgets", "namespaced": False, "kind": "Widget", "verbs": ["get", "list", "watch"]},
        {"name": "widgets/status", "namespaced": False, "kind": "Widget", "verbs": ["get", "patch"]},
    ],
}


@pytest.fixture(scope="module")
def discovery_dir(fixtures_dir: Path) -> Path:
    return fixtures_dir / "deployment-lifecycle" / "discovery"


def _load(directory: Path, name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((directory / name).read_text())
    return document


def test_builtin_table_is_the_recorded_discovery(discovery_dir: Path) -> None:
    recorded = ResourceCatalog.from_discovery_dir(discovery_dir)
    builtin = ResourceCatalog.builtin()
    assert set(builtin) == set(recorded)
    groups = {info.group for info in recorded}
    assert {g: builtin.preferred_version(g) for g in groups} == {
        g: recorded.preferred_version(g) for g in groups
    }
    # The committed module is exactly what the generator writes for the recording.
    module = Path(__file__).parents[2] / "kelemetry_py" / "kube" / "_builtin_resources.py"
    rendered = render_builtin_module(recorded, "deployment-lifecycle/discovery")
    assert module.read_text() == rendered


def test_resources_of_every_recorded_stream_are_known(fixtures_dir: Path) -> None:
    catalog = ResourceCatalog.builtin()
    streams = sorted(p.stem for p in (fixtures_dir / "deployment-lifecycle" / "list").glob("*.json"))
    assert len(streams) == 20
    for stream in streams:
        group, version, resource = stream.split("_")
        info = catalog.by_resource("" if group == "core" else group, resource, version)
        assert info is not None, stream
        assert info.version == version
        assert info.watchable, stream


def test_scope_kind_and_resource_lookups() -> None:
    catalog = ResourceCatalog.builtin()
    cluster_role = catalog.by_kind("rbac.authorization.k8s.io", "ClusterRole")
    assert cluster_role is not None
    assert (cluster_role.resource, cluster_role.namespaced) == ("clusterroles", False)
    for group, kind in [
        ("", "Node"),
        ("", "Namespace"),
        ("", "PersistentVolume"),
        ("storage.k8s.io", "StorageClass"),
    ]:
        info = catalog.by_kind(group, kind)
        assert info is not None and not info.namespaced, kind
    for group, kind, resource in [
        ("", "ConfigMap", "configmaps"),
        ("apps", "ReplicaSet", "replicasets"),
        ("discovery.k8s.io", "EndpointSlice", "endpointslices"),
        ("", "Endpoints", "endpoints"),
    ]:
        info = catalog.by_kind(group, kind)
        assert info is not None and info.namespaced and info.resource == resource, kind
    pods = catalog.by_resource("", "pods")
    assert pods is not None and pods.kind == "Pod" and pods.api_version == "v1"
    assert catalog.by_kind("", "Deployment") is None  # kinds are per group
    assert catalog.by_resource("", "pods/status") is None  # subresources are not objects


def test_versions_prefer_the_served_one_then_the_preferred_one() -> None:
    catalog = ResourceCatalog.builtin()
    hpa_v1 = catalog.by_kind("autoscaling", "HorizontalPodAutoscaler", "v1")
    hpa_default = catalog.by_kind("autoscaling", "HorizontalPodAutoscaler")
    hpa_unserved = catalog.by_kind("autoscaling", "HorizontalPodAutoscaler", "v9")
    assert hpa_v1 is not None and hpa_v1.version == "v1"
    assert hpa_default is not None and hpa_default.version == "v2"
    assert hpa_unserved is not None and hpa_unserved.version == "v2"
    events = catalog.by_resource("events.k8s.io", "events")
    assert events is not None and events.version == "v1"


def test_without_group_list_the_highest_kubernetes_version_is_preferred(discovery_dir: Path) -> None:
    versions = [_load(discovery_dir, f.name) for f in sorted(discovery_dir.glob("apis_*.json"))]
    catalog = ResourceCatalog.from_discovery(_load(discovery_dir, "api_v1.json"), versions)
    assert catalog.preferred_version("autoscaling") == "v2"
    assert catalog.preferred_version("flowcontrol.apiserver.k8s.io") == "v1beta2"
    assert catalog.preferred_version("batch") == "v1"
    ordered = sorted(["v1beta1", "v2", "v1alpha1", "v1", "v2beta2", "v1beta2", "weird"], key=version_priority)
    assert ordered == ["weird", "v1alpha1", "v1beta1", "v1beta2", "v2beta2", "v1", "v2"]


def test_watchable_resources_need_list_and_watch() -> None:
    watchable = {info.group_resource for info in ResourceCatalog.builtin().watchable()}
    assert {
        "pods",
        "deployments.apps",
        "events.events.k8s.io",
        "clusterroles.rbac.authorization.k8s.io",
    } <= watchable
    assert "bindings" not in watchable  # create only
    assert "componentstatuses" not in watchable  # get and list, no watch
    assert "tokenreviews.authentication.k8s.io" not in watchable
    # One entry per resource, in its preferred version.
    hpas = [i for i in ResourceCatalog.builtin().watchable() if i.resource == "horizontalpodautoscalers"]
    assert [i.version for i in hpas] == ["v2"]


def test_lookup_resolves_what_users_type() -> None:
    catalog = ResourceCatalog.builtin()
    for text in ("deploy", "deployment", "Deployment", "deployments", "deployments.apps"):
        info = catalog.lookup(text)
        assert info is not None and (info.group, info.resource) == ("apps", "deployments"), text
    core_events = catalog.lookup("events")
    new_events = catalog.lookup("events.events.k8s.io")
    assert core_events is not None and core_events.group == ""
    assert new_events is not None and new_events.group == "events.k8s.io"
    assert catalog.lookup("no-such-thing") is None


def test_malformed_discovery_is_a_clear_error(discovery_dir: Path) -> None:
    api_v1 = _load(discovery_dir, "api_v1.json")
    with pytest.raises(DiscoveryError, match="APIResourceList"):
        ResourceCatalog.from_discovery({"kind": "Status"}, [])
    with pytest.raises(DiscoveryError, match="without name or kind"):
        ResourceCatalog.from_discovery(api_v1, [{"groupVersion": "x/v1", "resources": [{"name": "things"}]}])
    with pytest.raises(DiscoveryError, match="APIGroupList"):
        ResourceCatalog.from_discovery(api_v1, [], {"kind": "Status"})


def test_update_replaces_and_merge_combines(discovery_dir: Path) -> None:
    api_v1 = _load(discovery_dir, "api_v1.json")
    catalog = ResourceCatalog.from_discovery(api_v1, [WIDGETS])
    widget = catalog.by_kind("example.com", "Widget")
    assert widget is not None and widget.resource == "widgets" and not widget.namespaced
    catalog.update(api_v1, [])  # the CRD was removed
    assert catalog.by_kind("example.com", "Widget") is None
    assert catalog.by_kind("", "Pod") is not None

    merged = ResourceCatalog.builtin().merge(ResourceCatalog.from_discovery(api_v1, [WIDGETS]))
    assert merged.by_kind("example.com", "Widget") is not None
    assert merged.by_kind("apps", "Deployment") is not None
    assert len(merged) == len(ResourceCatalog.builtin()) + 1


def test_builtin_copies_are_independent(discovery_dir: Path) -> None:
    mine = ResourceCatalog.builtin()
    mine.update(_load(discovery_dir, "api_v1.json"), [WIDGETS])
    assert mine.by_kind("apps", "Deployment") is None
    assert ResourceCatalog.builtin().by_kind("apps", "Deployment") is not None


def test_cluster_catalogs_fall_back_to_builtin(discovery_dir: Path) -> None:
    catalogs = ClusterCatalogs()
    refreshed = catalogs.update_from_discovery("east", _load(discovery_dir, "api_v1.json"), [WIDGETS])
    assert catalogs.for_cluster("east") is refreshed
    assert refreshed.by_kind("example.com", "Widget") is not None
    # Kinds the live discovery lacked (apps was not fetched) still resolve through the builtin table.
    assert refreshed.by_kind("apps", "Deployment") is not None
    assert catalogs.for_cluster("west").by_kind("example.com", "Widget") is None
    assert catalogs.clusters() == ["east"]
    catalogs.forget("east")
    assert catalogs.for_cluster("east").by_kind("example.com", "Widget") is None


@pytest.mark.parametrize(
    ("kind", "plural"),
    [
        ("Widget", "widgets"),
        ("Policy", "policies"),
        ("Gateway", "gateways"),
        ("Ingress", "ingresses"),
        ("Box", "boxes"),
        ("Mesh", "meshes"),
        ("Patch", "patches"),
    ],
)
def test_guess_plural(kind: str, plural: str) -> None:
    assert guess_plural(kind) == plural
