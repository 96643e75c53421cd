from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from kelemetry_py.linking import Linker
from kelemetry_py.linking.annotation import PARENT_LINK_ANNOTATION, ParentAnnotationLinker
from kelemetry_py.model import Link, ObjectRef
from tests.linking.fixture_objects import CLUSTER, audit_writes, first, watched_objects

CHILD = ObjectRef(CLUSTER, "", "v1", "configmaps", "shop", "child")


def _annotated(value: Any) -> dict[str, Any]:
    return {"metadata": {"name": "child", "annotations": {PARENT_LINK_ANNOTATION: value}}}


def _parent_json(**overrides: Any) -> str:
    value: dict[str, Any] = {
        "cluster": "",
        "group": "apps",
        "version": "v1",
        "resource": "deployments",
        "namespace": "shop",
        "name": "web2",
    }
    value.update(overrides)
    return json.dumps({k: v for k, v in value.items() if v is not ...})  # ... leaves the field out


async def test_entry_point_constructor_needs_no_arguments() -> None:
    linker = ParentAnnotationLinker()
    assert isinstance(linker, Linker)
    assert linker.name == "parent-annotation"


async def test_recorded_child_links_to_deployment(fixtures_dir: Path) -> None:
    scenario = fixtures_dir / "errors-and-links"
    deployment, _ = first(watched_objects(scenario, "apps_v1_deployments"), "web2")
    ref, body = first(watched_objects(scenario, "core_v1_configmaps"), "child-of-web")
    links = await ParentAnnotationLinker().links(ref, body)
    assert links == [Link(deployment, "parent", "annotation")]
    assert links[0].target.key == "fixture/apps/deployments/shop/web2"
    assert links[0].target.version == "v1"
    audited = [
        b for r, b in audit_writes(scenario) if r.name == "child-of-web" and r.resource == "configmaps"
    ]
    assert audited
    assert await ParentAnnotationLinker().links(ref, audited[0]) == links


async def test_objects_without_the_annotation_have_no_parent(fixtures_dir: Path) -> None:
    linker = ParentAnnotationLinker()
    for ref, body in watched_objects(fixtures_dir / "errors-and-links", "core_v1_configmaps"):
        if ref.name != "child-of-web":
            assert await linker.links(ref, body) == [], ref
    assert await linker.links(CHILD, {"metadata": {"annotations": None}}) == []
    assert await linker.links(CHILD, {}) == []


async def test_cross_cluster_parent() -> None:
    (link,) = await ParentAnnotationLinker().links(CHILD, _annotated(_parent_json(cluster="east")))
    assert link.target.key == "east/apps/deployments/shop/web2"
    (link,) = await ParentAnnotationLinker().links(CHILD, _annotated(_parent_json(cluster=None)))
    assert link.target.cluster == CLUSTER
    (link,) = await ParentAnnotationLinker().links(CHILD, _annotated(_parent_json(cluster=...)))
    assert link.target.cluster == CLUSTER


async def test_empty_version_is_filled_from_the_catalog() -> None:
    (link,) = await ParentAnnotationLinker().links(CHILD, _annotated(_parent_json(version="")))
    assert link.target.version == "v1"
    (link,) = await ParentAnnotationLinker().links(
        CHILD, _annotated(_parent_json(version="", group="example.com", resource="widgets"))
    )
    assert link.target.version == ""


@pytest.mark.parametrize(
    "value",
    [
        "{not json",
        json.dumps(["apps", "deployments"]),
        json.dumps("web2"),
        _parent_json(name=...),
        _parent_json(group=...),
        _parent_json(name=""),
        _parent_json(resource=7),
        _parent_json(cluster=["east"]),
        _parent_json(namespace="a/b"),
        _parent_json(group="", version="v1", resource="configmaps", name="child"),  # itself
        42,
    ],
)
async def test_malformed_annotations_are_ignored(value: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="kelemetry_py.linking.annotation"):
        assert await ParentAnnotationLinker().links(CHILD, _annotated(value)) == []
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]
    assert PARENT_LINK_ANNOTATION in caplog.records[0].getMessage()


async def test_annotation_name_is_configurable() -> None:
    linker = ParentAnnotationLinker(annotation="example.com/parent")
    body = {"metadata": {"annotations": {"example.com/parent": _parent_json()}}}
    (link,) = await linker.links(CHILD, body)
    assert link.target.name == "web2"
    assert await linker.links(CHILD, _annotated(_parent_json())) == []
