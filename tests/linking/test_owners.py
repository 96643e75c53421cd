from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from kelemetry_py.kube import ClusterCatalogs, ResourceCatalog
from kelemetry_py.linking import Linker
from kelemetry_py.linking.owners import OwnerReferenceLinker
from kelemetry_py.model import Link, ObjectRef
from tests.linking.fixture_objects import CLUSTER, audit_writes, first, listed_objects, watched_objects

WIDGET_DISCOVERY: dict[str, Any] = {
    "groupVersion": "example.com/v1",
    "resources": [
        {"name": "widgets", "namespaced": False, "kind": "Widget", "verbs": ["get", "list", "watch"]}
    ],
}


def _child(namespace: str = "shop") -> ObjectRef:
    return ObjectRef(CLUSTER, "", "v1", "configmaps", namespace, "child")


def _owned_by(*owners: Any) -> dict[str, Any]:
    return {"metadata": {"name": "child", "ownerReferences": list(owners)}}


async def test_entry_point_constructor_needs_no_arguments() -> None:
    linker = OwnerReferenceLinker()
    assert isinstance(linker, Linker)
    assert linker.name == "owner-references"


async def test_replicasets_link_to_their_deployment(fixtures_dir: Path) -> None:
    scenario = fixtures_dir / "deployment-lifecycle"
    deployment, _ = first(watched_objects(scenario, "apps_v1_deployments"), "web")
    linker = OwnerReferenceLinker()
    replicasets = [(ref, body) for ref, body in audit_writes(scenario) if ref.resource == "replicasets"]
    assert replicasets
    for ref, body in replicasets:
        assert await linker.links(ref, body) == [Link(deployment, "parent", "owner")]
        (link,) = await linker.links(ref, body)
        assert link.target.uid == deployment.uid
        assert link.target.version == "v1"


async def test_pods_link_to_their_replicaset(fixtures_dir: Path) -> None:
    scenario = fixtures_dir / "deployment-lifecycle"
    replicasets = {ref.name: ref for ref, _ in watched_objects(scenario, "apps_v1_replicasets")}
    linker = OwnerReferenceLinker()
    owners: set[ObjectRef] = set()
    pods = list(watched_objects(scenario, "core_v1_pods"))
    assert pods
    for ref, body in pods:
        (link,) = await linker.links(ref, body)
        assert link.role == "parent" and link.link_class == "owner"
        expected = replicasets[link.target.name]
        assert link.target == expected and link.target.uid == expected.uid
        owners.add(link.target)
    assert owners == set(replicasets.values())
    assert len(owners) == 2  # the rollout made a second ReplicaSet


async def test_job_and_statefulset_pods(fixtures_dir: Path) -> None:
    scenario = fixtures_dir / "batch-and-stateful"
    linker = OwnerReferenceLinker()
    targets = {}
    for ref, body in watched_objects(scenario, "core_v1_pods"):
        targets[ref.name] = [link.target for link in await linker.links(ref, body)]
    assert targets["db-0"] == [ObjectRef(CLUSTER, "apps", "v1", "statefulsets", "jobs", "db")]
    report_pods = [name for name in targets if name.startswith("report-")]
    assert len(report_pods) == 2
    for name in report_pods:
        assert targets[name] == [ObjectRef(CLUSTER, "batch", "v1", "jobs", "jobs", "report")]


async def test_endpointslice_links_to_its_service(fixtures_dir: Path) -> None:
    scenario = fixtures_dir / "errors-and-links"
    service, _ = first(watched_objects(scenario, "core_v1_services"), "web2")
    slices = [
        (ref, body)
        for ref, body in watched_objects(scenario, "discovery.k8s.io_v1_endpointslices")
        if ref.name.startswith("web2-")
    ]
    assert slices
    for ref, body in slices:
        (link,) = await OwnerReferenceLinker().links(ref, body)
        assert link.target == ObjectRef(CLUSTER, "", "v1", "services", "shop", "web2")
        assert link.target.uid == service.uid


async def test_cluster_scoped_owner_gets_no_namespace(fixtures_dir: Path) -> None:
    scenario = fixtures_dir / "errors-and-links"
    role, _ = first(watched_objects(scenario, "rbac.authorization.k8s.io_v1_clusterroles"), "viewer-extra")
    ref, body = first(watched_objects(scenario, "core_v1_configmaps"), "owned-by-viewer-extra")
    assert ref.namespace == "shop"
    (link,) = await OwnerReferenceLinker().links(ref, body)
    assert link.target == ObjectRef(
        CLUSTER, "rbac.authorization.k8s.io", "v1", "clusterroles", "", "viewer-extra"
    )
    assert link.target.namespace == ""
    assert link.target.key == role.key and link.target.uid == role.uid
    # The audit view of the same create resolves identically.
    audited = [
        b
        for r, b in audit_writes(scenario)
        if r.name == "owned-by-viewer-extra" and r.resource == "configmaps"
    ]
    assert audited
    assert [lk.target for lk in await OwnerReferenceLinker().links(ref, audited[0])] == [link.target]


async def test_node_lease_owner_is_cluster_scoped(fixtures_dir: Path) -> None:
    ref, body = first(
        listed_objects(fixtures_dir / "errors-and-links", "coordination.k8s.io_v1_leases"), "node-1"
    )
    assert ref.namespace == "kube-node-lease"
    (link,) = await OwnerReferenceLinker().links(ref, body)
    assert link.target.key == f"{CLUSTER}//nodes//node-1"


async def test_unknown_kind_is_guessed_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    owner = {"apiVersion": "example.com/v1", "kind": "Policy", "name": "p", "uid": "u-1"}
    with caplog.at_level(logging.DEBUG, logger="kelemetry_py.linking.owners"):
        (link,) = await OwnerReferenceLinker().links(_child(), _owned_by(owner))
    assert link.target == ObjectRef(CLUSTER, "example.com", "v1", "policies", "shop", "p")
    assert link.target.uid == "u-1"
    assert any("Policy unknown" in record.getMessage() for record in caplog.records)
    # A cluster-scoped child can only have cluster-scoped owners.
    (link,) = await OwnerReferenceLinker().links(_child(namespace=""), _owned_by(owner))
    assert link.target.namespace == ""


async def test_per_cluster_catalog_resolves_custom_resources() -> None:
    catalogs = ClusterCatalogs()
    catalogs.set(
        "east", ResourceCatalog.from_discovery({"groupVersion": "v1", "resources": []}, [WIDGET_DISCOVERY])
    )
    linker = OwnerReferenceLinker(catalogs)
    body = _owned_by({"apiVersion": "example.com/v1", "kind": "Widget", "name": "w"})
    (east,) = await linker.links(ObjectRef("east", "", "v1", "configmaps", "shop", "c"), body)
    (west,) = await linker.links(ObjectRef("west", "", "v1", "configmaps", "shop", "c"), body)
    assert east.target.key == "east/example.com/widgets//w"  # discovery says cluster-scoped
    assert west.target.key == "west/example.com/widgets/shop/w"  # unknown there: guessed


async def test_malformed_owner_references_are_skipped(caplog: pytest.LogCaptureFixture) -> None:
    good = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u"}
    body = _owned_by(
        "not-an-object",
        {"apiVersion": "apps/v1", "kind": "ReplicaSet"},
        {"kind": "X", "name": "y"},
        good,
        dict(good),
    )
    with caplog.at_level(logging.DEBUG, logger="kelemetry_py.linking.owners"):
        links = await OwnerReferenceLinker().links(_child(), body)
    assert [link.target.key for link in links] == [f"{CLUSTER}/apps/replicasets/shop/rs"]
    assert len([r for r in caplog.records if "ownerReference" in r.getMessage()]) == 3
    assert await OwnerReferenceLinker().links(_child(), {"metadata": {"ownerReferences": "junk"}}) == []
    assert await OwnerReferenceLinker().links(_child(), {"metadata": {"name": "child"}}) == []
    assert await OwnerReferenceLinker().links(_child(), {}) == []


async def test_controller_only_keeps_the_controller() -> None:
    body = _owned_by(
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "controller": True},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "name": "r",
            "controller": False,
        },
    )
    every = await OwnerReferenceLinker().links(_child(), body)
    controllers = await OwnerReferenceLinker(controller_only=True).links(_child(), body)
    assert [link.target.resource for link in every] == ["replicasets", "clusterroles"]
    assert [link.target.resource for link in controllers] == ["replicasets"]


async def test_an_owner_resolved_before_discovery_is_resolved_again_after_it() -> None:
    catalogs = ClusterCatalogs()
    linker = OwnerReferenceLinker(catalogs)
    body = _owned_by({"apiVersion": "example.com/v1", "kind": "Widget", "name": "w", "uid": "u1"})
    child = ObjectRef("east", "", "v1", "configmaps", "shop", "c")
    (guessed,) = await linker.links(child, body)
    (again,) = await linker.links(child, body)  # remembered: the same answer
    assert again == guessed and again.target.uid == "u1"
    assert guessed.target.key == "east/example.com/widgets/shop/w"  # not discovered yet: guessed namespaced
    catalogs.set(
        "east", ResourceCatalog.from_discovery({"groupVersion": "v1", "resources": []}, [WIDGET_DISCOVERY])
    )
    (discovered,) = await linker.links(child, body)
    assert discovered.target.key == "east/example.com/widgets//w"  # what discovery says wins over the memo
    renamed = _owned_by({"apiVersion": "example.com/v1", "kind": "Widget", "name": "w", "uid": "u2"})
    (recreated,) = await linker.links(child, renamed)
    assert recreated.target.uid == "u2"
