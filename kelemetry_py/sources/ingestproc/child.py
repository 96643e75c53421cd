"""The ingest process: serves the audit webhook on the listening socket the serving process hands it, or on the
connections it passes over one by one from the main listener, and has each batch's encoded records kept by the
serving process before answering.

``python -m kelemetry_py.sources.ingestproc.child SERVED_FD CHANNEL_FD``, started by
:class:`~kelemetry_py.sources.ingestproc.IngestProcess` only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from aiohttp import web

from kelemetry_py.config import allowed_clusters
from kelemetry_py.logs import configure_logging, error_middleware, request_ids
from kelemetry_py.model import Observation
from kelemetry_py.pipeline import Overloaded, TooLarge
from kelemetry_py.pipeline.priority import Priority
from kelemetry_py.process import release_memory_when_idle, run_event_loop, tune_garbage_collector
from kelemetry_py.sources.auditdecode.inline import InlineDecoder
from kelemetry_py.sources.ingestproc.channel import (
    CHANNEL_BUFFER,
    Channel,
    Kind,
    Outcome,
    Settings,
    pack_records,
    unpack_answer,
)
from kelemetry_py.sources.ingestproc.handoff import ToServingProcess, receive_connections
from kelemetry_py.sources.webhook import AuditWebhook
from kelemetry_py.spool.codec import encode_observations
from kelemetry_py.tls import server_ssl_context

log = logging.getLogger("kelemetry_py.sources.ingestproc")

_RELEASE_AFTER_BATCHES = 50  # about the serving process's 20,000 observations
_ASK_SECONDS = 5.0  # how long /healthz and /readyz wait for the serving process


class ServingProcess:
    """The serving process as this one sees it: where batches are kept (an EncodedSink) and metrics counted
    (a WebhookMetrics)."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._next_id = 0
        self._waiting: dict[int, asyncio.Future[bytes]] = {}
        self._counts: list[tuple[Any, ...]] = []
        self.stop_requested = asyncio.Event()
        self.answered_batches = 0

    async def listen(self) -> None:
        """Until the serving process is gone: then nothing could be kept any more, so this process ends at once
        (requests in flight are cut off unanswered, and the apiserver resends them)."""
        try:
            while True:
                kind, rid, body = await self._channel.receive()
                if kind is Kind.STOP:
                    self.stop_requested.set()
                elif (waiting := self._waiting.pop(rid, None)) is not None and not waiting.done():
                    waiting.set_result(body)
        except (asyncio.IncompleteReadError, ConnectionError):
            log.error("ingest process: the serving process is gone; exiting")
        except Exception:
            log.exception("ingest process: its channel failed; exiting")
        logging.shutdown()
        os._exit(1)

    async def _ask(self, kind: Kind, body: bytes) -> bytes:
        self._next_id += 1
        rid = self._next_id
        answer = asyncio.get_running_loop().create_future()
        self._waiting[rid] = answer
        try:
            self._channel.send(kind, rid, body)
            await self._channel.drain()
            return bytes(await answer)
        finally:
            self._waiting.pop(rid, None)

    async def submit(self, observations: Sequence[Observation], *, wait: bool = False) -> None:
        await self.submit_encoded([encode_observations(observations)])

    async def submit_encoded(
        self, payloads: Sequence[bytes], observations: Sequence[Sequence[Observation]] | None = None
    ) -> None:
        if not payloads:
            return
        outcome, retry_after, message = unpack_answer(await self._ask(Kind.KEEP, pack_records(payloads)))
        if outcome is Outcome.OVERLOADED:
            raise Overloaded(retry_after_seconds=retry_after)
        if outcome is Outcome.TOO_LARGE:
            raise TooLarge(message)
        if outcome is not Outcome.KEPT:
            raise OSError("the serving process could not keep the batch")

    async def readiness(self) -> tuple[int, Any]:
        async with asyncio.timeout(_ASK_SECONDS):
            answer = orjson.loads(await self._ask(Kind.READINESS, b""))
        return int(answer["status"]), answer["body"]

    async def healthy(self) -> bool:
        """Whether the serving process answers: a liveness probe on this listener covers both processes."""
        try:
            async with asyncio.timeout(_ASK_SECONDS):
                await self._ask(Kind.HEALTH, b"")
        except TimeoutError:
            return False
        return True

    # WebhookMetrics, and the 500s: counted by the serving process, sent once per turn of the loop.

    def answered(self, code: int, seconds: float) -> None:
        self.answered_batches += 1
        self._count("answered", code, seconds)

    def batch_rejected(self, reason: str) -> None:
        self._count("batch_rejected", reason)

    def events_accepted(self, cluster: str, count: int) -> None:
        self._count("events_accepted", cluster, count)

    def event_rejected(self, reason: str) -> None:
        self._count("event_rejected", reason)

    def event_invalid(self, field: str) -> None:
        self._count("event_invalid", field)

    def internal_error(self) -> None:
        self._count("internal_error")

    def _count(self, *call: Any) -> None:
        if not self._counts:
            asyncio.get_running_loop().call_soon(self.send_counts)
        self._counts.append(call)

    def send_counts(self) -> None:
        if self._counts:
            counts, self._counts = self._counts, []
            self._channel.send(Kind.COUNT, 0, orjson.dumps(counts))


async def serve(served: socket.socket, channel_socket: socket.socket) -> None:
    reader, writer = await asyncio.open_unix_connection(sock=channel_socket, limit=CHANNEL_BUFFER)
    channel = Channel(reader, writer)
    kind, _, body = await channel.receive()
    if kind is not Kind.SETTINGS:
        raise RuntimeError(f"ingest process: expected the settings first, got {kind.name}")
    settings: Settings = pickle.loads(body)
    config = settings.config
    configure_logging(config.log_level, config.log.format)
    tune_garbage_collector()
    serving = ServingProcess(channel)
    listener = asyncio.get_running_loop().create_task(serving.listen())
    priority = Priority()  # only to know whether a batch is being handled
    # As the serving process does, once no batch is being handled after a burst.
    releasing = asyncio.get_running_loop().create_task(
        release_memory_when_idle(
            lambda: priority.serving_requests == 0, lambda: serving.answered_batches, _RELEASE_AFTER_BATCHES
        )
    )
    webhook = AuditWebhook(
        sink=serving,
        decoder=InlineDecoder(
            config.audit,
            config.redaction,
            records=settings.records,
            whole_bodies=settings.whole_bodies,
            keep_observations=False,
        ),
        metrics=serving,
        default_cluster=config.cluster,
        audit=config.audit,
        http=config.http,
        ingest=config.ingest,
        clusters=allowed_clusters(config),
        priority=priority,
    )
    app = web.Application(
        middlewares=[request_ids, error_middleware(serving.internal_error)], client_max_size=config.audit.max_body_bytes
    )
    webhook.add_routes(app)

    async def healthz(_: web.Request) -> web.Response:
        if await serving.healthy():
            return web.Response(text="ok")
        return web.Response(text="the serving process does not answer", status=503)

    async def readyz(_: web.Request) -> web.Response:
        if serving.stop_requested.is_set():
            return web.json_response({"status": "shutting down"}, status=503)
        try:
            status, answer = await serving.readiness()
        except TimeoutError:
            return web.json_response({"status": "the serving process does not answer"}, status=503)
        return web.json_response(answer, status=status)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    forwarding: ToServingProcess | None = None
    if settings.main_listener is not None:
        forwarding = ToServingProcess(settings.main_listener)
        app.router.add_route("*", "/{path:.*}", forwarding.handle)
    runner = web.AppRunner(app, access_log=None, auto_decompress=False, shutdown_timeout=settings.in_flight_seconds)
    await runner.setup()
    loop = asyncio.get_running_loop()
    stop_taking: Callable[[], None] | None = None
    if settings.main_listener is not None:
        assert runner.server is not None
        stop_taking = receive_connections(served, runner.server)
    else:
        ingest = config.ingest
        context = server_ssl_context(ingest.tls_cert_file, ingest.tls_key_file, ingest.client_ca_file)
        await web.SockSite(runner, served, ssl_context=context).start()
    loop.add_signal_handler(signal.SIGTERM, serving.stop_requested.set)
    channel.send(Kind.LISTENING)
    await serving.stop_requested.wait()
    if stop_taking is not None:
        stop_taking()  # the serving process no longer passes connections either
    await runner.cleanup()  # stops listening; the requests in flight are answered first
    if forwarding is not None:
        await forwarding.close()
    serving.send_counts()
    await channel.drain()
    listener.cancel()
    releasing.cancel()
    await channel.close()


def main(argv: list[str]) -> None:
    # A terminal's Ctrl-C reaches the whole process group: shutting down is the serving process's to order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    served_fd, channel_fd = (int(arg) for arg in argv)
    run_event_loop(serve(socket.socket(fileno=served_fd), socket.socket(fileno=channel_fd)))


if __name__ == "__main__":
    main(sys.argv[1:])
