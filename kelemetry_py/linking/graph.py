"""The live object graph: which object is whose parent, as the linkers last reported it.

Nodes are object keys (``cluster/group/resource/namespace/name``) holding the :class:`ObjectRef`; edges point
from parent to child. The collector is long-lived, so the graph is bounded: past ``max_nodes`` the objects
touched least recently are evicted.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
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


class ObjectGraph:
    """A bounded networkx DiGraph of object relations (parent -> child)."""

    def __init__(self, max_nodes: int = 200_000, clock: Callable[[], float] = time.time) -> None:
        if max_nodes < 2:
            raise ValueError(f"max_nodes must be at least 2 (a link has two ends), not {max_nodes}")
        self.max_nodes = max_nodes
        self._clock = clock
        self._graph: nx.DiGraph = nx.DiGraph()
        self._recency: OrderedDict[str, None] = OrderedDict()  # least recently touched first
        self.evictions = 0

    # updates
    def add_object(self, ref: ObjectRef, seen: float | None = None) -> None:
        """Record that ``ref`` was seen (keeps it from eviction, refreshes its uid/version)."""
        self._touch(ref, self._now(seen))
        self._evict()

    def add_link(self, ref: ObjectRef, link: Link, seen: float | None = None) -> None:
        """Record a link a linker found on ``ref``."""
        now = self._now(seen)
        self._add_edge(ref, link, now)
        self._recency.move_to_end(ref.key)  # the object observed is the freshest, not its last target
        self._evict()

    def sync_links(self, ref: ObjectRef, links: Iterable[Link], seen: float | None = None) -> None:
        """Make ``links`` the complete set of links ``ref``'s linkers report now: the ones it reported
        before and no longer does (an ownerReference removed, an annotation edited) are dropped."""
        now = self._now(seen)
        self._touch(ref, now)
        current = set()
        for link in links:
            current.add(self._add_edge(ref, link, now))
        stale = [
            (parent, child)
            for parent, child, reporter in self._incident_edges(ref.key)
            if reporter == ref.key and (parent, child) not in current
        ]
        self._graph.remove_edges_from(stale)
        self._recency.move_to_end(ref.key)
        self._evict()

    def remove(self, key: KeyLike) -> bool:
        """Forget an object and its relations (it was deleted). False when it was not known."""
        node = _key(key)
        if node not in self._graph:
            return False
        self._graph.remove_node(node)
        del self._recency[node]
        return True

    # queries
    def __contains__(self, key: object) -> bool:
        return isinstance(key, str | ObjectRef) and _key(key) in self._graph

    def __len__(self) -> int:
        return int(self._graph.number_of_nodes())

    @property
    def edge_count(self) -> int:
        return int(self._graph.number_of_edges())

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
        parent_key, child_key = _key(parent), _key(child)
        if not self._graph.has_edge(parent_key, child_key):
            return None
        data = self._graph.edges[parent_key, child_key]
        return Relation(
            parent=self._graph.nodes[parent_key]["ref"],
            child=self._graph.nodes[child_key]["ref"],
            link_class=data["link_class"],
            role=data["role"],
            reported_by=data["reported_by"],
            last_seen=data["seen"],
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
        if node in self._graph:
            data = self._graph.nodes[node]
            known: ObjectRef = data["ref"]
            # Keep what we knew when the newer sighting lacks it (link targets often come without a uid).
            data["ref"] = dataclasses.replace(
                ref, uid=ref.uid or known.uid, version=ref.version or known.version
            )
            data["seen"] = max(now, data["seen"])
            self._recency.move_to_end(node)
        else:
            self._graph.add_node(node, ref=ref, seen=now)
            self._recency[node] = None

    def _add_edge(self, ref: ObjectRef, link: Link, now: float) -> tuple[str, str]:
        self._touch(ref, now)
        self._touch(link.target, now)
        parent, child = (link.target.key, ref.key) if link.role == "parent" else (ref.key, link.target.key)
        self._graph.add_edge(
            parent, child, link_class=link.link_class, role=link.role, reported_by=ref.key, seen=now
        )
        return parent, child

    def _incident_edges(self, node: str) -> list[tuple[str, str, str]]:
        edges = [(p, node, d["reported_by"]) for p, _, d in self._graph.in_edges(node, data=True)]
        edges += [(node, c, d["reported_by"]) for _, c, d in self._graph.out_edges(node, data=True)]
        return edges

    def _evict(self) -> None:
        while len(self._recency) > self.max_nodes:
            oldest, _ = self._recency.popitem(last=False)
            self._graph.remove_node(oldest)
            self.evictions += 1

    def _refs(self, keys: Iterable[str]) -> list[ObjectRef]:
        nodes = self._graph.nodes
        return [nodes[k]["ref"] for k in keys]


def _key(key: KeyLike) -> str:
    return key.key if isinstance(key, ObjectRef) else key


def _by_distance(distances: dict[str, int]) -> list[str]:
    return sorted(distances, key=lambda k: (distances[k], k))
