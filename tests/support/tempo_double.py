"""A Grafana Tempo HTTP API stand-in holding raw spans, answering in the shapes recorded from real Tempo.

Like Tempo's distributor, it also ingests OTLP/HTTP protobuf (``POST /v1/traces``; real Tempo takes it on its
own port, 4318), so an App can export into it and a second App read the same spans back through the reader.

It understands the TraceQL the Tempo reader emits (attribute equality joined by ``&&``, an optional
``| select(...)``) and answers 400 to anything else, as Tempo does to a query it cannot parse.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from google.protobuf.message import DecodeError

from kelemetry_py.model import Span
from kelemetry_py.storage.otlp_json import encode_resource_spans, encode_value
from tests.support.otlp_receiver import ExportRequest, request_to_spans


class TraceQLUnsupported(ValueError):
    pass


@dataclass(frozen=True)
class Attribute:
    scope: str  # "span" or "resource"
    key: str


@dataclass
class ParsedTraceQL:
    conditions: list[tuple[Attribute, str]] = field(default_factory=list)
    selected: list[Attribute] = field(default_factory=list)


_TOKEN = re.compile(
    r'\s*(?:(?P<string>"(?:[^"\\]|\\.)*")|(?P<op>&&|\|\||!=|=~|!~|>=|<=|[{}()|,=<>.])|(?P<word>[A-Za-z_][A-Za-z0-9_]*))'
)


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens, position = [], 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match:
            raise TraceQLUnsupported(f"unexpected input at {position}: {text[position:]!r}")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


def _unquote(literal: str) -> str:
    return re.sub(r"\\(.)", r"\1", literal[1:-1])


def parse_traceql(text: str) -> ParsedTraceQL:
    tokens = _tokens(text)
    position = 0

    def take(kind: str, value: str | None = None) -> str:
        nonlocal position
        if position >= len(tokens):
            raise TraceQLUnsupported(f"query ended, expected {value or kind}")
        got_kind, got = tokens[position]
        if got_kind != kind or (value is not None and got != value):
            raise TraceQLUnsupported(f"unsupported TraceQL: expected {value or kind}, got {got!r}")
        position += 1
        return got

    def peek(value: str) -> bool:
        return position < len(tokens) and tokens[position][1] == value

    def attribute() -> Attribute:
        scope = take("word")
        if scope not in ("span", "resource"):
            raise TraceQLUnsupported(f"unsupported attribute scope {scope!r}")
        take("op", ".")
        if position < len(tokens) and tokens[position][0] == "string":
            return Attribute(scope, _unquote(take("string")))
        parts = [take("word")]
        while peek("."):
            take("op", ".")
            parts.append(take("word"))
        return Attribute(scope, ".".join(parts))

    parsed = ParsedTraceQL()
    take("op", "{")
    if not peek("}"):
        while True:
            attr = attribute()
            take("op", "=")
            parsed.conditions.append((attr, _unquote(take("string"))))
            if not peek("&&"):
                break
            take("op", "&&")
    take("op", "}")
    if peek("|"):
        take("op", "|")
        take("word", "select")
        take("op", "(")
        parsed.selected.append(attribute())
        while peek(","):
            take("op", ",")
            parsed.selected.append(attribute())
        take("op", ")")
    if position != len(tokens):
        raise TraceQLUnsupported(f"unsupported TraceQL after {tokens[position - 1][1]!r}: {tokens[position][1]!r}")
    return parsed


def _value_of(span: Span, attr: Attribute) -> Any:
    if attr.scope == "resource":
        return span.service if attr.key == "service.name" else None
    return span.attributes.get(attr.key)


@dataclass
class RecordedRequest:
    path: str
    query: dict[str, str]
    headers: dict[str, str]


class TempoDouble:
    """Serves /api/search, /api/v2/traces/{id}, /api/traces/{id} and /api/search/tag/{tag}/values."""

    def __init__(self, spans: Sequence[Span] = (), *, serve_v2: bool = True, serve_select: bool = True) -> None:
        self.spans: list[Span] = list(spans)
        self.serve_v2 = serve_v2  # False: a Tempo before 2.5, without /api/v2/traces
        self.serve_select = serve_select  # False: selected attributes are not returned in span sets
        self.requests: list[RecordedRequest] = []
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._ingested = asyncio.Condition()

    @property
    def otlp_endpoint(self) -> str:
        """What OtlpConfig.endpoint takes to export into this double."""
        return f"{self.url}/v1/traces"

    async def wait_for_spans(self, count: int, within: float = 10.0) -> None:
        """Wait until the double holds at least ``count`` spans; TimeoutError says how many it has."""
        try:
            async with asyncio.timeout(within):
                async with self._ingested:
                    await self._ingested.wait_for(lambda: len(self.spans) >= count)
        except TimeoutError:
            raise TimeoutError(f"expected {count} spans within {within}s, hold {len(self.spans)}") from None

    async def __aenter__(self) -> TempoDouble:
        app = web.Application(middlewares=[self._record], client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", self._ingest)
        app.router.add_get("/api/search", self._search)
        app.router.add_get("/api/v2/traces/{trace_id}", self._trace_v2)
        app.router.add_get("/api/traces/{trace_id}", self._trace_v1)
        app.router.add_get("/api/search/tag/{tag}/values", self._tag_values)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append(RecordedRequest(request.path, dict(request.query), dict(request.headers)))
        response: web.StreamResponse = await handler(request)
        return response

    async def _ingest(self, request: web.Request) -> web.Response:
        if request.content_type != "application/x-protobuf":
            return web.Response(status=415, text=f"unsupported content type {request.content_type}")
        try:
            export = ExportRequest.FromString(await request.read())  # aiohttp already undid gzip
        except DecodeError as exc:
            return web.Response(status=400, text=f"body is not an ExportTraceServiceRequest: {exc}")
        async with self._ingested:
            self.spans.extend(request_to_spans(export))
            self._ingested.notify_all()
        return web.Response(body=b"", content_type="application/x-protobuf")

    def _traces(self) -> dict[int, list[Span]]:
        traces: dict[int, list[Span]] = {}
        for span in self.spans:
            traces.setdefault(span.trace_id, []).append(span)
        return traces

    async def _search(self, request: web.Request) -> web.Response:
        if "q" not in request.query:
            raise web.HTTPBadRequest(text="only TraceQL search (q=) is served by this double")
        try:
            parsed = parse_traceql(request.query["q"])
            start_s, end_s = int(request.query["start"]), int(request.query["end"])
            limit = int(request.query.get("limit", "20"))
            per_set = int(request.query.get("spss", "3"))
        except (TraceQLUnsupported, KeyError, ValueError) as exc:
            raise web.HTTPBadRequest(text=f"invalid TraceQL query: {exc}") from exc
        found = []
        for trace_id, spans in self._traces().items():
            first = min(span.start_ns for span in spans)
            last = max(span.end_ns for span in spans)
            if last < start_s * 1_000_000_000 or first > end_s * 1_000_000_000:
                continue
            matched = [s for s in spans if all(_value_of(s, a) == v for a, v in parsed.conditions)]
            if matched:
                found.append(self._search_trace(trace_id, spans, matched[:per_set], len(matched), parsed))
        found.sort(key=lambda item: int(item["startTimeUnixNano"]), reverse=True)
        return web.json_response(
            {
                "traces": found[:limit],
                "metrics": {"inspectedBytes": "1024", "completedJobs": 1, "totalJobs": 1},
            }
        )

    def _search_trace(
        self, trace_id: int, spans: list[Span], shown: list[Span], matched: int, parsed: ParsedTraceQL
    ) -> dict[str, Any]:
        root = next((span for span in spans if span.parent_id is None), None)
        first = min(span.start_ns for span in spans)
        last = max(span.end_ns for span in spans)
        wanted = [attr for attr, _ in parsed.conditions]
        if self.serve_select:
            wanted += parsed.selected
        span_set = {
            "spans": [
                {
                    "spanID": f"{span.span_id:016x}",
                    "startTimeUnixNano": str(span.start_ns),
                    "durationNanos": str(span.end_ns - span.start_ns),
                    "attributes": [
                        {"key": attr.key, "value": encode_value(value)}
                        for attr in dict.fromkeys(wanted)
                        if (value := _value_of(span, attr)) is not None
                    ],
                }
                for span in shown
            ],
            "matched": matched,
        }
        stats: dict[str, dict[str, int]] = {}
        for span in spans:
            stats.setdefault(span.service, {"spanCount": 0})["spanCount"] += 1
        return {
            "traceID": f"{trace_id:x}",  # like Tempo: leading zeros dropped
            "rootServiceName": root.service if root else "<root span not yet received>",
            "rootTraceName": root.name if root else "",
            "startTimeUnixNano": str(first),
            "durationMs": (last - first) // 1_000_000,
            "spanSet": span_set,
            "spanSets": [span_set],
            "serviceStats": stats,
        }

    def _lookup(self, request: web.Request) -> list[Span]:
        try:
            trace_id = int(request.match_info["trace_id"], 16)
        except ValueError:
            raise web.HTTPBadRequest(text="invalid trace id") from None
        spans = self._traces().get(trace_id)
        if not spans:
            raise web.HTTPNotFound(text="trace not found")
        return spans

    async def _trace_v2(self, request: web.Request) -> web.Response:
        if not self.serve_v2:
            raise web.HTTPNotFound(text="404 page not found")
        resource_spans = encode_resource_spans(self._lookup(request), "tempo")
        return web.json_response({"trace": {"resourceSpans": resource_spans}, "metrics": {"inspectedBytes": "1024"}})

    async def _trace_v1(self, request: web.Request) -> web.Response:
        return web.json_response({"batches": encode_resource_spans(self._lookup(request), "tempo")})

    async def _tag_values(self, request: web.Request) -> web.Response:
        tag = request.match_info["tag"]
        values = sorted({str(span.attributes[tag]) for span in self.spans if tag in span.attributes})
        return web.json_response({"tagValues": values, "metrics": {"inspectedBytes": "1024"}})
