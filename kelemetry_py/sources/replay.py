"""Replays recorded audit batches to a webhook the way kube-apiserver's webhook backend sends them."""

from __future__ import annotations

import asyncio
import gzip
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

log = logging.getLogger(__name__)


@dataclass
class ReplayResult:
    batches: int = 0
    events: int = 0
    throttled: int = 0  # 429 answers, each retried
    failed: int = 0  # batches given up on


async def read_batches(paths: list[Path]) -> AsyncIterator[bytes]:
    """One webhook body per line of each ``audit.jsonl``, byte for byte."""
    for path in paths:
        with path.open("rb") as handle:
            for line in handle:
                if line.strip():
                    yield line


def webhook_url(target: str, cluster: str) -> str:
    target = target.rstrip("/")
    if target.endswith("/audit") or "/audit/" in target:
        return target
    return f"{target}/audit/{cluster}"


async def replay(
    bodies: AsyncIterator[bytes],
    *,
    target: str,
    cluster: str,
    use_gzip: bool = False,
    token: str = "",
    max_attempts: int = 20,
    concurrency: int = 1,
) -> ReplayResult:
    """Post each webhook body as it comes (the caller sets the pace, e.g. ``read_batches(paths)`` as fast as the
    webhook takes them), retrying on 429 and connection errors."""
    url = webhook_url(target, cluster)
    result = ReplayResult()
    headers = {"Content-Type": "application/json", "User-Agent": "kelemetry-py-replay"}
    if use_gzip:
        headers["Content-Encoding"] = "gzip"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=concurrency * 2)

    async def worker(session: aiohttp.ClientSession) -> None:
        while (body := await queue.get()) is not None:
            payload = gzip.compress(body, compresslevel=1) if use_gzip else body
            if await _post(session, url, payload, headers, max_attempts, result):
                result.batches += 1
                result.events += body.count(b'"auditID"')
            else:
                result.failed += 1

    async with aiohttp.ClientSession() as session:
        workers = [asyncio.create_task(worker(session)) for _ in range(concurrency)]
        async for body in bodies:
            await queue.put(body)
        for _ in workers:
            await queue.put(None)
        await asyncio.gather(*workers)
    return result


async def _post(
    session: aiohttp.ClientSession,
    url: str,
    payload: bytes,
    headers: dict[str, str],
    max_attempts: int,
    result: ReplayResult,
) -> bool:
    delay = 0.1
    for _ in range(max_attempts):
        try:
            async with session.post(url, data=payload, headers=headers) as response:
                if response.status == 200:
                    return True
                text = await response.text()
                if response.status == 429:
                    result.throttled += 1
                    await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
                    continue
                if response.status < 500:
                    log.error("replay: webhook refused a batch with %d: %s", response.status, text[:300])
                    return False
                log.warning("replay: webhook answered %d, retrying", response.status)
        except aiohttp.ClientError as exc:
            log.warning("replay: %s, retrying", exc)
        await asyncio.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 5.0)
    return False
