"""Assembly: raw per-object, per-window traces → one merged trace per object → the tree of related objects.

An object's raw traces in the requested range are merged into one :class:`ObjectTrace` (its windows become
one object span, child spans and logs keep their own timestamps). Link spans are followed level by level, each
level's objects read concurrently, and the relations become a networkx DiGraph (edges parent → child).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

import networkx as nx

from kelemetry_py.auth import EVERYTHING, Scope
from kelemetry_py.model import (
    SERVICE_LINK,
    SERVICE_OBJECT,
    Attributes,
    LogEntry,
    ObjectRef,
    Span,
)
from kelemetry_py.storage import BatchTraceReader, TraceHit, TraceQuery, TraceReader

# An object has at most one raw trace per window; a long range can hold many windows.
_MAX_WINDOWS_PER_OBJECT = 10_000


class Modifier(Enum):
    """Which related objects a view follows from the object asked for (the second digit of a display mode)."""

    NONE = ("", 0)
    FULL_TREE = ("full tree", 1)
    ANCESTORS = ("ancestors", 2)
    OWNED_OBJECTS = ("owned objects", 3)

    def __init__(self, label: str, digit: int) -> None:
        self.label = label
        self.digit = digit

@dataclass(frozen=True, slots=True)
class ObjectLink:
    """``target`` relates to the object holding the link; ``role`` is the target's role (parent or child)."""

    target: ObjectRef
    role: str
    link_class: str


@dataclass(slots=True)
class ObjectTrace:
    """One object's raw traces merged over the requested range."""

    ref: ObjectRef
    span_id: int  # the object span id of its earliest window: stable for a given range
    start_ns: int
    end_ns: int
    attributes: Attributes
    logs: list[LogEntry] = field(default_factory=list)  # logs on the raw object spans
    children: list[Span] = field(default_factory=list)  # audit, event, diff, plugin spans; time ordered
    links: list[ObjectLink] = field(default_factory=list)
    object_span_ids: frozenset[int] = frozenset()  # every window's object span id (children point at them)

    @property
    def key(self) -> str:
        return self.ref.key

    @property
    def active(self) -> bool:
        """Whether anything happened to the object inside the range (children and logs are clipped to it)."""
        return bool(self.children or self.logs)


@dataclass(slots=True)
class AssembledTrace:
    """The objects of one view and their relations: ``graph`` edges go parent → child, rooted at ``root``."""

    searched: str
    root: str
    objects: dict[str, ObjectTrace]
    graph: nx.DiGraph
    start_ns: int
    end_ns: int

    def children_of(self, key: str) -> list[str]:
        return sorted(self.graph.successors(key), key=lambda child: (self.objects[child].start_ns, child))


@dataclass(frozen=True, slots=True)
class ObjectMatch:
    """A search result: an object with raw traces matching the query (newest hit first)."""

    ref: ObjectRef
    hits: tuple[TraceHit, ...]

    @property
    def key(self) -> str:
        return self.ref.key

    @property
    def start_ns(self) -> int:
        return min(hit.start_ns for hit in self.hits)

    @property
    def end_ns(self) -> int:
        return max(hit.end_ns for hit in self.hits)


def object_tags(ref: ObjectRef) -> dict[str, str]:
    return {
        "cluster": ref.cluster,
        "group": ref.group,
        "resource": ref.resource,
        "namespace": ref.namespace,
        "name": ref.name,
    }


def merge_object(
    ref: ObjectRef, traces: Iterable[Sequence[Span]], start_ns: int, end_ns: int
) -> ObjectTrace | None:
    """Merge one object's raw traces and clip them to [start_ns, end_ns]; None if nothing is in range."""
    object_spans: list[Span] = []
    others: list[Span] = []
    for spans in traces:
        for span in spans:
            (object_spans if span.service == SERVICE_OBJECT else others).append(span)
    if not object_spans and not others:
        return None
    object_spans.sort(key=lambda span: span.start_ns)
    attributes: Attributes = {}
    for span in object_spans:
        attributes.update(span.attributes)
    if not attributes and others:
        attributes = {
            key: value for key, value in others[0].attributes.items() if key in ref.tags() or key == "uid"
        }
    version = str(attributes.get("version", ref.version))
    uid = str(attributes.get("uid", ref.uid))
    ref = ObjectRef(ref.cluster, ref.group, version, ref.resource, ref.namespace, ref.name, uid)
    for key, value in ref.tags().items():
        attributes.setdefault(key, value)

    links: dict[tuple[str, str], ObjectLink] = {}
    children: list[Span] = []
    for span in others:
        if span.service == SERVICE_LINK:
            link = _link_of(span)
            if link is not None:
                links.setdefault((link.target.key, link.role), link)
        elif span.end_ns >= start_ns and span.start_ns <= end_ns:
            children.append(span)
    children.sort(key=lambda span: (span.start_ns, span.span_id))

    span_starts = [span.start_ns for span in object_spans] or [span.start_ns for span in others]
    span_ends = [span.end_ns for span in object_spans] or [span.end_ns for span in others]
    merged_start = max(min(span_starts), start_ns)
    merged_end = min(max(span_ends), end_ns)
    if merged_end < merged_start:
        return None
    logs = sorted(
        (log for span in object_spans for log in span.logs if start_ns <= log.time_ns <= end_ns),
        key=lambda log: log.time_ns,
    )
    anchor = object_spans[0].span_id if object_spans else (others[0].parent_id or others[0].span_id)
    return ObjectTrace(
        ref=ref,
        span_id=anchor,
        start_ns=merged_start,
        end_ns=merged_end,
        attributes=attributes,
        logs=logs,
        children=children,
        links=sorted(links.values(), key=lambda link: (link.role, link.target.key)),
        object_span_ids=frozenset(span.span_id for span in object_spans)
        | frozenset(span.parent_id for span in others if span.parent_id is not None and not object_spans),
    )


def _link_of(span: Span) -> ObjectLink | None:
    attrs = span.attributes
    role = str(attrs.get("linkRole", ""))
    name = str(attrs.get("linkedName", ""))
    resource = str(attrs.get("linkedResource", ""))
    if role not in ("parent", "child") or not name or not resource:
        return None
    target = ObjectRef(
        cluster=str(attrs.get("linkedCluster", "")) or str(attrs.get("cluster", "")),
        group=str(attrs.get("linkedGroup", "")),
        version=str(attrs.get("linkedVersion", "")),
        resource=resource,
        namespace=str(attrs.get("linkedNamespace", "")),
        name=name,
    )
    return ObjectLink(target, role, str(attrs.get("linkClass", "")))


class Assembler:
    """Reads raw traces through a :class:`TraceReader` and assembles object trees. Safe to share."""

    def __init__(
        self,
        reader: TraceReader,
        *,
        max_ancestor_depth: int = 3,
        max_descendant_depth: int = 3,
        concurrency: int = 32,
    ) -> None:
        self._reader = reader
        self.max_ancestor_depth = max_ancestor_depth
        self.max_descendant_depth = max_descendant_depth
        self._limit = asyncio.Semaphore(concurrency)

    async def search(self, query: TraceQuery, max_objects: int, scope: Scope = EVERYTHING) -> list[ObjectMatch]:
        """Objects with a raw trace matching ``query`` that ``scope`` may see, newest activity first, at most
        ``max_objects``."""
        tags = dict(query.tags) if scope.sees_everything else _narrowed(query.tags, scope)
        if tags is None:
            return []
        wide = TraceQuery(
            tags=tags,
            start_ns=query.start_ns,
            end_ns=query.end_ns,
            limit=max(query.limit, max_objects) * (4 if scope.sees_everything else 16),
            service=query.service,
        )
        hits = await self._reader.find_traces(wide)
        grouped: dict[str, list[TraceHit]] = {}
        for hit in hits:
            grouped.setdefault(hit.ref.key, []).append(hit)
        matches = [
            ObjectMatch(group[0].ref, tuple(sorted(group, key=lambda hit: -hit.end_ns)))
            for group in grouped.values()
        ]
        if not scope.sees_everything:
            allowed = await scope.visible(match.ref for match in matches)
            matches = [match for match in matches if match.ref in allowed]
        matches.sort(key=lambda match: (-match.end_ns, match.key))
        return matches[:max_objects]

    @staticmethod
    def _object_query(ref: ObjectRef, start_ns: int, end_ns: int) -> TraceQuery:
        # Two selective tags keep a store's tag join cheap; the exact key is checked on the hits.
        tags = {"resource": ref.resource, "name": ref.name}
        return TraceQuery(tags=tags, start_ns=start_ns, end_ns=end_ns, limit=_MAX_WINDOWS_PER_OBJECT)

    async def load(self, key: str, start_ns: int, end_ns: int) -> ObjectTrace | None:
        """One object merged over the range (None when it has no raw trace there)."""
        ref = ObjectRef.from_key(key)
        async with self._limit:
            hits = await self._reader.find_traces(self._object_query(ref, start_ns, end_ns))
        trace_ids = sorted({hit.trace_id for hit in hits if hit.ref.key == key})
        if not trace_ids:
            return None
        traces = await asyncio.gather(*(self._get_trace(trace_id) for trace_id in trace_ids))
        return merge_object(ref, traces, start_ns, end_ns)

    async def _get_trace(self, trace_id: int) -> list[Span]:
        async with self._limit:
            return await self._reader.get_trace(trace_id)

    async def _load_many(
        self, keys: Iterable[str], start_ns: int, end_ns: int, scope: Scope = EVERYTHING
    ) -> dict[str, ObjectTrace]:
        wanted = sorted(set(keys))
        if not scope.sees_everything:
            # An object out of scope is never read, and no link leads to it: it is absent, not hidden.
            refs = {key: ObjectRef.from_key(key) for key in wanted}
            allowed = await scope.visible(refs.values())
            wanted = [key for key in wanted if refs[key] in allowed]
        objects: dict[str, ObjectTrace]
        if isinstance(self._reader, BatchTraceReader):
            objects = await self._load_batch(self._reader, wanted, start_ns, end_ns)
        else:
            loaded = await asyncio.gather(*(self.load(key, start_ns, end_ns) for key in wanted))
            objects = {key: obj for key, obj in zip(wanted, loaded, strict=True) if obj is not None}
        if not scope.sees_everything:
            targets = await scope.visible(link.target for obj in objects.values() for link in obj.links)
            for obj in objects.values():
                obj.links = [link for link in obj.links if link.target in targets]
        return objects

    async def _load_batch(
        self, reader: BatchTraceReader, keys: list[str], start_ns: int, end_ns: int
    ) -> dict[str, ObjectTrace]:
        """``_load_many`` in two round trips: every object's traces found, then all of them read."""
        refs = [ObjectRef.from_key(key) for key in keys]
        found = await reader.find_traces_many([self._object_query(ref, start_ns, end_ns) for ref in refs])
        ids = [
            sorted({hit.trace_id for hit in hits if hit.ref.key == key})
            for key, hits in zip(keys, found, strict=True)
        ]
        traces = await reader.get_traces([trace_id for object_ids in ids for trace_id in object_ids])
        loaded: dict[str, ObjectTrace] = {}
        for key, ref, object_ids in zip(keys, refs, ids, strict=True):
            merged = merge_object(ref, [traces.get(trace_id, []) for trace_id in object_ids], start_ns, end_ns)
            if merged is not None:
                loaded[key] = merged
        return loaded

    async def assemble(
        self,
        searched_key: str,
        start_ns: int,
        end_ns: int,
        modifier: Modifier = Modifier.NONE,
        scope: Scope = EVERYTHING,
    ) -> AssembledTrace | None:
        """The view's objects for ``searched_key`` over the range as ``scope`` may see them; None when the object
        has no data there (or is out of scope)."""
        objects = await self._load_many([searched_key], start_ns, end_ns, scope)
        if searched_key not in objects:
            return None
        graph: nx.DiGraph = nx.DiGraph()
        graph.add_node(searched_key)
        root = searched_key
        if modifier in (Modifier.ANCESTORS, Modifier.FULL_TREE):
            root, path = await self._climb(searched_key, objects, graph, start_ns, end_ns, scope)
            if modifier is Modifier.ANCESTORS:
                return self._restricted(searched_key, root, path, objects, graph, start_ns, end_ns)
            depth = len(path) - 1 + self.max_descendant_depth
            await self._descend(root, depth, objects, graph, start_ns, end_ns, scope)
        elif modifier is Modifier.OWNED_OBJECTS:
            await self._descend(searched_key, self.max_descendant_depth, objects, graph, start_ns, end_ns, scope)
        tree = self._as_tree(graph.subgraph([key for key in graph if key in objects]), root)
        path = nx.shortest_path(tree, root, searched_key) if searched_key in tree else [root]
        tree = self._without_idle(tree, root, set(path), objects)
        kept = {key: objects[key] for key in tree}
        return AssembledTrace(searched_key, root, kept, tree, start_ns, end_ns)

    async def _climb(
        self,
        start: str,
        objects: dict[str, ObjectTrace],
        graph: nx.DiGraph,
        start_ns: int,
        end_ns: int,
        scope: Scope = EVERYTHING,
    ) -> tuple[str, list[str]]:
        """Follow parent links upward; returns the chosen root and the path root → ``start``."""
        frontier = [start]
        distance = {start: 0}
        for level in range(1, self.max_ancestor_depth + 1):
            wanted: dict[str, ObjectLink] = {}
            for key in frontier:
                for link in objects[key].links:
                    if link.role == "parent":
                        graph.add_edge(link.target.key, key, link_class=link.link_class)
                        if link.target.key not in distance:
                            wanted.setdefault(link.target.key, link)
            loaded = await self._load_many(wanted, start_ns, end_ns, scope)
            objects.update(loaded)
            frontier = sorted(loaded)
            for key in frontier:
                distance[key] = level
            if not frontier:
                break
        # The farthest ancestor with data wins; owners before other link classes, then by key for determinism.
        candidates = [key for key in distance if key in objects]
        root = max(candidates, key=lambda key: (distance[key], self._owner_rank(graph, key), _neg_key(key)))
        path: list[str] = nx.shortest_path(graph, root, start)
        return root, path

    @staticmethod
    def _owner_rank(graph: nx.DiGraph, key: str) -> int:
        return int(any(data.get("link_class") == "owner" for _, _, data in graph.out_edges(key, data=True)))

    async def _descend(
        self,
        root: str,
        depth: int,
        objects: dict[str, ObjectTrace],
        graph: nx.DiGraph,
        start_ns: int,
        end_ns: int,
        scope: Scope = EVERYTHING,
    ) -> None:
        seen = {root}
        frontier = [root]
        for _ in range(depth):
            wanted: set[str] = set()
            for key in frontier:
                for link in objects[key].links:
                    if link.role == "child" and link.target.key not in seen:
                        graph.add_edge(key, link.target.key, link_class=link.link_class)
                        wanted.add(link.target.key)
            seen |= wanted
            missing = [key for key in wanted if key not in objects]
            objects.update(await self._load_many(missing, start_ns, end_ns, scope))
            frontier = sorted(key for key in wanted if key in objects)
            if not frontier:
                break

    def _restricted(
        self,
        searched: str,
        root: str,
        path: list[str],
        objects: dict[str, ObjectTrace],
        graph: nx.DiGraph,
        start_ns: int,
        end_ns: int,
    ) -> AssembledTrace:
        tree: nx.DiGraph = nx.DiGraph()
        tree.add_node(root)
        for parent, child in itertools.pairwise(path):
            tree.add_edge(parent, child, **graph.edges[parent, child])
        return AssembledTrace(searched, root, {key: objects[key] for key in path}, tree, start_ns, end_ns)

    @staticmethod
    def _without_idle(
        tree: nx.DiGraph, root: str, keep: set[str], objects: dict[str, ObjectTrace]
    ) -> nx.DiGraph:
        """Leave out related objects with nothing in the range (e.g. created after it ends), unless something
        beneath them has; a raw trace covers a whole window, so the search range is narrower than the data."""
        kept = set(keep)
        for key in reversed(list(nx.dfs_preorder_nodes(tree, root))):  # children before their parents
            if objects[key].active or any(child in kept for child in tree.successors(key)):
                kept.add(key)
        pruned: nx.DiGraph = tree.subgraph(kept).copy()
        return pruned

    @staticmethod
    def _as_tree(graph: nx.DiGraph, root: str) -> nx.DiGraph:
        """A breadth-first spanning tree: an object with two parents is shown once, under the nearer one."""
        tree: nx.DiGraph = nx.DiGraph()
        tree.add_node(root)
        for parent, child in nx.bfs_edges(graph, root, sort_neighbors=sorted):
            tree.add_edge(parent, child, **graph.edges[parent, child])
        return tree


def _narrowed(tags: dict[str, str], scope: Scope) -> dict[str, str] | None:
    """The query's tags with a one-cluster / one-namespace scope pushed down; None when the query asks only for
    what the scope cannot see."""
    narrowed = dict(tags)
    if "cluster" in narrowed and not scope.allows_cluster(narrowed["cluster"]):
        return None
    static = scope.static()
    if static is None:
        return narrowed
    if static.clusters is not None and len(static.clusters) == 1:
        narrowed.setdefault("cluster", next(iter(static.clusters)))
    if static.namespaces is not None:
        namespace = narrowed.get("namespace")
        if namespace is not None:
            if namespace not in static.namespaces and not (namespace == "" and static.cluster_scoped):
                return None
        elif len(static.namespaces) == 1 and not static.cluster_scoped:
            narrowed["namespace"] = next(iter(static.namespaces))
    return narrowed


def _neg_key(key: str) -> tuple[int, ...]:
    # max() picks the lexicographically smallest key among equals.
    return tuple(-ord(char) for char in key)
