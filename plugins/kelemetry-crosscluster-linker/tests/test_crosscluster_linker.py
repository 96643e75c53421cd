from __future__ import annotations

from typing import Any

import pytest
from kelemetry_crosscluster_linker import CrossClusterLinker

from kelemetry_py.plugins import Link, Linker, ObjectRef

MEMBER = ObjectRef("member-1", "apps", "v1", "deployments", "shop", "web")
LABEL = "multicluster.kelemetry.io/origin-cluster"


def body(labels: dict[str, str] | None = None, annotations: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": "web", "labels": labels or {}, "annotations": annotations or {}}}


def test_is_a_linker() -> None:
    assert isinstance(CrossClusterLinker(), Linker)


async def test_label_alone_names_the_same_object_in_the_origin_cluster() -> None:
    links = await CrossClusterLinker().links(MEMBER, body({LABEL: "hub"}))
    assert links == [Link(ObjectRef("hub", "apps", "v1", "deployments", "shop", "web"), "parent", "cross-cluster")]


async def test_annotations_rename_and_change_the_kind() -> None:
    annotations = {
        "multicluster.kelemetry.io/origin-name": "tenants/web-template",
        "multicluster.kelemetry.io/origin-resource": "resourcetemplates.policy.example.com",
    }
    (link,) = await CrossClusterLinker().links(MEMBER, body({LABEL: "hub"}, annotations))
    assert link.target == ObjectRef("hub", "policy.example.com", "", "resourcetemplates", "tenants", "web-template")
    assert link.target.key == "hub/policy.example.com/resourcetemplates/tenants/web-template"


async def test_cluster_scoped_origin_and_core_resource() -> None:
    annotations = {
        "multicluster.kelemetry.io/origin-name": "global-config",
        "multicluster.kelemetry.io/origin-resource": "namespaces",
    }
    (link,) = await CrossClusterLinker().links(MEMBER, body({LABEL: "hub"}, annotations))
    assert link.target.key == "hub//namespaces//global-config"


async def test_aliases_and_custom_names() -> None:
    linker = CrossClusterLinker(
        cluster_label="fleet.io/from", cluster_aliases={"hub": "prod-hub"}, link_class="propagated"
    )
    (link,) = await linker.links(MEMBER, body({"fleet.io/from": "hub"}))
    assert (link.target.cluster, link.link_class) == ("prod-hub", "propagated")
    assert await linker.links(MEMBER, body({LABEL: "hub"})) == []


@pytest.mark.parametrize(
    "document",
    [
        body(),
        body({LABEL: ""}),
        body({LABEL: "a/b"}),
        body({LABEL: "member-1"}),  # names the object itself
        body({LABEL: "hub"}, {"multicluster.kelemetry.io/origin-name": "a/b/c"}),
        body({LABEL: "hub"}, {"multicluster.kelemetry.io/origin-name": "/x"}),
        body({LABEL: "hub"}, {"multicluster.kelemetry.io/origin-name": 5}),
        body({LABEL: "hub"}, {"multicluster.kelemetry.io/origin-resource": "apps/v1"}),
        {"metadata": "nope"},
        {},
    ],
)
async def test_no_link_without_a_usable_convention(document: dict[str, Any]) -> None:
    assert await CrossClusterLinker().links(MEMBER, document) == []
