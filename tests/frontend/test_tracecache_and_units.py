"""Trace caches (memory with a fake clock, real Redis), id and duration parsing, OTLP protobuf conversion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from kelemetry_py.config import FrontendConfig
from kelemetry_py.frontend.assembly import Assembler, Modifier
from kelemetry_py.frontend.convert import to_otlp_proto
from kelemetry_py.frontend.modes import (
    ALL_MODES,
    BaseView,
    FrontendError,
    ViewId,
    mode_by_code,
    mode_by_name,
    parse_trace_id,
)
from kelemetry_py.frontend.service import FrontendService, ViewQuery
from kelemetry_py.frontend.tracecache import CacheEntry
from kelemetry_py.frontend.tracecache.memory import MemoryTraceCache
from kelemetry_py.frontend.tracecache.redis import RedisTraceCache
from kelemetry_py.times import parse_go_duration, parse_rfc3339
from tests.frontend.conftest import open_reader
from tests.frontend.rawdata import T0, WINDOW_NS, MemoryReader, deployment_story

ENTRY = CacheEntry("fixture/apps/deployments/shop/web", T0, T0 + WINDOW_NS)


def test_sixteen_modes_with_distinct_names_and_codes() -> None:
    assert len({mode.name for mode in ALL_MODES}) == 16 and len({mode.code for mode in ALL_MODES}) == 16
    mode = mode_by_name("tracing  [ancestors]")
    assert (mode.base, mode.modifier) == (BaseView.TRACING, Modifier.ANCESTORS)
    assert mode_by_code(mode.code) == mode
    with pytest.raises(FrontendError):
        mode_by_name("tracing [cousins]")


def test_view_ids_round_trip_and_raw_ids_pass_through() -> None:
    view = ViewId(mode_by_name("grouped [owned objects]"), "0123456789abcdef")
    assert view.hex == "ff33000000e1e3e70123456789abcdef" and len(view.hex) == 32
    assert parse_trace_id(view.hex) == view
    assert parse_trace_id(f"{view.value:x}".upper()) == view
    assert parse_trace_id("abc") == 0xABC
    with pytest.raises(FrontendError):
        parse_trace_id("ff77000000e1e3e70123456789abcdef")
    with pytest.raises(FrontendError):
        parse_trace_id("0x12")


@pytest.mark.parametrize(
    ("text", "nanos"),
    [
        ("10ms", 10**7),
        ("2s", 2 * 10**9),
        ("1h30m", 5400 * 10**9),
        ("0.010s", 10**7),
        ("1.5µs", 1500),
        ("0", 0),
        ("2d", 2 * 86_400 * 10**9),  # Jaeger UI's "Last 2 Days" lookback
        ("1w", 7 * 86_400 * 10**9),
    ],
)
def test_go_durations(text: str, nanos: int) -> None:
    assert parse_go_duration(text, "d") == nanos


@pytest.mark.parametrize("text", ["", "10", "ms", "10 ms", "1y", "5s3"])
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(FrontendError, match="duration"):
        parse_go_duration(text, "duration")


def test_rfc3339_times() -> None:
    assert parse_rfc3339("2026-11-21T03:48:20.000Z", "t") == 1795232900 * 10**9
    assert parse_rfc3339("2026-11-21T03:48:20.123456789Z", "t") == 1795232900 * 10**9 + 123456789
    assert parse_rfc3339("2026-11-21T04:48:20+01:00", "t") == 1795232900 * 10**9
    with pytest.raises(FrontendError):
        parse_rfc3339("2026-11-21", "t")


async def test_memory_cache_expires_and_stays_bounded() -> None:
    now = [1000.0]
    cache = MemoryTraceCache(ttl_seconds=60, max_entries=2, clock=lambda: now[0])
    key = await cache.put(ENTRY)
    assert key == ENTRY.key and len(key) == 16
    assert await cache.get(key) == ENTRY
    now[0] += 59
    assert await cache.get(key) == ENTRY
    now[0] += 1
    assert await cache.get(key) is None
    keys = [await cache.put(CacheEntry(f"c/g/r/n/{i}", 0, 1)) for i in range(3)]
    assert len(cache) == 2
    assert await cache.get(keys[0]) is None and await cache.get(keys[2]) is not None


async def test_redis_cache_sets_a_ttl_under_its_prefix(redis_url: str) -> None:
    cache = RedisTraceCache(redis_url, ttl_seconds=90, key_prefix="test:")
    other = RedisTraceCache(redis_url, ttl_seconds=90, key_prefix="test:")  # another replica
    client = aioredis.from_url(redis_url)
    try:
        key = await cache.put(ENTRY)
        assert await other.get(key) == ENTRY
        ttl_ms = await client.pttl(f"test:tracecache:{key}")
        assert 0 < ttl_ms <= 90_000
        await client.delete(f"test:tracecache:{key}")
        assert await other.get(key) is None
        assert await cache.get("ffffffffffffffff") is None
    finally:
        await cache.close()
        await other.close()
        await client.aclose()


async def test_ids_from_one_replica_open_on_another_through_redis(redis_url: str, tmp_path: Path) -> None:
    reader = await open_reader(tmp_path)
    first = FrontendService(reader, RedisTraceCache(redis_url, 600), FrontendConfig())
    second = FrontendService(reader, RedisTraceCache(redis_url, 600), FrontendConfig())
    try:
        query = ViewQuery(
            mode=mode_by_name("tracing [ancestors]"),
            start_ns=T0,
            end_ns=T0 + 2 * WINDOW_NS,
            tags={"resource": "pods", "name": "web-aaa-1"},
        )
        (view,) = await first.search(query)
        opened = await second.get(view.trace_id_hex)
        assert opened is not None
        assert [span.name for span in opened.spans] == [span.name for span in view.spans]
        assert opened.root.name == "shop web"
    finally:
        await first.cache.close()
        await second.cache.close()
        await reader.close()


async def test_assembly_reads_each_trace_once_per_object() -> None:
    raw = deployment_story()
    reader = MemoryReader(raw.spans)
    assembler = Assembler(reader)
    trace = await assembler.assemble(
        "fixture/apps/deployments/shop/web", T0, T0 + 2 * WINDOW_NS, Modifier.FULL_TREE
    )
    assert trace is not None
    assert sorted(trace.objects) == sorted(
        f"fixture/{key}"
        for key in (
            "apps/deployments/shop/web",
            "apps/replicasets/shop/web-aaa",
            "apps/replicasets/shop/web-bbb",
            "/pods/shop/web-aaa-1",
            "/pods/shop/web-aaa-2",
            "/pods/shop/web-bbb-1",
        )
    )
    traces_read = sum(1 for _ in trace.objects) + 2  # web and web-aaa each have two windows
    assert reader.get_trace_calls == traces_read
    assert reader.find_calls == len(trace.objects)


async def test_otlp_protobuf_conversion_keeps_ids_times_and_logs(tmp_path: Path) -> None:
    reader: Any = await open_reader(tmp_path)
    service = FrontendService(reader, MemoryTraceCache(60), FrontendConfig())
    try:
        (view,) = await service.search(
            ViewQuery(
                mode=mode_by_name("tracing [owned objects]"),
                start_ns=T0,
                end_ns=T0 + 2 * WINDOW_NS,
                tags={"resource": "replicasets", "name": "web-aaa"},
            )
        )
        data = to_otlp_proto(view.spans)
        spans = [span for rs in data.resource_spans for ss in rs.scope_spans for span in ss.spans]
        assert len(spans) == len(view.spans) == 3
        by_id = {int.from_bytes(span.span_id, "big"): span for span in spans}
        for ours in view.spans:
            out = by_id[ours.span_id]
            assert int.from_bytes(out.trace_id, "big") == view.trace_id
            assert (out.start_time_unix_nano, out.end_time_unix_nano) == (ours.start_ns, ours.end_ns)
            assert [event.name for event in out.events] == [log.name for log in ours.logs]
            attrs = {kv.key: kv.value for kv in out.attributes}
            assert attrs["resource"].string_value == ours.attributes["resource"]
        services = sorted(rs.resource.attributes[0].value.string_value for rs in data.resource_spans)
        assert services == ["pods", "replicasets"]
    finally:
        await reader.close()
