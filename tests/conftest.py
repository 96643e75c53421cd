from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import uvloop

from tests.support.redis_server import running_redis

# Real recordings from a Kubernetes 1.24 control plane, kept byte-exact (tests/fixtures/README.md).
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SCENARIOS = ("deployment-lifecycle", "errors-and-links", "batch-and-stateful")
FAKE_SECRET_VALUES = (b"s3cr3t-Passw0rd", b"n3w-s3cr3t", b"czNjcjN0LVBhc3N3MHJk", b"bjN3LXMzY3IzdA==")


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Tests run on the event loop the tracer's processes run on (kelemetry_py.process.run_event_loop)."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    assert FIXTURES.is_dir(), f"recorded fixtures expected at {FIXTURES}"
    return FIXTURES


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    with running_redis() as url:
        yield url


@pytest.fixture
async def redis_url(redis_server_url: str) -> AsyncIterator[str]:
    """A real Redis, emptied before each test."""
    client = aioredis.from_url(redis_server_url)
    await client.flushall()
    await client.aclose()
    yield redis_server_url
