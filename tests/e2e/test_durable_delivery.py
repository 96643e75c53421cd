"""At-least-once delivery inside one App: writers at their own pace, poison isolated, bounds that answer 4xx."""

from __future__ import annotations

import asyncio
import gzip
import time
from pathlib import Path

import aiohttp
import orjson

from kelemetry_py.app import App
from kelemetry_py.model import SERVICE_OBJECT, ObjectRef, Span, object_span_id, object_trace_id, window_of
from kelemetry_py.pipeline.durable import SpanLogWriter
from kelemetry_py.spool.local import LocalLog
from tests.e2e.conftest import AppFactory, replay_scenario
from tests.support.otlp_receiver import GrpcOtlpReceiver


def _event(audit_id: str, name: str, stamp: str, code: int = 201) -> dict[str, object]:
    return {
        "auditID": audit_id,
        "stage": "ResponseComplete",
        "verb": "create",
        "user": {"username": "admin"},
        "objectRef": {"resource": "configmaps", "namespace": "default", "name": name, "apiVersion": "v1"},
        "responseStatus": {"code": code},
        "requestReceivedTimestamp": stamp,
        "stageTimestamp": stamp,
    }


def _batch(events: list[dict[str, object]]) -> bytes:
    return orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": events})


async def _post(app: App, body: bytes) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as session, session.post(
        f"{app.base_url}/audit/c1", data=body, headers={"Content-Type": "application/json"}
    ) as response:
        return response.status, await response.json()


def _stored_audit_ids(spans: list[Span]) -> set[str]:
    return {str(span.attributes["auditID"]) for span in spans if "auditID" in span.attributes}


async def _store_spans(app: App) -> list[Span]:
    assert app.components is not None
    store = app.components.writers["sqlite"]
    from kelemetry_py.storage import TraceQuery

    hits = await store.find_traces(TraceQuery(start_ns=0, end_ns=2**62, limit=10_000))  # type: ignore[attr-defined]
    spans: list[Span] = []
    for hit in hits:
        spans.extend(await store.get_trace(hit.trace_id))  # type: ignore[attr-defined]
    return spans


async def _backlog(app: App) -> dict[str, int]:
    async with aiohttp.ClientSession() as session, session.get(f"{app.base_url}/readyz") as response:
        body = await response.json()
    return dict(body["backlog"])


async def test_an_otlp_outage_holds_up_only_the_otlp_writer(
    make_app: AppFactory, otlp_receiver: GrpcOtlpReceiver, fixtures_dir: Path
) -> None:
    otlp_receiver.fail_forever()
    app = await make_app(**{"otlp.endpoint": otlp_receiver.endpoint, "otlp.timeout_seconds": 0.5})
    result_task = asyncio.create_task(
        replay_scenario_without_settling(app, fixtures_dir / "deployment-lifecycle" / "audit.jsonl")
    )
    await result_task
    assert app.components is not None
    delivery = app.components.delivery
    # The store catches up while every OTLP attempt fails.
    deadline = time.monotonic() + 30
    while (await _backlog(app)).get("sqlite") or (await _backlog(app)).get("pipeline"):
        assert time.monotonic() < deadline, await _backlog(app)
        await asyncio.sleep(0.05)
    stored = await _store_spans(app)
    assert stored
    backlog = await _backlog(app)
    assert backlog["otlp"] > 0
    async with aiohttp.ClientSession() as session, session.get(f"{app.base_url}/readyz") as response:
        assert response.status == 200  # still accepting: the backlog waits on disk
        assert (await response.json())["failing_writers"] == ["otlp"]
    async with aiohttp.ClientSession() as session, session.get(f"{app.base_url}/metrics") as response:
        text = await response.text()
    assert 'kelemetry_spool_backlog_records{consumer="otlp"}' in text
    assert any(pump.failing for pump in delivery.pumps)
    # The backend returns: everything the store holds reaches it, nothing was dropped.
    await otlp_receiver.recover()
    await app.settle()
    received = {span.span_id for span in otlp_receiver.spans}
    assert {span.span_id for span in stored} <= received
    assert not any(pump.failing for pump in delivery.pumps)


async def replay_scenario_without_settling(app: App, path: Path) -> None:
    from kelemetry_py.sources.replay import read_batches, replay

    result = await replay(read_batches([path]), target=app.base_url, cluster="fixture")
    assert result.failed == 0


async def test_poison_events_are_dropped_alone_and_clean_batches_alongside_are_kept(make_app: AppFactory) -> None:
    app = await make_app()
    good = "2026-01-01T00:00:00.000000Z"
    poison = [
        _event("p-year-1", "year-1", "0001-01-01T00:00:00Z"),
        _event("p-year-2300", "year-2300", "2300-01-01T00:00:00Z"),
        _event("p-year-9999", "year-9999", "9999-12-31T23:59:59Z"),
        _event("p-code", "code", good, code=2**63),
    ]
    mixed = _batch([_event("g-0", "good-0", good), *poison, _event("g-1", "good-1", good)])
    clean = [_batch([_event(f"c{b}-{i}", f"clean-{b}-{i}", good) for i in range(50)]) for b in range(2)]
    results = await asyncio.gather(_post(app, mixed), *(_post(app, body) for body in clean))
    status, answer = results[0]
    assert status == 200, answer
    rejected = answer["rejected"]
    assert isinstance(rejected, list)
    assert sorted(item["index"] for item in rejected) == [1, 2, 3, 4]
    assert {item["reason"] for item in rejected} == {"time_out_of_range", "bad_status_code"}
    assert all(result[0] == 200 for result in results[1:])
    await app.settle()
    ids = _stored_audit_ids(await _store_spans(app))
    assert {"g-0", "g-1"} <= ids
    assert {f"c{b}-{i}" for b in range(2) for i in range(50)} <= ids
    assert not ids & {"p-year-1", "p-year-2300", "p-year-9999", "p-code"}


async def test_structural_garbage_is_a_400_that_names_the_place(make_app: AppFactory) -> None:
    app = await make_app()
    wrong_type = _batch([{**_event("w", "w", "2026-01-01T00:00:00Z"), "verb": 7}])
    status, answer = await _post(app, wrong_type)
    assert status == 400 and "items[0].verb" in str(answer["error"])
    deep = b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{"requestObject":' + b"[" * 100_000
    deep += b"]" * 100_000 + b"}]}"
    status, answer = await _post(app, deep)
    assert status == 400 and "items[0].requestObject: JSON is nested too deeply" in str(answer["error"])
    async with aiohttp.ClientSession() as session, session.get(f"{app.base_url}/healthz") as response:
        assert response.status == 200


async def test_a_batch_larger_than_the_spool_is_413_not_an_endless_429(make_app: AppFactory) -> None:
    app = await make_app(**{"spool.max_bytes": 64 * 1024})
    stamp = "2026-01-01T00:00:00Z"
    big = _batch([{**_event(f"b-{i}", f"big-{i}", stamp), "userAgent": "x" * 200} for i in range(2000)])
    async with aiohttp.ClientSession() as session, session.post(
        f"{app.base_url}/audit/c1",
        data=gzip.compress(big),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    ) as response:
        assert response.status == 413
        assert "never fit" in (await response.json())["error"]
    status, _ = await _post(app, _batch([_event("small", "small", stamp)]))
    assert status == 200


async def test_a_restarted_app_delivers_what_an_earlier_run_accepted(
    make_app: AppFactory, otlp_receiver: GrpcOtlpReceiver, fixtures_dir: Path, tmp_path: Path
) -> None:
    """Stopped with no grace while OTLP is down: the next start on the same directory delivers the rest."""
    otlp_receiver.fail_forever()
    settings = {
        "otlp.endpoint": otlp_receiver.endpoint,
        "otlp.timeout_seconds": 0.5,
        "store.path": str(tmp_path / "shared" / "traces.db"),
        "store.retention_hours": 0,  # the recordings are older than the default retention
    }
    first = await make_app(**settings)
    await replay_scenario_without_settling(first, fixtures_dir / "errors-and-links" / "audit.jsonl")
    assert not await first.stop(grace_seconds=0.5)  # not drained: OTLP is down
    await otlp_receiver.recover()
    second = await make_app(**settings)
    await second.settle()
    stored = {span.span_id for span in await _store_spans(second)}
    assert stored and stored <= {span.span_id for span in otlp_receiver.spans}
    await replay_scenario(second, fixtures_dir, "errors-and-links")  # a replay overwrites, never duplicates
    assert {span.span_id for span in await _store_spans(second)} == stored


async def test_spans_an_earlier_run_left_in_the_span_log_reach_the_store_written_alone(
    make_app: AppFactory, tmp_path: Path
) -> None:
    """An earlier run with more writers, or an earlier version, left spans the store had not written yet. With the
    store the only writer the pipeline writes into it past the span log; its pump still delivers what is there."""
    store_path = tmp_path / "data" / "traces.db"
    ref = ObjectRef("fixture", "", "v1", "pods", "shop", "left-behind")
    window = window_of(1_800_000_000_000_000_000, 1800)
    left = Span(
        trace_id=object_trace_id(ref.key, window),
        span_id=object_span_id(ref.key, window),
        parent_id=None,
        service=SERVICE_OBJECT,
        name="pods/left-behind",
        start_ns=window * 1800 * 10**9,
        end_ns=(window + 1) * 1800 * 10**9,
        attributes=ref.tags(),
    )
    span_log = LocalLog(store_path.parent / "spool" / "spans", name="spans", max_bytes=1 << 30)
    await span_log.open()
    await SpanLogWriter(span_log).write([left])
    await span_log.close()

    app = await make_app(**{"store.path": str(store_path), "store.retention_hours": 0})
    await app.settle()
    assert [span.span_id for span in await _store_spans(app)] == [left.span_id]
    assert (await _backlog(app))["sqlite"] == 0


async def test_a_request_whose_body_stalls_does_not_hold_up_shutdown(make_app: AppFactory) -> None:
    """A client that sent headers and half a body, then went quiet, is cut off within the grace period; it was
    never answered, so the apiserver sends the batch again (the server's own default would wait 60 s, twice)."""
    app = await make_app(shutdown_grace_seconds=2)
    reader, writer = await asyncio.open_connection("127.0.0.1", app.ports["http"])
    writer.write(
        b"POST /audit/stalled HTTP/1.1\r\nHost: tracer\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\nExpect: 100-continue\r\n\r\n"
    )
    await writer.drain()
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 100")  # the handler reads the body now
    writer.write(b'{"kind": "EventList", "items": [')
    await writer.drain()
    try:
        async with asyncio.timeout(20):  # a hang detector, far above the 2 s grace
            drained = await app.stop()
        assert drained
        assert await reader.read() == b""  # cut off, never answered
    finally:
        writer.close()
