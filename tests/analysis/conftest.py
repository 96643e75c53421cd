from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from kelemetry_py.app import App
from kelemetry_py.times import kube_time_ns as parse_time_ns
from tests.e2e.conftest import make_app, replay_scenario

__all__ = ["make_app"]


@dataclass(frozen=True)
class Served:
    """A real App fed a recorded scenario; its own server answers the query and analysis APIs."""

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
    async def serve(scenario: str) -> Served:
        app = await make_app()
        await replay_scenario(app, fixtures_dir, scenario)
        assert app.components is not None
        events = audit_events(fixtures_dir, scenario)
        start = min(parse_time_ns(e["requestReceivedTimestamp"]) for e in events)
        end = max(parse_time_ns(e["stageTimestamp"]) for e in events)
        return Served(app, app.base_url, start - 10**9, end + 10**9, events)

    yield serve
