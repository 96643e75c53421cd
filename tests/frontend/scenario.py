"""What a recorded scenario says about its objects (owners, requests, time range), read from the fixture itself,
and a small client for the frontend's public HTTP APIs, for the end-to-end tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from aiohttp import ClientSession

from tests.frontend.views import V1Trace

CLUSTER = "fixture"
MARGIN_NS = 600 * 10**9
SECOND_NS = 10**9


def audit_events(fixtures_dir: Path, scenario: str) -> Iterator[dict[str, Any]]:
    for line in (fixtures_dir / scenario / "audit.jsonl").read_bytes().splitlines():
        yield from orjson.loads(line)["items"]


def _iso_ns(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 10**9)


@dataclass
class ScenarioFacts:
    """Owner relations and requests as the recorded audit events state them (not as our pipeline saw them)."""

    start_ns: int
    end_ns: int
    owner_of: dict[str, str] = field(default_factory=dict)  # object key -> owner's object key
    requests: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # object key -> audit events

    def owned_by(self, owner: str) -> set[str]:
        return {child for child, parent in self.owner_of.items() if parent == owner}

    @property
    def search_start_ns(self) -> int:
        """Ten minutes before the recording, in whole seconds so that v1 (µs) and v3 (ms) name the same range."""
        return (self.start_ns - MARGIN_NS) // SECOND_NS * SECOND_NS

    @property
    def search_end_ns(self) -> int:
        return -(-(self.end_ns + MARGIN_NS) // SECOND_NS) * SECOND_NS

    @property
    def range_us(self) -> dict[str, str]:
        """The search range as /api/traces takes it."""
        return {"start": str(self.search_start_ns // 1000), "end": str(self.search_end_ns // 1000)}


def scenario_facts(fixtures_dir: Path, scenario: str) -> ScenarioFacts:
    manifest = json.loads((fixtures_dir / scenario / "MANIFEST.json").read_text())
    facts = ScenarioFacts(_iso_ns(manifest["recordedFrom"]), _iso_ns(manifest["recordedUntil"]))
    for event in audit_events(fixtures_dir, scenario):
        ref = event.get("objectRef")
        if not ref or not ref.get("resource") or event["stage"] != "ResponseComplete":
            continue
        response = event.get("responseObject") or {}
        metadata = response.get("metadata") or {}
        name = ref.get("name") or metadata.get("name")
        if not name:
            continue
        key = object_key(ref.get("apiGroup", ""), ref["resource"], ref.get("namespace", ""), name)
        facts.requests.setdefault(key, []).append(event)
        for owner in metadata.get("ownerReferences") or []:
            if owner.get("controller"):
                group = owner["apiVersion"].rpartition("/")[0]
                owner_resource = owner["kind"].lower() + "s"
                facts.owner_of[key] = object_key(group, owner_resource, ref.get("namespace", ""), owner["name"])
    return facts


def object_key(group: str, resource: str, namespace: str, name: str) -> str:
    return f"{CLUSTER}/{group}/{resource}/{namespace}/{name}"


def key_tags(key: str) -> dict[str, str]:
    cluster, group, resource, namespace, name = key.split("/")
    return {"cluster": cluster, "group": group, "resource": resource, "namespace": namespace, "name": name}


def span_key(trace: V1Trace, span: dict[str, Any]) -> str:
    tags = trace.tags(span)
    return "/".join(str(tags[tag]) for tag in ("cluster", "group", "resource", "namespace", "name"))


def object_spans(trace: V1Trace) -> list[dict[str, Any]]:
    """Object spans in a tracing view: their service is their resource."""
    return [span for span in trace.spans.values() if trace.tags(span).get("resource") == trace.service(span)]


def object_tree(trace: V1Trace) -> dict[str, str | None]:
    """object key -> its parent object's key (None for the root), read off the span references."""
    by_id = {span["spanID"]: span for span in object_spans(trace)}
    tree: dict[str, str | None] = {}
    for span in by_id.values():
        parent = trace.parent(span)
        tree[span_key(trace, span)] = span_key(trace, by_id[parent]) if parent else None
    return tree


class FrontendClient:
    """The public HTTP APIs of one App, as Jaeger UI and Grafana call them."""

    def __init__(self, session: ClientSession, base_url: str, facts: ScenarioFacts) -> None:
        self.session = session
        self.base_url = base_url
        self.facts = facts

    async def get_json(self, path: str, params: dict[str, str] | None = None, status: int = 200) -> Any:
        async with self.session.get(self.base_url + path, params=params) as response:
            body = await response.json()
            assert response.status == status, (path, response.status, body)
            return body

    async def search(self, mode: str, tags: dict[str, str], **extra: str) -> list[V1Trace]:
        params = {"service": mode, "tags": json.dumps(tags), "limit": "20", **self.facts.range_us, **extra}
        body = await self.get_json("/api/traces", params)
        assert body["errors"] is None and body["total"] == len(body["data"])
        return [V1Trace(trace) for trace in body["data"]]

    async def trace(self, trace_id: str) -> V1Trace:
        body = await self.get_json(f"/api/traces/{trace_id}")
        (trace,) = body["data"]
        return V1Trace(trace)

    async def summaries(self, mode: str, tags: dict[str, str], **extra: str) -> list[dict[str, Any]]:
        params = {
            "query.serviceName": mode,
            "query.attributes": json.dumps(tags),
            "query.startTimeMin": rfc3339(self.facts.search_start_ns),
            "query.startTimeMax": rfc3339(self.facts.search_end_ns),
            "query.searchDepth": "20",
            **extra,
        }
        body = await self.get_json("/api/v3/trace-summaries", params)
        summaries: list[dict[str, Any]] = body["summaries"]
        return summaries


def rfc3339(ns: int) -> str:
    """Milliseconds and ``Z``, as Jaeger UI v2.20 sends it."""
    from datetime import UTC

    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
