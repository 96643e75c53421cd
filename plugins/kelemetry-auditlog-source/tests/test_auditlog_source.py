"""AuditLogSource end to end on a real file: events become audit observations once, across restarts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kelemetry_auditlog_source import AuditLogSource

from kelemetry_py.config import Config
from kelemetry_py.metrics import Metrics
from kelemetry_py.plugins import Observation, Source, SourceContext


class RecordingSink:
    def __init__(self) -> None:
        self.observations: list[Observation] = []

    async def submit(self, observations: Sequence[Observation], *, wait: bool = False) -> None:
        assert wait, "a file source waits for room rather than dropping"
        self.observations.extend(observations)


def audit_event(number: int, name: str = "settings") -> dict[str, Any]:
    stamp = f"2026-11-21T05:26:{number % 60:02d}.000001Z"
    return {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "RequestResponse",
        "auditID": f"id-{number}",
        "stage": "ResponseComplete",
        "requestURI": f"/api/v1/namespaces/shop/configmaps/{name}",
        "verb": "update",
        "user": {"username": "admin"},
        "sourceIPs": ["127.0.0.1"],
        "userAgent": "kubectl/v1.24.0",
        "objectRef": {"resource": "configmaps", "namespace": "shop", "name": name, "apiVersion": "v1"},
        "responseStatus": {"metadata": {}, "code": 200},
        "responseObject": {
            "kind": "ConfigMap",
            "apiVersion": "v1",
            "metadata": {"name": name, "namespace": "shop", "resourceVersion": str(1000 + number)},
        },
        "requestReceivedTimestamp": stamp,
        "stageTimestamp": stamp,
    }


def write_events(path: Path, numbers: range) -> None:
    with path.open("a") as handle:
        for number in numbers:
            handle.write(json.dumps(audit_event(number)) + "\n")


async def run_until_caught_up(source: AuditLogSource, sink: RecordingSink, config: Config) -> None:
    stopping = asyncio.Event()
    task = asyncio.create_task(source.run(sink, SourceContext(config=config, metrics=Metrics(), stopping=stopping)))
    await source.caught_up()
    stopping.set()
    await task


def test_is_a_source() -> None:
    assert isinstance(AuditLogSource(path="/var/log/audit.log"), Source)


async def test_events_become_observations_once_across_restarts_and_rotation(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "audit.log"
    log.parent.mkdir()
    offsets = tmp_path / "offsets.json"
    config = Config(cluster="file-cluster")
    sink = RecordingSink()
    write_events(log, range(0, 5))
    with log.open("a") as handle:
        handle.write("this is not json\n")
    source = AuditLogSource(path=str(log), offsets_file=str(offsets), poll_interval_seconds=0.01)
    await run_until_caught_up(source, sink, config)
    assert source.bad_lines == 1
    write_events(log, range(5, 8))
    log.rename(log.with_name("audit-1.log"))
    write_events(log, range(8, 10))
    restarted = AuditLogSource(path=[str(log)], offsets_file=str(offsets), poll_interval_seconds=0.01)
    await run_until_caught_up(restarted, sink, config)
    ids = [obs.tags["auditID"] for obs in sink.observations]
    assert ids == [f"id-{n}" for n in range(10)]
    first = sink.observations[0]
    assert (first.kind, first.title) == ("audit", "admin update")
    assert first.ref.key == "file-cluster//configmaps/shop/settings"
    assert json.loads(offsets.read_text())["files"][str(log)]["offset"] == log.stat().st_size


async def test_without_a_path_the_source_returns_at_once(tmp_path: Path) -> None:
    stopping = asyncio.Event()
    await AuditLogSource().run(RecordingSink(), SourceContext(config=Config(), metrics=Metrics(), stopping=stopping))
