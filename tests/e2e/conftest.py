from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from kelemetry_py.app import App
from kelemetry_py.config import load_config
from kelemetry_py.sources.replay import read_batches, replay
from tests.support.otlp_receiver import GrpcOtlpReceiver

AppFactory = Callable[..., Awaitable[App]]


@pytest.fixture
async def otlp_receiver() -> AsyncIterator[GrpcOtlpReceiver]:
    receiver = GrpcOtlpReceiver()
    await receiver.start()
    yield receiver
    await receiver.stop()


@pytest.fixture
async def make_app(tmp_path: Path) -> AsyncIterator[AppFactory]:
    """Start Apps on loopback with a fresh store each; all are stopped at the end of the test."""
    apps: list[App] = []

    async def factory(**overrides: Any) -> App:
        settings: dict[str, Any] = {
            "http.host": "127.0.0.1",
            "http.port": 0,
            "store.path": str(tmp_path / f"app{len(apps)}" / "traces.db"),
            "log_level": "warning",
        }
        settings.update(overrides)
        app = App(load_config(env={}, overrides=settings))
        await app.start()
        apps.append(app)
        return app

    yield factory
    for app in apps:
        await app.stop()


async def replay_scenario(app: App, fixtures_dir: Path, scenario: str, *, use_gzip: bool = False) -> None:
    batches = read_batches([fixtures_dir / scenario / "audit.jsonl"])
    result = await replay(batches, target=app.base_url, cluster="fixture", use_gzip=use_gzip)
    assert result.failed == 0 and result.batches > 0
    assert app.components is not None
    await app.settle()
