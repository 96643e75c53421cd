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
from aiohttp.typedefs import Middleware

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REQUEST_ID_HEADER = "X-Request-Id"

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("kelemetry_request_id", default="")
_REQUEST_ID = web.RequestKey("kelemetry_request_id", str)
_access = logging.getLogger("kelemetry_py.access")
_log = logging.getLogger(__name__)


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
        _access.debug("%s %s %d %.1f ms", request.method, request.path, status, (time.perf_counter() - started) * 1000)
        request_id.reset(token)


def request_id_of(request: web.Request) -> str:
    """A short random id for this request, logged with any failure and returned to the caller."""
    rid = request.get(_REQUEST_ID) or request_id.get() or None  # the one the logs carry, when set
    if rid is None:
        rid = secrets.token_hex(8)
        request[_REQUEST_ID] = rid
    return rid


def error_response(request: web.Request, exc: BaseException) -> web.Response:
    """A 500 naming the request id, never the exception; the log line carries the id and the traceback."""
    rid = request_id_of(request)
    _log.error("request %s %s failed (request id %s)", request.method, request.path[:200], rid, exc_info=exc)
    return web.json_response(
        {"error": {"code": 500, "message": f"internal error; request id {rid}"}},
        status=500,
        headers={REQUEST_ID_HEADER: rid},
    )


def error_middleware(count_error: Callable[[], None]) -> Middleware:
    """Any failure a handler did not answer becomes an :func:`error_response`, counted with ``count_error``."""

    @web.middleware
    async def guard(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 500:
                raise
            failure: BaseException = exc
        except Exception as exc:
            failure = exc
        count_error()
        return error_response(request, failure)

    return guard
