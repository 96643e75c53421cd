"""Reading Jaeger v1 traces in tests: spans by id, services, the object tree."""

from __future__ import annotations

from typing import Any

import orjson

from tests.frontend.rawdata import T0, WINDOW_NS


def us(ns: int) -> int:
    return ns // 1000


FULL_RANGE = {"start": str(us(T0)), "end": str(us(T0 + 2 * WINDOW_NS))}


def search_params(mode: str, tags: dict[str, str], **extra: str) -> dict[str, str]:
    return {"service": mode, "tags": orjson.dumps(tags).decode(), **FULL_RANGE, **extra}


class V1Trace:
    def __init__(self, trace: dict[str, Any]) -> None:
        self.raw = trace
        self.trace_id: str = trace["traceID"]
        self.spans: dict[str, dict[str, Any]] = {span["spanID"]: span for span in trace["spans"]}
        self.services = {pid: process["serviceName"] for pid, process in trace["processes"].items()}

    def service(self, span: dict[str, Any]) -> str:
        return str(self.services[span["processID"]])

    @staticmethod
    def tags(span: dict[str, Any]) -> dict[str, Any]:
        return {tag["key"]: tag["value"] for tag in span["tags"]}

    def parent(self, span: dict[str, Any]) -> str | None:
        refs = span["references"]
        return refs[0]["spanID"] if refs else None

    @property
    def roots(self) -> list[dict[str, Any]]:
        return [span for span in self.spans.values() if not span["references"]]

    @property
    def root(self) -> dict[str, Any]:
        (root,) = self.roots
        return root

    def children(self, span: dict[str, Any], service: str | None = None) -> list[dict[str, Any]]:
        return [
            child
            for child in self.spans.values()
            if self.parent(child) == span["spanID"] and (service is None or self.service(child) == service)
        ]

    def object_children(self, span: dict[str, Any]) -> list[str]:
        """Names of the child object spans (those carrying a resource tag matching their service)."""
        return sorted(
            child["operationName"]
            for child in self.children(span)
            if self.tags(child).get("resource") == self.service(child)
        )

    def by_name(self, name: str) -> dict[str, Any]:
        (span,) = [span for span in self.spans.values() if span["operationName"] == name]
        return span

    @staticmethod
    def log_fields(span: dict[str, Any]) -> list[dict[str, Any]]:
        return [{field["key"]: field["value"] for field in log["fields"]} for log in span["logs"]]
