"""The frontend's queries, independent of any wire API: search views, read a view by id, pick the best trace.

The HTTP APIs (``frontend/http.py``) and the gRPC remote storage both call :class:`FrontendService`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from kelemetry_py.auth import EVERYTHING, Scope
from kelemetry_py.auth.masking import mask_spans, namespaces_allowed
from kelemetry_py.config import FrontendConfig
from kelemetry_py.frontend.assembly import Assembler, Modifier, ObjectMatch
from kelemetry_py.frontend.modes import (
    ALL_MODES,
    DisplayMode,
    FrontendError,
    ViewId,
    mode_by_name,
    parse_trace_id,
    render,
)
from kelemetry_py.frontend.tracecache import CacheEntry, TraceCache
from kelemetry_py.frontend.transforms import FrontendTransform, ViewInfo, apply_transforms
from kelemetry_py.metrics import Metrics
from kelemetry_py.model import SERVICE_LINK, ObjectRef, Span
from kelemetry_py.storage import TraceQuery, TraceReader

# An operation of "all" (what some UIs send) means every cluster.
_ANY_OPERATION = ("", "all")


@runtime_checkable
class TagValueReader(Protocol):
    """Readers that can list a tag's values (the embedded store, Tempo) offer the clusters as operations."""

    async def tag_values(self, key: str, start_ns: int, end_ns: int) -> list[str]: ...


@dataclass(slots=True)
class View:
    """One trace as a display mode shows it. ``view_id`` is None for a raw trace read by its own id."""

    trace_id: int
    mode: DisplayMode | None
    spans: list[Span]
    view_id: ViewId | None = None

    @property
    def trace_id_hex(self) -> str:
        return f"{self.trace_id:032x}"

    @property
    def root(self) -> Span:
        return self.spans[0]

    @property
    def duration_ns(self) -> int:
        return max(span.end_ns for span in self.spans) - min(span.start_ns for span in self.spans)


@dataclass(slots=True, kw_only=True)
class ViewQuery:
    mode: DisplayMode
    start_ns: int
    end_ns: int
    tags: dict[str, str]
    cluster: str = ""
    limit: int = 20
    min_duration_ns: int | None = None
    max_duration_ns: int | None = None


class FrontendService:
    def __init__(self, reader: TraceReader, cache: TraceCache, config: FrontendConfig) -> None:
        self.reader = reader
        self.cache = cache
        self.config = config
        self.default_mode = mode_by_name(config.default_mode)
        self.assembler = Assembler(
            reader,
            max_ancestor_depth=config.max_ancestor_depth,
            max_descendant_depth=config.max_descendant_depth,
        )
        # Frontend-transform plugins reshape every rendered view; the app sets these after loading them.
        self.transforms: list[FrontendTransform] = []
        self.metrics: Metrics | None = None
        # The longest search range (the store's retention); the HTTP layer answers 400 beyond it.
        self.max_range_ns = 400 * 86_400 * 10**9

    @staticmethod
    def mode_names() -> list[str]:
        return [mode.name for mode in ALL_MODES]

    def mode(self, name: str | None) -> DisplayMode:
        return mode_by_name(name) if name else self.default_mode

    async def clusters(self, start_ns: int, end_ns: int, scope: Scope = EVERYTHING) -> list[str]:
        if isinstance(self.reader, TagValueReader):
            names = set(await self.reader.tag_values("cluster", start_ns, end_ns))
            return sorted(name for name in names if scope.allows_cluster(name))
        return []

    async def search(self, query: ViewQuery, scope: Scope = EVERYTHING) -> list[View]:
        if query.end_ns < query.start_ns:
            raise FrontendError("the search range ends before it starts")
        if query.limit <= 0:
            raise FrontendError(f"limit must be greater than 0, not {query.limit}")
        tags = dict(query.tags)
        if query.cluster not in _ANY_OPERATION:
            tags["cluster"] = query.cluster
        matches = await self.assembler.search(
            TraceQuery(tags=tags, start_ns=query.start_ns, end_ns=query.end_ns, limit=query.limit),
            max_objects=query.limit * 4,
            scope=scope,
        )
        views = await asyncio.gather(
            *(
                self.open(query.mode, CacheEntry(match.key, query.start_ns, query.end_ns), scope)
                for match in matches
            )
        )
        out: list[View] = []
        roots: set[str] = set()
        for view in views:
            if view is None or not _duration_fits(view, query):
                continue
            # Several matching objects of one tree give the same full tree: show it once.
            root_key = _object_key(view.root)
            if query.mode.modifier is Modifier.FULL_TREE and root_key in roots:
                continue
            roots.add(root_key)
            out.append(view)
            if len(out) >= query.limit:
                break
        return out

    async def open(self, mode: DisplayMode, entry: CacheEntry, scope: Scope = EVERYTHING) -> View | None:
        """Assemble ``entry`` in ``mode`` as ``scope`` may see it and remember it in the trace cache under the
        view's id (the cache holds what was asked, never a view: every reader's scope is applied afresh)."""
        trace = await self.assembler.assemble(
            entry.object_key, entry.start_ns, entry.end_ns, mode.modifier, scope
        )
        if trace is None:
            return None
        key = await self.cache.put(entry)
        view_id = ViewId(mode, key)
        spans = render(trace, mode, view_id.value)
        if not scope.sees_everything:
            spans = mask_spans(spans, namespaces_allowed(scope, (obj.ref for obj in trace.objects.values())))
        if self.transforms:
            info = ViewInfo(mode=mode.name, object_key=entry.object_key, trace_id=view_id.value)
            spans = await apply_transforms(self.transforms, spans, info, self.metrics)
        return View(view_id.value, mode, spans, view_id)

    async def get(self, trace_id: str, scope: Scope = EVERYTHING) -> View | None:
        """A view by its user-facing id (any mode digits), or a raw trace by its own id; None if unknown."""
        parsed = parse_trace_id(trace_id)
        if isinstance(parsed, int):
            spans = await self.reader.get_trace(parsed)
            if not scope.sees_everything:
                spans = await _visible_spans(spans, scope)
                spans = mask_spans(spans, namespaces_allowed(scope, (_ref_of(span.attributes) for span in spans)))
            if not spans:
                return None
            spans.sort(key=lambda span: (span.parent_id is not None, span.start_ns))
            return View(parsed, None, spans)
        entry = await self.cache.get(parsed.cache_key)
        if entry is None:
            return None
        return await self.open(parsed.mode, entry, scope)

    async def best(
        self, tags: Mapping[str, str], at_ns: int, mode: DisplayMode, window_ns: int, scope: Scope = EVERYTHING
    ) -> View | None:
        """The single trace that best answers "this object at this time": never more than one."""
        matches = await self.assembler.search(
            TraceQuery(tags=dict(tags), start_ns=at_ns - window_ns, end_ns=at_ns + window_ns, limit=20),
            max_objects=20,
            scope=scope,
        )
        if not matches:
            return None

        def closeness(match: ObjectMatch) -> tuple[int, int, str]:
            distance = min(max(hit.start_ns - at_ns, at_ns - hit.end_ns, 0) for hit in match.hits)
            exact = sum(1 for key, value in tags.items() if _match_tag(match, key) == value)
            return (distance, -exact, match.key)

        chosen = min(matches, key=closeness)
        return await self.open(mode, CacheEntry(chosen.key, chosen.start_ns, chosen.end_ns), scope)


def _match_tag(match: ObjectMatch, key: str) -> str:
    return str(match.ref.tags().get(key, ""))


def _object_key(span: Span) -> str:
    return _ref_of(span.attributes).key


def _ref_of(attrs: Mapping[str, object], prefix: str = "") -> ObjectRef:
    def tag(name: str) -> str:
        key = f"{prefix}{name.capitalize()}" if prefix else name
        return str(attrs.get(key, ""))

    return ObjectRef(tag("cluster"), tag("group"), "", tag("resource"), tag("namespace"), tag("name"))


async def _visible_spans(spans: list[Span], scope: Scope) -> list[Span]:
    """The raw spans ``scope`` may see: those of a visible object, and of its links only those to visible ones."""
    refs = {span.span_id: _ref_of(span.attributes) for span in spans}
    linked = {
        span.span_id: _ref_of(span.attributes, "linked") for span in spans if span.service == SERVICE_LINK
    }
    for span_id, ref in linked.items():
        if not ref.cluster:  # a link within the same cluster may leave linkedCluster out
            linked[span_id] = ObjectRef(
                refs[span_id].cluster, ref.group, "", ref.resource, ref.namespace, ref.name
            )
    allowed = await scope.visible([*refs.values(), *linked.values()])
    return [
        span
        for span in spans
        if refs[span.span_id] in allowed and (span.span_id not in linked or linked[span.span_id] in allowed)
    ]


def _duration_fits(view: View, query: ViewQuery) -> bool:
    duration = view.duration_ns
    if query.min_duration_ns is not None and duration < query.min_duration_ns:
        return False
    return query.max_duration_ns is None or duration <= query.max_duration_ns
