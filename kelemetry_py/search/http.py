"""The KubeSphere-compatible search API (``notes/kubesphere-search-api.md``) over the search index."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from kelemetry_py.auth import request_scope
from kelemetry_py.config import SearchConfig
from kelemetry_py.search.filters import RecordFilter, SearchError, Table, build_filter
from kelemetry_py.search.index import Clause, Interval, SearchIndex
from kelemetry_py.search.scope import scope_clause

log = logging.getLogger(__name__)

EVENTS_PATHS = ("/kapis/logging.kubesphere.io/v1alpha2/events", "/kapis/tenant.kubesphere.io/v1alpha2/events")
AUDITING_PATH = "/kapis/tenant.kubesphere.io/v1alpha2/auditing/events"
OPERATIONS = ("query", "statistics", "histogram", "export")
MAX_OFFSET = 100_000
MAX_BUCKETS = 10_000
_CONTROL = ("operation", "sort", "from", "size", "interval", "format")

CSV_FIELDS: dict[Table, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "audit": (
        ("time", ("requestReceivedTimestamp",)),
        ("auditID", ("auditID",)),
        ("stage", ("stage",)),
        ("level", ("level",)),
        ("verb", ("verb",)),
        ("user", ("user", "username")),
        ("impersonatedUser", ("impersonatedUser", "username")),
        ("sourceIPs", ("sourceIPs",)),
        ("userAgent", ("userAgent",)),
        ("apiGroup", ("objectRef", "apiGroup")),
        ("resource", ("objectRef", "resource")),
        ("subresource", ("objectRef", "subresource")),
        ("namespace", ("objectRef", "namespace")),
        ("name", ("objectRef", "name")),
        ("code", ("responseStatus", "code")),
        ("requestURI", ("requestURI",)),
    ),
    "events": (
        ("lastTimestamp", ("lastTimestamp",)),
        ("firstTimestamp", ("firstTimestamp",)),
        ("eventTime", ("eventTime",)),
        ("type", ("type",)),
        ("reason", ("reason",)),
        ("kind", ("involvedObject", "kind")),
        ("namespace", ("involvedObject", "namespace")),
        ("name", ("involvedObject", "name")),
        ("count", ("count",)),
        ("source", ("source", "component")),
        ("message", ("message",)),
        ("uid", ("metadata", "uid")),
    ),
}


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


def _int(params: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name, "")
    if raw == "":
        return default
    if not re.fullmatch(r"\d{1,9}", raw.strip()) or not low <= int(raw) <= high:
        raise SearchError(f"{name}: must be a whole number from {low} to {high}, not {raw!r}")
    return int(raw)


def parse_interval(raw: str) -> Interval:
    match = re.fullmatch(r"(\d{1,5})([smhdwMqy])", raw.strip())
    if not match or int(match.group(1)) == 0:
        raise SearchError(f"interval: {raw!r} is not a positive number followed by one of s m h d w M q y")
    return Interval(int(match.group(1)), match.group(2))


def _field(record: dict[str, Any], path: tuple[str, ...]) -> str:
    value: Any = record
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return ""
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return str(value)


class ExportAborted(Exception):
    """An export failed after its 200 was sent; the connection is closed without the final chunk."""


class SearchApi:
    def __init__(self, index: SearchIndex, config: SearchConfig) -> None:
        self.index = index
        self.config = config
        self._exports = asyncio.Semaphore(config.max_concurrent_exports)

    def add_routes(self, app: web.Application) -> None:
        for path in EVENTS_PATHS:
            app.router.add_get(path, self._guarded("events"))
        app.router.add_get(AUDITING_PATH, self._guarded("audit"))

    def _guarded(self, table: Table) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                return await self._handle(request, table)
            except SearchError as exc:
                return _json({"message": str(exc)}, 400)
            except (web.HTTPException, ConnectionResetError, ExportAborted):
                raise
            except Exception:
                log.exception("search request %s failed", request.path)
                return _json({"message": "internal error; see the server log"}, 500)

        return handle

    async def _handle(self, request: web.Request, table: Table) -> web.StreamResponse:
        params: dict[str, str] = {}
        for name, value in request.query.items():
            if name in params:
                raise SearchError(f"{name}: given more than once")
            params[name] = value
        operation = params.get("operation", "query") or "query"
        if operation not in OPERATIONS:
            raise SearchError(f"operation: {operation!r} is not one of {', '.join(OPERATIONS)}")
        ascending = params.get("sort", "desc") == "asc"
        record_filter = build_filter(table, params, self.config.workspaces, ignore=_CONTROL)
        if operation == "query":
            offset = _int(params, "from", 0, 0, MAX_OFFSET)
            size = _int(params, "size", 10, 0, self.config.max_page_size)
            scope = await self._scope(request, record_filter)
            total, bodies = await self.index.query(record_filter, scope, ascending=ascending, offset=offset, size=size)
            body = b'{"query":{"total":%d,"records":[%s]}}' % (total, b",".join(bodies))
            return web.Response(body=body, content_type="application/json")
        if operation == "statistics":
            scope = await self._scope(request, record_filter)
            events, resources = await self.index.statistics(record_filter, scope)
            return _json({"statistics": {"resources": resources, "events": events}})
        if operation == "histogram":
            interval = parse_interval(params.get("interval") or "15m")
            scope = await self._scope(request, record_filter)
            return _json({"histogram": await self._histogram(record_filter, scope, interval)})
        return await self._export(request, record_filter, params, ascending)

    async def _scope(self, request: web.Request, record_filter: RecordFilter) -> Clause | None:
        return await scope_clause(request_scope(request), self.index, record_filter, self.config.max_scope_objects)

    async def _histogram(self, record_filter: RecordFilter, scope: Clause | None, interval: Interval) -> dict[str, Any]:
        found = await self.index.histogram(record_filter, scope, interval)
        total = sum(count for _, count in found)
        if not found:
            return {"total": 0, "buckets": []}
        first, last = interval.index_of(found[0][0]), interval.index_of(found[-1][0])
        if last - first + 1 > MAX_BUCKETS:
            raise SearchError(f"interval: gives more than {MAX_BUCKETS} buckets over the matching time range")
        counts = dict(found)
        buckets = []
        for index in range(first, last + 1):
            start = interval.start_ms(index)
            buckets.append({"time": start, "count": counts.get(start, 0)})
        return {"total": total, "buckets": buckets}

    async def _export(
        self, request: web.Request, record_filter: RecordFilter, params: dict[str, str], ascending: bool
    ) -> web.StreamResponse:
        chosen = params.get("format", "")
        if chosen and chosen not in ("ndjson", "csv"):
            raise SearchError(f"format: {chosen!r} is not ndjson or csv")
        as_csv = chosen == "csv" or (not chosen and "text/csv" in request.headers.get("Accept", ""))
        if self._exports.locked():
            return _json({"message": "too many exports running; retry later"}, 429)
        async with self._exports:
            scope = await self._scope(request, record_filter)
            response = web.StreamResponse(
                headers={
                    "Content-Type": "text/csv; charset=utf-8" if as_csv else "application/x-ndjson",
                    "Content-Disposition": f'attachment; filename="{record_filter.table}.'
                    f'{"csv" if as_csv else "ndjson"}"',
                }
            )
            await response.prepare(request)
            fields = CSV_FIELDS[record_filter.table]
            if as_csv:
                await response.write(_csv_line([name for name, _ in fields]))
            try:
                async with contextlib.aclosing(self.index.export(record_filter, scope, ascending=ascending)) as chunks:
                    async for bodies in chunks:
                        if as_csv:
                            chunk = b"".join(
                                _csv_line([_field(orjson.loads(body), path) for _, path in fields]) for body in bodies
                            )
                        else:
                            chunk = b"\n".join(bodies) + b"\n"
                        await response.write(chunk)
            except ConnectionResetError:
                raise
            except Exception:
                # The status is sent already: a stream cut short (no final chunk) is how the client learns.
                log.exception("search export %s failed while streaming", request.path)
                raise ExportAborted() from None
            await response.write_eof()
            return response


def _csv_line(values: list[str]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue().encode()
