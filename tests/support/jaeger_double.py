"""A jaeger-query api_v3 HTTP stand-in holding raw spans, answering in the shapes real Jaeger uses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from kelemetry_py.model import Span
from kelemetry_py.storage.otlp_json import encode_resource_spans


def parse_rfc3339_ns(text: str) -> int:
    """RFC 3339 with up to nanosecond fractions, as Go's time.RFC3339Nano."""
    if not text.endswith("Z"):
        raise ValueError(f"{text!r} is not a UTC RFC 3339 time")
    whole, _, fraction = text[:-1].partition(".")
    seconds = int(datetime.fromisoformat(whole + "+00:00").timestamp())
    return seconds * 1_000_000_000 + int((fraction or "0").ljust(9, "0")[:9])


def _param(request: web.Request, *names: str) -> str | None:
    for name in names:
        if name in request.query:
            return request.query[name]
    return None


def _not_found(message: str) -> web.Response:
    return web.json_response({"error": {"httpCode": 404, "message": message}}, status=404)


@dataclass
class RecordedRequest:
    path: str
    query: dict[str, str]
    headers: dict[str, str]


class JaegerDouble:
    """Serves /api/v3/services, /api/v3/operations, /api/v3/traces and /api/v3/traces/{id}."""

    def __init__(self, spans: Sequence[Span] = ()) -> None:
        self.spans: list[Span] = list(spans)
        self.requests: list[RecordedRequest] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> JaegerDouble:
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/api/v3/services", self._services)
        app.router.add_get("/api/v3/operations", self._operations)
        app.router.add_get("/api/v3/traces", self._find_traces)
        app.router.add_get("/api/v3/traces/{trace_id}", self._get_trace)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append(RecordedRequest(request.path, dict(request.query), dict(request.headers)))
        response: web.StreamResponse = await handler(request)
        return response

    def _traces(self) -> dict[int, list[Span]]:
        traces: dict[int, list[Span]] = {}
        for span in self.spans:
            traces.setdefault(span.trace_id, []).append(span)
        return traces

    async def _services(self, request: web.Request) -> web.Response:
        return web.json_response({"services": sorted({span.service for span in self.spans})})

    async def _operations(self, request: web.Request) -> web.Response:
        service = request.query.get("service", "")
        names = sorted({span.name for span in self.spans if span.service == service})
        return web.json_response({"operations": [{"name": name, "spanKind": "internal"} for name in names]})

    async def _find_traces(self, request: web.Request) -> web.Response:
        service = _param(request, "query.serviceName", "query.service_name")
        if not service:
            raise web.HTTPBadRequest(text="service name is required")
        try:
            start_min = parse_rfc3339_ns(_param(request, "query.startTimeMin", "query.start_time_min") or "")
            start_max = parse_rfc3339_ns(_param(request, "query.startTimeMax", "query.start_time_max") or "")
            limit = int(
                _param(request, "query.searchDepth", "query.search_depth", "query.num_traces") or "20"
            )
            attributes = orjson.loads(_param(request, "query.attributes") or "{}")
        except (ValueError, orjson.JSONDecodeError) as exc:
            raise web.HTTPBadRequest(text=f"invalid query: {exc}") from exc
        operation = _param(request, "query.operationName", "query.operation_name")
        found: list[tuple[int, list[Span]]] = []
        for spans in self._traces().values():
            first = min(span.start_ns for span in spans)
            if not start_min <= first <= start_max:
                continue
            # Jaeger's rule: one span has the service, the operation and every attribute.
            if any(
                span.service == service
                and (not operation or span.name == operation)
                and all(str(span.attributes.get(key)) == value for key, value in attributes.items())
                for span in spans
            ):
                found.append((first, spans))
        if not found:
            return _not_found("No traces found")
        found.sort(key=lambda item: item[0], reverse=True)
        all_spans = [span for _, spans in found[:limit] for span in spans]
        return web.json_response({"result": {"resourceSpans": encode_resource_spans(all_spans, "jaeger")}})

    async def _get_trace(self, request: web.Request) -> web.Response:
        try:
            trace_id = int(request.match_info["trace_id"], 16)
        except ValueError:
            raise web.HTTPBadRequest(text="malformed trace id") from None
        spans = self._traces().get(trace_id)
        if not spans:
            return _not_found("trace not found")
        return web.json_response({"result": {"resourceSpans": encode_resource_spans(spans, "jaeger")}})
