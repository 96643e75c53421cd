from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestClient, TestServer

from kelemetry_py.config import AuditConfig, HttpConfig, RedactionConfig, load_config
from kelemetry_py.metrics import Metrics
from kelemetry_py.pipeline.durable import Delivery
from kelemetry_py.pipeline.priority import Priority
from kelemetry_py.sources.auditdecode import BatchDecoder, create_decoder
from kelemetry_py.sources.ingestproc import IngestProcess, Readiness
from kelemetry_py.sources.webhook import AuditWebhook, CountedWebhook
from tests.support.delivery import settle, start_delivery, stop_delivery
from tests.support.waiting import until
from tests.support.writers import CollectingWriter

EMPTY = b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":[]}\n'


@dataclass
class Harness:
    """The webhook on the product's own path: the durable intake, the observation and span logs on disk, the
    pipeline, and a writer pump delivering to ``writer``. With ``decoding="ingest-process"`` the webhook is served
    by a real ingest process (``ingest.process``) in front of that intake."""

    client: TestClient[web.Request, web.Application] | ClientSession
    url: str  # where the client posts to
    delivery: Delivery
    writer: CollectingWriter
    metrics: Metrics
    throttled: asyncio.Event  # set once the webhook has answered 429 (served in this process only)
    decoder: BatchDecoder | None = None
    webhook: AuditWebhook | None = None  # served in this process
    ingest: IngestProcess | None = None

    async def settle(self) -> None:
        await settle(self.delivery)

    async def close(self) -> None:
        await self.client.close()
        if self.ingest is not None:
            await self.ingest.stop()
        await stop_delivery(self.delivery)
        if self.decoder is not None:
            await self.decoder.close()


async def make_harness(
    directory: Path,
    *,
    spool_bytes: int = 1 << 30,
    max_body: int = 32 << 20,
    max_in_flight: int = 64 << 20,
    tokens: list[str] | None = None,
    decoding: str = "inline",
    readiness: Readiness = lambda: (200, {"status": "ready"}),
) -> Harness:
    writer = CollectingWriter()
    metrics = Metrics()
    delivery = await start_delivery(directory, writer, metrics, spool_bytes=spool_bytes)
    headers = {"Content-Type": "application/json"}
    if decoding == "ingest-process":
        config = load_config(
            env={},
            overrides={
                "cluster": "dflt",
                "audit.max_body_bytes": max_body,
                "audit.max_in_flight_bytes": max_in_flight,
                "ingest.tokens": tokens or [],
            },
        )
        ingest = IngestProcess(
            config,
            sink=delivery.intake,
            metrics=metrics,
            priority=Priority(),
            readiness=readiness,
            whole_bodies=False,
            in_flight_seconds=5,
        )
        port = await ingest.start("127.0.0.1", 0)
        url = f"http://127.0.0.1:{port}"
        session = ClientSession(base_url=url, headers=headers, auto_decompress=False)
        return Harness(session, url, delivery, writer, metrics, asyncio.Event(), ingest=ingest)
    throttled = asyncio.Event()

    @web.middleware
    async def watch_for_429(request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request)
        if response.status == 429:
            throttled.set()
        return response

    app = web.Application(middlewares=[watch_for_429])
    audit = AuditConfig(
        max_body_bytes=max_body, max_in_flight_bytes=max_in_flight, decode_processes=2 if decoding == "processes" else 0
    )
    decoder = create_decoder(audit, RedactionConfig(), metrics, records=False)
    await decoder.start()
    # With workers, they decode every batch of the test: none is decoded inline while they start.
    assert await decoder.started() == (decoding == "processes")
    webhook = AuditWebhook(
        sink=delivery.intake,
        decoder=decoder,
        metrics=CountedWebhook(metrics),
        default_cluster="dflt",
        audit=audit,
        http=HttpConfig(webhook_tokens=tokens or []),
    )
    webhook.add_routes(app)
    server = TestServer(app)
    await server.start_server(auto_decompress=False)  # as the product's App runs it
    client = TestClient(server, headers=headers)
    await client.start_server()
    url = str(client.make_url("")).rstrip("/")
    return Harness(client, url, delivery, writer, metrics, throttled, decoder=decoder, webhook=webhook)


DECODING = ["inline", "processes", "ingest-process"]


@pytest.fixture(params=DECODING)
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    h = await make_harness(tmp_path, decoding=request.param)
    yield h
    await h.close()


def first_batch(fixtures_dir: Path) -> bytes:
    return (fixtures_dir / "deployment-lifecycle" / "audit.jsonl").read_bytes().splitlines(keepends=True)[2]


async def test_batches_with_and_without_gzip_are_accepted(harness: Harness, fixtures_dir: Path) -> None:
    body = first_batch(fixtures_dir)
    plain = await harness.client.post(
        "/audit/fixture", data=body, headers={"Content-Type": "application/json"}
    )
    assert plain.status == 200
    answer = await plain.json()
    assert answer["accepted"] == body.count(b'"auditID"') and answer["observations"] > 0
    zipped = await harness.client.post(
        "/audit",
        data=gzip.compress(body),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert zipped.status == 200
    await harness.settle()
    clusters = {s.attributes["cluster"] for s in harness.writer.spans}
    assert clusters == {
        "fixture",
        "dflt",
    }  # from the path, else the configured default; never the client address


@pytest.mark.parametrize(
    ("body", "headers", "status", "reason"),
    [
        (b"{oops", {}, 400, "not valid JSON"),
        (b'{"kind":"Status","apiVersion":"v1"}', {}, 400, "kind must be EventList"),
        (b"not gzip at all", {"Content-Encoding": "gzip"}, 400, "gzip body could not be decoded"),
        (gzip.compress(EMPTY)[:-12], {"Content-Encoding": "gzip"}, 400, "truncated gzip stream"),
        (EMPTY, {"Content-Encoding": "br"}, 415, "Content-Encoding 'br' is not supported"),
        (EMPTY, {"Content-Type": "text/plain"}, 415, "Content-Type must be application/json"),
    ],
)
async def test_bad_requests_get_a_reason_and_the_server_keeps_serving(
    harness: Harness, fixtures_dir: Path, body: bytes, headers: dict[str, str], status: int, reason: str
) -> None:
    response = await harness.client.post(
        "/audit/c", data=body, headers={"Content-Type": "application/json", **headers}
    )
    assert response.status == status
    assert reason in (await response.json())["error"]
    good = await harness.client.post("/audit/c", data=first_batch(fixtures_dir))
    assert good.status == 200


@pytest.mark.parametrize("decoding", ["inline", "ingest-process"])
async def test_oversized_bodies_are_refused_before_and_after_inflation(
    fixtures_dir: Path, tmp_path: Path, decoding: str
) -> None:
    h = await make_harness(tmp_path, max_body=4096, decoding=decoding)
    try:
        big = await h.client.post("/audit", data=first_batch(fixtures_dir))
        assert big.status == 413 and "exceeds 4096" in (await big.json())["error"]
        bomb = gzip.compress(
            b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[' + b" " * 3_000_000 + b"]}",
            compresslevel=9,
        )
        assert len(bomb) < 4096
        inflated = await h.client.post("/audit", data=bomb, headers={"Content-Encoding": "gzip"})
        assert inflated.status == 413 and "decompressed body exceeds" in (await inflated.json())["error"]
        assert (await h.client.post("/audit", data=EMPTY)).status == 200
    finally:
        await h.close()


# The logs' bound for the overload tests: a third of what the recorded scenario's batches take once encoded.
SMALL_SPOOL = 150_000


@pytest.mark.parametrize("decoding", ["inline", "ingest-process"])
async def test_overload_answers_429_with_retry_after_and_loses_nothing(
    fixtures_dir: Path, tmp_path: Path, decoding: str
) -> None:
    """The writer's back end is down: its spans fill the span log, the pipeline waits for room, the observation log
    fills and the webhook answers 429. Once the back end is back, every batch answered 200 is written."""
    h = await make_harness(tmp_path, spool_bytes=SMALL_SPOOL, decoding=decoding)
    h.writer.gate.clear()
    try:
        batches = (fixtures_dir / "deployment-lifecycle" / "audit.jsonl").read_bytes().splitlines()
        accepted, refused = [], 0
        for body in batches:
            response = await h.client.post("/audit/fixture", data=body)
            if response.status == 429:
                refused += 1
                assert int(response.headers["Retry-After"]) >= 1
            else:
                assert response.status == 200
                accepted.append((await response.json())["observations"])
        assert refused > 0 and accepted
        h.writer.gate.set()
        await h.settle()
        assert len(h.writer.by_service("audit")) == sum(accepted)
    finally:
        await h.close()


async def test_batches_past_the_bytes_in_flight_are_answered_429_before_they_are_read(
    fixtures_dir: Path, tmp_path: Path
) -> None:
    """A flood waits in the apiserver's buffer (it resends a 429), not in this process's memory."""
    body = first_batch(fixtures_dir)
    h = await make_harness(tmp_path, max_in_flight=len(body) + 100)  # room for one batch at a time
    assert h.webhook is not None
    webhook = h.webhook
    arrived = asyncio.Event()

    async def slowly() -> AsyncIterator[bytes]:
        yield body[:100]
        await arrived.wait()
        yield body[100:]

    try:
        headers = {"Content-Length": str(len(body))}
        uploading = asyncio.create_task(h.client.post("/audit/fixture", data=slowly(), headers=headers))
        await until("the first batch's headers are in and its bytes reserved", lambda: webhook.in_flight_bytes > 0)
        assert webhook.in_flight_bytes == len(body)
        crowded = await h.client.post("/audit/fixture", data=body)
        assert crowded.status == 429 and crowded.headers["Retry-After"] == "1"
        assert "in flight" in (await crowded.json())["error"]
        arrived.set()
        first = await uploading
        assert first.status == 200
        assert webhook.in_flight_bytes == 0  # given back with the answer
        again = await h.client.post("/audit/fixture", data=body)
        assert again.status == 200
        observations = (await first.json())["observations"] + (await again.json())["observations"]
        await h.settle()
        assert len(h.writer.by_service("audit")) == observations
        rejected = h.metrics.audit_batches_rejected.labels("in_flight")._value.get()
        assert rejected == 1
    finally:
        await h.close()


@pytest.mark.parametrize("decoding", ["inline", "ingest-process"])
async def test_a_batch_alone_is_taken_whatever_the_bound_on_bytes_in_flight(
    fixtures_dir: Path, tmp_path: Path, decoding: str
) -> None:
    h = await make_harness(tmp_path, max_in_flight=1000, decoding=decoding)
    try:
        for _ in range(2):
            response = await h.client.post("/audit/fixture", data=first_batch(fixtures_dir))
            assert response.status == 200
        zipped = await h.client.post(
            "/audit/fixture", data=gzip.compress(first_batch(fixtures_dir)), headers={"Content-Encoding": "gzip"}
        )
        assert zipped.status == 200  # counted as it inflates, and alone too
    finally:
        await h.close()


@pytest.mark.parametrize("decoding", ["inline", "ingest-process"])
async def test_bearer_tokens_are_enforced_when_configured(tmp_path: Path, decoding: str) -> None:
    h = await make_harness(tmp_path, tokens=["s3cret-token"], decoding=decoding)
    try:
        assert (await h.client.post("/audit", data=EMPTY)).status == 401
        wrong = await h.client.post("/audit", data=EMPTY, headers={"Authorization": "Bearer nope"})
        assert wrong.status == 401
        right = await h.client.post("/audit", data=EMPTY, headers={"Authorization": "Bearer s3cret-token"})
        assert right.status == 200
    finally:
        await h.close()
