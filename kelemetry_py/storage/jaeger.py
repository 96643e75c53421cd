"""Read raw traces from Jaeger over jaeger-query's api_v3 HTTP API (``/api/v3/traces``)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import orjson

from kelemetry_py.config import BackendConfig
from kelemetry_py.model import OBJECT_TAGS, SERVICE_OBJECT, Span
from kelemetry_py.storage import TraceHit, TraceQuery
from kelemetry_py.storage.otlp_json import BackendError, HttpBackend, decode_resource_spans, ref_from_spans

_OBJECT_TAG_KEYS = frozenset((*OBJECT_TAGS, "uid"))
# Object traces read to list a tag's values (e.g. clusters): enough for the operations dropdown.
TAG_VALUE_SCAN_LIMIT = 1000


def rfc3339_nano(time_ns: int) -> str:
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"


class JaegerReader:
    """TraceReader over jaeger-query's api_v3 HTTP API; endpoint, headers, TLS and timeout configurable."""

    def __init__(self, config: BackendConfig, window_seconds: int = 1800) -> None:
        self._http = HttpBackend(config, "jaeger")
        # Jaeger filters on a trace's start, and a raw trace starts with its window: look back one window.
        self._lookback_ns = window_seconds * 1_000_000_000

    async def find_traces(self, query: TraceQuery) -> list[TraceHit]:
        services = await self._services_for(query)
        batches = await asyncio.gather(*(self._find(query, service) for service in services))
        by_trace: dict[int, list[Span]] = {}
        for spans in batches:
            for span in spans:
                by_trace.setdefault(span.trace_id, []).append(span)
        hits = []
        for trace_id, spans in by_trace.items():
            # A search returns whole traces, possibly the same one from several services: dedupe by span id.
            unique = list({span.span_id: span for span in spans}.values())
            ref = ref_from_spans(unique)
            start_ns = min(span.start_ns for span in unique)
            end_ns = max(span.end_ns for span in unique)
            if ref is None or end_ns < query.start_ns:
                continue  # not one of our raw traces, or over before the range
            hits.append(TraceHit(trace_id=trace_id, ref=ref, start_ns=start_ns, end_ns=end_ns))
        hits.sort(key=lambda hit: hit.start_ns, reverse=True)
        return hits[: query.limit]

    async def _services_for(self, query: TraceQuery) -> list[str]:
        """Jaeger searches one service at a time; the object span carries every object tag."""
        if query.service:
            return [query.service]
        if set(query.tags) <= _OBJECT_TAG_KEYS:
            return [SERVICE_OBJECT]
        document = await self._http.get_json("/api/v3/services")
        return list((document or {}).get("services") or [])

    async def _find(self, query: TraceQuery, service: str) -> list[Span]:
        params = {
            # The snake-case names are understood by every jaeger-query that has api_v3.
            "query.service_name": service,
            "query.start_time_min": rfc3339_nano(max(0, query.start_ns - self._lookback_ns)),
            "query.start_time_max": rfc3339_nano(query.end_ns),
            "query.num_traces": str(query.limit),
            "query.search_depth": str(query.limit),
        }
        if query.tags:
            params["query.attributes"] = orjson.dumps(query.tags).decode()
        document = await self._http.get_json("/api/v3/traces", params)
        return self._decode(document, "/api/v3/traces")

    async def tag_values(self, key: str, start_ns: int, end_ns: int) -> list[str]:
        """Values of one object tag in the range, read off the object spans (Jaeger has no tag-value API)."""
        query = TraceQuery(
            start_ns=start_ns, end_ns=end_ns, limit=TAG_VALUE_SCAN_LIMIT, service=SERVICE_OBJECT
        )
        spans = await self._find(query, SERVICE_OBJECT)
        return sorted({str(span.attributes[key]) for span in spans if key in span.attributes})

    async def get_trace(self, trace_id: int) -> list[Span]:
        path = f"/api/v3/traces/{trace_id:032x}"
        return self._decode(await self._http.get_json(path), path)

    @staticmethod
    def _decode(document: object, path: str) -> list[Span]:
        if document is None:
            return []  # jaeger-query answers 404 when nothing matches
        if not isinstance(document, dict):
            raise BackendError(f"jaeger {path}: unexpected answer")
        result = document.get("result") or {}
        return decode_resource_spans(result.get("resourceSpans") or [], "hex")

    async def close(self) -> None:
        await self._http.close()
