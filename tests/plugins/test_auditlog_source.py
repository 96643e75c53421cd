"""The audit-log file source against the webhook: the same recorded events give the same spans."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from aiohttp import web
from kelemetry_auditlog_source import AuditLogSource

from kelemetry_py.config import AuditConfig, Config, HttpConfig, RedactionConfig
from kelemetry_py.metrics import Metrics
from kelemetry_py.model import Span, object_trace_id, window_of
from kelemetry_py.pipeline.durable import Delivery
from kelemetry_py.plugins import SOURCES_GROUP, load_linkers
from kelemetry_py.plugins.sources import SourceRunner
from kelemetry_py.sources.auditdecode import create_decoder
from kelemetry_py.sources.replay import read_batches, replay
from kelemetry_py.sources.webhook import AuditWebhook, CountedWebhook
from kelemetry_py.times import kube_time_ns as parse_time_ns
from tests.conftest import SCENARIOS
from tests.plugins.support import ONLY_BUILTINS, running_app, signatures
from tests.support.delivery import settle, start_delivery, stop_delivery
from tests.support.writers import CollectingWriter


def write_audit_log(fixtures_dir: Path, scenario: str, path: Path) -> int:
    """The scenario's webhook batches as the apiserver's log backend writes them: one event per line."""
    count = 0
    with path.open("wb") as handle:
        for line in (fixtures_dir / scenario / "audit.jsonl").read_bytes().splitlines():
            for event in orjson.loads(line)["items"]:
                handle.write(orjson.dumps(event) + b"\n")
                count += 1
    return count


async def durable(directory: Path, writer: CollectingWriter, metrics: Metrics) -> Delivery:
    """As the App does: sources submit to the durable intake, and the built-in linkers only."""
    return await start_delivery(directory, writer, metrics, linkers=load_linkers(ONLY_BUILTINS))


async def through_webhook(fixtures_dir: Path, scenario: str, directory: Path) -> list[Span]:
    writer, metrics = CollectingWriter(), Metrics()
    delivery = await durable(directory, writer, metrics)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    AuditWebhook(
        sink=delivery.intake,
        decoder=create_decoder(AuditConfig(), RedactionConfig(), metrics, records=False),
        metrics=CountedWebhook(metrics),
        default_cluster="fixture",
        audit=AuditConfig(),
        http=HttpConfig(),
    ).add_routes(app)
    runner = web.AppRunner(app, auto_decompress=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        batches = read_batches([fixtures_dir / scenario / "audit.jsonl"])
        result = await replay(batches, target=f"http://127.0.0.1:{port}", cluster="fixture")
        assert result.failed == 0 and result.batches > 0
        await settle(delivery)
    finally:
        await runner.cleanup()
        await stop_delivery(delivery)
    return writer.spans


async def through_audit_log(log: Path, directory: Path) -> tuple[list[Span], AuditLogSource]:
    writer, metrics = CollectingWriter(), Metrics()
    delivery = await durable(directory / "spool", writer, metrics)
    source = AuditLogSource(
        path=str(log), cluster="fixture", offsets_file=str(directory / "offsets.json"), poll_interval_seconds=0.01
    )
    runner = SourceRunner([source], delivery.intake, Config(), metrics)
    await runner.start()
    await source.caught_up()
    await runner.stop()
    await settle(delivery)
    await stop_delivery(delivery)
    return writer.spans, source


@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_audit_log_file_gives_the_webhooks_spans(fixtures_dir: Path, tmp_path: Path, scenario: str) -> None:
    log = tmp_path / "audit.log"
    events = write_audit_log(fixtures_dir, scenario, log)
    from_webhook = await through_webhook(fixtures_dir, scenario, tmp_path / "webhook")
    from_file, source = await through_audit_log(log, tmp_path / "file")
    assert source.events_read == events and source.bad_lines == 0
    assert {span.service for span in from_webhook} >= {"object", "audit", "link"}
    assert len(from_file) == len(from_webhook)
    assert signatures(from_file) == signatures(from_webhook)


async def test_app_starts_and_stops_the_audit_log_source(fixtures_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "logs" / "audit.log"
    log.parent.mkdir()
    write_audit_log(fixtures_dir, "errors-and-links", log)
    settings = {
        "plugins.enabled": {SOURCES_GROUP: ["audit-log"]},
        "plugins.settings": {"audit-log": {"path": str(log), "poll_interval_seconds": 0.01}},
        "cluster": "from-file",
    }
    async with running_app(tmp_path, **settings) as app:
        assert app.components is not None and app.components.sources is not None
        (source,) = app.components.sources.sources
        assert isinstance(source, AuditLogSource)
        await source.caught_up()
        await app.settle()
        event = next(
            event
            for line in (fixtures_dir / "errors-and-links" / "audit.jsonl").read_bytes().splitlines()
            for event in orjson.loads(line)["items"]
            if event["verb"] == "create" and event.get("objectRef", {}).get("name") == "child-of-web"
        )
        start_ns = parse_time_ns(event["requestReceivedTimestamp"])
        key = "from-file//configmaps/shop/child-of-web"
        assert app.components is not None and app.components.store is not None
        spans = await app.components.store.get_trace(object_trace_id(key, window_of(start_ns, 1800)))
        audit_ids = {span.attributes.get("auditID") for span in spans if span.service == "audit"}
        assert event["auditID"] in audit_ids
        # The default offsets file lives beside the embedded store.
        assert (tmp_path / "data" / "auditlog-offsets.json").is_file()
    assert app.components is None
