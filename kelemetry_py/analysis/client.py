"""What the ``analyze`` and ``trace`` commands ask a running server, over its public HTTP APIs only."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from kelemetry_py.kube.catalog import ResourceCatalog
from kelemetry_py.times import InvalidInput, parse_go_duration, parse_time

_TIMEOUT = aiohttp.ClientTimeout(total=60)


class CommandError(Exception):
    """A failure to report to the user; ``status`` is the exit code."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Target:
    """The object a user named as ``KIND/NAME`` (with ``-n`` and ``--cluster``)."""

    resource: str
    group: str
    namespace: str
    name: str
    cluster: str = ""

    @classmethod
    def parse(cls, text: str, namespace: str | None, cluster: str = "") -> Target:
        kind, sep, name = text.partition("/")
        if not sep or not kind or not name:
            raise CommandError(f"{text!r}: name the object as KIND/NAME, e.g. deploy/web", 2)
        info = ResourceCatalog.builtin().lookup(kind)
        if info is None:
            raise CommandError(f"{kind!r} is not a known kind or resource", 2)
        # Like kubectl: a namespaced object is in "default" unless told otherwise.
        namespace = (namespace or "default") if info.namespaced else ""
        return cls(info.resource, info.group, namespace, name, cluster)

    def tags(self) -> dict[str, str]:
        tags = {"resource": self.resource, "group": self.group, "namespace": self.namespace, "name": self.name}
        if self.cluster:
            tags["cluster"] = self.cluster
        return tags

    def __str__(self) -> str:
        where = f" in {self.namespace}" if self.namespace else ""
        return f"{self.resource}/{self.name}{where}"


def time_range(since: str, start: str | None, end: str | None, now_ns: int | None = None) -> tuple[int, int]:
    """``[start, end]`` in nanoseconds from the flags: explicit times, else ``since`` before the end."""
    try:
        end_ns = parse_time(end, "--end") if end else (now_ns if now_ns is not None else time.time_ns())
        start_ns = parse_time(start, "--start") if start else end_ns - parse_go_duration(since, "--since")
    except InvalidInput as exc:
        raise CommandError(str(exc), 2) from None
    if end_ns < start_ns:
        raise CommandError("the range ends before it starts", 2)
    return start_ns, end_ns


def _seconds(ns: int) -> str:
    return f"{ns // 10**9}.{ns % 10**9:09d}"


async def _get(server: str, path: str, params: dict[str, str], token: str = "") -> tuple[int, Any]:
    url = server.rstrip("/") + path
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with (
            aiohttp.ClientSession(timeout=_TIMEOUT) as session,
            session.get(url, params=params, headers=headers) as response,
        ):
            body = await response.read()
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise CommandError(f"cannot reach {server}: {exc or type(exc).__name__}") from None
    if status in (401, 403):
        raise CommandError(f"{server} refused the request ({status}): give a token with --token or KELEMETRY_TOKEN")
    try:
        return status, orjson.loads(body)
    except orjson.JSONDecodeError:
        raise CommandError(f"{url} answered {status} with something that is not JSON") from None


def _server_message(payload: Any) -> str:
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        errors = payload.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            return str(errors[0].get("msg", ""))
    return "no details"


async def fetch_analysis(
    server: str, target: Target, start_ns: int, end_ns: int, scope: str = "owned", token: str = ""
) -> dict[str, Any]:
    params = {**target.tags(), "start": _seconds(start_ns), "end": _seconds(end_ns), "scope": scope}
    status, payload = await _get(server, "/api/analysis", params, token)
    if status == 404:
        raise CommandError(f"no trace of {target} between the given times")
    if status != 200 or not isinstance(payload, dict):
        raise CommandError(f"analysis failed ({status}): {_server_message(payload)}", 2 if status == 400 else 1)
    return payload


async def fetch_trace(
    server: str, target: Target, start_ns: int, end_ns: int, mode: str = "tracing", token: str = ""
) -> dict[str, Any]:
    """The object's trace in Jaeger's v1 JSON model, as Jaeger UI would get it from ``/api/traces``."""
    # Empty values (the core group, no namespace) are checked on the results, not searched for.
    tags = {key: value for key, value in target.tags().items() if key != "cluster" and value}
    params = {
        "service": mode,
        "operation": target.cluster,
        "tags": orjson.dumps(tags).decode(),
        "start": str(start_ns // 1000),
        "end": str(end_ns // 1000),
        "limit": "20",
    }
    status, payload = await _get(server, "/api/traces", params, token)
    if status != 200 or not isinstance(payload, dict):
        raise CommandError(f"search failed ({status}): {_server_message(payload)}", 2 if status == 400 else 1)
    traces = [trace for trace in payload.get("data") or [] if isinstance(trace, dict)]
    for trace in traces:
        if any(_is_object_span(span, target) for span in trace.get("spans") or []):
            return trace
    if traces:
        return traces[0]
    raise CommandError(f"no trace of {target} between the given times")


def _is_object_span(span: dict[str, Any], target: Target) -> bool:
    tags = {item.get("key"): item.get("value") for item in span.get("tags") or []}
    return all(str(tags.get(key, "")) == value for key, value in target.tags().items()) and not span.get("references")
