"""The object graph, the linkers' memory: which object is whose parent, as the linkers last reported it.

Nodes are object keys (``cluster/group/resource/namespace/name``) holding the :class:`ObjectRef`; edges point
from parent to child. Linkers feed it from whatever carries a body; the pipeline writes every object's link spans
from it, in every window the object has a span, whether or not that observation carried a body.

A relation ends when the graph learns so: the reporting object stops reporting it (an ownerReference removed) or
either end is deleted. An ended relation is still true of the window it ended in, so it is kept until
:meth:`ObjectGraph.expire` passes its end; a deleted object likewise. The collector is long-lived, so the graph is
also bounded: past ``max_nodes`` the objects touched least recently are evicted. Times are the observations'
own (unix seconds), not the wall clock, so a replay builds the same graph as the live run.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import networkx as nx

from kelemetry_py.model import Link, LinkRole, ObjectRef

KeyLike = str | ObjectRef


@dataclass(frozen=True, slots=True)
class Relation:
    """One parent -> child edge. ``role`` is the role of the linked object as its linker reported it."""

    parent: ObjectRef
    child: ObjectRef
    link_class: str
    role: LinkRole
    reported_by: str  # the key of the object whose linkers produced the link
    last_seen: float  # unix seconds
    ended: float | None = None  # when the relation stopped being true (unix seconds); None while it holds

    def link_from(self, key: str) -> Link:
        """The relation as a :class:`Link` seen from the end ``key`` (its parent or its child)."""
        if key == self.child.key:
            return Link(target=self.parent, role="parent", link_class=self.link_class)
        return Link(target=self.child, role="child", link_class=self.link_class)


_Edge = tuple[str, str]  # (parent key, child key)


class ObjectGraph:
    """A bounded networkx DiGraph of object relations (parent -> child)."""

    def __init__(self, max_nodes: int = 200_000, clock: Callable[[], float] = time.time) -> None:
        if max_nodes < 2:
            raise ValueError(f"max_nodes must be at least 2 (a link has two ends), not {max_nodes}")
        self.max_nodes = max_nodes
        self._clock = clock
        self._graph: nx.DiGraph = nx.DiGraph()
        self._recency: OrderedDict[str, None] = OrderedDict()  # least recently touched first
        # Relations that ended, kept while a window may still need them: edge -> its data (with "ended").
        self._ended: dict[_Edge, dict[str, object]] = {}
        self._ended_at: dict[str, set[_Edge]] = {}  # node -> its ended edges
        self._deleted: dict[str, float] = {}  # node -> when it was deleted
        self._endings: deque[tuple[float, str, _Edge | None]] = deque()  # (when, node, edge) in end order
        self._revisions: dict[str, int] = {}
        self._parent_revisions: dict[str, int] = {}  # changed only by the node's own parent relations
        # node -> (what its linkers reported, as plain values; its revision right after): a repeat is a no-op
        self._reported: dict[str, tuple[tuple[tuple[str, str, str, str, str], ...], int]] = {}
        self.evictions = 0
        self.expired = 0

    # updates
    def add_object(self, ref: ObjectRef, seen: float | None = None) -> None:
        """Record that ``ref`` was seen (keeps it from eviction, refreshes its uid/version)."""
        self._touch(ref, self._now(seen))
        self._evict()

    def add_link(self, ref: ObjectRef, link: Link, seen: float | None = None) -> None:
        """Record a link a linker found on ``ref``."""
        now = self._now(seen)
        self._touch(ref, now)
        self._add_edge(ref, link, now)
        self._recency.move_to_end(ref.key)  # the object observed is the freshest, not its last target
        self._evict()

    def sync_links(self, ref: ObjectRef, links: Iterable[Link], seen: float | None = None) -> None:
        """Make ``links`` the complete set of links ``ref``'s linkers report now: the ones it reported
        before and no longer does (an ownerReference removed, an annotation edited) are dropped."""
        now = self._now(seen)
        self._touch(ref, now)
        node = ref.key
        links = list(links)
        report = tuple(
            [(link.target.key, link.target.uid, link.target.version, link.role, link.link_class) for link in links]
        )
        if self._reported.get(node) == (report, self._revisions.get(node, 0)):
            # What it reported last time, and nothing touched its relations since: the usual case (a status
            # update), which needs no edge work. Only the times its links were last seen stay as they were.
            return
        current = set()
        for link in links:
            current.add(self._add_edge(ref, link, now))
        stale = [
            (parent, child)
            for parent, child, reporter in self._incident_edges(ref.key)
            if reporter == ref.key and (parent, child) not in current
        ]
        for edge in stale:
            self._end_edge(edge, now)
        self._reported[node] = (report, self._revisions.get(node, 0))
        self._recency.move_to_end(node)
        self._evict()

    def delete_object(self, ref: ObjectRef, at: float | None = None) -> None:
        """``ref`` was deleted at ``at``: its relations end then. It is remembered until :meth:`expire` passes
        ``at``, so the window of its deletion still gets its links; created again, it starts afresh."""
        now = self._now(at)
        self._touch(ref, now)
        node = ref.key
        for parent, child, _ in self._incident_edges(node):
            self._end_edge((parent, child), now)
        if node not in self._deleted:
            self._deleted[node] = now
            self._endings.append((now, node, None))
        self._bump(node)

    def expire(self, before: float) -> int:
        """Forget relations that ended and objects deleted before ``before`` (no window to come needs them).
        Returns how many of them were forgotten."""
        forgotten = 0
        while self._endings and self._endings[0][0] < before:
            when, node, edge = self._endings.popleft()
            if edge is not None:
                data = self._ended.get(edge)
                if data is not None and data["ended"] == when:
                    self._drop_ended(edge)
                    forgotten += 1
            elif self._deleted.get(node) == when:
                self._forget(node)
                forgotten += 1
        self.expired += forgotten
        return forgotten

    def remove(self, key: KeyLike) -> bool:
        """Forget an object and its relations at once. False when it was not known."""
        node = _key(key)
        if node not in self._graph:
            return False
        self._forget(node)
        return True

    # queries
    def __contains__(self, key: object) -> bool:
        return isinstance(key, str | ObjectRef) and _key(key) in self._graph

    def __len__(self) -> int:
        return int(self._graph.number_of_nodes())

    @property
    def edge_count(self) -> int:
        return int(self._graph.number_of_edges())

    def revision(self, key: KeyLike, *, parents_only: bool = False) -> int:
        """A number that changes whenever the object's relations do (0 for an unknown object); with
        ``parents_only``, whenever its relations to its parents do."""
        return (self._parent_revisions if parents_only else self._revisions).get(_key(key), 0)

    def deleted_at(self, key: KeyLike) -> float | None:
        return self._deleted.get(_key(key))

    def relations(self, key: KeyLike, since: float | None = None, *, parents_only: bool = False) -> list[Relation]:
        """The object's relations (as parent and as child, or only to its parents) that hold now, plus, with
        ``since``, those that ended at or after ``since``: everything true at some time of a window that starts
        at ``since``."""
        node = _key(key)
        if node not in self._graph:
            return []
        edges = [(parent, node) for parent in self._graph.pred[node]]
        if not parents_only:
            edges += [(node, child) for child in self._graph.succ[node]]
        if since is not None:
            edges += [
                edge
                for edge in self._ended_at.get(node, ())
                if self._ended[edge]["ended"] >= since and (not parents_only or edge[1] == node)  # type: ignore[operator]
            ]
        found = [self._relation(edge) for edge in sorted(edges)]
        return [relation for relation in found if relation is not None]

    def ref(self, key: KeyLike) -> ObjectRef | None:
        node = _key(key)
        return self._graph.nodes[node]["ref"] if node in self._graph else None

    def last_seen(self, key: KeyLike) -> float | None:
        node = _key(key)
        return self._graph.nodes[node]["seen"] if node in self._graph else None

    def parents(self, key: KeyLike) -> list[ObjectRef]:
        node = _key(key)
        return self._refs(sorted(self._graph.predecessors(node))) if node in self._graph else []

    def children(self, key: KeyLike) -> list[ObjectRef]:
        node = _key(key)
        return self._refs(sorted(self._graph.successors(node))) if node in self._graph else []

    def relation(self, parent: KeyLike, child: KeyLike) -> Relation | None:
        """The relation between two objects, if it holds or ended recently enough to be remembered."""
        return self._relation((_key(parent), _key(child)))

    def _relation(self, edge: _Edge) -> Relation | None:
        parent_key, child_key = edge
        children = self._graph.succ[parent_key] if parent_key in self._graph else {}
        held = children.get(child_key)
        if held is not None:
            data = held
        elif edge in self._ended:
            data = self._ended[edge]
        else:
            return None
        nodes = self._graph.nodes
        return Relation(
            parent=nodes[parent_key]["ref"],
            child=nodes[child_key]["ref"],
            link_class=data["link_class"],
            role=data["role"],
            reported_by=data["reported_by"],
            last_seen=data["seen"],
            ended=data.get("ended"),
        )

    def ancestors(self, key: KeyLike, max_depth: int | None = None) -> list[ObjectRef]:
        """Parents, grandparents... up to ``max_depth`` levels (None: all), nearest first."""
        return self._refs(_by_distance(self.distances(key, up=True, max_depth=max_depth)))

    def descendants(self, key: KeyLike, max_depth: int | None = None) -> list[ObjectRef]:
        """Children, grandchildren... down to ``max_depth`` levels (None: all), nearest first."""
        return self._refs(_by_distance(self.distances(key, up=False, max_depth=max_depth)))

    def distances(self, key: KeyLike, *, up: bool, max_depth: int | None = None) -> dict[str, int]:
        """Keys of ancestors (``up``) or descendants with their distance in levels; cycles are harmless."""
        node = _key(key)
        if node not in self._graph or (max_depth is not None and max_depth <= 0):
            return {}
        graph = self._graph.reverse(copy=False) if up else self._graph
        reached: dict[str, int] = nx.single_source_shortest_path_length(graph, node, cutoff=max_depth)
        reached.pop(node, None)
        return reached

    def depth(self, key: KeyLike) -> int:
        """How many levels of ancestors an object has (0 for a root or an unknown object)."""
        return max(self.distances(key, up=True).values(), default=0)

    def roots(self, key: KeyLike) -> list[ObjectRef]:
        """The topmost ancestors (those without parents); the object itself when it has no parent."""
        node = _key(key)
        if node not in self._graph:
            return []
        tops = [k for k in self.distances(node, up=True) if self._graph.in_degree(k) == 0]
        return self._refs(sorted(tops)) if tops else self._refs([node])

    # internals
    def _now(self, seen: float | None) -> float:
        return self._clock() if seen is None else seen

    def _touch(self, ref: ObjectRef, now: float) -> None:
        node = ref.key
        try:
            data = self._graph.nodes[node]  # NodeView.get would be a second Python call per sighting
        except KeyError:
            self._graph.add_node(node, ref=ref, seen=now)
            self._recency[node] = None
            return
        known: ObjectRef = data["ref"]
        if self._deleted:
            deleted = self._deleted.get(node)
            if deleted is not None and now > deleted and ref.uid and ref.uid != known.uid:
                del self._deleted[node]  # created again under the same name: a new object
                self._bump(node)
        # Keep what we knew when the newer sighting lacks it (link targets often come without a uid).
        if ref.uid not in ("", known.uid) or ref.version not in ("", known.version):
            data["ref"] = dataclasses.replace(ref, uid=ref.uid or known.uid, version=ref.version or known.version)
        if now > data["seen"]:
            data["seen"] = now
        self._recency.move_to_end(node)

    def _add_edge(self, ref: ObjectRef, link: Link, now: float) -> tuple[str, str]:
        """The caller has touched ``ref`` already."""
        self._touch(link.target, now)
        parent, child = (link.target.key, ref.key) if link.role == "parent" else (ref.key, link.target.key)
        edge = (parent, child)
        gone = (
            [self._deleted[n] for n in edge if n in self._deleted and self._deleted[n] <= now] if self._deleted else []
        )
        if gone:
            # Reported after one end was deleted (a late observation, an orphan's stale ownerReference): it held
            # at most until then.
            if edge not in self._ended:
                if self._graph.has_edge(parent, child):
                    self._graph.remove_edge(parent, child)
                self._record_ended(
                    edge,
                    {"link_class": link.link_class, "role": link.role, "reported_by": ref.key, "seen": now},
                    min(gone),
                )
            return edge
        children = self._graph.succ[parent]
        held = children.get(child)
        if held is not None:  # the usual case: reported again
            held["link_class"] = link.link_class
            held["role"] = link.role
            held["reported_by"] = ref.key
            held["seen"] = now
            return edge
        if edge in self._ended:
            self._drop_ended(edge)  # it holds again
        self._graph.add_edge(parent, child, link_class=link.link_class, role=link.role, reported_by=ref.key, seen=now)
        self._bump_edge(edge)
        return edge

    def _end_edge(self, edge: _Edge, when: float) -> None:
        parent, child = edge
        data = dict(self._graph.edges[parent, child])
        self._graph.remove_edge(parent, child)
        self._record_ended(edge, data, when)

    def _record_ended(self, edge: _Edge, data: dict[str, object], when: float) -> None:
        data["ended"] = when
        self._ended[edge] = data
        for node in edge:
            self._ended_at.setdefault(node, set()).add(edge)
        self._bump_edge(edge)
        self._endings.append((when, edge[0], edge))

    def _drop_ended(self, edge: _Edge) -> None:
        del self._ended[edge]
        for node in edge:
            held = self._ended_at.get(node)
            if held is not None:
                held.discard(edge)
                if not held:
                    del self._ended_at[node]
        self._bump_edge(edge)

    def _forget(self, node: str) -> None:
        for edge in list(self._ended_at.get(node, ())):
            self._drop_ended(edge)
        for parent in self._graph.predecessors(node):
            self._bump(parent, parents_changed=False)
        for child in self._graph.successors(node):
            self._bump(child)
        self._graph.remove_node(node)
        del self._recency[node]
        self._deleted.pop(node, None)
        self._revisions.pop(node, None)
        self._parent_revisions.pop(node, None)
        self._reported.pop(node, None)

    def _bump(self, node: str, *, parents_changed: bool = True) -> None:
        self._revisions[node] = self._revisions.get(node, 0) + 1
        if parents_changed:
            self._parent_revisions[node] = self._parent_revisions.get(node, 0) + 1

    def _bump_edge(self, edge: _Edge) -> None:
        parent, child = edge
        self._bump(parent, parents_changed=False)
        self._bump(child)

    def _incident_edges(self, node: str) -> list[tuple[str, str, str]]:
        edges = [(p, node, d["reported_by"]) for p, d in self._graph.pred[node].items()]
        edges += [(node, c, d["reported_by"]) for c, d in self._graph.succ[node].items()]
        return edges

    def _evict(self) -> None:
        while len(self._recency) > self.max_nodes:
            oldest = next(iter(self._recency))
            self._forget(oldest)
            self.evictions += 1

    def _refs(self, keys: Iterable[str]) -> list[ObjectRef]:
        nodes = self._graph.nodes
        return [nodes[k]["ref"] for k in keys]


def _key(key: KeyLike) -> str:
    return key.key if isinstance(key, ObjectRef) else key


def _by_distance(distances: dict[str, int]) -> list[str]:
    return sorted(distances, key=lambda k: (distances[k], k))
