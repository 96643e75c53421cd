from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.faults.params import CONCURRENCY, SETTLE_SECONDS
from tests.faults.scenarios import FaultEnv
from tests.faults.workload import Workload
from tests.support.otlp_receiver import GrpcOtlpReceiver


@pytest.fixture(scope="session")
def workload() -> Workload:
    return Workload.from_fixtures()


@pytest.fixture
async def fault_env(tmp_path: Path, workload: Workload) -> AsyncIterator[FaultEnv]:
    receiver = GrpcOtlpReceiver(keep_requests=False)
    await receiver.start()
    env = FaultEnv(
        workdir=tmp_path, workload=workload, receiver=receiver, concurrency=CONCURRENCY, settle_seconds=SETTLE_SECONDS
    )
    try:
        yield env
    finally:
        await env.close()
        await receiver.stop()
