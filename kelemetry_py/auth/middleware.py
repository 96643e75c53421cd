"""The HTTP side of authentication: who is asking (a Scope per request) and errors that tell nothing inside.

Every read surface (``/api/...``, ``/redirect``, ``/metrics``, and any other data route under those prefixes)
needs a bearer token when ``auth.mode`` is not ``none``; ``/healthz``, ``/readyz``, the audit webhook (its own
trust domain, see ``ingest.*``) and the UI's static files do not.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import web
from aiohttp.typedefs import Middleware

from kelemetry_py.auth import EVERYTHING, SCOPE_KEY, Scope
from kelemetry_py.config import AuthConfig, KubeConfig
from kelemetry_py.logs import error_response, request_id_of
from kelemetry_py.metrics import Metrics

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_PROTECTED = ("/api", "/jaeger/api", "/kapis", "/apis", "/redirect", "/metrics")
_SLASHES = re.compile("/+")


class Authenticator(Protocol):
    async def authenticate(self, token: str) -> Scope | None:
        """The caller's scope for a bearer token, or None when the token is not valid."""

    async def close(self) -> None: ...


async def create_authenticator(auth: AuthConfig, kube: KubeConfig) -> Authenticator | None:
    """The authenticator ``auth.mode`` asks for; None for ``none`` (everyone sees everything)."""
    if auth.mode == "token":
        from kelemetry_py.auth.token import TokenAuthenticator

        return TokenAuthenticator(auth.tokens)
    if auth.mode == "kubernetes":
        from kelemetry_py.auth.kubernetes import KubernetesAuthenticator

        return await KubernetesAuthenticator.connect(auth.kubernetes, kube)
    return None


def bearer_token(header: str) -> str:
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def is_protected(path: str) -> bool:
    return _SLASHES.sub("/", path).startswith(_PROTECTED)


def _deny(status: int, message: str) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="kelemetry"'} if status == 401 else None
    return web.json_response({"error": {"code": status, "message": message}}, status=status, headers=headers)


def auth_middleware(
    authenticator: Authenticator | None, *, metrics: Metrics, metrics_public: bool
) -> Middleware:
    """Puts the caller's :class:`Scope` on every request to a read surface, or answers 401/403/503."""
    from kelemetry_py.auth.kubernetes import AuthUnavailable

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if authenticator is None or not is_protected(path) or (metrics_public and path == "/metrics"):
            request[SCOPE_KEY] = EVERYTHING
            return await handler(request)
        token = bearer_token(request.headers.get("Authorization", ""))
        if not token or len(token) > 16384:
            metrics.auth_requests_denied.labels("no_token").inc()
            return _deny(401, "a bearer token is required (Authorization: Bearer ...)")
        try:
            scope = await authenticator.authenticate(token)
        except AuthUnavailable:
            metrics.auth_requests_denied.labels("unavailable").inc()
            return _deny(503, f"authentication is unavailable; request id {request_id_of(request)}")
        if scope is None:
            metrics.auth_requests_denied.labels("invalid_token").inc()
            return _deny(401, "the bearer token is not valid")
        if path == "/metrics" and not await _may_read_metrics(scope):
            metrics.auth_requests_denied.labels("forbidden").inc()
            return _deny(403, "/metrics needs a token that sees everything (or metrics.public: true)")
        request[SCOPE_KEY] = scope
        return await handler(request)

    return authenticate


async def _may_read_metrics(scope: Scope) -> bool:
    if scope.sees_everything:
        return True
    from kelemetry_py.auth.kubernetes import KubernetesScope

    return isinstance(scope, KubernetesScope) and await scope.may_get_path("/metrics")


def internal_error(request: web.Request, metrics: Metrics | None, exc: BaseException) -> web.Response:
    if metrics is not None:
        metrics.http_errors.inc()
    return error_response(request, exc)
