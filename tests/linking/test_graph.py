from __future__ import annotations

from pathlib import Path

import pytest

from kelemetry_py.config import PluginsConfig
from kelemetry_py.linking.graph import ObjectGraph
from kelemetry_py.linking.run import run_linkers
from kelemetry_py.model import Link, ObjectRef
from kelemetry_py.plugins import LINKERS_GROUP
from kelemetry_py.plugins.loading import load_linkers
from tests.linking.fixture_objects import CLUSTER, watched_objects

DEPLOY = ObjectRef(CLUSTER, "apps", "v1", "deployments", "shop", "web")
RS = ObjectRef(CLUSTER, "apps", "v1", "replicasets", "shop", "web-1")
POD = ObjectRef(CLUSTER, "", "v1", "pods", "shop", "web-1-a")


def _ref(name: str) -> ObjectRef:
    return ObjectRef("c", "", "v1", "configmaps", "ns", name)


def _parent(target: ObjectRef, link_class: str = "owner") -> Link:
    return Link(target, "parent", link_class)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1
        return self.now


@pytest.fixture
async def recorded_graph(fixtures_dir: Path) -> ObjectGraph:
    """The graph a collector builds from the deployment-lifecycle watch streams through the real linkers."""
    scenario = fixtures_dir / "deployment-lifecycle"
    graph = ObjectGraph()
    # The built-in linkers only: an installed pod-node plugin would add node-1 as every pod's second parent.
    linkers = load_linkers(PluginsConfig(enabled={LINKERS_GROUP: ["owner-references", "parent-annotation"]}))
    for stream in ("apps_v1_deployments", "apps_v1_replicasets", "core_v1_pods"):
        for ref, body in watched_objects(scenario, stream):
            graph.sync_links(ref, await run_linkers(linkers, ref, body))
    return graph


async def test_recorded_pods_descend_from_the_deployment(
    recorded_graph: ObjectGraph, fixtures_dir: Path
) -> None:
    scenario = fixtures_dir / "deployment-lifecycle"
    pods = {ref.key for ref, _ in watched_objects(scenario, "core_v1_pods")}
    replicasets = {ref.key for ref, _ in watched_objects(scenario, "apps_v1_replicasets")}
    assert (len(pods), len(replicasets)) == (8, 2)
    assert {r.key for r in recorded_graph.descendants(DEPLOY, max_depth=1)} == replicasets
    assert {r.key for r in recorded_graph.descendants(DEPLOY)} == replicasets | pods
    nearest_first = [r.key for r in recorded_graph.descendants(DEPLOY)]
    assert set(nearest_first[:2]) == replicasets
    assert recorded_graph.children(DEPLOY) == recorded_graph.descendants(DEPLOY, max_depth=1)
    for pod in pods:
        (replicaset,) = recorded_graph.parents(pod)
        assert replicaset.key in replicasets
        assert [r.key for r in recorded_graph.ancestors(pod)] == [replicaset.key, DEPLOY.key]
        assert recorded_graph.ancestors(pod, max_depth=1) == [replicaset]
        assert recorded_graph.depth(pod) == 2
        assert recorded_graph.roots(pod) == [recorded_graph.ref(DEPLOY)]
    assert recorded_graph.depth(DEPLOY) == 0
    assert recorded_graph.ancestors(DEPLOY) == []
    # The deployment node learnt its uid from its own watch events, not just from owner references.
    deployment = recorded_graph.ref(DEPLOY)
    assert deployment is not None and deployment.uid


async def test_relation_attributes() -> None:
    graph = ObjectGraph(clock=FakeClock())
    graph.add_link(RS, _parent(DEPLOY), seen=1234.5)
    relation = graph.relation(DEPLOY, RS)
    assert relation is not None
    assert (relation.parent, relation.child) == (DEPLOY, RS)
    assert (relation.link_class, relation.role, relation.reported_by, relation.last_seen) == (
        "owner",
        "parent",
        RS.key,
        1234.5,
    )
    assert graph.relation(RS, DEPLOY) is None
    assert graph.last_seen(DEPLOY) == 1234.5


async def test_child_role_links_point_down() -> None:
    graph = ObjectGraph()
    graph.add_link(DEPLOY, Link(RS, "child", "custom"))
    assert graph.children(DEPLOY) == [RS]
    assert graph.parents(RS) == [DEPLOY]


async def test_uid_is_kept_when_a_later_sighting_lacks_it() -> None:
    graph = ObjectGraph()
    graph.add_object(ObjectRef(CLUSTER, "apps", "v1", "deployments", "shop", "web", uid="u-1"))
    graph.add_link(RS, _parent(ObjectRef(CLUSTER, "apps", "", "deployments", "shop", "web")))
    deployment = graph.ref(DEPLOY)
    assert deployment is not None and (deployment.uid, deployment.version) == ("u-1", "v1")


async def test_sync_links_drops_what_the_object_no_longer_reports() -> None:
    graph = ObjectGraph()
    old_owner, new_owner, adopter, child = _ref("old"), _ref("new"), _ref("adopter"), _ref("child")
    graph.sync_links(child, [_parent(old_owner)])
    # A link the other end reported is not the child's to drop.
    graph.add_link(adopter, Link(child, "child", "custom"))
    graph.sync_links(child, [_parent(new_owner)])
    assert graph.parents(child) == [adopter, new_owner]
    assert graph.children(old_owner) == []
    assert old_owner in graph  # the object itself stays until evicted or removed
    grandchild = _ref("grandchild")
    graph.add_link(grandchild, _parent(child))
    graph.sync_links(child, [])
    assert graph.parents(child) == [adopter]
    assert graph.children(child) == [grandchild]  # reported by the grandchild


async def test_remove_forgets_object_and_edges() -> None:
    graph = ObjectGraph()
    graph.add_link(POD, _parent(RS))
    graph.add_link(RS, _parent(DEPLOY))
    assert graph.remove(RS.key) is True
    assert RS not in graph and POD in graph and DEPLOY in graph
    assert graph.parents(POD) == [] and graph.children(DEPLOY) == []
    assert graph.edge_count == 0
    assert graph.remove(RS) is False
    assert graph.ancestors(RS) == [] and graph.depth(RS) == 0 and graph.roots(RS) == []


async def test_eviction_drops_the_least_recently_touched() -> None:
    graph = ObjectGraph(max_nodes=3)
    a, b, c, d = (_ref(n) for n in "abcd")
    graph.add_link(b, _parent(a))  # a, b
    graph.add_object(c)  # a, b, c
    graph.add_object(a)  # touch a: b is now the oldest
    graph.add_object(d)
    assert b not in graph
    assert {r.key for r in (graph.ref(a), graph.ref(c), graph.ref(d)) if r} == {a.key, c.key, d.key}
    assert len(graph) == 3 and graph.evictions == 1
    assert graph.children(a) == []  # the edge went with b
    graph.add_link(_ref("e"), _parent(_ref("f")))
    assert len(graph) == 3 and graph.evictions == 3
    assert _ref("e") in graph and _ref("f") in graph
    with pytest.raises(ValueError, match="max_nodes"):
        ObjectGraph(max_nodes=1)


async def test_long_running_graph_stays_bounded() -> None:
    graph = ObjectGraph(max_nodes=100)
    for i in range(1000):
        graph.add_link(_ref(f"child-{i}"), _parent(_ref(f"parent-{i % 7}")))
    assert len(graph) == 100
    # Parents are touched by every link to them, so they survive the churn of children.
    assert all(_ref(f"parent-{i}") in graph for i in range(7))


async def test_cycles_and_depth_limits_are_harmless() -> None:
    graph = ObjectGraph()
    a, b, c = _ref("a"), _ref("b"), _ref("c")
    graph.add_link(b, _parent(a))
    graph.add_link(c, _parent(b))
    graph.add_link(a, _parent(c))  # bad data: a cycle
    assert graph.ancestors(a) == [c, b]
    assert graph.descendants(a) == [b, c]
    assert graph.depth(a) == 2
    assert graph.roots(a) == [a]  # no ancestor is parentless
    assert graph.ancestors(a, max_depth=0) == []
    assert graph.descendants(a, max_depth=1) == [b]


async def test_cross_cluster_links_are_distinct_nodes() -> None:
    graph = ObjectGraph()
    east_parent = ObjectRef("east", "apps", "v1", "deployments", "shop", "web")
    west_parent = ObjectRef("west", "apps", "v1", "deployments", "shop", "web")
    graph.add_link(_ref("child"), Link(east_parent, "parent", "annotation"))
    assert graph.parents(_ref("child")) == [east_parent]
    assert west_parent not in graph


def test_a_deleted_object_keeps_its_relations_for_its_window_until_expired() -> None:
    graph = ObjectGraph()
    graph.sync_links(RS, [_parent(DEPLOY)], seen=10.0)
    graph.sync_links(POD, [_parent(RS)], seen=10.0)
    graph.delete_object(DEPLOY, at=100.0)
    assert graph.parents(RS) == []  # no longer holds
    held = graph.relations(RS, since=60.0)  # during [60, 120)
    expected = {(DEPLOY.key, RS.key, 100.0), (RS.key, POD.key, None)}
    assert {(r.parent.key, r.child.key, r.ended) for r in held} == expected
    assert graph.relations(RS, since=120.0) == [graph.relation(RS, POD)]
    assert graph.expire(before=100.0) == 0
    assert graph.expire(before=100.5) == 2  # the relation and the deleted Deployment
    assert DEPLOY not in graph and graph.relations(RS, since=0.0) == [graph.relation(RS, POD)]


def test_a_dropped_owner_reference_ends_the_relation_and_a_new_report_revives_it() -> None:
    graph = ObjectGraph()
    graph.sync_links(POD, [_parent(RS)], seen=1.0)
    before = graph.revision(POD)
    graph.sync_links(POD, [], seen=5.0)
    relation = graph.relation(RS, POD)
    assert relation is not None and relation.ended == 5.0 and graph.revision(POD) != before
    assert graph.relations(POD, since=6.0) == []
    graph.sync_links(POD, [_parent(RS)], seen=7.0)
    assert graph.parents(POD) == [RS]
    assert graph.expire(before=100.0) == 0  # the revived relation is not forgotten


def test_a_relation_reported_after_its_parent_was_deleted_ends_at_the_deletion() -> None:
    graph = ObjectGraph()
    graph.delete_object(RS, at=50.0)
    graph.sync_links(POD, [_parent(RS)], seen=60.0)  # a late observation of an orphan
    assert graph.parents(POD) == []
    relation = graph.relation(RS, POD)
    assert relation is not None and relation.ended == 50.0


def test_a_repeated_report_changes_nothing_and_a_change_after_it_still_applies() -> None:
    graph = ObjectGraph()
    graph.sync_links(POD, [_parent(RS)], seen=1.0)
    revision = graph.revision(POD)
    for seen in (2.0, 3.0, 4.0):  # status updates: the same ownerReferences every time
        graph.sync_links(POD, [_parent(RS)], seen=seen)
    assert graph.revision(POD) == revision and graph.parents(POD) == [RS]
    assert graph.last_seen(POD) == 4.0  # the object itself is still seen
    graph.sync_links(POD, [_parent(RS), _parent(DEPLOY, "custom")], seen=5.0)
    assert graph.parents(POD) == [DEPLOY, RS] and graph.revision(POD) != revision
    graph.sync_links(POD, [_parent(DEPLOY, "custom")], seen=6.0)
    relation = graph.relation(RS, POD)
    assert relation is not None and relation.ended == 6.0


def test_a_repeated_report_after_the_parent_was_deleted_or_evicted_is_not_skipped() -> None:
    graph = ObjectGraph()
    graph.sync_links(POD, [_parent(RS)], seen=1.0)
    graph.delete_object(RS, at=2.0)
    graph.sync_links(POD, [_parent(RS)], seen=3.0)  # the stale ownerReference of an orphan
    relation = graph.relation(RS, POD)
    assert graph.parents(POD) == [] and relation is not None and relation.ended == 2.0
    small = ObjectGraph(max_nodes=2)
    small.sync_links(POD, [_parent(RS)], seen=1.0)
    small.add_object(DEPLOY, seen=2.0)  # evicts the least recently touched: the ReplicaSet
    assert RS not in small
    small.sync_links(POD, [_parent(RS)], seen=3.0)
    assert small.parents(POD) == [RS]


def test_an_owner_recreated_under_its_name_is_learnt_from_a_repeated_report() -> None:
    graph = ObjectGraph()
    first = ObjectRef(CLUSTER, "apps", "v1", "replicasets", "shop", "web-1", uid="u-1")
    second = ObjectRef(CLUSTER, "apps", "v1", "replicasets", "shop", "web-1", uid="u-2")
    graph.sync_links(POD, [_parent(first)], seen=1.0)
    graph.sync_links(POD, [_parent(second)], seen=2.0)  # equal ObjectRefs: uid is not part of the key
    known = graph.ref(RS)
    assert known is not None and known.uid == "u-2"


def test_a_new_sibling_changes_the_parents_revision_of_nobody_but_itself() -> None:
    graph = ObjectGraph()
    graph.sync_links(RS, [_parent(DEPLOY)], seen=1.0)
    graph.sync_links(POD, [_parent(RS)], seen=1.0)
    rs_all, rs_parents = graph.revision(RS), graph.revision(RS, parents_only=True)
    sibling = ObjectRef(CLUSTER, "", "v1", "pods", "shop", "web-1-b")
    graph.sync_links(sibling, [_parent(RS)], seen=2.0)
    assert graph.revision(RS) != rs_all  # its children changed
    assert graph.revision(RS, parents_only=True) == rs_parents  # its own parents did not
    assert [r.parent.key for r in graph.relations(RS, parents_only=True)] == [DEPLOY.key]
    graph.sync_links(RS, [], seen=3.0)
    assert graph.revision(RS, parents_only=True) != rs_parents
    assert graph.relations(RS, since=2.0, parents_only=True)[0].ended == 3.0
