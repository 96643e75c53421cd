from __future__ import annotations

import pytest
from kelemetry_pvc_pv_linker import PvcPvLinker

from kelemetry_py.plugins import Link, Linker, ObjectRef

CLAIM = ObjectRef("c1", "", "v1", "persistentvolumeclaims", "db", "data-db-0")
VOLUME = ObjectRef("c1", "", "v1", "persistentvolumes", "", "pvc-1234")


def test_is_a_linker() -> None:
    assert isinstance(PvcPvLinker(), Linker)


async def test_bound_claim_links_to_its_volume_as_child() -> None:
    links = await PvcPvLinker().links(CLAIM, {"spec": {"volumeName": "pvc-1234"}, "status": {"phase": "Bound"}})
    assert links == [Link(VOLUME, "child", "volume")]


async def test_bound_volume_links_to_its_claim_as_parent() -> None:
    body = {
        "spec": {
            "claimRef": {
                "kind": "PersistentVolumeClaim",
                "namespace": "db",
                "name": "data-db-0",
                "uid": "u-1",
            }
        }
    }
    links = await PvcPvLinker().links(VOLUME, body)
    assert links == [Link(CLAIM, "parent", "volume")]
    assert links[0].target.uid == "u-1"


async def test_both_ends_describe_the_same_relation() -> None:
    linker = PvcPvLinker()
    (from_claim,) = await linker.links(CLAIM, {"spec": {"volumeName": VOLUME.name}})
    (from_volume,) = await linker.links(
        VOLUME, {"spec": {"claimRef": {"namespace": CLAIM.namespace, "name": CLAIM.name}}}
    )
    # claim → volume as child is the same edge as volume → claim as parent.
    assert (CLAIM.key, from_claim.target.key, from_claim.role) == (from_volume.target.key, VOLUME.key, "child")
    assert from_volume.role == "parent"


@pytest.mark.parametrize(
    ("ref", "body"),
    [
        (CLAIM, {"spec": {}}),
        (CLAIM, {"spec": {"volumeName": ""}}),
        (CLAIM, {"spec": "x"}),
        (VOLUME, {"spec": {}}),
        (VOLUME, {"spec": {"claimRef": {"namespace": "db"}}}),
        (VOLUME, {"spec": {"claimRef": {"kind": "Other", "namespace": "db", "name": "x"}}}),
        (ObjectRef("c1", "", "v1", "pods", "db", "db-0"), {"spec": {"volumeName": "pvc-1"}}),
        (ObjectRef("c1", "example.com", "v1", "persistentvolumeclaims", "db", "x"), {"spec": {"volumeName": "v"}}),
    ],
)
async def test_nothing_to_link(ref: ObjectRef, body: dict[str, object]) -> None:
    assert await PvcPvLinker().links(ref, body) == []
