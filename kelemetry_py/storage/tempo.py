"""Read raw traces from Grafana Tempo over its HTTP API (TraceQL search, /api/v2/traces/{id})."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from kelemetry_py.config import BackendConfig
from kelemetry_py.model import OBJECT_TAGS, Span
from kelemetry_py.storage import TraceHit, TraceQuery
from kelemetry_py.storage.otlp_json import (
    BackendError,
    HttpBackend,
    decode_attributes,
    decode_resource_spans,
    parse_hex_trace_id,
    ref_from_attributes,
    ref_from_spans,
)

_BARE_ATTRIBUTE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
# Our object tags, selected so that a search hit names its object without fetching the trace.
_SELECTED = (*OBJECT_TAGS, "uid")


def traceql_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def traceql_attribute(scope: str, key: str) -> str:
    return f"{scope}.{key}" if _BARE_ATTRIBUTE.match(key) else f"{scope}.{traceql_string(key)}"


def build_traceql(query: TraceQuery) -> str:
    """One span set matching every tag (Jaeger's one-span rule), selecting our object tags for the hit."""
    conditions = [
        f"{traceql_attribute('span', key)} = {traceql_string(value)}" for key, value in query.tags.items()
    ]
    if query.service:
        conditions.append(f"resource.service.name = {traceql_string(query.service)}")
    selected = ", ".join(traceql_attribute("span", key) for key in _SELECTED)
    return "{ " + " && ".join(conditions) + " } | select(" + selected + ")"


class TempoReader:
    """TraceReader over Tempo's HTTP API; endpoint, headers (X-Scope-OrgID, Authorization), TLS, timeout."""

    def __init__(self, config: BackendConfig) -> None:
        self._http = HttpBackend(config, "tempo")

    async def find_traces(self, query: TraceQuery) -> list[TraceHit]:
        params = {
            "q": build_traceql(query),
            "start": str(query.start_ns // 1_000_000_000),
            "end": str(math.ceil(query.end_ns / 1_000_000_000)),
            "limit": str(query.limit),
            "spss": "1",
        }
        document = await self._http.get_json("/api/search", params)
        if not isinstance(document, dict):
            raise BackendError("tempo /api/search: no search result")
        found = document.get("traces") or []
        hits = await asyncio.gather(*(self._hit(found_trace) for found_trace in found))
        result = [hit for hit in hits if hit is not None]
        result.sort(key=lambda hit: hit.start_ns, reverse=True)
        return result[: query.limit]

    async def _hit(self, found: Mapping[str, Any]) -> TraceHit | None:
        trace_id = parse_hex_trace_id(str(found.get("traceID", "")))
        start_ns = int(found.get("startTimeUnixNano", 0))
        end_ns = start_ns + int(found.get("durationMs", 0)) * 1_000_000
        ref = None
        for span_set in [found.get("spanSet") or {}, *(found.get("spanSets") or [])]:
            for span in span_set.get("spans") or []:
                ref = ref or ref_from_attributes(decode_attributes(span.get("attributes")))
        if ref is None:
            # A Tempo without select() support: read the trace to learn whose it is.
            spans = await self.get_trace(trace_id)
            ref = ref_from_spans(spans)
            if ref is None:
                return None  # not one of our raw traces
            start_ns = min(span.start_ns for span in spans)
            end_ns = max(span.end_ns for span in spans)
        return TraceHit(trace_id=trace_id, ref=ref, start_ns=start_ns, end_ns=end_ns)

    async def get_trace(self, trace_id: int) -> list[Span]:
        hex_id = f"{trace_id:032x}"
        document = await self._http.get_json(f"/api/v2/traces/{hex_id}")
        if isinstance(document, dict) and "trace" in document:
            return decode_resource_spans((document["trace"] or {}).get("resourceSpans") or [], "base64")
        # Tempo before 2.5 has only the v1 endpoint (and a 404 from v2 may just mean that).
        document = await self._http.get_json(f"/api/traces/{hex_id}")
        if document is None:
            return []
        if not isinstance(document, dict):
            raise BackendError(f"tempo /api/traces/{hex_id}: unexpected answer")
        return decode_resource_spans(document.get("batches") or [], "base64")

    async def tag_values(self, key: str, start_ns: int, end_ns: int) -> list[str]:
        """Values of one span tag seen in the time range (e.g. clusters)."""
        params = {"start": str(start_ns // 1_000_000_000), "end": str(math.ceil(end_ns / 1_000_000_000))}
        document = await self._http.get_json(f"/api/search/tag/{quote(key, safe='')}/values", params)
        if document is None:
            return []
        return sorted(str(value) for value in document.get("tagValues") or [])

    async def close(self) -> None:
        await self._http.close()
