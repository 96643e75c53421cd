"""The audit webhook in a process of its own (``ingest.process``), on ``http.ingest_port`` or the main listener.

One interpreter runs on one CPU at a time. With the webhook in the serving process, each batch's reading,
parsing, redaction and encoding takes turns with the pipeline and the store; here a child process does that work
on another CPU and sends each batch's encoded records to the serving process, which appends them to the
observation log before the child answers. A 200 still means kept.

The serving process binds the listening socket and keeps it, so a child that dies is replaced on the same socket
while the kernel queues new connections; the batches it had in flight are cut off unanswered, and the apiserver
resends them. On the main listener the serving process passes each webhook connection to the child instead
(:mod:`.handoff`), and serves them itself while no child does. The child ends when its end of the channel closes:
after the serving process, even when that was killed. At shutdown the child stops listening and answers what is in
flight before the serving process drains.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import pickle
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

from kelemetry_py.config import Config, ingest_process_setting, records_wanted
from kelemetry_py.metrics import Metrics
from kelemetry_py.pipeline import EncodedSink, Overloaded, TooLarge
from kelemetry_py.pipeline.priority import Priority
from kelemetry_py.process import resident_bytes, usable_cpus
from kelemetry_py.sources.ingestproc.channel import (
    CHANNEL_BUFFER,
    Channel,
    Kind,
    Outcome,
    Settings,
    pack_answer,
    unpack_records,
)
from kelemetry_py.sources.ingestproc.handoff import ServedHere, send_connection
from kelemetry_py.sources.webhook import CountedWebhook
from kelemetry_py.tls import server_ssl_context

log = logging.getLogger(__name__)

Readiness = Callable[[], tuple[int, dict[str, Any]]]

# The WebhookMetrics calls the ingest process forwards, counted here by CountedWebhook.
_FORWARDED_COUNTS = frozenset(("answered", "batch_rejected", "events_accepted", "event_rejected", "event_invalid"))
_START_SECONDS = 30.0
_RESTART_FIRST_SECONDS = 0.5
_RESTART_MAX_SECONDS = 30.0
_CHILD_MODULE = "kelemetry_py.sources.ingestproc.child"
_STAYED_UP_SECONDS = 60.0  # a child that lived this long starts the next restart's backoff afresh


def ingest_process_wanted(config: Config, cpus: int | None = None) -> bool:
    """Whether ``ingest.process`` serves the webhook from a process of its own here (``cpus``: usable_cpus)."""
    wanted = ingest_process_setting(config.ingest)
    if wanted is not None:
        return wanted
    if config.audit.decode_processes or (config.http.tls_cert_file and not config.http.ingest_port):
        return False
    return (usable_cpus() if cpus is None else cpus) >= 2


class IngestProcess:
    def __init__(
        self,
        config: Config,
        *,
        sink: EncodedSink,
        metrics: Metrics,
        priority: Priority,
        readiness: Readiness,
        whole_bodies: bool,
        in_flight_seconds: float,
        on_main_listener: bool = False,
    ) -> None:
        self._config = config
        self._sink = sink
        self._metrics = metrics
        self._counted = CountedWebhook(metrics)
        self._priority = priority
        self._readiness = readiness
        self.on_main_listener = on_main_listener
        self.served_here = ServedHere()  # on the main listener: webhook connections no child took
        self._settings = Settings(config, records_wanted(config), whole_bodies, in_flight_seconds, None)
        self._in_flight_seconds = in_flight_seconds
        self._listening: socket.socket | None = None
        self._handoff: socket.socket | None = None  # on the main listener: where connections go to the child
        self._child: asyncio.subprocess.Process | None = None
        self._channel: Channel | None = None
        self._keeping: set[asyncio.Task[None]] = set()
        self._serving: asyncio.Task[None] | None = None  # the current child's channel, until it closes
        self._supervisor: asyncio.Task[None] | None = None
        metrics.ingest_process_memory.set_function(self._resident_bytes)
        metrics.ingest_process_up.set_function(lambda: float(self.up))

    @property
    def pid(self) -> int | None:
        """The child's process id while one runs."""
        child = self._child
        return child.pid if child is not None and child.returncode is None else None

    @property
    def up(self) -> bool:
        """Whether a child serves the listener now (not while one is being replaced)."""
        return self.pid is not None and self._serving is not None and not self._serving.done()

    def _resident_bytes(self) -> float:
        pid = self.pid
        return resident_bytes(pid) if pid is not None else 0.0

    async def start(self, host: str, port: int) -> int:
        """Bind the ingest listener, start the child and wait until it serves; the port bound."""
        assert not self.on_main_listener
        ingest = self._config.ingest
        # Loaded here too, so that a certificate that cannot be read fails the start with its own error.
        server_ssl_context(ingest.tls_cert_file, ingest.tls_key_file, ingest.client_ca_file)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listening = socket.create_server((host.strip("[]"), port), family=family, backlog=1024)
        self._listening = listening
        try:
            await self._start_first()
        except BaseException:
            listening.close()
            self._listening = None
            raise
        return int(listening.getsockname()[1])

    async def start_on_main_listener(self, host: str, port: int) -> None:
        """Start the child and wait until it takes connections from the main listener (:meth:`hand_over`), which
        listens on ``host`` and ``port``: the child forwards there what is not the webhook's. One that cannot start
        is retried in the background; meanwhile the serving process serves the webhook itself."""
        assert self.on_main_listener
        self._settings = dataclasses.replace(self._settings, main_listener=(host, port))
        try:
            await self._start_first()
        except Exception:
            log.exception("ingest process: could not start one; the webhook is served in this process meanwhile")
            self._metrics.ingest_process_restarts.inc()
            self._supervisor = asyncio.get_running_loop().create_task(
                self._supervise(running=False), name="ingest-process"
            )

    def hand_over(self, transport: asyncio.Transport, head: bytes) -> bool:
        """On the main listener: pass a webhook connection to the child; False when none takes it now."""
        handed = self._handoff is not None and self.up and send_connection(self._handoff, transport, head)
        self._metrics.ingest_process_connections.labels("ingest_process" if handed else "serving_process").inc()
        return handed

    async def _start_first(self) -> None:
        try:
            async with asyncio.timeout(_START_SECONDS):
                await self._start_child()
        except BaseException:
            await self._end_child()
            raise
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise(), name="ingest-process")

    async def _start_child(self) -> None:
        """Start a child and wait until it listens, then serve its channel until it ends."""
        ours, theirs = socket.socketpair()
        if self.on_main_listener:  # the child is served connections one by one, over a pair of its own
            handoff, served = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            handoff.setblocking(False)
            if self._handoff is not None:
                self._handoff.close()
            self._handoff = handoff
        else:
            assert self._listening is not None
            served = self._listening
        try:
            served_fd, channel_fd = served.fileno(), theirs.fileno()
            self._child = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                _CHILD_MODULE,
                str(served_fd),
                str(channel_fd),
                pass_fds=(served_fd, channel_fd),
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            theirs.close()
            if self.on_main_listener:
                served.close()  # the child's end
        reader, writer = await asyncio.open_unix_connection(sock=ours, limit=CHANNEL_BUFFER)
        channel = Channel(reader, writer)
        channel.send(Kind.SETTINGS, 0, pickle.dumps(self._settings, pickle.HIGHEST_PROTOCOL))
        try:
            kind, _, _ = await channel.receive()
        except (asyncio.IncompleteReadError, ConnectionError):
            kind = None
        if kind is not Kind.LISTENING:
            await channel.close()
            await self._end_child()
            raise RuntimeError("the ingest process exited before it listened (see its log above)")
        self._channel = channel
        log.info("ingest process %d serves the audit webhook", self._child.pid)
        self._serving = asyncio.get_running_loop().create_task(self._serve(channel))

    async def _serve(self, channel: Channel) -> None:
        try:
            while True:
                kind, rid, body = await channel.receive()
                if kind is Kind.KEEP:
                    task = asyncio.get_running_loop().create_task(self._keep(channel, rid, unpack_records(body)))
                    self._keeping.add(task)
                    task.add_done_callback(self._keeping.discard)
                elif kind is Kind.COUNT:
                    self._count(orjson.loads(body))
                elif kind is Kind.HEALTH:
                    channel.send(Kind.HEALTH, rid)
                elif kind is Kind.READINESS:
                    status, answer = self._readiness()
                    channel.send(Kind.READINESS, rid, orjson.dumps({"status": status, "body": answer}))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the child is gone; a batch it was still sending was not answered, and is resent
        except Exception:
            # Closing the channel ends the child, which is then replaced; what it had in flight was not answered.
            log.exception("ingest process: its channel failed; ending it")
        finally:
            await channel.close()

    async def _keep(self, channel: Channel, rid: int, payloads: list[bytes]) -> None:
        with self._priority.serving():  # the pipeline's slices wait while a batch waits for its answer
            try:
                await self._sink.submit_encoded(payloads)
                answer = pack_answer(Outcome.KEPT)
            except Overloaded as exc:
                answer = pack_answer(Outcome.OVERLOADED, exc.retry_after_seconds)
            except TooLarge as exc:
                answer = pack_answer(Outcome.TOO_LARGE, message=str(exc))
            except Exception:
                log.exception("ingest process: could not keep a batch")
                answer = pack_answer(Outcome.UNAVAILABLE)
        channel.send(Kind.KEPT, rid, answer)

    def _count(self, calls: list[list[Any]]) -> None:
        for name, *args in calls:
            if name in _FORWARDED_COUNTS:
                getattr(self._counted, name)(*args)
            elif name == "internal_error":
                self._metrics.http_errors.inc()

    async def _supervise(self, running: bool = True) -> None:
        """Replace a child that exits, or could not start, pausing longer while they keep failing."""
        delay = _RESTART_FIRST_SECONDS
        while True:
            pause = delay
            if running:
                child, serving = self._child, self._serving
                assert child is not None and serving is not None
                started = time.monotonic()
                code = await child.wait()
                await serving
                log.error("ingest process %d exited (%s); starting another", child.pid, code)
                self._metrics.ingest_process_restarts.inc()
                if time.monotonic() - started > _STAYED_UP_SECONDS:
                    delay, pause = _RESTART_FIRST_SECONDS, 0.0
            if pause:
                await asyncio.sleep(pause)
                delay = min(delay * 2, _RESTART_MAX_SECONDS)
            try:
                async with asyncio.timeout(_START_SECONDS):
                    await self._start_child()
                running = True
            except Exception:
                log.exception("ingest process: could not start one; retrying")
                self._metrics.ingest_process_restarts.inc()  # a crash loop at start shows as one too
                await self._end_child()
                running = False

    async def _end_child(self) -> None:
        child = self._child
        if child is not None and child.returncode is None:
            child.kill()
            await child.wait()

    async def stop(self) -> None:
        """Stop listening, let the child answer what it has in flight (each batch kept first), and end it."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
            self._supervisor = None
        if self._listening is not None:
            self._listening.close()  # the child's copy stops listening below; no new connection is queued meanwhile
            self._listening = None
        if self._handoff is not None:
            self._handoff.close()  # new webhook connections stay with the serving process, which stops next
            self._handoff = None
        child, channel = self._child, self._channel
        if child is not None and child.returncode is None:
            if channel is not None:
                channel.send(Kind.STOP)
            try:
                async with asyncio.timeout(2 * self._in_flight_seconds + 5):
                    await child.wait()
            except TimeoutError:
                log.error("ingest process %d did not stop in time; killed", child.pid)
                await self._end_child()
        if self._serving is not None:
            await asyncio.gather(self._serving, return_exceptions=True)
        if self._keeping:
            await asyncio.gather(*self._keeping, return_exceptions=True)
