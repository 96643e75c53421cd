"""The ingest process (``ingest.process``) in front of the product's durable path: what it counts reaches the
serving process's metrics, its readiness is the serving process's, and a killed one is replaced on the same
listener. The webhook's own behaviour through it (status codes, 429, 413, tokens) is tested in test_webhook."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kelemetry_py.config import load_config
from kelemetry_py.metrics import Metrics
from kelemetry_py.pipeline.priority import Priority
from kelemetry_py.sources.ingestproc import IngestProcess
from tests.security.test_listeners import make_certificates
from tests.sources.test_webhook import Harness, first_batch, make_harness
from tests.support.waiting import until


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = await make_harness(tmp_path, decoding="ingest-process")
    yield h
    await h.close()


async def test_what_the_ingest_process_counts_is_in_the_serving_process_metrics(
    harness: Harness, fixtures_dir: Path
) -> None:
    body = first_batch(fixtures_dir)
    good = await harness.client.post("/audit/fixture", data=body)
    assert good.status == 200
    accepted = (await good.json())["accepted"]
    bad = await harness.client.post("/audit/fixture", data=b"{oops")
    assert bad.status == 400
    registry = harness.metrics.registry

    def by_label(name: str, label: str) -> dict[str, float]:
        return {
            sample.labels[label]: sample.value
            for family in registry.collect()
            for sample in family.samples
            if sample.name == name
        }

    latency = "kelemetry_webhook_request_duration_seconds_count"
    # Counted once each answer is on its way: the counts cross the channel just after.
    await until("both answers are counted", lambda: len(by_label(latency, "code")) == 2)
    assert by_label(latency, "code") == {"200": 1.0, "400": 1.0}
    assert by_label("kelemetry_audit_events_accepted_total", "cluster") == {"fixture": accepted}
    assert by_label("kelemetry_audit_batches_rejected_total", "reason") == {"malformed": 1.0}
    assert registry.get_sample_value("kelemetry_ingest_process_up") == 1.0
    assert (registry.get_sample_value("kelemetry_ingest_process_resident_bytes") or 0) > 1 << 20
    await harness.settle()
    assert {span.attributes["cluster"] for span in harness.writer.spans} == {"fixture"}


async def test_its_readiness_is_the_serving_process(tmp_path: Path) -> None:
    h = await make_harness(tmp_path, decoding="ingest-process", readiness=lambda: (503, {"status": "spool full"}))
    try:
        response = await h.client.get("/readyz")
        assert response.status == 503 and (await response.json()) == {"status": "spool full"}
        assert (await h.client.get("/healthz")).status == 200
    finally:
        await h.close()


async def test_a_killed_ingest_process_is_replaced_on_the_same_listener(harness: Harness, fixtures_dir: Path) -> None:
    ingest = harness.ingest
    assert ingest is not None and ingest.pid is not None
    killed = ingest.pid
    os.kill(killed, signal.SIGKILL)
    await until("another ingest process serves", lambda: ingest.pid not in (None, killed))
    assert harness.metrics.registry.get_sample_value("kelemetry_ingest_process_restarts_total") == 1.0
    # The same port: the listening socket stayed with the serving process.
    response = await harness.client.post("/audit/fixture", data=first_batch(fixtures_dir))
    assert response.status == 200
    observations = (await response.json())["observations"]
    await harness.settle()
    assert len(harness.writer.by_service("audit")) == observations


async def test_stopping_ends_the_ingest_process(tmp_path: Path) -> None:
    h = await make_harness(tmp_path, decoding="ingest-process")
    ingest = h.ingest
    assert ingest is not None
    pid = ingest.pid
    assert pid is not None
    await h.close()
    assert ingest.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped: not even a zombie is left


async def test_one_that_cannot_start_is_retried_and_counted_until_it_can(tmp_path: Path) -> None:
    """A certificate gone (say, mid-rotation): each start fails, counts as a restart (the alert reads that) and
    leaves the listener down; once the certificate is back the next start serves again."""
    certs = make_certificates(tmp_path)
    config = load_config(
        env={},
        overrides={
            "cluster": "dflt",
            "http.ingest_port": 1,  # checked only: IngestProcess.start binds the port it is given
            "ingest.tls_cert_file": str(certs["server"]),
            "ingest.tls_key_file": str(certs["server-key"]),
        },
    )
    metrics = Metrics()
    h = await make_harness(tmp_path / "logs")
    ingest = IngestProcess(
        config,
        sink=h.delivery.intake,
        metrics=metrics,
        priority=Priority(),
        readiness=lambda: (200, {"status": "ready"}),
        whole_bodies=False,
        in_flight_seconds=5,
    )
    await ingest.start("127.0.0.1", 0)
    try:
        moved = certs["server"].rename(tmp_path / "away.pem")
        killed = ingest.pid
        assert killed is not None
        os.kill(killed, signal.SIGKILL)
        restarts = "kelemetry_ingest_process_restarts_total"
        await until("starts fail and are counted", lambda: (metrics.registry.get_sample_value(restarts) or 0) >= 3)
        assert not ingest.up
        moved.rename(certs["server"])
        await until("a start succeeds once the certificate is back", lambda: ingest.up)
    finally:
        await ingest.stop()
        await h.close()
    assert ingest.pid is None
