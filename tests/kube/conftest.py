from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kelemetry_py.config import ClusterConfig
from kelemetry_py.kube.client import KubeClient
from tests.kube.helpers import write_kubeconfig
from tests.support.kube_double import KubeApiDouble

TOKEN = "watcher-token-123"


@pytest.fixture
async def double(fixtures_dir: Path) -> AsyncIterator[KubeApiDouble]:
    async with KubeApiDouble(fixtures_dir / "deployment-lifecycle", tokens=[TOKEN]) as server:
        yield server


@pytest.fixture
async def client(double: KubeApiDouble, tmp_path: Path) -> AsyncIterator[KubeClient]:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", double.url, token=TOKEN)
    kube = await KubeClient.connect(ClusterConfig(name="fixture", kubeconfig=str(kubeconfig)))
    yield kube
    await kube.close()
