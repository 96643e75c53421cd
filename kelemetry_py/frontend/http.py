"""Jaeger's query HTTP APIs (v1 and v3), /redirect and the optional Jaeger UI bundle, as aiohttp routes.

Shapes follow what real jaeger-query returns (``tests/fixtures/backends/jaeger``) so Jaeger UI releases
and Grafana's Jaeger data source work against us directly.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from kelemetry_py.auth import request_scope
from kelemetry_py.auth.middleware import internal_error
from kelemetry_py.config import FrontendConfig
from kelemetry_py.frontend.convert import to_jaeger_v1, to_otlp_json
from kelemetry_py.frontend.modes import FrontendError
from kelemetry_py.frontend.service import FrontendService, View, ViewQuery
from kelemetry_py.frontend.tracecache import TraceCache
from kelemetry_py.logs import request_id_of
from kelemetry_py.storage import TraceReader
from kelemetry_py.storage.otlp_json import BackendError
from kelemetry_py.times import DEFAULT_LOOKBACK_NS, MAX_TIME_NS, checked_time, parse_go_duration, parse_rfc3339

SERVICE_KEY = web.AppKey("kelemetry_frontend", FrontendService)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_REDIRECT_WINDOW_NS = 3600 * 10**9
_FAR_FUTURE_NS = 2**62
_API_PREFIXES = ("/api/", "/redirect", "/audit", "/metrics", "/healthz", "/readyz")
# Bounds of what a query may ask (answered 400 with the parameter named when exceeded).
MAX_TAGS = 16
MAX_TAG_TEXT = 1024
MAX_PARAM_TEXT = 4096
_DEFAULT_MAX_RANGE_NS = 400 * 86_400 * 10**9


# ------------------------------------------------------------------------------------------------ parsing


def checked_range(start_ns: int, end_ns: int, max_range_ns: int, name: str) -> None:
    if end_ns - start_ns > max_range_ns:
        hours = max_range_ns / 3600e9
        raise FrontendError(f"{name}: the range is longer than the {hours:g} hours the store keeps")


def _int_param(
    request: web.Request, name: str, default: int | None = None, *, low: int = 0, high: int = MAX_TIME_NS
) -> int | None:
    raw = request.query.get(name, "")
    if raw == "":
        return default
    if len(raw) > 20 or not re.fullmatch(r"[+-]?\d+", raw):
        raise FrontendError(f"{name}: {raw[:32]!r} is not an integer")
    value = int(raw)
    if not low <= value <= high:
        raise FrontendError(f"{name}: must be between {low} and {high}, not {raw}")
    return value


def _checked_tags(tags: dict[str, str], name: str) -> dict[str, str]:
    if len(tags) > MAX_TAGS:
        raise FrontendError(f"{name}: at most {MAX_TAGS} tags, not {len(tags)}")
    for key, value in tags.items():
        if not key or len(key) > MAX_TAG_TEXT or len(value) > MAX_TAG_TEXT:
            raise FrontendError(f"{name}: tag keys must not be empty; keys and values at most {MAX_TAG_TEXT} long")
    return tags


def _text_param(request: web.Request, name: str, limit: int = 253) -> str:
    value = request.query.get(name, "")
    if len(value) > limit:
        raise FrontendError(f"{name}: longer than {limit} characters")
    return value


def _json_tags(raw: str, name: str) -> dict[str, str]:
    if not raw:
        return {}
    if len(raw) > MAX_PARAM_TEXT:
        raise FrontendError(f"{name}: longer than {MAX_PARAM_TEXT} characters")
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise FrontendError(f"{name}: not a JSON object of tag values") from None
    if not isinstance(parsed, dict):
        raise FrontendError(f"{name}: must be a JSON object of tag values")
    if len(parsed) > MAX_TAGS:
        raise FrontendError(f"{name}: at most {MAX_TAGS} tags, not {len(parsed)}")
    if any(isinstance(value, (dict, list)) for value in parsed.values()):
        raise FrontendError(f"{name}: tag values must be strings, numbers or booleans")
    return {str(key): _tag_text(value) for key, value in parsed.items()}


def _tag_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _legacy_tags(request: web.Request) -> dict[str, str]:
    """Jaeger also accepts repeated ``tag=key:value`` parameters."""
    tags = {}
    items = request.query.getall("tag", [])
    if len(items) > MAX_TAGS:
        raise FrontendError(f"tag: at most {MAX_TAGS} tags, not {len(items)}")
    for item in items:
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
            response = await handler(request)
        except FrontendError as exc:
            return error(400, str(exc))
        except web.HTTPException:
            raise
        except BackendError as exc:  # the back end's own words stay in the log
            request.app.logger.warning("trace back end failed (request id %s): %s", request_id_of(request), exc)
            return error(502, f"the trace back end failed; request id {request_id_of(request)}")
        except Exception as exc:  # a generic message and a request id for the UI, never the exception text
            internal_error(request, request.app[SERVICE_KEY].metrics, exc)
            return error(500, f"internal error; request id {request_id_of(request)}")
        limit = request.app[SERVICE_KEY].config.max_response_bytes
        if isinstance(response, web.Response) and response.body is not None and len(response.body) > limit:  # type: ignore[arg-type]
            return error(400, f"the answer exceeds {limit} bytes; narrow the search (limit, lookback, tags)")
        return response

    return wrapped


# ------------------------------------------------------------------------------------------------ v1


async def _services(request: web.Request) -> web.StreamResponse:
    return _v1(request.app[SERVICE_KEY].mode_names())


async def _clusters(request: web.Request) -> list[str]:
    # Jaeger asks for operations without a time range: any cluster ever recorded (and still retained) counts.
    return await request.app[SERVICE_KEY].clusters(0, _FAR_FUTURE_NS, request_scope(request))


async def _service_operations(request: web.Request) -> web.StreamResponse:
    request.app[SERVICE_KEY].mode(request.match_info["service"][:256])
    return _v1(await _clusters(request))


def _operations_for(request: web.Request, clusters: list[str]) -> list[dict[str, str]]:
    request.app[SERVICE_KEY].mode(_text_param(request, "service"))
    kind = _text_param(request, "spanKind").lower()
    # Every span we serve is an internal one.
    if kind not in ("", "internal"):
        return []
    return [{"name": cluster, "spanKind": "internal"} for cluster in clusters]


async def _operations(request: web.Request) -> web.StreamResponse:
    return _v1(_operations_for(request, await _clusters(request)))


async def _find_traces(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE_KEY]
    end_us = _int_param(request, "end", high=MAX_TIME_NS // 1000)
    end_ns = end_us * 1000 if end_us is not None else _now_ns()
    start_us = _int_param(request, "start", high=MAX_TIME_NS // 1000)
    if start_us is not None:
        start_ns = start_us * 1000
        # Jaeger UI sends its lookback choice beside start: name what the user picked.
        checked_range(start_ns, end_ns, service.max_range_ns, "lookback" if "lookback" in request.query else "start")
    else:
        lookback = _text_param(request, "lookback", 64)
        lookback_ns = (
            parse_go_duration(lookback, "lookback")
            if lookback and lookback != "custom"
            else DEFAULT_LOOKBACK_NS
        )
        if lookback_ns < 0:
            raise FrontendError("lookback: must not be negative")
        checked_range(end_ns - lookback_ns, end_ns, service.max_range_ns, "lookback")
        start_ns = max(0, end_ns - lookback_ns)
    tags = _legacy_tags(request)
    tags.update(_json_tags(_text_param(request, "tags", MAX_PARAM_TEXT), "tags"))
    view_query = ViewQuery(
        mode=service.mode(_text_param(request, "service")),
        start_ns=start_ns,
        end_ns=end_ns,
        tags=_checked_tags(tags, "tags"),
        cluster=_text_param(request, "operation"),
        limit=_int_param(request, "limit", 20, high=service.config.max_traces) or 20,
        min_duration_ns=_duration_param(request, "minDuration"),
        max_duration_ns=_duration_param(request, "maxDuration"),
    )
    views = await service.search(view_query, request_scope(request))
    return _v1([to_jaeger_v1(view.trace_id, view.spans) for view in views])


def _duration_param(request: web.Request, *names: str) -> int | None:
    for name in names:
        raw = request.query.get(name, "")
        if raw:
            duration = parse_go_duration(raw, name)
            if duration < 0:
                raise FrontendError(f"{name}: must not be negative")
            return duration
    return None


async def _get_trace(request: web.Request) -> web.StreamResponse:
    view = await request.app[SERVICE_KEY].get(request.match_info["trace_id"][:64], request_scope(request))
    if view is None:
        return _v1_error(404, "trace not found")
    return _v1([to_jaeger_v1(view.trace_id, view.spans)])


async def _dependencies(request: web.Request) -> web.StreamResponse:
    # Services are display modes here; they do not call each other.
    _int_param(request, "endTs", high=MAX_TIME_NS // 10**6)
    _int_param(request, "lookback", high=MAX_TIME_NS // 10**6)
    return _v1([])


# ------------------------------------------------------------------------------------------------ v3


def _v3_param(request: web.Request, camel: str, snake: str) -> str:
    value = request.query.get(f"query.{camel}", "") or request.query.get(f"query.{snake}", "")
    if len(value) > 253:
        raise FrontendError(f"query.{camel}: longer than 253 characters")
    return value


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
        parse_rfc3339(start_text, "query.startTimeMin") if start_text else end_ns - DEFAULT_LOOKBACK_NS
    )
    depth_text = (
        _v3_param(request, "searchDepth", "search_depth")
        or request.query.get("query.num_traces", "")
        or request.query.get("query.numTraces", "")
    )
    if depth_text and (len(depth_text) > 20 or not re.fullmatch(r"\d+", depth_text)):
        raise FrontendError(f"query.searchDepth: {depth_text[:32]!r} is not an integer")
    limit = int(depth_text) if depth_text else 20
    if not 1 <= limit <= service.config.max_traces:
        raise FrontendError(f"query.searchDepth: must be between 1 and {service.config.max_traces}")
    checked_range(start_ns, end_ns, service.max_range_ns, "query.startTimeMin")
    min_text = _v3_param(request, "durationMin", "duration_min")
    max_text = _v3_param(request, "durationMax", "duration_max")
    return ViewQuery(
        mode=service.mode(_v3_param(request, "serviceName", "service_name")),
        start_ns=start_ns,
        end_ns=end_ns,
        tags=_checked_tags(
            _json_tags(request.query.get("query.attributes", ""), "query.attributes"), "query.attributes"
        ),
        cluster=_v3_param(request, "operationName", "operation_name"),
        limit=limit,
        min_duration_ns=abs(parse_go_duration(min_text, "query.durationMin")) if min_text else None,
        max_duration_ns=abs(parse_go_duration(max_text, "query.durationMax")) if max_text else None,
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
    views = await request.app[SERVICE_KEY].search(_v3_query(request), request_scope(request))
    return _json({"summaries": [trace_summary(view) for view in views]})


async def _v3_find_traces(request: web.Request) -> web.StreamResponse:
    views = await request.app[SERVICE_KEY].search(_v3_query(request), request_scope(request))
    return _json({"result": to_otlp_json([span for view in views for span in view.spans])})


async def _v3_get_trace(request: web.Request) -> web.StreamResponse:
    view = await request.app[SERVICE_KEY].get(request.match_info["trace_id"][:64], request_scope(request))
    if view is None:
        return _v3_error(404, "trace not found")
    return _json({"result": to_otlp_json(view.spans)})


# ------------------------------------------------------------------------------------------------ redirect


async def _redirect(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE_KEY]
    tags = {
        key: _text_param(request, key)
        for key in ("cluster", "group", "resource", "namespace", "name")
        if key in request.query
    }
    if not tags.get("name") or not tags.get("resource"):
        raise FrontendError("redirect needs at least resource and name")
    ts_text = _text_param(request, "ts", 64)
    if not ts_text:
        at_ns = _now_ns()
    elif re.fullmatch(r"\d{1,12}(\.\d{1,9})?", ts_text):
        seconds, _, fraction = ts_text.partition(".")
        at_ns = checked_time(int(seconds) * 10**9 + int(fraction.ljust(9, "0") or 0), "ts")
    elif re.fullmatch(r"\d+(\.\d+)?", ts_text):
        raise FrontendError("ts: out of range (the epoch to the year 2116)")
    else:
        at_ns = parse_rfc3339(ts_text, "ts")
    if at_ns + _REDIRECT_WINDOW_NS > MAX_TIME_NS:
        raise FrontendError("ts: out of range (the epoch to the year 2116)")
    view = await service.best(
        tags, at_ns, service.mode(_text_param(request, "mode")), _REDIRECT_WINDOW_NS, request_scope(request)
    )
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
    app: web.Application,
    reader: TraceReader,
    cache: TraceCache,
    config: FrontendConfig,
    max_range_ns: int = _DEFAULT_MAX_RANGE_NS,
) -> FrontendService:
    """Add the query APIs (and, with ``config.ui_dir``, the Jaeger UI bundle under /jaeger/) to ``app``; returns the
    service. ``max_range_ns`` bounds every search range (the store's retention)."""
    service = FrontendService(reader, cache, config)
    service.max_range_ns = max_range_ns
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
