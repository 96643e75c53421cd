from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from kelemetry_py.config import FrontendConfig
from kelemetry_py.frontend.http import add_frontend_routes
from kelemetry_py.frontend.tracecache.memory import MemoryTraceCache
from kelemetry_py.storage import TraceReader
from tests.frontend.rawdata import MemoryReader, deployment_story


async def open_reader(tmp_path: Path) -> Any:
    """The embedded store when it is available, else an in-memory reader with the same matching rule."""
    spans = deployment_story().spans
    try:
        from kelemetry_py.storage.sqlite import SqliteStore
    except ImportError:
        return MemoryReader(spans)
    store = await SqliteStore(str(tmp_path / "traces.db")).open()
    await store.write(spans)
    await store.flush()
    return store


@pytest.fixture
async def reader(tmp_path: Path) -> AsyncIterator[TraceReader]:
    store = await open_reader(tmp_path)
    yield store
    await store.close()


async def serve(reader: TraceReader, config: FrontendConfig, cache: Any = None) -> TestClient[Any, Any]:
    app = web.Application()
    add_frontend_routes(app, reader, cache or MemoryTraceCache(ttl_seconds=600), config)
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
async def client(reader: TraceReader) -> AsyncIterator[TestClient[Any, Any]]:
    test_client = await serve(reader, FrontendConfig())
    yield test_client
    await test_client.close()
