"""The App answers audit batches ahead of its background work, and gives memory back after a burst."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

import kelemetry_py.app as app_module
import kelemetry_py.process as process_module
from tests.e2e.conftest import AppFactory, replay_scenario

BATCH_HEAD = b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":['
BATCH_TAIL = b"]}"


async def _until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_a_batch_being_received_counts_as_a_request_being_served(make_app: AppFactory) -> None:
    # In this process: an ingest process reads bodies on a CPU of its own, and is counted only while its batch is
    # being kept (test_ingest_process).
    app = await make_app(**{"ingest.process": False})
    assert app.components is not None
    priority = app.components.priority
    rest = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield BATCH_HEAD
        await rest.wait()  # the apiserver is still sending: the webhook's handler is reading the body
        yield BATCH_TAIL

    async with aiohttp.ClientSession() as session:
        posting = asyncio.create_task(
            session.post(f"{app.ingest_url}/audit", data=body(), headers={"Content-Type": "application/json"})
        )
        await _until(lambda: priority.serving_requests == 1)
        rest.set()
        async with await posting as response:
            assert response.status == 200
    assert priority.serving_requests == 0


async def test_memory_is_given_back_once_the_pipeline_has_caught_up(
    make_app: AppFactory, fixtures_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(app_module, "_RELEASE_AFTER_OBSERVATIONS", 1)
    monkeypatch.setattr(process_module, "_RELEASE_CHECK_SECONDS", 0.01)
    caplog.set_level(logging.DEBUG, logger="kelemetry_py.process")
    app = await make_app()
    await replay_scenario(app, fixtures_dir, "deployment-lifecycle")
    await _until(lambda: any("gave freed memory back" in record.getMessage() for record in caplog.records))

