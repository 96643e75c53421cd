"""Per-cluster Kubernetes API access through kubernetes-asyncio (kubeconfig file + context, or in-cluster).

Watchers need generic access (any group/version/resource, raw JSON, streamed watch lines), so requests go
through the ``ApiClient``'s ``call_api`` with its configured authentication (bearer token, exec plugin, client
certificate, CA) rather than through the typed per-resource APIs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.config import load_incluster_config, load_kube_config

from kelemetry_py.config import ClusterConfig, KubeConfig

QueryParams = Mapping[str, str] | Sequence[tuple[str, str]]


class KubeApiError(Exception):
    """The apiserver answered with an error status (its ``Status`` reason and message when it sent one)."""

    def __init__(self, status: int, reason: str, message: str, path: str = "") -> None:
        super().__init__(f"{path}: HTTP {status} {reason}: {message}" if path else f"HTTP {status} {reason}")
        self.status = status
        self.reason = reason
        self.message = message
        self.path = path


class KubeClient:
    """One cluster's API: JSON requests and streamed responses, authenticated as the kubeconfig says."""

    def __init__(self, cluster: str, api_client: ApiClient) -> None:
        self.cluster = cluster
        self.api_client = api_client

    @classmethod
    async def connect(cls, cluster: ClusterConfig) -> KubeClient:
        """Load credentials for ``cluster`` (in-cluster service account, or kubeconfig file and context)."""
        configuration = Configuration()
        if cluster.in_cluster:
            # Reads the service-account token and CA files: blocking file I/O, so off the event loop.
            await asyncio.to_thread(load_incluster_config, client_configuration=configuration)
        else:
            await load_kube_config(
                config_file=cluster.kubeconfig or None,
                context=cluster.context or None,
                client_configuration=configuration,
                persist_config=False,
            )
        return cls(cluster.name, ApiClient(configuration))

    @property
    def host(self) -> str:
        return str(self.api_client.configuration.host)

    async def close(self) -> None:
        await self.api_client.close()

    async def _send(
        self,
        method: str,
        path: str,
        query: QueryParams | None,
        body: Mapping[str, Any] | None,
        request_timeout: aiohttp.ClientTimeout | float | None,
        accept: str = "application/json",
    ) -> aiohttp.ClientResponse:
        params = list(query.items()) if isinstance(query, Mapping) else list(query or [])
        headers = {"Accept": accept, "Content-Type": "application/json"}
        response: aiohttp.ClientResponse = await self.api_client.call_api(
            path,
            method,
            query_params=params,
            header_params=headers,
            body=dict(body) if body is not None else None,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=request_timeout,
        )
        if response.status >= 300:
            try:
                payload = await response.read()
            finally:
                response.release()
            raise _error_of(response.status, payload, path)
        return response

    async def request_json(
        self,
        method: str,
        path: str,
        *,
        query: QueryParams | None = None,
        body: Mapping[str, Any] | None = None,
        request_timeout: float = 60.0,
        accept: str = "application/json",
    ) -> dict[str, Any]:
        """Send a request and return the decoded JSON object; errors raise :class:`KubeApiError`."""
        response = await self._send(method, path, query, body, request_timeout, accept)
        try:
            payload = await response.read()
        finally:
            response.release()
        try:
            decoded = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise KubeApiError(response.status, "BadResponse", f"response is not JSON: {exc}", path) from exc
        if not isinstance(decoded, dict):
            raise KubeApiError(response.status, "BadResponse", "response is not a JSON object", path)
        return decoded

    async def get_json(
        self, path: str, query: QueryParams | None = None, *, accept: str = "application/json"
    ) -> dict[str, Any]:
        return await self.request_json("GET", path, query=query, accept=accept)

    @asynccontextmanager
    async def stream(
        self, path: str, query: QueryParams, *, read_timeout: float, accept: str = "application/json"
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A streamed GET (a watch); the connection is closed on exit, also on cancellation."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=read_timeout)
        response = await self._send("GET", path, query, None, timeout, accept)
        try:
            yield response
        finally:
            response.close()


def _error_of(status: int, payload: bytes, path: str) -> KubeApiError:
    reason, message = "", payload[:500].decode(errors="replace")
    try:
        decoded = orjson.loads(payload)
    except orjson.JSONDecodeError:
        decoded = None
    if isinstance(decoded, dict) and decoded.get("kind") == "Status":
        reason = str(decoded.get("reason") or "")
        message = str(decoded.get("message") or "")
    return KubeApiError(status, reason or "Error", message, path)


async def connect_clusters(config: KubeConfig) -> dict[str, KubeClient]:
    """A client for every configured cluster; if one cannot be set up, the ones made so far are closed."""
    clients: dict[str, KubeClient] = {}
    try:
        for cluster in config.clusters:
            try:
                clients[cluster.name] = await KubeClient.connect(cluster)
            except Exception as exc:
                raise ValueError(f"kube.clusters[{cluster.name}]: cannot load credentials: {exc}") from exc
    except BaseException:
        for client in clients.values():
            await client.close()
        raise
    return clients
