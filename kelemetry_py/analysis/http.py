"""``GET /api/analysis`` (the analysis document as JSON) and ``GET /api/analysis/schema`` (its JSON Schema).

Query parameters: ``resource`` (or ``kind``: ``deploy``, ``Deployment``, ``deployments.apps``), ``name``,
``namespace``, ``cluster``, ``group``; the range as ``start``/``end`` (RFC 3339 or unix seconds) and/or
``lookback`` (a Go duration before ``end``, default 1h); ``scope`` = ``owned`` (default), ``full`` or ``object``.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from kelemetry_py.analysis.schema import ANALYSIS_SCHEMA
from kelemetry_py.analysis.service import AnalysisError, AnalysisRequest, AnalysisService
from kelemetry_py.auth import request_scope
from kelemetry_py.auth.middleware import internal_error
from kelemetry_py.frontend.http import checked_range
from kelemetry_py.frontend.modes import FrontendError
from kelemetry_py.frontend.service import FrontendService
from kelemetry_py.kube.catalog import ResourceCatalog
from kelemetry_py.logs import request_id_of
from kelemetry_py.times import DEFAULT_LOOKBACK_NS, parse_go_duration, parse_time

ANALYSIS_KEY = web.AppKey("kelemetry_analysis", AnalysisService)


def request_from_query(query: Any, now_ns: int, max_range_ns: int | None = None) -> AnalysisRequest:
    """An :class:`AnalysisRequest` from query parameters (a mapping of str to str)."""
    for key in ("resource", "group", "kind", "name", "namespace", "cluster", "scope", "start", "end", "lookback"):
        if len(query.get(key, "")) > 253:
            raise AnalysisError(f"{key}: longer than 253 characters")
    resource = query.get("resource", "")
    group = query.get("group")
    kind = query.get("kind", "")
    if not resource and kind:
        info = ResourceCatalog.builtin().lookup(kind)
        if info is None:
            raise AnalysisError(f"kind: {kind!r} is not a known resource; pass resource= and group= instead")
        resource = info.resource
        group = info.group if group is None else group
    end_text = query.get("end", "")
    end_ns = parse_time(end_text, "end") if end_text else now_ns
    start_text = query.get("start", "")
    if start_text:
        start_ns = parse_time(start_text, "start")
    else:
        lookback = query.get("lookback", "")
        lookback_ns = parse_go_duration(lookback, "lookback") if lookback else DEFAULT_LOOKBACK_NS
        if lookback_ns < 0:
            raise AnalysisError("lookback: must not be negative")
        if max_range_ns is not None:
            checked_range(end_ns - lookback_ns, end_ns, max_range_ns, "lookback")
        start_ns = max(0, end_ns - lookback_ns)
    if max_range_ns is not None:
        checked_range(start_ns, end_ns, max_range_ns, "start")
    request = AnalysisRequest(
        resource=resource,
        name=query.get("name", ""),
        namespace=query.get("namespace"),
        cluster=query.get("cluster") or None,
        group=group,
        start_ns=start_ns,
        end_ns=end_ns,
        scope=query.get("scope", "") or "owned",
    )
    request.check()
    return request


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"code": status, "message": message}}, status=status)


async def _analysis(request: web.Request) -> web.StreamResponse:
    service = request.app[ANALYSIS_KEY]
    try:
        wanted = request_from_query(request.query, time.time_ns(), service.frontend.max_range_ns)
        document = await service.analyze(wanted, request_scope(request))
    except FrontendError as exc:
        return _error(400, str(exc))
    except Exception as exc:  # a generic message and a request id, never the exception text
        internal_error(request, service.frontend.metrics, exc)
        return _error(500, f"internal error; request id {request_id_of(request)}")
    if document is None:
        return _error(404, "no trace of that object in that time range")
    body = orjson.dumps(document)
    if len(body) > service.frontend.config.max_response_bytes:
        return _error(400, "the analysis exceeds frontend.max_response_bytes; narrow the range or the scope")
    return web.Response(body=body, content_type="application/json")


async def _schema(_: web.Request) -> web.StreamResponse:
    return web.Response(body=orjson.dumps(ANALYSIS_SCHEMA), content_type="application/schema+json")


def add_analysis_routes(app: web.Application, frontend: FrontendService) -> AnalysisService:
    """Serve the analysis API on ``app`` over the frontend's assembled traces; returns the service."""
    service = AnalysisService(frontend)
    app[ANALYSIS_KEY] = service
    app.router.add_get("/api/analysis", _analysis)
    app.router.add_get("/api/analysis/schema", _schema)
    return service
