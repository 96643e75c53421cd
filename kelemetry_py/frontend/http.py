"""Jaeger's query HTTP APIs (v1 and v3), /redirect and the optional Jaeger UI bundle, as aiohttp routes.

Shapes follow what real jaeger-query returns (``tests/fixtures/backends/jaeger``) so Jaeger UI releases
and Grafana's Jaeger data source work against us directly.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from kelemetry_py.config import FrontendConfig
from kelemetry_py.frontend.convert import to_jaeger_v1, to_otlp_json
from kelemetry_py.frontend.modes import FrontendError
from kelemetry_py.frontend.service import FrontendService, View, ViewQuery
from kelemetry_py.frontend.tracecache import TraceCache
from kelemetry_py.storage import TraceReader

SERVICE_KEY = web.AppKey("kelemetry_frontend", FrontendService)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_DEFAULT_LOOKBACK_NS = 3600 * 10**9
_REDIRECT_WINDOW_NS = 3600 * 10**9
_FAR_FUTURE_NS = 2**62
# Go's units, plus the days and weeks of Jaeger UI's lookback choices ("2d", "7d").
_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h|d|w)")
_UNIT_NS = {
    "w": 7 * 86_400 * 10**9,
    "d": 86_400 * 10**9,
    "ns": 1,
    "us": 10**3,
    "µs": 10**3,
    "μs": 10**3,
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}
_API_PREFIXES = ("/api/", "/redirect", "/audit", "/metrics", "/healthz", "/readyz")


# ------------------------------------------------------------------------------------------------ parsing


def parse_go_duration(text: str, name: str) -> int:
    """Nanoseconds of a Go duration string such as ``10ms``, ``1h30m`` or ``0.010s``."""
    text = text.strip()
    sign = -1 if text.startswith("-") else 1
    body = text.lstrip("+-")
    if body == "0":
        return 0
    total = 0.0
    position = 0
    for match in _GO_DURATION.finditer(body):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNIT_NS[match.group(2)]
        position = match.end()
    if not body or position != len(body):
        raise FrontendError(f"{name}: {text!r} is not a duration such as 10ms, 2s or 1h30m")
    return sign * int(total)


def parse_rfc3339(text: str, name: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 time (any fraction precision, ``Z`` or an offset)."""
    match = re.fullmatch(r"(.+?T\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|z|[+-]\d{2}:\d{2})", text.strip())
    if not match:
        raise FrontendError(f"{name}: {text!r} is not an RFC 3339 time")
    base, fraction, zone = match.groups()
    try:
        moment = datetime.fromisoformat(base + ("+00:00" if zone in ("Z", "z") else zone))
    except ValueError:
        raise FrontendError(f"{name}: {text!r} is not an RFC 3339 time") from None
    nanos = int((fraction or "0")[:9].ljust(9, "0"))
    return int(moment.timestamp()) * 10**9 + nanos


def _int_param(request: web.Request, name: str, default: int | None = None) -> int | None:
    raw = request.query.get(name, "")
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise FrontendError(f"{name}: {raw!r} is not an integer") from None


def _json_tags(raw: str, name: str) -> dict[str, str]:
    if not raw:
        return {}
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise FrontendError(f"{name}: not a JSON object of tag values") from None
    if not isinstance(parsed, dict):
        raise FrontendError(f"{name}: must be a JSON object of tag values")
    return {str(key): _tag_text(value) for key, value in parsed.items()}


def _tag_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _legacy_tags(request: web.Request) -> dict[str, str]:
    """Jaeger also accepts repeated ``tag=key:value`` parameters."""
    tags = {}
    for item in request.query.getall("tag", []):
        key, sep, value = item.partition(":")
        if not sep:
            raise FrontendError(f"tag: {item!r} is not key:value")
        tags[key] = value
    return tags


def _now_ns() -> int:
    return time.time_ns()


# ------------------------------------------------------------------------------------------------ responses


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


def _v1(data: Any, total: int | None = None) -> web.Response:
    count = total if total is not None else (len(data) if isinstance(data, list) else 0)
    return _json({"data": data, "total": count, "limit": 0, "offset": 0, "errors": None})


def _v1_error(status: int, message: str) -> web.Response:
    return _json(
        {"data": None, "total": 0, "limit": 0, "offset": 0, "errors": [{"code": status, "msg": message}]},
        status,
    )


def _v3_error(status: int, message: str) -> web.Response:
    return _json({"error": {"httpCode": status, "message": message}}, status)


def _guarded(handler: Handler, error: Callable[[int, str], web.Response]) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except FrontendError as exc:
            return error(400, str(exc))
        except web.HTTPException:
            raise
        except Exception as exc:  # a reader failing must still give the UI a message, not a bare 500 page
            request.app.logger.exception("frontend request %s failed", request.path)
            return error(500, f"{type(exc).__name__}: {exc}")

    return wrapped


# ------------------------------------------------------------------------------------------------ v1


async def _services(request: web.Request) -> web.StreamResponse:
    return _v1(request.app[SERVICE_KEY].mode_names())


async def _clusters(request: web.Request) -> list[str]:
    # Jaeger asks for operations without a time range: any cluster ever recorded (and still retained) counts.
    return await request.app[SERVICE_KEY].clusters(0, _FAR_FUTURE_NS)


async def _service_operations(request: web.Request) -> web.StreamResponse:
    request.app[SERVICE_KEY].mode(request.match_info["service"])
    return _v1(await _clusters(request))


def _operations_for(request: web.Request, clusters: list[str]) -> list[dict[str, str]]:
    request.app[SERVICE_KEY].mode(request.query.get("service", ""))
    kind = request.query.get("spanKind", "").lower()
    # Every span we serve is an internal one.
    if kind not in ("", "internal"):
        return []
    return [{"name": cluster, "spanKind": "internal"} for cluster in clusters]


async def _operations(request: web.Request) -> web.StreamResponse:
    return _v1(_operations_for(request, await _clusters(request)))


async def _find_traces(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE_KEY]
    query = request.query
    end_us = _int_param(request, "end")
    end_ns = end_us * 1000 if end_us is not None else _now_ns()
    start_us = _int_param(request, "start")
    if start_us is not None:
        start_ns = start_us * 1000
    else:
        lookback = query.get("lookback", "")
        lookback_ns = (
            parse_go_duration(lookback, "lookback")
            if lookback and lookback != "custom"
            else _DEFAULT_LOOKBACK_NS
        )
        start_ns = end_ns - lookback_ns
    tags = _legacy_tags(request)
    tags.update(_json_tags(query.get("tags", ""), "tags"))
    view_query = ViewQuery(
        mode=service.mode(query.get("service", "")),
        start_ns=start_ns,
        end_ns=end_ns,
        tags=tags,
        cluster=query.get("operation", ""),
        limit=_int_param(request, "limit", 20) or 20,
        min_duration_ns=_duration_param(request, "minDuration"),
        max_duration_ns=_duration_param(request, "maxDuration"),
    )
    views = await service.search(view_query)
    return _v1([to_jaeger_v1(view.trace_id, view.spans) for view in views])


def _duration_param(request: web.Request, *names: str) -> int | None:
    for name in names:
        raw = request.query.get(name, "")
        if raw:
            return parse_go_duration(raw, name)
    return None


async def _get_trace(request: web.Request) -> web.StreamResponse:
    view = await request.app[SERVICE_KEY].get(request.match_info["trace_id"])
    if view is None:
        return _v1_error(404, "trace not found")
    return _v1([to_jaeger_v1(view.trace_id, view.spans)])


async def _dependencies(request: web.Request) -> web.StreamResponse:
    # Services are display modes here; they do not call each other.
    _int_param(request, "endTs")
    return _v1([])


# ------------------------------------------------------------------------------------------------ v3


def _v3_param(request: web.Request, camel: str, snake: str) -> str:
    return request.query.get(f"query.{camel}", "") or request.query.get(f"query.{snake}", "")


async def _v3_services(request: web.Request) -> web.StreamResponse:
    return _json({"services": request.app[SERVICE_KEY].mode_names()})


async def _v3_operations(request: web.Request) -> web.StreamResponse:
    return _json({"operations": _operations_for(request, await _clusters(request))})


def _v3_query(request: web.Request) -> ViewQuery:
    service = request.app[SERVICE_KEY]
    end_text = _v3_param(request, "startTimeMax", "start_time_max")
    end_ns = parse_rfc3339(end_text, "query.startTimeMax") if end_text else _now_ns()
    start_text = _v3_param(request, "startTimeMin", "start_time_min")
    start_ns = (
        parse_rfc3339(start_text, "query.startTimeMin") if start_text else end_ns - _DEFAULT_LOOKBACK_NS
    )
    depth_text = (
        _v3_param(request, "searchDepth", "search_depth")
        or request.query.get("query.num_traces", "")
        or request.query.get("query.numTraces", "")
    )
    try:
        limit = int(depth_text) if depth_text else 20
    except ValueError:
        raise FrontendError(f"query.searchDepth: {depth_text!r} is not an integer") from None
    min_text = _v3_param(request, "durationMin", "duration_min")
    max_text = _v3_param(request, "durationMax", "duration_max")
    return ViewQuery(
        mode=service.mode(_v3_param(request, "serviceName", "service_name")),
        start_ns=start_ns,
        end_ns=end_ns,
        tags=_json_tags(request.query.get("query.attributes", ""), "query.attributes"),
        cluster=_v3_param(request, "operationName", "operation_name"),
        limit=limit,
        min_duration_ns=parse_go_duration(min_text, "query.durationMin") if min_text else None,
        max_duration_ns=parse_go_duration(max_text, "query.durationMax") if max_text else None,
    )


def trace_summary(view: View) -> dict[str, Any]:
    """A Jaeger v3 trace summary: root names, min/max times as decimal strings, per-service counts."""
    span_ids = {span.span_id for span in view.spans}
    services: dict[str, dict[str, Any]] = {}
    for span in view.spans:
        entry = services.setdefault(span.service, {"name": span.service, "spanCount": 0, "errorSpanCount": 0})
        entry["spanCount"] += 1
        entry["errorSpanCount"] += int(span.error)
    return {
        "traceId": view.trace_id_hex,
        "rootServiceName": view.root.service,
        "rootOperationName": view.root.name,
        "minStartTimeUnixNano": str(min(span.start_ns for span in view.spans)),
        "maxEndTimeUnixNano": str(max(span.end_ns for span in view.spans)),
        "spanCount": len(view.spans),
        "errorSpanCount": sum(1 for span in view.spans if span.error),
        "orphanSpanCount": sum(
            1 for span in view.spans if span.parent_id is not None and span.parent_id not in span_ids
        ),
        "services": list(services.values()),
    }


async def _v3_trace_summaries(request: web.Request) -> web.StreamResponse:
    views = await request.app[SERVICE_KEY].search(_v3_query(request))
    return _json({"summaries": [trace_summary(view) for view in views]})


async def _v3_find_traces(request: web.Request) -> web.StreamResponse:
    views = await request.app[SERVICE_KEY].search(_v3_query(request))
    return _json({"result": to_otlp_json([span for view in views for span in view.spans])})


async def _v3_get_trace(request: web.Request) -> web.StreamResponse:
    view = await request.app[SERVICE_KEY].get(request.match_info["trace_id"])
    if view is None:
        return _v3_error(404, "trace not found")
    return _json({"result": to_otlp_json(view.spans)})


# ------------------------------------------------------------------------------------------------ redirect


async def _redirect(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE_KEY]
    tags = {
        key: request.query[key]
        for key in ("cluster", "group", "resource", "namespace", "name")
        if key in request.query
    }
    if not tags.get("name") or not tags.get("resource"):
        raise FrontendError("redirect needs at least resource and name")
    ts_text = request.query.get("ts", "")
    if not ts_text:
        at_ns = _now_ns()
    elif re.fullmatch(r"\d+(\.\d+)?", ts_text):
        at_ns = int(float(ts_text) * 10**9)
    else:
        at_ns = parse_rfc3339(ts_text, "ts")
    view = await service.best(tags, at_ns, service.mode(request.query.get("mode", "")), _REDIRECT_WINDOW_NS)
    if view is None:
        return _v1_error(404, "no trace of that object around that time")
    raise web.HTTPFound(f"/trace/{view.trace_id_hex}")


# ------------------------------------------------------------------------------------------------ UI bundle


JAEGER_UI_PREFIX = "/jaeger"


def _ui_middleware(ui_dir: Path) -> Any:
    """Serve a Jaeger UI build under /jaeger/ (the built-in UI owns /); its index.html gets that base path."""
    root = ui_dir.resolve()
    index = root / "index.html"
    # Jaeger UI takes its route and API prefix from <base href>, as jaeger-query's --query.base-path sets it.
    index_html = index.read_bytes().replace(b'<base href="/"', f'<base href="{JAEGER_UI_PREFIX}/"'.encode())

    @web.middleware
    async def serve_ui(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPNotFound:
            prefixed = request.path == JAEGER_UI_PREFIX or request.path.startswith(JAEGER_UI_PREFIX + "/")
            if request.method not in ("GET", "HEAD") or not prefixed:
                raise
        path = request.path[len(JAEGER_UI_PREFIX) :] or "/"
        if path.startswith(_API_PREFIXES):
            raise web.HTTPNotFound()
        # Bundles use relative script URLs: /trace/<id> asks for /trace/static/..., served from /static/.
        if "/static/" in path:
            path = path[path.index("/static/") :]
        candidate = (root / path.lstrip("/")).resolve()
        if candidate != root and candidate.is_relative_to(root) and candidate.is_file() and candidate != index:
            return web.FileResponse(candidate)
        if "/static/" in path:
            raise web.HTTPNotFound()
        return web.Response(body=index_html, content_type="text/html", headers={"Cache-Control": "no-cache"})

    return serve_ui


# ------------------------------------------------------------------------------------------------ wiring


def add_frontend_routes(
    app: web.Application, reader: TraceReader, cache: TraceCache, config: FrontendConfig
) -> FrontendService:
    """Add the query APIs (and, with ``config.ui_dir``, the Jaeger UI bundle under /jaeger/) to ``app``; returns the
    service."""
    service = FrontendService(reader, cache, config)
    app[SERVICE_KEY] = service
    v1: list[tuple[str, Handler]] = [
        ("/api/services", _services),
        ("/api/services/{service}/operations", _service_operations),
        ("/api/operations", _operations),
        ("/api/traces", _find_traces),
        ("/api/traces/{trace_id}", _get_trace),
        ("/api/dependencies", _dependencies),
        ("/redirect", _redirect),
    ]
    v3: list[tuple[str, Handler]] = [
        ("/api/v3/services", _v3_services),
        ("/api/v3/operations", _v3_operations),
        ("/api/v3/trace-summaries", _v3_trace_summaries),
        ("/api/v3/traces", _v3_find_traces),
        ("/api/v3/traces/{trace_id}", _v3_get_trace),
    ]
    # Jaeger UI under /jaeger/ calls the APIs under that prefix too.
    prefixes = ("", JAEGER_UI_PREFIX) if config.ui_dir else ("",)
    for prefix in prefixes:
        for path, handler in v1:
            app.router.add_get(prefix + path, _guarded(handler, _v1_error))
        for path, handler in v3:
            app.router.add_get(prefix + path, _guarded(handler, _v3_error))
    if config.ui_dir:
        ui_dir = Path(config.ui_dir)
        if not (ui_dir / "index.html").is_file():
            raise FrontendError(f"frontend.ui_dir: {config.ui_dir} has no index.html")
        app.middlewares.append(_ui_middleware(ui_dir))
    return service
