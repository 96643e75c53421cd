"""FanoutWriter over real writers: the OTLP writer into a live receiver and the SQLite store."""

from __future__ import annotations

from pathlib import Path

import pytest

from kelemetry_py.config import OtlpConfig
from kelemetry_py.export import SpanWriter
from kelemetry_py.export.fanout import FanoutWriter
from kelemetry_py.export.otlp import OtlpSpanWriter
from kelemetry_py.metrics import Metrics
from kelemetry_py.model import ObjectRef, Span, object_span_id, object_trace_id
from kelemetry_py.storage.sqlite import SqliteStore
from tests.support.otlp_receiver import GrpcOtlpReceiver

REF = ObjectRef("prod", "", "v1", "configmaps", "default", "settings")


def _spans(count: int) -> list[Span]:
    trace_id = object_trace_id(REF.key, 1)
    return [
        Span(
            trace_id=trace_id,
            span_id=object_span_id(REF.key, 1) + i,
            parent_id=None if i == 0 else object_span_id(REF.key, 1),
            service="object" if i == 0 else "audit",
            name=f"span {i}",
            start_ns=1_000 + i,
            end_ns=2_000 + i,
            attributes=dict(REF.tags()),
        )
        for i in range(count)
    ]


async def test_every_writer_gets_every_span(tmp_path: Path, otlp_grpc_receiver: GrpcOtlpReceiver) -> None:
    otlp = OtlpSpanWriter(
        OtlpConfig(endpoint=otlp_grpc_receiver.endpoint, flush_interval_seconds=30), Metrics()
    )
    store = await SqliteStore(str(tmp_path / "t.db")).open()
    fanout = FanoutWriter([otlp, store])
    assert isinstance(fanout, SpanWriter)
    sent = _spans(4)
    await fanout.write(sent)
    await fanout.flush()
    assert sorted(s.span_id for s in otlp_grpc_receiver.spans) == sorted(s.span_id for s in sent)
    assert sorted(await store.get_trace(sent[0].trace_id), key=lambda s: s.span_id) == sent
    await fanout.close()
    with pytest.raises(RuntimeError, match="closed"):
        await store.write(sent)
    with pytest.raises(RuntimeError, match="closed"):
        await otlp.write(sent)


async def test_one_failing_writer_does_not_starve_the_others(tmp_path: Path) -> None:
    store = await SqliteStore(str(tmp_path / "t.db")).open()
    unopened = SqliteStore(str(tmp_path / "never-opened.db"))
    fanout = FanoutWriter([unopened, store])
    sent = _spans(2)
    with pytest.raises(RuntimeError, match="not open"):
        await fanout.write(sent)
    assert len(await store.get_trace(sent[0].trace_id)) == 2
    also_unopened = SqliteStore(str(tmp_path / "other.db"))
    with pytest.raises(BaseExceptionGroup) as group:
        await FanoutWriter([unopened, also_unopened, store]).write(sent)
    assert len(group.value.exceptions) == 2
    await store.close()


def test_needs_a_writer() -> None:
    with pytest.raises(ValueError, match="at least one"):
        FanoutWriter([])
