"""The built-in UI: its static files at ``/`` and ``/objects/...``, and the JSON it reads under ``/api/ui/``.

The JSON is built on the same :class:`FrontendService` (and analysis) as the Jaeger APIs, on the same app, so the
auth middleware guards it; every answer keeps only the objects the caller's scope allows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import networkx as nx
import orjson
from aiohttp import web

from kelemetry_py.analysis.analyzer import analyze
from kelemetry_py.auth import Scope, request_scope
from kelemetry_py.frontend.assembly import AssembledTrace, Modifier, ObjectMatch, ObjectTrace
from kelemetry_py.frontend.http import SERVICE_KEY
from kelemetry_py.frontend.modes import FrontendError, ViewId, mode_by_name, parse_trace_id
from kelemetry_py.frontend.service import FrontendService, TagValueReader
from kelemetry_py.frontend.tracecache import CacheEntry
from kelemetry_py.kube.catalog import ResourceCatalog
from kelemetry_py.model import SERVICE_EVENT, ObjectRef, Span
from kelemetry_py.storage import TraceQuery
from kelemetry_py.ui.query import SearchQuery, parse_range, parse_search

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MODES = {
    "full": Modifier.FULL_TREE,
    "ancestors": Modifier.ANCESTORS,
    "owned": Modifier.OWNED_OBJECTS,
    "object": Modifier.NONE,
}
_SPARK_BUCKETS = 48
_MAX_RESULTS = 100
# A name prefix cannot be matched by a store's exact tag index: scan this many candidate traces instead.
_PREFIX_SCAN = 2000
_ERROR_SCAN_FACTOR = 4
_CATALOG = ResourceCatalog.builtin()


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload),
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def _error(status: int, message: str) -> web.Response:
    return _json({"error": {"code": status, "message": message}}, status)


def _guarded(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except FrontendError as exc:
            return _error(400, str(exc))
        except web.HTTPException:
            raise
        except Exception:  # the cause goes to the log, never into the answer
            log.exception("UI request %s failed", request.path)
            return _error(500, "internal error; see the server log")

    return wrapped


def _ms(ns: int) -> float:
    return ns / 1e6


def _kind(ref: ObjectRef) -> str:
    info = _CATALOG.by_resource(ref.group, ref.resource)
    return info.kind if info is not None else ref.resource


def _ref_json(ref: ObjectRef) -> dict[str, str]:
    return {
        "key": ref.key,
        "cluster": ref.cluster,
        "group": ref.group,
        "resource": ref.resource,
        "kind": _kind(ref),
        "namespace": ref.namespace,
        "name": ref.name,
    }


def _is_warning(span: Span) -> bool:
    return span.service == SERVICE_EVENT and span.attributes.get("type") == "Warning"


def _actor(span: Span) -> str:
    attrs = span.attributes
    for key in ("username", "fieldManager", "reportingController", "source"):
        value = attrs.get(key)
        if value:
            return str(value)
    return ""


def _mark(span: Span) -> dict[str, Any]:
    code = span.attributes.get("responseCode")
    return {
        "id": span.span_id_hex,
        "kind": span.service,
        "t": _ms(span.start_ns),
        "d": _ms(span.end_ns - span.start_ns),
        "title": span.name,
        "error": span.error,
        "warning": _is_warning(span),
        "user": _actor(span),
        "code": int(code) if isinstance(code, int | str) and str(code).isdigit() else None,
    }


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "")
    try:
        value = int(raw) if raw else 50
    except ValueError:
        raise FrontendError(f"limit: {raw!r} is not an integer") from None
    if not 1 <= value <= _MAX_RESULTS:
        raise FrontendError(f"limit must be between 1 and {_MAX_RESULTS}")
    return value


async def _visible_matches(scope: Scope, matches: list[ObjectMatch]) -> list[ObjectMatch]:
    if scope.sees_everything:
        return matches
    visible = await scope.visible(match.ref for match in matches)
    return [match for match in matches if match.ref in visible]


# ------------------------------------------------------------------------------------------------ search


def _summary(obj: ObjectTrace, start_ns: int, end_ns: int) -> dict[str, Any]:
    spark = [0] * _SPARK_BUCKETS
    width = max(end_ns - start_ns, 1)
    for span in obj.children:
        index = min(max((span.start_ns - start_ns) * _SPARK_BUCKETS // width, 0), _SPARK_BUCKETS - 1)
        spark[index] += 1
    last = obj.children[-1] if obj.children else None
    return {
        **_ref_json(obj.ref),
        "first": _ms(obj.children[0].start_ns) if obj.children else None,
        "last": _ms(max(span.start_ns for span in obj.children)) if obj.children else None,
        "lastChange": {"title": last.name, "user": _actor(last), "kind": last.service} if last else None,
        "marks": len(obj.children),
        "errors": sum(1 for span in obj.children if span.error),
        "warnings": sum(1 for span in obj.children if _is_warning(span)),
        "spark": spark,
    }


def _apply_pickers(request: web.Request, query: SearchQuery) -> None:
    picked = request.query
    if picked.get("cluster"):
        query.cluster = picked["cluster"]
    if picked.get("namespace"):
        query.namespace = "" if picked["namespace"] == "_" else picked["namespace"]
    if picked.get("kind"):
        info = _CATALOG.lookup(picked["kind"])
        if info is None:
            raise FrontendError(f"kind: {picked['kind']!r} is not a known resource")
        query.resource, query.group = info.resource, info.group


async def _search(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE_KEY]
    start_ns, end_ns = parse_range(request.query.get("from", ""), request.query.get("to", ""), time.time_ns())
    query = parse_search(request.query.get("q", ""))
    _apply_pickers(request, query)
    limit = _limit(request)
    wanted = _PREFIX_SCAN if query.name_prefix else limit * 4
    matches = await service.assembler.search(
        TraceQuery(tags=query.store_tags(), start_ns=start_ns, end_ns=end_ns, limit=wanted), max_objects=wanted
    )
    matches = [match for match in matches if query.name_matches(match.ref.name)]
    matches = await _visible_matches(request_scope(request), matches)
    # Errors are not a stored tag: they are counted on the loaded objects, so look at more of them.
    candidates = matches[: limit * (_ERROR_SCAN_FACTOR if query.errors_only else 2)]
    loaded = await asyncio.gather(*(service.assembler.load(match.key, start_ns, end_ns) for match in candidates))
    active = [obj for obj in loaded if obj is not None and obj.children]
    # One sparkline scale for every result, over the activity they share, so their shapes compare.
    spark_start = min((obj.children[0].start_ns for obj in active), default=start_ns)
    spark_end = max((span.start_ns for obj in active for span in obj.children), default=end_ns) + 1
    results = [_summary(obj, spark_start, spark_end) for obj in active]
    if query.errors_only:
        results = [result for result in results if result["errors"]]
    # Exact name first, then most recent activity.
    results.sort(key=lambda item: (item["name"] != query.name, -(item["last"] or 0), item["key"]))
    return _json(
        {
            "range": {"from": _ms(start_ns), "to": _ms(end_ns)},
            "spark": {"from": _ms(spark_start), "to": _ms(spark_end)},
            "objects": results[:limit],
        }
    )


async def _facets(request: web.Request) -> web.StreamResponse:
    """Values for the cluster, namespace and kind pickers, as far as the caller's scope may know them."""
    service = request.app[SERVICE_KEY]
    query = request.query
    start_ns, end_ns = parse_range(query.get("from", ""), query.get("to", ""), time.time_ns(), 168 * 3600 * 10**9)
    reader = service.reader
    clusters: list[str] = []
    namespaces: list[str] = []
    resources: list[str] = []
    if isinstance(reader, TagValueReader):
        clusters, namespaces, resources = (
            sorted(set(values))
            for values in await asyncio.gather(
                *(reader.tag_values(key, start_ns, end_ns) for key in ("cluster", "namespace", "resource"))
            )
        )
    scope = request_scope(request)
    if not scope.sees_everything:
        static = scope.static()
        if static is None:  # per-object decisions only: the names of namespaces are not ours to list
            clusters, namespaces = [], []
        else:
            if static.clusters is not None:
                clusters = [cluster for cluster in clusters if cluster in static.clusters]
            if static.namespaces is not None:
                namespaces = [namespace for namespace in namespaces if namespace in static.namespaces]
    if not scope.sees_everything:
        # Which kinds exist in the data is not the tenant's to know: offer the stock namespaced kinds instead.
        resources = [info.resource for info in _CATALOG.preferred() if info.namespaced and "watch" in info.verbs]
    kinds = sorted({info.kind for info in (_CATALOG.lookup(resource) for resource in resources if resource) if info})
    return _json(
        {
            "clusters": clusters,
            "namespaces": [ns for ns in namespaces if ns],
            "kinds": kinds,
            "jaeger": bool(service.config.ui_dir),
        }
    )


# ------------------------------------------------------------------------------------------------ object


async def _resolve(service: FrontendService, request: web.Request, start_ns: int, end_ns: int) -> str | None:
    """The object key the page names; ``resource`` may be ``plural.group``, ``_`` is an empty namespace."""
    cluster = request.query.get("cluster", "")
    resource = request.query.get("resource", "")
    name = request.query.get("name", "")
    namespace = request.query.get("namespace", "")
    namespace = "" if namespace == "_" else namespace
    if not (cluster and resource and name):
        raise FrontendError("an object needs cluster, resource and name")
    plural, _, group = resource.partition(".")
    tags = {"cluster": cluster, "resource": plural, "namespace": namespace, "name": name}
    if group:
        tags["group"] = group
    matches = await service.assembler.search(
        TraceQuery(tags=tags, start_ns=start_ns, end_ns=end_ns, limit=20), max_objects=20
    )
    exact = [m for m in matches if m.ref.namespace == namespace and m.ref.name == name and m.ref.resource == plural]
    if not exact:
        return None
    # Two groups with one plural (events and events.k8s.io): the catalog's preferred group wins.
    info = _CATALOG.lookup(plural)
    exact.sort(key=lambda m: (info is None or m.ref.group != info.group, m.key))
    return exact[0].key


async def _scoped(trace: AssembledTrace, scope: Scope) -> AssembledTrace | None:
    """``trace`` without the objects ``scope`` hides; a visible object under a hidden one moves up to its nearest
    visible ancestor. None when the searched object itself is hidden."""
    if scope.sees_everything:
        return trace
    visible = await scope.visible(obj.ref for obj in trace.objects.values())
    kept = {key for key, obj in trace.objects.items() if obj.ref in visible}
    if trace.searched not in kept:
        return None
    root = next(key for key in nx.shortest_path(trace.graph, trace.root, trace.searched) if key in kept)
    tree: nx.DiGraph = nx.DiGraph()
    tree.add_node(root)
    for key in nx.dfs_preorder_nodes(trace.graph, root):
        if key == root or key not in kept:
            continue
        own_parent = next(iter(trace.graph.predecessors(key)))
        parent = own_parent
        while parent not in kept:
            parent = next(iter(trace.graph.predecessors(parent)))
        tree.add_edge(parent, key, link_class=trace.graph.edges[own_parent, key].get("link_class", ""))
    return AssembledTrace(
        trace.searched, root, {key: trace.objects[key] for key in tree}, tree, trace.start_ns, trace.end_ns
    )


def _rows(trace: AssembledTrace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    stack: list[tuple[str, str | None, int]] = [(trace.root, None, 0)]
    while stack:
        key, parent, depth = stack.pop()
        obj = trace.objects[key]
        children = obj.children
        rows.append(
            {
                **_ref_json(obj.ref),
                "parent": parent,
                "depth": depth,
                "linkClass": str(trace.graph.edges[parent, key].get("link_class", "")) if parent else "",
                "first": _ms(children[0].start_ns) if children else None,
                "last": _ms(max(span.end_ns for span in children)) if children else None,
                "errors": sum(1 for span in children if span.error),
                "warnings": sum(1 for span in children if _is_warning(span)),
                "marks": [_mark(span) for span in children],
            }
        )
        stack.extend((child, key, depth + 1) for child in reversed(trace.children_of(key)))
    return rows


def _mode(request: web.Request) -> Modifier:
    name = request.query.get("mode", "") or "full"
    if name not in MODES:
        raise FrontendError(f"mode must be one of {', '.join(MODES)}, not {name!r}")
    return MODES[name]


async def _jaeger_path(service: FrontendService, key: str, modifier: Modifier, start_ns: int, end_ns: int) -> str:
    cache_key = await service.cache.put(CacheEntry(key, start_ns, end_ns))
    name = "tracing" if modifier is Modifier.NONE else f"tracing [{modifier.label}]"
    return f"/jaeger/trace/{ViewId(mode_by_name(name), cache_key).hex}"


async def _object(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE_KEY]
    now_ns = time.time_ns()
    start_ns, end_ns = parse_range(request.query.get("from", ""), request.query.get("to", ""), now_ns)
    modifier = _mode(request)
    key = await _resolve(service, request, start_ns, end_ns)
    trace = await service.assembler.assemble(key, start_ns, end_ns, modifier) if key else None
    scoped = await _scoped(trace, request_scope(request)) if trace is not None else None
    if scoped is None or key is None:
        return _error(404, "no activity of that object in that time range")
    return _json(
        {
            "object": _ref_json(scoped.objects[key].ref),
            "range": {
                "from": _ms(start_ns),
                "to": _ms(end_ns),
                "live": request.query.get("to", "") in ("", "now"),
            },
            "objects": _rows(scoped),
            "analysis": analyze(scoped),
            "jaeger": await _jaeger_path(service, key, modifier, start_ns, end_ns) if service.config.ui_dir else None,
        }
    )


async def _mark_detail(request: web.Request) -> web.StreamResponse:
    """Everything about one mark: attributes and logs (patch, diff, snapshot, message)."""
    service = request.app[SERVICE_KEY]
    start_ns, end_ns = parse_range(request.query.get("from", ""), request.query.get("to", ""), time.time_ns())
    key = request.query.get("key", "")
    span_id = request.query.get("id", "")
    if key.count("/") < 4:
        raise FrontendError("key: expected cluster/group/resource/namespace/name")
    ref = ObjectRef.from_key(key)
    obj = await service.assembler.load(key, start_ns, end_ns) if await request_scope(request).allows(ref) else None
    span = next((span for span in obj.children if span.span_id_hex == span_id), None) if obj else None
    if span is None:
        return _error(404, "no such mark")
    return _json(
        {
            **_mark(span),
            "object": _ref_json(ref),
            "statusMessage": span.status_message,
            "attributes": span.attributes,
            "logs": [{"t": _ms(entry.time_ns), "name": entry.name, "fields": entry.fields} for entry in span.logs],
        }
    )


async def _trace(request: web.Request) -> web.StreamResponse:
    """Where a trace id (a view id from /redirect or Jaeger, or a raw trace id) is on the object page."""
    service = request.app[SERVICE_KEY]
    parsed = parse_trace_id(request.query.get("id", ""))
    if isinstance(parsed, ViewId):
        entry = await service.cache.get(parsed.cache_key)
        if entry is None:
            return _error(404, "unknown or expired trace id")
        key, start_ns, end_ns, modifier = entry.object_key, entry.start_ns, entry.end_ns, parsed.mode.modifier
    else:
        spans = await service.reader.get_trace(parsed)
        if not spans:
            return _error(404, "unknown or expired trace id")
        attrs = spans[0].attributes
        key = "/".join(str(attrs.get(tag, "")) for tag in ("cluster", "group", "resource", "namespace", "name"))
        start_ns, end_ns = min(s.start_ns for s in spans), max(s.end_ns for s in spans)
        modifier = Modifier.NONE
    ref = ObjectRef.from_key(key)
    if not await request_scope(request).allows(ref):
        return _error(404, "unknown or expired trace id")
    mode = next(name for name, value in MODES.items() if value is modifier)
    return _json({**_ref_json(ref), "from": _ms(start_ns), "to": _ms(end_ns), "mode": mode})


# ------------------------------------------------------------------------------------------------ static


_STATIC_PREFIXES = ("/objects/", "/trace/", "/ui/", "/jaeger/")


def is_static_ui_path(path: str) -> bool:
    """Paths of the UIs' own files (no data in them): an auth middleware lets them through unauthenticated, so
    the page can load and then ask the user for a token when its first data request answers 401."""
    if path.startswith("/jaeger/api/"):
        return False
    return path in ("/", "/jaeger") or path.startswith(_STATIC_PREFIXES)


async def _index(_: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


def add_ui_routes(app: web.Application) -> None:
    """Serve the built-in UI and its JSON on ``app`` (which must already have the frontend routes)."""
    app.router.add_get("/", _index)
    app.router.add_get("/objects/{tail:.*}", _index)
    app.router.add_get("/trace/{trace_id}", _index)  # where /redirect sends browsers
    app.router.add_static("/ui/", STATIC_DIR, append_version=False)
    for path, handler in (
        ("/api/ui/search", _search),
        ("/api/ui/facets", _facets),
        ("/api/ui/object", _object),
        ("/api/ui/mark", _mark_detail),
        ("/api/ui/trace", _trace),
    ):
        app.router.add_get(path, _guarded(handler))
