"""Process logging: plain text or one JSON object per line (``log.format``), with a request id on the lines
logged while a webhook or API request is handled."""

from __future__ import annotations

import contextvars
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import orjson
from aiohttp import web

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REQUEST_ID_HEADER = "X-Request-Id"

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("kelemetry_request_id", default="")
_access = logging.getLogger("kelemetry_py.access")


class JsonFormatter(logging.Formatter):
    """``{"time","level","logger","message"[,"request_id"][,"exception"]}`` per line."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        current = request_id.get()
        if current:
            document["request_id"] = current
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(document).decode()


class _RequestIdText(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        current = request_id.get()
        return f"{text} request_id={current}" if current else text


def configure_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else _RequestIdText(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _usable(value: str) -> bool:
    # A caller's id is echoed into logs: accept only short, printable, unambiguous ones.
    return 0 < len(value) <= 64 and all(c.isalnum() or c in "-_.:" for c in value)


@web.middleware
async def request_ids(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every request gets an id (the caller's ``X-Request-Id`` when usable), logged with each line it causes
    and returned in the response header."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    token = request_id.set(given if _usable(given) else secrets.token_hex(8))
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        if not response.prepared:  # a streamed answer has sent its headers already
            response.headers[REQUEST_ID_HEADER] = request_id.get()
        return response
    except web.HTTPException as exc:
        status = exc.status
        exc.headers[REQUEST_ID_HEADER] = request_id.get()
        raise
    finally:
        _access.debug(
            "%s %s %d %.1f ms", request.method, request.path, status, (time.perf_counter() - started) * 1000
        )
        request_id.reset(token)
