"""The ingest process on the main listener (``ingest.process`` without ``http.ingest_port``).

The serving process accepts every connection. It reads the first bytes of each: a connection that starts with
``POST /audit`` is passed to the ingest process (the socket itself, over a Unix socket, with the bytes already
read), any other stays with the serving process's own web server. The apiserver keeps its connection open from
batch to batch, so one hand-over serves all its batches, and the webhook's URL does not change.

Only plain HTTP can be handed over: a TLS connection's request cannot be read before its session is set up, and a
session cannot move to another process. A connection that cannot be handed over (no ingest process serves, or it
is not taking connections) is served by the serving process, and closed after each answer so that the apiserver's
next connection goes to the ingest process once one serves again.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import weakref
from collections.abc import Callable
from typing import Any, cast

from aiohttp import ClientError, ClientSession, ClientTimeout, web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from kelemetry_py.logs import REQUEST_ID_HEADER, request_id

log = logging.getLogger("kelemetry_py.sources.ingestproc")

AUDIT_REQUEST = b"POST /audit"
# The request line's first bytes decide: "POST /audit" then " ", "?" or "/" (/audit/{cluster}).
HEAD_BYTES = len(AUDIT_REQUEST) + 1

HandOver = Callable[[asyncio.Transport, bytes], bool]


def is_audit_request(head: bytes) -> bool | None:
    """Whether a connection's first bytes start an audit webhook request; None until they can tell."""
    if len(head) < HEAD_BYTES:
        return None if AUDIT_REQUEST.startswith(head) else False
    return head.startswith(AUDIT_REQUEST) and head[len(AUDIT_REQUEST)] in b" ?/"


def resume(transport: asyncio.BaseTransport, handler: asyncio.Protocol, head: bytes) -> None:
    """Give a connection to the web server's handler, with the bytes already read from it."""
    transport.set_protocol(handler)
    handler.connection_made(transport)
    if head:
        handler.data_received(head)


class Resumed(asyncio.Protocol):
    """A connection handed over with its first bytes already read: they reach the handler first."""

    def __init__(self, handler: asyncio.Protocol, head: bytes) -> None:
        self._handler = handler
        self._head = head

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        resume(transport, self._handler, self._head)


class _FirstBytes(asyncio.BufferedProtocol):
    """Reads a new connection's first bytes, no more, then routes it."""

    def __init__(self, site: HandOverSite) -> None:
        self._site = site
        self._buffer = bytearray(HEAD_BYTES)
        self._read = 0
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream's transport: uvloop's implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._site.undecided.add(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self._buffer)[self._read :]

    def buffer_updated(self, nbytes: int) -> None:
        self._read += nbytes
        head = bytes(self._buffer[: self._read])
        audit = is_audit_request(head)
        if audit is not None and self._transport is not None:
            self._site.undecided.discard(self)
            self._site.route(self._transport, head, audit)

    def eof_received(self) -> bool:
        return False  # closed before a request: nothing to answer

    def connection_lost(self, exc: Exception | None) -> None:
        self._site.undecided.discard(self)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class ServedHere:
    """Webhook connections the serving process serves because no ingest process took them. Each is closed after
    its answer, so that the apiserver's next connection is passed again."""

    def __init__(self) -> None:
        self._transports: weakref.WeakSet[asyncio.BaseTransport] = weakref.WeakSet()

    def add(self, transport: asyncio.BaseTransport) -> None:
        self._transports.add(transport)

    async def close_after_answer(self, request: web.Request, response: web.StreamResponse) -> None:
        """An ``on_response_prepare`` signal handler of the main listener's application."""
        if request.transport in self._transports:
            response.force_close()
            response.headers["Connection"] = "close"  # the headers are made before this signal


class HandOverSite(web.BaseSite):
    """The main listener, with its audit webhook connections handed to the ingest process."""

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, hand_over: HandOver, served_here: ServedHere
    ) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._hand_over = hand_over
        self._served_here = served_here
        self.undecided: set[_FirstBytes] = set()

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def port(self) -> int:
        assert self._server is not None and hasattr(self._server, "sockets")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _FirstBytes(self), self._host, self._port, backlog=self._backlog
        )

    async def stop(self) -> None:
        await super().stop()
        for connection in list(self.undecided):
            connection.abort()  # no request yet, so none cut off
        self.undecided.clear()

    def route(self, transport: asyncio.Transport, head: bytes, audit: bool) -> None:
        if audit and self._hand_over(transport, head):
            return
        server = self._runner.server
        assert server is not None
        handler = server()
        resume(transport, handler, head)
        if audit:
            self._served_here.add(transport)


def send_connection(handoff: socket.socket, transport: asyncio.Transport, head: bytes) -> bool:
    """Pass a connection's socket, and the bytes read from it, to the ingest process; False when it cannot take
    it now. The serving process's copy of the socket is closed: the connection stays open in the ingest process."""
    connection = transport.get_extra_info("socket")
    try:
        socket.send_fds(handoff, [head], [connection.fileno()])
    except OSError:  # BlockingIOError when it is not reading them, or it is gone
        return False
    transport.abort()
    return True


def receive_connections(handoff: socket.socket, server: Callable[[], asyncio.Protocol]) -> Callable[[], None]:
    """In the ingest process: serve each connection the serving process passes over ``handoff`` with a handler
    ``server`` makes (aiohttp's ``web.Server``). Returns what stops taking them. Stops by itself at the serving
    process's end (the channel's end ends this process)."""
    loop = asyncio.get_running_loop()
    handoff.setblocking(False)
    connecting: set[asyncio.Task[Any]] = set()

    def taken(task: asyncio.Task[Any]) -> None:
        connecting.discard(task)
        if not task.cancelled() and task.exception() is not None:  # the client went away meanwhile
            log.debug("ingest process: a connection passed over could not be served: %s", task.exception())

    def take(connection: socket.socket, head: bytes) -> None:
        task = loop.create_task(loop.connect_accepted_socket(lambda: Resumed(server(), head), connection))
        connecting.add(task)
        task.add_done_callback(taken)

    def ready() -> None:
        while True:
            try:
                head, fds, _, _ = socket.recv_fds(handoff, HEAD_BYTES, 1)
            except BlockingIOError:
                return
            except OSError:
                fds, head = [], b""
            if not fds:
                loop.remove_reader(handoff.fileno())
                return
            take(socket.socket(fileno=fds[0]), head)

    def stop() -> None:
        loop.remove_reader(handoff.fileno())

    loop.add_reader(handoff.fileno(), ready)
    return stop


# RFC 9110 §7.6.1: these describe one connection, not the message.
_HOP_BY_HOP = frozenset(
    ("connection", "proxy-connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade")
)


def _end_to_end(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    listed = {token.strip().lower() for value in headers.getall("Connection", []) for token in value.split(",")}
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in _HOP_BY_HOP and k.lower() not in listed)


class ToServingProcess:
    """In the ingest process: a request other than the webhook's, on a connection the main listener passed here,
    is forwarded to the serving process (on a connection of the child's own, which the main listener keeps) and
    its answer streamed back. A client that reuses its connection for a query after a batch sees no difference."""

    def __init__(self, main_listener: tuple[str, int]) -> None:
        host, port = main_listener
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host in ("::", "[::]"):
            host = "::1"
        self._base = str(URL.build(scheme="http", host=host.strip("[]"), port=port))
        self._session: ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if is_audit_request(f"{request.method} {request.raw_path}".encode()[:HEAD_BYTES]):
            # The main listener would pass it straight back here: no webhook route matched it.
            raise web.HTTPNotFound(text="no such webhook path\n")
        if self._session is None:
            self._session = ClientSession(auto_decompress=False, timeout=ClientTimeout(total=None))
        headers = _end_to_end(request.headers)
        headers[REQUEST_ID_HEADER] = request_id.get()
        try:
            answer = await self._session.request(
                request.method,
                URL(f"{self._base}{request.raw_path}", encoded=True),
                headers=headers,
                data=request.content if request.body_exists else None,
                allow_redirects=False,
                skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
            )
        except (ClientError, OSError):
            log.warning("ingest process: could not forward %s %s to the serving process", request.method, request.path)
            raise web.HTTPBadGateway(text="the serving process did not answer\n") from None
        async with answer:
            response = web.StreamResponse(status=answer.status, reason=answer.reason)
            response.headers.extend(_end_to_end(answer.headers))
            await response.prepare(request)
            try:
                async for chunk in answer.content.iter_any():
                    await response.write(chunk)
            except (ClientError, OSError):  # cut off: the caller sees the connection end before the whole answer
                response.force_close()
                return response
            await response.write_eof()
        return response
