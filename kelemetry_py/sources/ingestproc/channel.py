"""The channel between the ingest process and the serving process: a Unix socket pair, framed.

Each frame is a kind, a request id and a length, then that many bytes. Only the two processes hold the pair, so
what crosses it is trusted (the settings go over it pickled).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from kelemetry_py.config import Config

# What a side reads ahead before it stops reading: a batch's records (about 150 KB for 400 events) in one go.
CHANNEL_BUFFER = 4 << 20
_HEAD = struct.Struct("<BII")  # kind, request id, body length
_LENGTH = struct.Struct("<I")
_ANSWER = struct.Struct("<Bf")  # outcome, retry after (seconds)


class Kind(enum.IntEnum):
    SETTINGS = 1  # serving → ingest, first: what to serve, pickled
    LISTENING = 2  # ingest → serving: the listener is being served
    KEEP = 3  # ingest → serving: a batch's encoded records, to append before it is answered
    KEPT = 4  # serving → ingest: the outcome of a KEEP
    COUNT = 5  # ingest → serving: metric updates (JSON)
    READINESS = 6  # both ways: the question, then the serving process's answer (JSON)
    STOP = 7  # serving → ingest: stop listening, answer what is in flight, exit
    HEALTH = 8  # both ways: whether the serving process's loop answers (for /healthz)


class Outcome(enum.IntEnum):
    KEPT = 0
    OVERLOADED = 1  # the log is full: 429
    TOO_LARGE = 2  # the batch can never fit: 413
    UNAVAILABLE = 3  # the append failed: 503


class Channel:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def receive(self) -> tuple[Kind, int, bytes]:
        """Raises :class:`asyncio.IncompleteReadError` once the other process is gone."""
        kind, rid, length = _HEAD.unpack(await self._reader.readexactly(_HEAD.size))
        body = await self._reader.readexactly(length) if length else b""
        return Kind(kind), rid, body

    def send(self, kind: Kind, rid: int = 0, body: bytes = b"") -> None:
        """Ignored once the other process is gone (it can no longer be answered)."""
        if self._writer.is_closing():
            return
        self._writer.writelines([_HEAD.pack(kind, rid, len(body)), body])

    async def drain(self) -> None:
        await self._writer.drain()

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()


def pack_records(payloads: Sequence[bytes]) -> bytes:
    parts: list[bytes] = []
    for payload in payloads:
        parts += (_LENGTH.pack(len(payload)), payload)
    return b"".join(parts)


def unpack_records(body: bytes) -> list[bytes]:
    view = memoryview(body)
    payloads, at = [], 0
    while at < len(view):
        (length,) = _LENGTH.unpack_from(view, at)
        at += _LENGTH.size
        payloads.append(bytes(view[at : at + length]))
        at += length
    return payloads


def pack_answer(outcome: Outcome, retry_after_seconds: float = 0.0, message: str = "") -> bytes:
    return _ANSWER.pack(outcome, retry_after_seconds) + message.encode()


def unpack_answer(body: bytes) -> tuple[Outcome, float, str]:
    outcome, retry_after = _ANSWER.unpack_from(body)
    return Outcome(outcome), retry_after, body[_ANSWER.size :].decode()


@dataclass(frozen=True)
class Settings:
    config: Config
    records: bool  # whether search records are kept (records_wanted)
    whole_bodies: bool  # whether the pipeline reads whole request bodies (Pipeline.reads_whole_bodies)
    in_flight_seconds: float  # at shutdown, how long a request in flight may take to finish
    # Where the serving process's main listener is reached, when that passes connections here one by one (None on
    # a listener of the ingest process's own): requests other than the webhook's are forwarded there.
    main_listener: tuple[str, int] | None
