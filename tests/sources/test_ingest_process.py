"""The ingest process (``ingest.process``) in front of the product's durable path: what it counts reaches the
serving process's metrics, its readiness is the serving process's, and a killed one is replaced on the same
listener. The webhook's own behaviour through it (status codes, 429, 413, tokens) is tested in test_webhook."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, TCPConnector

from kelemetry_py.app import App
from kelemetry_py.config import ConfigError, load_config
from kelemetry_py.metrics import Metrics
from kelemetry_py.pipeline.priority import Priority
from kelemetry_py.sources import ingestproc
from kelemetry_py.sources.ingestproc import IngestProcess, ingest_process_wanted
from kelemetry_py.sources.ingestproc.handoff import HEAD_BYTES, is_audit_request
from kelemetry_py.storage import TraceQuery
from tests.plugins.support import running_app
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


# On the main listener (ingest.process without http.ingest_port): the real App, its webhook URL unchanged.

JSON = {"Content-Type": "application/json"}


def serving(directory: Path, **overrides: Any) -> contextlib.AbstractAsyncContextManager[App]:
    return running_app(directory, **{"cluster": "dflt", "ingest.process": "true", **overrides})


def connections(app: App) -> dict[str, float]:
    assert app.components is not None
    return {
        sample.labels["served_by"]: sample.value
        for family in app.components.metrics.registry.collect()
        for sample in family.samples
        if sample.name == "kelemetry_ingest_process_connections_total"
    }


def accepted(app: App) -> float:
    assert app.components is not None
    registry = app.components.metrics.registry
    return registry.get_sample_value("kelemetry_audit_events_accepted_total", {"cluster": "fixture"}) or 0.0


async def test_on_the_main_listener_webhook_connections_are_passed_to_the_ingest_process(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    body = first_batch(fixtures_dir)
    token = "reader-token-0123456789"
    auth = {"auth.mode": "token", "auth.tokens": [{"token": token, "user": "admin", "cluster_scoped": True}]}
    async with serving(tmp_path, **auth) as app:
        assert app.ingest_process is not None and app.ingest_process.on_main_listener
        assert "ingest" not in app.ports and app.ingest_url == app.base_url
        async with ClientSession(base_url=app.base_url, connector=TCPConnector(limit=1)) as session:
            answers = []
            for data, headers in ((body, JSON), (gzip.compress(body), {**JSON, "Content-Encoding": "gzip"})):
                async with session.post("/audit/fixture", data=data, headers=headers) as response:
                    assert response.status == 200 and "Connection" not in response.headers
                    answers.append((await response.json())["accepted"])
            async with session.post("/audit/fixture", data=b"{oops", headers=JSON) as response:
                assert response.status == 400
            # The same connection, now the ingest process's: the rest is forwarded to the serving process, which
            # authenticates it as ever.
            async with session.get("/api/services") as response:
                assert response.status == 401
            bearer = {"Authorization": f"Bearer {token}", "X-Request-Id": "forwarded-0001"}
            async with session.get("/api/services", headers=bearer) as response:
                assert response.status == 200 and "tree" in (await response.json())["data"]
                assert response.headers["X-Request-Id"] == "forwarded-0001"
            async with session.get("/api/services", headers=bearer, params={"check": "á b"}) as response:
                assert response.status == 200
            async with session.get("/ui/object.js") as response:
                forwarded = (response.status, response.headers["Content-Type"], await response.read())
        async with ClientSession(base_url=app.base_url) as fresh, fresh.get("/ui/object.js") as response:
            assert forwarded == (200, response.headers["Content-Type"], await response.read())
        assert connections(app) == {"ingest_process": 1.0}  # one connection, passed over once
        await until("the answers are counted", lambda: accepted(app) == sum(answers))
        await app.settle()
        assert app.components is not None and app.components.store is not None
        hits = await app.components.store.find_traces(TraceQuery(start_ns=0, end_ns=2**62, limit=10))
        assert hits, "the batches reached the store"


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
    headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in head[1:] if line)}
    body = await reader.readexactly(int(headers["content-length"]))
    return int(head[0].split()[1]), headers, body


async def test_one_connection_sent_a_byte_at_a_time_then_reused_for_a_query(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    body = first_batch(fixtures_dir)
    batch = (
        b"POST /audit/fixture HTTP/1.1\r\nHost: kelemetry\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    async with serving(tmp_path) as app:
        reader, writer = await asyncio.open_connection("127.0.0.1", app.ports["http"])
        try:
            for at in range(HEAD_BYTES + 1):  # the request line's first bytes, in as many reads as they come
                writer.write(batch[at : at + 1])
                await writer.drain()
            writer.write(batch[HEAD_BYTES + 1 :])
            status, _, answer = await read_answer(reader)
            assert status == 200 and b'"accepted"' in answer
            writer.write(b"GET /api/services HTTP/1.1\r\nHost: kelemetry\r\n\r\n")
            status, headers, answer = await read_answer(reader)
            assert status == 200 and b"tree" in answer, answer  # forwarded by the ingest process
            assert headers["x-request-id"]
            # A body is forwarded too, and the connection stays usable after the serving process's refusal.
            writer.write(b"POST /api/services HTTP/1.1\r\nHost: kelemetry\r\nContent-Length: 5\r\n\r\nhello")
            status, _, _ = await read_answer(reader)
            assert status == 405
            writer.write(b"GET /api/services HTTP/1.1\r\nHost: kelemetry\r\n\r\n")
            status, _, answer = await read_answer(reader)
            assert status == 200 and b"tree" in answer
        finally:
            writer.close()
        assert connections(app) == {"ingest_process": 1.0}


async def test_while_no_ingest_process_serves_the_main_listener_serves_the_webhook_itself(
    tmp_path: Path, fixtures_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each such connection is closed after its answer, so that the apiserver's next one goes to the ingest process
    again once one serves: a connection kept here would keep the webhook on one CPU."""
    monkeypatch.setattr(ingestproc, "_RESTART_FIRST_SECONDS", 3600.0)  # the killed one stays down
    body = first_batch(fixtures_dir)
    async with serving(tmp_path) as app:
        ingest = app.ingest_process
        assert ingest is not None and ingest.pid is not None
        os.kill(ingest.pid, signal.SIGKILL)
        await until("the serving process sees it gone", lambda: not ingest.up)
        async with ClientSession(base_url=app.base_url) as session:
            answers = []
            for _ in range(2):
                async with session.post("/audit/fixture", data=body, headers=JSON) as response:
                    assert response.status == 200 and response.headers["Connection"] == "close"
                    answers.append((await response.json())["accepted"])
            async with session.get("/readyz") as response:
                assert response.status == 200  # nothing the apiserver sends is refused meanwhile
        assert connections(app) == {"serving_process": 2.0}
        assert accepted(app) == sum(answers)


async def test_after_a_restart_webhook_connections_go_to_the_new_ingest_process(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    async with serving(tmp_path) as app:
        ingest = app.ingest_process
        assert ingest is not None and ingest.pid is not None
        killed = ingest.pid
        os.kill(killed, signal.SIGKILL)
        await until("another ingest process serves", lambda: ingest.up and ingest.pid != killed)
        async with (
            ClientSession(base_url=app.base_url) as session,
            session.post("/audit/fixture", data=first_batch(fixtures_dir), headers=JSON) as response,
        ):
            assert response.status == 200 and "Connection" not in response.headers
        assert connections(app) == {"ingest_process": 1.0}


@pytest.mark.parametrize(
    ("head", "audit"),
    [
        (b"POST /audit ", True),
        (b"POST /audit?", True),
        (b"POST /audit/", True),
        (b"POST /auditx", False),
        (b"GET /audit/x", False),
        (b"post /audit ", False),
        (b"POST /aud", None),
        (b"POST /audit", None),
        (b"", None),
        (b"PUT ", False),
    ],
)
def test_the_first_bytes_tell_a_webhook_connection(head: bytes, audit: bool | None) -> None:
    assert is_audit_request(head) is audit


@pytest.mark.parametrize(
    ("settings", "cpus", "wanted"),
    [
        ({}, 2, True),
        ({}, 1, False),
        ({"audit.decode_processes": 2}, 4, False),
        ({"http.tls_cert_file": "c", "http.tls_key_file": "k"}, 4, False),
        ({"http.tls_cert_file": "c", "http.tls_key_file": "k", "http.ingest_port": 8443}, 4, True),
        ({"ingest.process": True}, 1, True),
        ({"ingest.process": "false"}, 4, False),
    ],
)
def test_auto_puts_the_webhook_in_a_process_of_its_own_with_a_second_cpu(
    settings: dict[str, Any], cpus: int, wanted: bool
) -> None:
    assert ingest_process_wanted(load_config(env={}, overrides=settings), cpus=cpus) is wanted


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"ingest.process": "sometimes"}, "ingest.process: must be auto, true or false"),
        ({"ingest.process": True, "audit.decode_processes": 2}, "set audit.decode_processes 0"),
        (
            {"ingest.process": True, "http.tls_cert_file": "c", "http.tls_key_file": "k"},
            "give the webhook its own listener",
        ),
    ],
)
def test_settings_it_cannot_serve_are_refused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(env={}, overrides=settings)


async def test_on_the_main_listener_one_that_cannot_start_leaves_the_webhook_served_here_until_one_can(
    tmp_path: Path, fixtures_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingestproc, "_RESTART_FIRST_SECONDS", 0.05)
    monkeypatch.setattr(ingestproc, "_CHILD_MODULE", "kelemetry_py.sources.ingestproc.no_such_module")
    body = first_batch(fixtures_dir)
    async with serving(tmp_path) as app:  # starts all the same
        ingest = app.ingest_process
        assert ingest is not None and not ingest.up
        async with (
            ClientSession(base_url=app.base_url) as session,
            session.post("/audit/fixture", data=body, headers=JSON) as response,
        ):
            assert response.status == 200 and response.headers["Connection"] == "close"
        assert app.components is not None
        restarts = "kelemetry_ingest_process_restarts_total"
        registry = app.components.metrics.registry
        await until("failed starts are counted", lambda: (registry.get_sample_value(restarts) or 0) >= 2)
        monkeypatch.setattr(ingestproc, "_CHILD_MODULE", "kelemetry_py.sources.ingestproc.child")
        await until("one starts once it can", lambda: ingest.up)
        async with (
            ClientSession(base_url=app.base_url) as session,
            session.post("/audit/fixture", data=body, headers=JSON) as response,
        ):
            assert response.status == 200 and "Connection" not in response.headers
        assert connections(app) == {"serving_process": 1.0, "ingest_process": 1.0}
