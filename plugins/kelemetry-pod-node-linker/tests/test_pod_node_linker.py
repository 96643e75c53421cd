from __future__ import annotations

import pytest
from kelemetry_pod_node_linker import PodNodeLinker

from kelemetry_py.plugins import Link, Linker, ObjectRef

POD = ObjectRef("c1", "", "v1", "pods", "shop", "web-1")


def test_is_a_linker() -> None:
    assert isinstance(PodNodeLinker(), Linker)


async def test_scheduled_pod_links_to_its_node() -> None:
    links = await PodNodeLinker().links(POD, {"metadata": {"name": "web-1"}, "spec": {"nodeName": "node-7"}})
    assert links == [Link(ObjectRef("c1", "", "v1", "nodes", "", "node-7"), "parent", "node")]
    assert links[0].target.key == "c1//nodes//node-7"


@pytest.mark.parametrize(
    "body",
    [
        {"spec": {}},
        {"spec": {"nodeName": ""}},
        {"spec": {"nodeName": 3}},
        {"spec": "garbage"},
        {},
    ],
)
async def test_unscheduled_or_malformed_pods_have_no_link(body: dict[str, object]) -> None:
    assert await PodNodeLinker().links(POD, body) == []


async def test_only_core_pods() -> None:
    body = {"spec": {"nodeName": "node-7"}}
    assert await PodNodeLinker().links(ObjectRef("c1", "apps", "v1", "deployments", "shop", "web"), body) == []
    assert await PodNodeLinker().links(ObjectRef("c1", "metrics.k8s.io", "v1beta1", "pods", "shop", "x"), body) == []


async def test_link_class_is_configurable() -> None:
    links = await PodNodeLinker(link_class="runs-on").links(POD, {"spec": {"nodeName": "n"}})
    assert [link.link_class for link in links] == ["runs-on"]
    with pytest.raises(ValueError, match="link_class"):
        PodNodeLinker(link_class="")
