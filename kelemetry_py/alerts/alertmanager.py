"""Delivery to Alertmanager's v2 API: a bounded queue keyed by label set (a newer state of the same alert
replaces a pending one), posted in batches with retries."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any

import aiohttp

from kelemetry_py.metrics import Metrics

log = logging.getLogger(__name__)
MAX_PENDING = 10_000


def fingerprint(alert: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(alert["labels"].items()))


class AlertmanagerClient:
    def __init__(self, url: str, metrics: Metrics, *, retries: int = 5, timeout_seconds: float = 10.0) -> None:
        self._url = url.rstrip("/") + "/api/v2/alerts"
        self._metrics = metrics
        self._retries = retries
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._pending: OrderedDict[tuple[tuple[str, str], ...], tuple[str, dict[str, Any]]] = OrderedDict()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="alertmanager-sender")

    def send(self, state: str, alert: dict[str, Any]) -> None:
        """Queue ``alert`` (``state`` is firing or resolved, for the metrics)."""
        key = fingerprint(alert)
        self._pending.pop(key, None)
        self._pending[key] = (state, alert)
        while len(self._pending) > MAX_PENDING:
            self._pending.popitem(last=False)
            self._metrics.alerts_dropped.inc()
        self._idle.clear()
        self._wake.set()

    async def flush(self) -> None:
        await self._idle.wait()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = list(self._pending.values())[:500]
                for _ in batch:
                    self._pending.popitem(last=False)
                await self._deliver(batch)
            self._idle.set()

    async def _deliver(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        assert self._session is not None
        delay = 0.5
        for attempt in range(self._retries + 1):
            try:
                async with self._session.post(self._url, json=[alert for _, alert in batch]) as response:
                    if response.status < 300:
                        for state, _ in batch:
                            self._metrics.alerts_sent.labels(state).inc()
                        return
                    if 400 <= response.status < 500 and response.status != 429:
                        log.error("alertmanager refused %d alerts: %s", len(batch), await response.text())
                        break
                    raise aiohttp.ClientResponseError(response.request_info, (), status=response.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                self._metrics.alert_send_errors.inc()
                if attempt == self._retries:
                    log.error("alertmanager unreachable after %d attempts: %s", attempt + 1, exc)
                    break
                log.warning("alertmanager: posting %d alerts failed (%s); retrying in %.1fs", len(batch), exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        self._metrics.alerts_dropped.inc(len(batch))

    async def close(self) -> None:
        if self._task is not None:
            if self._pending:
                try:
                    await asyncio.wait_for(self.flush(), 5.0)
                except TimeoutError:
                    log.warning("alertmanager: %d alert states not delivered at shutdown", len(self._pending))
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None
