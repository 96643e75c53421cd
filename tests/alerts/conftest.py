"""A real Alertmanager (Debian's prometheus-alertmanager) on a loopback port with its own storage."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.conftest import make_app  # noqa: F401  (the App factory fixture, shared with e2e)

ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
CONFIG = """
route:
  receiver: "null"
  group_wait: 1h
receivers:
  - name: "null"
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Alertmanager:
    def __init__(self, url: str) -> None:
        self.url = url

    async def alerts(self) -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as session, session.get(f"{self.url}/api/v2/alerts") as response:
            assert response.status == 200
            return list(await response.json())

    async def wait_for(self, predicate: Any, within: float = 20.0) -> list[dict[str, Any]]:
        """Poll the alert list (Alertmanager has no change feed) until ``predicate`` holds."""
        async with asyncio.timeout(within):
            while True:
                alerts = await self.alerts()
                if predicate(alerts):
                    return alerts
                await asyncio.sleep(0.1)


def _write_config(directory: Path) -> None:
    directory.mkdir(exist_ok=True)
    (directory / "alertmanager.yml").write_text(CONFIG)


@contextlib.asynccontextmanager
async def running_alertmanager(directory: Path, port: int) -> AsyncIterator[Alertmanager]:
    """Alertmanager on 127.0.0.1:``port`` with its own storage under ``directory``, until the block ends."""
    assert ALERTMANAGER, "prometheus-alertmanager is not installed (.ci/run installs it)"
    await asyncio.to_thread(_write_config, directory)
    process = await asyncio.create_subprocess_exec(
        ALERTMANAGER,
        f"--config.file={directory / 'alertmanager.yml'}",
        f"--storage.path={directory / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    manager = Alertmanager(f"http://127.0.0.1:{port}")
    try:
        async with asyncio.timeout(30):
            while True:
                assert process.returncode is None, "alertmanager exited at start"
                try:
                    async with aiohttp.ClientSession() as session, session.get(f"{manager.url}/-/ready") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)  # no readiness event to wait on: poll /-/ready with a deadline
        yield manager
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)


@pytest.fixture
async def alertmanager(tmp_path: Path) -> AsyncIterator[Alertmanager]:
    async with running_alertmanager(tmp_path / "alertmanager", free_port()) as manager:
        yield manager
