"""Fixtures of the fault tests. Load sizes are parameters: FAULTS_EVENTS (audit events per run),
FAULTS_OUTAGE_SECONDS (the OTLP outage), FAULTS_CONCURRENCY (batches in flight)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.faults.scenarios import FaultEnv
from tests.faults.workload import Workload
from tests.support.otlp_receiver import GrpcOtlpReceiver

EVENTS = int(os.environ.get("FAULTS_EVENTS", "12000"))
OUTAGE_SECONDS = float(os.environ.get("FAULTS_OUTAGE_SECONDS", "15"))
CONCURRENCY = int(os.environ.get("FAULTS_CONCURRENCY", "4"))


@pytest.fixture(scope="session")
def workload() -> Workload:
    return Workload.from_fixtures()


@pytest.fixture
async def fault_env(tmp_path: Path, workload: Workload) -> AsyncIterator[FaultEnv]:
    receiver = GrpcOtlpReceiver()
    await receiver.start()
    try:
        yield FaultEnv(workdir=tmp_path, workload=workload, receiver=receiver, concurrency=CONCURRENCY)
    finally:
        await receiver.stop()
