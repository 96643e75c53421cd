"""Shared helpers of the plugin tests: fixture scenarios as observations, a pipeline run, span comparison."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from kelemetry_py.app import App
from kelemetry_py.config import AuditConfig, PluginsConfig, RedactionConfig, load_config
from kelemetry_py.metrics import Metrics
from kelemetry_py.model import Observation, Span
from kelemetry_py.pipeline.core import Pipeline
from kelemetry_py.pipeline.emission.memory import MemoryEmissionSet
from kelemetry_py.plugins import LINKERS_GROUP, Decorator, Linker
from kelemetry_py.sources.audit import AuditConverter, AuditEvent, parse_event_list
from tests.support.writers import CollectingWriter

BUILTIN_LINKERS = ["owner-references", "parent-annotation"]
ONLY_BUILTINS = PluginsConfig(enabled={LINKERS_GROUP: BUILTIN_LINKERS})


def scenario_batches(fixtures_dir: Path, scenario: str) -> list[list[AuditEvent]]:
    lines = (fixtures_dir / scenario / "audit.jsonl").read_bytes().splitlines()
    return [parse_event_list(line) for line in lines if line.strip()]


def scenario_observations(fixtures_dir: Path, scenario: str, cluster: str = "fixture") -> list[Observation]:
    converter = AuditConverter(AuditConfig(), RedactionConfig())
    return [obs for batch in scenario_batches(fixtures_dir, scenario) for obs in converter.convert(cluster, batch)]


async def run_pipeline(
    observations: Sequence[Observation],
    *,
    linkers: Sequence[Linker] = (),
    decorators: Sequence[Decorator] = (),
    metrics: Metrics | None = None,
) -> list[Span]:
    writer = CollectingWriter()
    pipeline = Pipeline(
        writer=writer,
        emission=MemoryEmissionSet(),
        metrics=metrics or Metrics(),
        linkers=linkers,
        decorators=decorators,
    )
    await pipeline.start()
    await pipeline.submit(observations, wait=True)
    await pipeline.stop()
    return writer.spans


def signature(span: Span) -> tuple[Any, ...]:
    """Everything a reader sees of a span, comparable and hashable."""
    return (
        span.trace_id,
        span.span_id,
        span.parent_id,
        span.service,
        span.name,
        span.start_ns,
        span.end_ns,
        tuple(sorted((key, str(value)) for key, value in span.attributes.items())),
        tuple((log.time_ns, log.name, tuple(sorted((k, str(v)) for k, v in log.fields.items()))) for log in span.logs),
        span.error,
        span.status_message,
    )


def signatures(spans: Sequence[Span]) -> list[tuple[Any, ...]]:
    return sorted(signature(span) for span in spans)


@asynccontextmanager
async def running_app(tmp_path: Path, **overrides: Any) -> AsyncIterator[App]:
    settings: dict[str, Any] = {
        "http.host": "127.0.0.1",
        "http.port": 0,
        "store.path": str(tmp_path / "data" / "traces.db"),
        "log_level": "warning",
    }
    settings.update(overrides)
    app = App(load_config(env={}, overrides=settings))
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


def error_count(metrics: Metrics, plugin: str) -> float:
    return metrics.registry.get_sample_value("kelemetry_plugin_errors_total", {"plugin": plugin}) or 0.0
