"""The watchers in the real App keep every change and Event exactly once through a dropped watch, a 410 Gone,
a process restart and a leader change; Secret values never leave the process."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from kelemetry_py.app import App
from kelemetry_py.metrics import Metrics
from kelemetry_py.model import Span
from kelemetry_py.sources.kubewatch import STATE_FILE
from kelemetry_py.sources.redaction import REDACTED
from tests.conftest import FAKE_SECRET_VALUES
from tests.e2e.conftest import AppFactory
from tests.e2e.test_core_pipeline import key_of, otlp_exported
from tests.e2e.test_watchers_lifecycle import LIFECYCLE, replay_alongside_watches
from tests.kube.helpers import DOUBLE_TOKEN, all_watching, caught_up, cluster_watchers, watcher_settings
from tests.support.kube_double import KubeApiDouble
from tests.support.otlp_receiver import GrpcOtlpReceiver

Signature = tuple[Any, ...]


def signature(span: Span) -> Signature:
    """What a span says, without what legitimately differs between runs (ids and times of diff spans, which
    are stamped with the wall clock when the differ saw the change)."""
    tags = tuple(sorted((k, str(v)) for k, v in span.attributes.items()))
    logs = tuple((log.name, tuple(sorted((k, str(v)) for k, v in log.fields.items()))) for log in span.logs)
    when = span.start_ns if span.service == "event" else None
    return (span.service, key_of(span), span.name, tags, logs, when)


def observed(spans: list[Span]) -> Counter[Signature]:
    """Event and diff spans, counted: a duplicate shows as a count of 2."""
    return Counter(signature(s) for s in spans if s.service in ("event", "diff"))


async def settle(app: App) -> Metrics:
    """Emit what no audit span will claim, write everything accepted; the App's metrics for export counts."""
    assert app.watching is not None and app.components is not None
    await app.watching.differ.flush_unclaimed(now=math.inf)
    await app.settle()
    return app.components.metrics


async def received(receiver: GrpcOtlpReceiver, *metrics: Metrics) -> list[Span]:
    return await receiver.wait_for_spans(sum(otlp_exported(m) for m in metrics))


async def undisturbed_run(fixtures_dir: Path, make_app: AppFactory, directory: Path) -> Counter[Signature]:
    """The reference: one App watching the whole scenario without interruption."""
    await asyncio.to_thread(directory.mkdir)
    receiver = GrpcOtlpReceiver()
    await receiver.start()
    try:
        async with KubeApiDouble(fixtures_dir / LIFECYCLE, tokens=[DOUBLE_TOKEN]) as double:
            app = await make_app(**watcher_settings(directory, double.url, **{"otlp.endpoint": receiver.endpoint}))
            await all_watching(app)
            double.release()
            await caught_up(app, double)
            metrics = await settle(app)
            spans = await received(receiver, metrics)
            await app.stop()
    finally:
        await receiver.stop()
    reference = observed(spans)
    assert reference and max(reference.values()) == 1
    return reference


async def test_dropped_watch_gone_and_restart_lose_nothing_and_duplicate_nothing(
    fixtures_dir: Path, otlp_receiver: GrpcOtlpReceiver, make_app: AppFactory, tmp_path: Path
) -> None:
    reference = await undisturbed_run(fixtures_dir, make_app, tmp_path / "reference")
    store = tmp_path / "disturbed" / "traces.db"
    store.parent.mkdir()
    async with KubeApiDouble(fixtures_dir / LIFECYCLE, tokens=[DOUBLE_TOKEN]) as double:
        settings = watcher_settings(
            store.parent, double.url, **{"otlp.endpoint": otlp_receiver.endpoint, "store.path": str(store)}
        )
        first = await make_app(**settings)
        engines = await all_watching(first)
        total = double.pending
        double.release(total // 4)
        await caught_up(first, double)

        # A dropped connection mid-stream; changes made meanwhile come with the resumed watch.
        opened = double.watches_opened
        assert double.drop_watches(abrupt=True) == engines
        double.release(total // 4)
        await double.wait_for_watches(opened + engines)
        await caught_up(first, double)
        cluster = cluster_watchers(first)
        running = [engine for kind in cluster.engines.values() for engine in kind.values()]
        assert all(engine.relists == 1 for engine in running), "a resumed watch needs no new list"

        # History compacted while the watches were down: 410 Gone, then a fresh list.
        opened = double.watches_opened
        double.compact()
        double.drop_watches(abrupt=False)
        await double.wait_for_watches(opened + engines)
        await caught_up(first, double)
        assert sum(engine.relists for engine in running) > len(running)
        double.release(total // 4)
        await caught_up(first, double)

        # The process stops and a new one starts on the same store directory.
        first_metrics = await settle(first)
        await first.stop()
        assert (store.parent / STATE_FILE).is_file(), "the event cursor outlives the process"
        second = await make_app(**settings)
        await all_watching(second)
        await caught_up(second, double)
        assert second.watching is not None
        assert second.watching.events.emitted == 0, "Events seen before the restart came back with the list"
        assert second.watching.events.skipped_seen > 0
        double.release()
        await caught_up(second, double)
        second_metrics = await settle(second)
        assert second.components is not None
        spans = await received(otlp_receiver, first_metrics, second_metrics)
    assert observed(spans) == reference


async def test_two_replicas_one_watches_the_other_takes_over(
    fixtures_dir: Path, redis_url: str, otlp_receiver: GrpcOtlpReceiver, make_app: AppFactory, tmp_path: Path
) -> None:
    reference = await undisturbed_run(fixtures_dir, make_app, tmp_path / "reference")
    async with KubeApiDouble(fixtures_dir / LIFECYCLE, tokens=[DOUBLE_TOKEN]) as double:
        replicas: list[App] = []
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            settings = watcher_settings(
                tmp_path / name,
                double.url,
                **{
                    "otlp.endpoint": otlp_receiver.endpoint,
                    "redis.url": redis_url,
                    "kube.leader_election": True,
                    "kube.lease_duration_seconds": 2.0,
                    "kube.identity": f"replica-{name}",
                },
            )
            replicas.append(await make_app(**settings))
        leaders = {kind: await _leader(replicas, kind) for kind in ("objects", "events")}
        for kind, leader in leaders.items():
            follower = next(r for r in replicas if r is not leader)
            assert not cluster_watchers(follower).electors[kind].is_leader
            await all_watching(leader, (kind,))
        # Warm standbys: every replica watches, only the leader emits.
        watches = [await all_watching(replica) for replica in replicas]
        assert watches[0] == watches[1]
        assert _engine_watches(double) == sum(watches)
        double.release(double.pending // 2)
        for replica in replicas:
            await caught_up(replica, double)

        # The events leader dies without handing its leases back; the other replica waits them out.
        victim = leaders["events"]
        survivor = next(r for r in replicas if r is not victim)
        for elector in cluster_watchers(victim).electors.values():
            elector.release_on_cancel = False
        victim_metrics = await settle(victim)
        await victim.stop()
        for elector in cluster_watchers(survivor).electors.values():
            await asyncio.wait_for(elector.leading.wait(), 15)
        engines = await all_watching(survivor)
        await _watches_closed(double, engines)
        double.release()
        await caught_up(survivor, double)
        survivor_metrics = await settle(survivor)
        spans = await received(otlp_receiver, victim_metrics, survivor_metrics)
    assert observed(spans) == reference


def _engine_watches(double: KubeApiDouble) -> int:
    """Open watches of resources, without the candidates' watches on their Leases."""
    return double.watcher_count() - double.watcher_count("leases")


async def _watches_closed(double: KubeApiDouble, remaining: int) -> None:
    """The stopped replica's watch connections are gone (the double forgets a watcher when it hangs up)."""
    async with asyncio.timeout(15):  # polled: the double has no event for a watcher going away
        while True:
            if _engine_watches(double) == remaining:
                return
            await asyncio.sleep(0.05)


async def _leader(replicas: list[App], kind: str) -> App:
    electors = [cluster_watchers(r).electors[kind] for r in replicas]
    waits = [asyncio.ensure_future(e.leading.wait()) for e in electors]
    try:
        done, _ = await asyncio.wait(waits, timeout=15, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
    assert done, f"no replica leads {kind}"
    return next(r for r, w in zip(replicas, waits, strict=True) if w in done)


async def test_secret_values_never_leave(
    fixtures_dir: Path, redis_url: str, otlp_receiver: GrpcOtlpReceiver, make_app: AppFactory, tmp_path: Path
) -> None:
    scenario = fixtures_dir / "errors-and-links"
    async with KubeApiDouble(scenario, tokens=[DOUBLE_TOKEN]) as double:
        app = await make_app(
            **watcher_settings(
                tmp_path,
                double.url,
                **{
                    "otlp.endpoint": otlp_receiver.endpoint,
                    "redis.url": redis_url,
                    "store.path": str(tmp_path / "store" / "traces.db"),
                    # The opt-in: Secrets watched as metadata only (not watched at all by default).
                    "kube.watch_secret_metadata": True,
                },
            )
        )
        await all_watching(app)
        await replay_alongside_watches(app, double, scenario)
        secret_reads = [r for r in double.requests if r.path == "/api/v1/secrets"]
        assert secret_reads, "Secrets are watched when opted in"
        assert all("as=PartialObjectMetadata" in r.headers.get("Accept", "") for r in secret_reads)
        metrics = await settle(app)
        spans = await received(otlp_receiver, metrics)
        stored_while_running = _files(tmp_path / "store")
        await app.stop()
    secret_spans = [s for s in spans if key_of(s) == "fixture//secrets/shop/db-creds" and s.service != "object"]
    assert {s.service for s in secret_spans} >= {"audit"}
    shown = [log for s in secret_spans for log in s.logs if log.name in ("diff", "snapshot")]
    assert shown, "the Secret's changes are traced (without their values)"
    for log in shown:
        if log.name == "snapshot":
            snapshot = orjson.loads(str(log.fields["snapshot"]))
            assert snapshot["metadata"]["name"] == "db-creds"
            assert set(snapshot.get("data", {}).values()) <= {REDACTED}

    rendered = b"".join(
        orjson.dumps([s.name, s.attributes, [(entry.name, entry.fields) for entry in s.logs]]) for s in spans
    )
    places = {
        "spans": rendered,
        "OTLP bytes": otlp_receiver.raw_bytes,
        "store files while running": stored_while_running,
        "store files after stop": _files(tmp_path / "store"),
        "redis": await _redis_values(redis_url),
    }
    assert b"db-creds" in places["redis"], "the diff cache in Redis held the Secret's records"
    for place, content in places.items():
        for value in FAKE_SECRET_VALUES:
            assert value not in content, f"{value!r} found in {place}"


def _files(directory: Path) -> bytes:
    found = [path.read_bytes() for path in sorted(directory.iterdir()) if path.is_file()]
    assert found
    return b"".join(found)


async def _redis_values(url: str) -> bytes:
    """Every key and value in Redis, whatever its type, as bytes."""
    client: Any = aioredis.from_url(url)
    parts: list[Any] = []
    try:
        async for key in client.scan_iter():
            parts.append(key)
            kind = (await client.type(key)).decode()
            if kind == "string":
                parts.append(await client.get(key))
            elif kind == "hash":
                parts.extend(part for pair in (await client.hgetall(key)).items() for part in pair)
            elif kind == "set":
                parts.extend(await client.smembers(key))
            elif kind in ("list", "zset"):
                parts.extend(await (client.lrange if kind == "list" else client.zrange)(key, 0, -1))
            elif kind == "stream":
                for _, fields in await client.xrange(key):
                    parts.extend(part for pair in fields.items() for part in pair)
    finally:
        await client.aclose()
    return b"".join(part if isinstance(part, bytes) else str(part).encode() for part in parts)
