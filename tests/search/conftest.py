"""A real App with search on: the three recorded audit streams through the webhook, one scenario's Events
through the Kubernetes API double, and counts computed from the fixture files on their own."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kelemetry_py.app import App
from tests.conftest import SCENARIOS
from tests.e2e.conftest import AppFactory, make_app, replay_scenario  # noqa: F401  (fixture re-export)
from tests.kube.helpers import DOUBLE_TOKEN, all_watching, caught_up, watcher_settings
from tests.support.kube_double import KubeApiDouble

EVENTS_SCENARIO = "deployment-lifecycle"
EVENTS = "/kapis/tenant.kubesphere.io/v1alpha2/events"
LOGGING_EVENTS = "/kapis/logging.kubesphere.io/v1alpha2/events"
AUDITING = "/kapis/tenant.kubesphere.io/v1alpha2/auditing/events"


def recorded_audit(fixtures_dir: Path) -> list[dict[str, Any]]:
    """Every audit event the policy sent, once per (auditID, stage)."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for scenario in SCENARIOS:
        for line in (fixtures_dir / scenario / "audit.jsonl").open("rb"):
            for item in json.loads(line)["items"]:
                found[(item["auditID"], item["stage"])] = item
    return list(found.values())


def recorded_events(fixtures_dir: Path, scenario: str = EVENTS_SCENARIO) -> list[dict[str, Any]]:
    """One core/v1 Event per (uid, occurrence) the double serves (list and watch)."""
    directory = fixtures_dir / scenario
    listed = json.loads((directory / "list" / "core_v1_events.json").read_text())["items"]
    watched = [json.loads(line)["object"] for line in (directory / "watch" / "core_v1_events.jsonl").open()]
    found: dict[tuple[str, int], dict[str, Any]] = {}
    for event in [*listed, *watched]:
        occurrence = (event.get("series") or {}).get("count") or event.get("count") or 1
        found.setdefault((event["metadata"]["uid"], occurrence), event)
    return list(found.values())


@dataclass
class Served:
    app: App
    url: str


async def start_search_app(
    factory: AppFactory, fixtures_dir: Path, tmp_path: Path, double: KubeApiDouble, **overrides: Any
) -> App:
    settings = watcher_settings(
        tmp_path, double.url, **{"search.enabled": True, "kube.watch_objects": False, **overrides}
    )
    app = await factory(**settings)
    await all_watching(app, kinds=("events",))
    double.release()
    await caught_up(app, double)
    for scenario in SCENARIOS:
        await replay_scenario(app, fixtures_dir, scenario)
    return app


@pytest.fixture
async def events_double(fixtures_dir: Path) -> AsyncIterator[KubeApiDouble]:
    async with KubeApiDouble(fixtures_dir / EVENTS_SCENARIO, tokens=[DOUBLE_TOKEN]) as double:
        yield double
