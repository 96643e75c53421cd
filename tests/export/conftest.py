from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.otlp_receiver import GrpcOtlpReceiver, HttpOtlpReceiver


@pytest.fixture
async def otlp_grpc_receiver() -> AsyncIterator[GrpcOtlpReceiver]:
    receiver = GrpcOtlpReceiver()
    await receiver.start()
    yield receiver
    await receiver.stop()


@pytest.fixture
async def otlp_http_receiver() -> AsyncIterator[HttpOtlpReceiver]:
    receiver = HttpOtlpReceiver()
    await receiver.start()
    yield receiver
    await receiver.stop()
