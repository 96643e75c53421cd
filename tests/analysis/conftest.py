from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from kelemetry_py.analysis.http import add_analysis_routes
from kelemetry_py.app import App
from kelemetry_py.frontend.http import add_frontend_routes
from kelemetry_py.frontend.tracecache import create_trace_cache
from kelemetry_py.sources.audit import parse_time_ns
from tests.e2e.conftest import make_app, replay_scenario

__all__ = ["make_app"]


@dataclass(frozen=True)
class Served:
    """A real App fed a recorded scenario, and a loopback server with the query and analysis APIs over it."""

    app: App
    url: str
    start_ns: int
    end_ns: int
    events: list[dict[str, Any]]

    def params(self, **query: str) -> dict[str, str]:
        return {"start": f"{self.start_ns / 1e9:.6f}", "end": f"{self.end_ns / 1e9:.6f}", **query}


def audit_events(fixtures_dir: Path, scenario: str) -> list[dict[str, Any]]:
    events = []
    for line in (fixtures_dir / scenario / "audit.jsonl").read_bytes().splitlines():
        events.extend(orjson.loads(line)["items"])
    return events


ServeScenario = Callable[[str], Awaitable[Served]]


@pytest.fixture
async def serve_scenario(make_app: Any, fixtures_dir: Path) -> AsyncIterator[ServeScenario]:
    runners: list[web.AppRunner] = []

    async def serve(scenario: str) -> Served:
        app = await make_app()
        await replay_scenario(app, fixtures_dir, scenario)
        assert app.components is not None
        await app.components.writer.flush()
        # The routes exactly as the App wires them: the frontend's service, then the analysis beside it.
        target = web.Application()
        cache = create_trace_cache(app.config.frontend, app.config.redis)
        frontend = add_frontend_routes(target, app.components.store, cache, app.config.frontend)
        add_analysis_routes(target, frontend)
        runner = web.AppRunner(target, access_log=None)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        events = audit_events(fixtures_dir, scenario)
        start = min(parse_time_ns(e["requestReceivedTimestamp"]) for e in events)
        end = max(parse_time_ns(e["stageTimestamp"]) for e in events)
        return Served(app, f"http://127.0.0.1:{port}", start - 10**9, end + 10**9, events)

    yield serve
    for runner in runners:
        await runner.cleanup()
