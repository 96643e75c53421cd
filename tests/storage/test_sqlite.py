"""SqliteStore: a real SQLite file, written and read through the SpanWriter and TraceReader protocols."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

import kelemetry_py.storage.sqlite as sqlite_store
from kelemetry_py.export import SpanWriter
from kelemetry_py.metrics import Metrics
from kelemetry_py.model import LogEntry, ObjectRef, Span, child_span_id, object_span_id, object_trace_id
from kelemetry_py.storage import TraceQuery, TraceReader
from kelemetry_py.storage.sqlite import SqliteStore, find_traces_sql

WINDOW_NS = 1800 * 1_000_000_000
HOUR_NS = 3600 * 1_000_000_000
W0 = 1_790_000_000 // 1800  # a window in late 2026
POD = ObjectRef("prod", "", "v1", "pods", "default", "web-1", uid="pod-uid")
DEPLOY = ObjectRef("prod", "apps", "v1", "deployments", "default", "web", uid="deploy-uid")
STAGING_POD = ObjectRef("staging", "", "v1", "pods", "default", "web-1")


def scalar(conn: apsw.Connection, sql: str) -> Any:
    """The first column of the first row ``sql`` gives."""
    row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


# Another program (Python's own sqlite3, another SQLite build) holding the file's write lock until its stdin closes.
_HOLD_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)
conn.execute("BEGIN " + sys.argv[2])
print("held", flush=True)
sys.stdin.read()
conn.execute("ROLLBACK")
"""


@contextlib.contextmanager
def lock_held_by_another_process(path: Path, mode: str) -> Iterator[None]:
    """A lock another process holds: SQLite's locks are the file's, per process, so only another process shows
    what the store does when one is held (a second SQLite library in this process would not see them at all)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(path), mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert holder.stdout.readline() == b"held\n"
        yield
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=30) == 0


def object_span(ref: ObjectRef, window: int) -> Span:
    return Span(
        trace_id=object_trace_id(ref.key, window),
        span_id=object_span_id(ref.key, window),
        parent_id=None,
        service="object",
        name=f"{ref.resource}/{ref.name}",
        start_ns=window * WINDOW_NS,
        end_ns=(window + 1) * WINDOW_NS,
        attributes=dict(ref.tags()),
    )


def child(ref: ObjectRef, window: int, identity: str, service: str = "audit", **tags: str | int) -> Span:
    trace_id = object_trace_id(ref.key, window)
    start = window * WINDOW_NS + 1_000_000_000
    return Span(
        trace_id=trace_id,
        span_id=child_span_id(trace_id, identity),
        parent_id=object_span_id(ref.key, window),
        service=service,
        name=f"{service} {identity}",
        start_ns=start,
        end_ns=start + 5_000_000,
        attributes={**ref.tags(), **tags},
    )


async def checked_span_documents(store: SqliteStore) -> int:
    """How many span documents the index holds, once FTS5's integrity check has passed on it."""

    def count() -> int:
        conn = store._connection()
        conn.execute("INSERT INTO span_terms (span_terms, rank) VALUES ('integrity-check', 0)")
        return int(scalar(conn, "SELECT count(*) FROM span_term_docs"))

    return await store._run(count)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    async with SqliteStore(str(tmp_path / "traces.db")) as opened:
        yield opened


def whole_range(**kwargs: object) -> TraceQuery:
    return TraceQuery(start_ns=0, end_ns=(W0 + 100) * WINDOW_NS, **kwargs)  # type: ignore[arg-type]


async def test_round_trip_keeps_every_field(store: SqliteStore) -> None:
    assert isinstance(store, SpanWriter) and isinstance(store, TraceReader)
    root = object_span(POD, W0)
    audit = child(POD, W0, "a1", verb="update", responseCode=409)
    audit.attributes.update({"sourceIPs": ["10.0.0.1", "10.0.0.2"], "dryRun": False, "ratio": 0.5})
    audit.logs = [LogEntry(audit.start_ns + 1, "diff", {"diff": "spec.replicas 2 -> 4", "changes": 1})]
    audit.error, audit.status_message = True, "Conflict"
    # Span ids use all 64 bits; the top bit must survive SQLite's signed integers.
    high = child(POD, W0, "high")
    high.span_id = (1 << 64) - 5
    await store.write([root, audit, high])
    spans = await store.get_trace(root.trace_id)
    assert sorted(spans, key=lambda s: s.span_id) == sorted([root, audit, high], key=lambda s: s.span_id)
    assert await store.get_trace(12345) == []


async def test_rewriting_a_span_replaces_it(store: SqliteStore) -> None:
    first = child(POD, W0, "a1", verb="update")
    await store.write([object_span(POD, W0), first])
    again = child(POD, W0, "a1", verb="patch")
    again.name = "admin patch"
    await store.write([again])
    await store.write([again])
    spans = {span.span_id: span for span in await store.get_trace(first.trace_id)}
    assert len(spans) == 2
    assert spans[first.span_id] == again
    # The replaced span's old tag value no longer finds the trace.
    assert await store.find_traces(whole_range(tags={"verb": "update"})) == []
    assert [hit.trace_id for hit in await store.find_traces(whole_range(tags={"verb": "patch"}))] == [
        first.trace_id
    ]


async def test_all_tags_must_match_on_one_span(store: SqliteStore) -> None:
    # verb=update is on one span, username=alice on another: together they must not match.
    await store.write(
        [
            object_span(POD, W0),
            child(POD, W0, "a1", verb="update", username="bob"),
            child(POD, W0, "a2", verb="patch", username="alice"),
            object_span(DEPLOY, W0),
            child(DEPLOY, W0, "a3", verb="update", username="alice"),
        ]
    )
    hits = await store.find_traces(whole_range(tags={"verb": "update", "username": "alice"}))
    assert [hit.ref for hit in hits] == [DEPLOY]
    assert hits[0].ref.uid == "deploy-uid"
    both = await store.find_traces(whole_range(tags={"verb": "update"}))
    assert {hit.ref for hit in both} == {POD, DEPLOY}
    # Values compare as text: an int tag is found by its decimal string.
    await store.write([child(POD, W0, "a4", responseCode=422)])
    assert [hit.ref for hit in await store.find_traces(whole_range(tags={"responseCode": "422"}))] == [POD]
    assert await store.find_traces(whole_range(tags={"verb": "update", "username": "nobody"})) == []


async def test_service_restricts_the_matching_span(store: SqliteStore) -> None:
    await store.write(
        [
            object_span(POD, W0),
            child(POD, W0, "e1", service="event", reason="Pulled"),
            object_span(DEPLOY, W0),
            child(DEPLOY, W0, "a1", service="audit", reason="Pulled"),
        ]
    )
    hits = await store.find_traces(whole_range(tags={"reason": "Pulled"}, service="event"))
    assert [hit.ref for hit in hits] == [POD]
    # Cluster is on every span, the object span included.
    hits = await store.find_traces(whole_range(tags={"cluster": "prod"}, service="object"))
    assert {hit.ref for hit in hits} == {POD, DEPLOY}
    only_service = await store.find_traces(whole_range(service="event"))
    assert [hit.ref for hit in only_service] == [POD]


async def test_time_overlap_newest_first_and_limit(store: SqliteStore) -> None:
    spans = []
    for window in (W0, W0 + 1, W0 + 2, W0 + 3):
        spans += [object_span(POD, window), child(POD, window, f"a{window}", verb="update")]
    spans += [object_span(STAGING_POD, W0 + 1)]
    await store.write(spans)
    # A range touching only the middle of window W0+1 through the start of W0+2.
    query = TraceQuery(
        tags={"name": "web-1", "cluster": "prod"},
        start_ns=(W0 + 1) * WINDOW_NS + 10,
        end_ns=(W0 + 2) * WINDOW_NS + 10,
    )
    hits = await store.find_traces(query)
    assert [hit.trace_id for hit in hits] == [
        object_trace_id(POD.key, W0 + 2),
        object_trace_id(POD.key, W0 + 1),
    ]
    assert hits[0].start_ns == (W0 + 2) * WINDOW_NS and hits[0].end_ns == (W0 + 3) * WINDOW_NS
    limited = await store.find_traces(whole_range(tags={"cluster": "prod"}, limit=3))
    assert [hit.trace_id for hit in limited] == [
        object_trace_id(POD.key, w) for w in (W0 + 3, W0 + 2, W0 + 1)
    ]
    assert await store.find_traces(whole_range(tags={"cluster": "prod"}, limit=0)) == []


async def test_trace_without_object_span_is_named_by_its_spans(store: SqliteStore) -> None:
    # The child can be written before its object span (another replica emits it); the root then takes over.
    await store.write([child(POD, W0, "a1", verb="update")])
    (hit,) = await store.find_traces(whole_range(tags={"verb": "update"}))
    assert hit.ref == POD
    await store.write([object_span(POD, W0)])
    (hit,) = await store.find_traces(whole_range(tags={"verb": "update"}))
    assert (hit.ref, hit.start_ns, hit.end_ns) == (POD, W0 * WINDOW_NS, (W0 + 1) * WINDOW_NS)


async def test_tag_values(store: SqliteStore) -> None:
    await store.write([object_span(POD, W0), object_span(STAGING_POD, W0 + 5), object_span(DEPLOY, W0)])
    assert await store.tag_values("cluster") == ["prod", "staging"]
    assert await store.tag_values("resource") == ["deployments", "pods"]
    assert await store.tag_values("cluster", (W0 + 5) * WINDOW_NS, (W0 + 6) * WINDOW_NS) == ["staging"]
    assert await store.tag_values("cluster", None, W0 * WINDOW_NS + 1) == ["prod"]
    assert await store.tag_values("nonexistent") == []


async def test_retention_deletes_old_traces(tmp_path: Path) -> None:
    async with SqliteStore(str(tmp_path / "t.db"), retention_hours=2) as store:
        old = [object_span(POD, W0), child(POD, W0, "old", verb="update")]
        recent = [object_span(POD, W0 + 4), child(POD, W0 + 4, "new", verb="update")]
        await store.write(old + recent)
        # "Now" is 1.5 h after the recent window ends: the old one ended 3.5 h ago.
        now = (W0 + 5) * WINDOW_NS + HOUR_NS + HOUR_NS // 2
        assert await store.purge_expired(now_ns=now) == 1
        assert await store.get_trace(old[0].trace_id) == []
        assert len(await store.get_trace(recent[0].trace_id)) == 2
        hits = await store.find_traces(whole_range(tags={"verb": "update"}))
        assert [hit.trace_id for hit in hits] == [recent[0].trace_id]
        assert await store.purge_expired(now_ns=now) == 0
    conn = sqlite3.connect(tmp_path / "t.db")
    # No span body or document outlives its trace; the recent trace's are all there.
    assert conn.execute("SELECT count(*) FROM bodies").fetchone()[0] == 2
    assert conn.execute("SELECT count(*) FROM bodies WHERE id NOT IN (SELECT body_id FROM spans)").fetchone()[0] == 0
    documents = conn.execute(f"SELECT DISTINCT doc >> {sqlite_store.SEQ_BITS} FROM span_term_docs").fetchall()
    assert documents == [(conn.execute("SELECT tid FROM traces").fetchone()[0],)]
    conn.close()


async def test_retention_zero_keeps_everything(store: SqliteStore) -> None:
    await store.write([object_span(POD, W0)])
    assert await store.purge_expired(now_ns=(W0 + 10_000) * WINDOW_NS) == 0
    assert len(await store.get_trace(object_trace_id(POD.key, W0))) == 1


async def test_the_writer_forgets_traces_no_longer_written_and_a_late_span_still_joins_its_trace(
    tmp_path: Path,
) -> None:
    async with SqliteStore(str(tmp_path / "t.db"), active_trace_seconds=2 * WINDOW_NS / 1e9) as store:
        first = child(POD, W0, "a1", verb="update")
        await store.write([object_span(POD, W0), first])
        await store.write([object_span(POD, W0 + 1)])
        await store.write([object_span(POD, W0 + 3)])
        remembered = {object_trace_id(POD.key, W0 + w) for w in (1, 3)}
        assert set(store._traces) == remembered, "the window ending two windows before the newest span is let go"

        late = child(POD, W0, "late", verb="get")
        again = dataclasses.replace(first, attributes={**first.attributes, "verb": "patch"})
        await store.write([late, again])  # read back from the file, so the trace and its rows are reused
        spans = {span.span_id: span for span in await store.get_trace(first.trace_id)}
        assert len(spans) == 3 and spans[first.span_id] == again and late.span_id in spans
        hits = await store.find_traces(whole_range(limit=10))
        assert sorted(hit.trace_id for hit in hits) == sorted(remembered | {first.trace_id})
        assert await store.find_traces(whole_range(tags={"verb": "update"})) == []
        assert await checked_span_documents(store) == 2  # the two audit spans: the rewritten one replaced


async def test_concurrent_writes_all_land(tmp_path: Path) -> None:
    metrics = Metrics()
    async with SqliteStore(str(tmp_path / "t.db"), metrics=metrics) as store:
        batches = [
            [object_span(POD, W0 + w)] + [child(POD, W0 + w, f"a{i}", verb="update") for i in range(20)]
            for w in range(25)
        ]
        await asyncio.gather(*(store.write(batch) for batch in batches))
        for w in range(25):
            assert len(await store.get_trace(object_trace_id(POD.key, W0 + w))) == 21
        assert len(await store.find_traces(whole_range(tags={"verb": "update"}, limit=100))) == 25
        exported = metrics.registry.get_sample_value("kelemetry_spans_exported_total", {"writer": "sqlite"})
        assert exported == 25 * 21


async def test_store_file_is_created_under_a_new_directory(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "traces.db"
    async with SqliteStore(str(path)) as store:
        await store.write([object_span(POD, W0)])
    assert path.is_file()
    # Reopening the same file finds what was written.
    async with SqliteStore(str(path)) as reopened:
        assert len(await reopened.get_trace(object_trace_id(POD.key, W0))) == 1
        mode = await reopened._run(
            lambda: scalar(reopened._connection(), "PRAGMA journal_mode")
        )
        assert mode == "wal"


async def test_use_outside_open_is_refused(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "t.db"))
    with pytest.raises(RuntimeError, match="not open"):
        await store.write([object_span(POD, W0)])
    await store.open()
    await store.close()
    with pytest.raises(RuntimeError, match="closed"):
        await store.write([object_span(POD, W0)])


async def test_tag_search_uses_the_index(store: SqliteStore) -> None:
    await store.write([object_span(POD, W0)])
    query = whole_range(tags={"verb": "update", "username": "alice", "resource": "pods"}, service="audit")
    prefixes = {"verb": sqlite_store.key_prefix(1), "username": sqlite_store.key_prefix(2)}
    expression = sqlite_store.match_expression([("verb", "update"), ("username", "alice")], [prefixes])
    sql, params = find_traces_sql(query, expression=expression)

    def plan() -> list[str]:
        return [str(row[-1]) for row in store._connection().execute(f"EXPLAIN QUERY PLAN {sql}", params)]

    steps = await store._run(plan)
    # Aliases name the tables in the plan: span terms are a full-text index lookup (MATCH), the object tag an
    # index search, and no table is scanned.
    assert "SCAN span_terms VIRTUAL TABLE INDEX 0:M1" in steps, steps
    assert any(step.startswith("SEARCH t USING INDEX traces_by_resource (resource=?") for step in steps), steps
    assert not any(step.startswith("SCAN") and "VIRTUAL TABLE INDEX 0:M" not in step for step in steps), steps


async def test_reading_traces_searches_by_trace_and_span_range_and_scans_nothing(store: SqliteStore) -> None:
    # The frontend's shape: many traces of a few spans each, of which a view reads a hundred.
    pods = [ObjectRef("prod", "", "v1", "pods", "default", f"web-{i}", uid=f"uid-{i}") for i in range(200)]
    spans = [span for pod in pods for span in (object_span(pod, W0), *(child(pod, W0, f"{n}") for n in range(5)))]
    await store.write(spans)
    ids = sorted({span.trace_id for span in spans})[:100]
    keys = [trace_id.to_bytes(16, "big") for trace_id in ids]
    sql = sqlite_store.spans_of_traces_sql(",".join("?" * len(keys)))

    def plan() -> list[str]:
        return [str(row[-1]) for row in store._connection().execute(f"EXPLAIN QUERY PLAN {sql}", keys)]

    steps = await store._run(plan)
    # Small tables tempt the planner to scan every span and look each one's trace up: never.
    assert any(step.startswith("SEARCH t USING") and "(trace_id=?)" in step for step in steps), steps
    assert any(step.startswith("SEARCH s USING INTEGER PRIMARY KEY") for step in steps), steps
    assert any(step.startswith("SEARCH b USING INTEGER PRIMARY KEY (rowid=?)") for step in steps), steps
    assert not any(step.startswith("SCAN") for step in steps), steps
    read = await store.get_traces(ids)
    assert sorted(read) == ids and {len(trace) for trace in read.values()} == {6}


YEAR_2300_NS = 10_413_792_000 * 1_000_000_000  # beyond a signed 64-bit integer


async def test_unrepresentable_spans_are_dropped_alone_and_counted(tmp_path: Path) -> None:
    metrics = Metrics()
    async with SqliteStore(str(tmp_path / "t.db"), metrics=metrics) as store:
        late = child(POD, W0, "late", verb="update")
        late.end_ns = YEAR_2300_NS
        huge = child(POD, W0, "huge", verb="update", count=1 << 70)
        wide = child(POD, W0, "wide", verb="update", count=1 << 63)  # fits MessagePack's unsigned 64 bits
        bad_text = child(POD, W0, "bad-text", verb="update", note="\udc80")  # a lone surrogate: no UTF-8 for it
        bad_name = child(POD, W0, "bad-name", verb="update")
        bad_name.name = "\udc80"  # caught as its body is encoded: the batch is retried span by span
        good = [object_span(POD, W0), child(POD, W0, "ok", verb="update"), wide]
        other_writer = [object_span(DEPLOY, W0), child(DEPLOY, W0, "d1", verb="patch")]
        # A poisoned batch and a clean one from another writer, committed together.
        poisoned = [late, *good[:2], huge, bad_text, good[2], bad_name]
        await asyncio.gather(store.write(poisoned), store.write(other_writer))
        stored = await store.get_trace(good[0].trace_id)
        assert sorted(span.span_id for span in stored) == sorted(span.span_id for span in good)
        assert {span.span_id: span for span in stored}[wide.span_id] == wide
        assert len(await store.get_trace(other_writer[0].trace_id)) == 2
        dropped = metrics.registry.get_sample_value("kelemetry_spans_dropped_total", {"writer": "sqlite"})
        exported = metrics.registry.get_sample_value("kelemetry_spans_exported_total", {"writer": "sqlite"})
        assert (dropped, exported) == (4, 5)


async def test_write_raises_when_its_spans_were_not_committed(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    async with SqliteStore(str(path)) as store:
        await store.write([object_span(POD, W0)])
        with (
            lock_held_by_another_process(path, "EXCLUSIVE"),  # past the store's busy timeout
            pytest.raises(apsw.BusyError, match="locked"),
        ):
            await store.write([child(POD, W0, "a1", verb="update")])
        assert len(await store.get_trace(object_trace_id(POD.key, W0))) == 1
        # The same spans again (what a durable log's retry does) now land.
        await store.write([child(POD, W0, "a1", verb="update")])
        assert len(await store.get_trace(object_trace_id(POD.key, W0))) == 2


async def test_reads_are_served_while_a_write_waits(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    async with SqliteStore(str(path)) as store:
        await store.write([object_span(POD, W0), child(POD, W0, "a1", verb="update")])
        with lock_held_by_another_process(path, "IMMEDIATE"):
            writing = asyncio.create_task(store.write([child(POD, W0, "a2", verb="patch")]))
            # Two turns of the loop (FIFO, not a delay): the write starts its committer, which hands the
            # transaction to the writer's thread; every read below is submitted after it and must not queue.
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert store._committer is not None and not store._committer.done()
            hits = await store.find_traces(whole_range(tags={"verb": "update"}))
            spans = await store.get_trace(object_trace_id(POD.key, W0))
            assert not writing.done()
            assert [hit.ref for hit in hits] == [POD] and len(spans) == 2
        await writing
        assert len(await store.get_trace(object_trace_id(POD.key, W0))) == 3


async def test_a_search_without_an_indexed_object_tag_walks_traces_newest_first(store: SqliteStore) -> None:
    # No object tag the indexes know (uid, name, resource): the search walks traces newest first.
    pods = [ObjectRef("prod", "", "v1", "pods", "default", f"web-{i}") for i in range(1100)]
    spans = [
        child(ref, W0 + i % 40, f"a{i}", verb="update", username="alice" if i % 7 else "bob")
        for i, ref in enumerate(pods)
    ]
    await store.write(spans)
    bob = sorted((span for span in spans if span.attributes["username"] == "bob"), key=lambda s: -s.start_ns)
    for tags in (
        {"verb": "update", "username": "bob"},
        {"cluster": "prod", "username": "bob", "resource": "pods"},
        {"cluster": "prod", "namespace": "default", "username": "bob"},
    ):
        hits = await store.find_traces(whole_range(tags=tags, service="audit", limit=5))
        assert {hit.trace_id for hit in hits} <= {span.trace_id for span in bob}
        assert [hit.start_ns for hit in hits] == [span.start_ns for span in bob[:5]]
    newest = await store.find_traces(whole_range(tags={"cluster": "prod"}, service="audit", limit=5))
    assert [hit.start_ns for hit in newest] == sorted((span.start_ns for span in spans), reverse=True)[:5]
    sql, params = find_traces_sql(whole_range(tags={"cluster": "prod"}, service="audit"))

    def plan() -> list[str]:
        return [str(row[-1]) for row in store._connection().execute(f"EXPLAIN QUERY PLAN {sql}", params)]

    steps = await store._run(plan)
    assert steps[0].startswith("SEARCH t USING INDEX traces_by_start"), steps
    assert not any(step.startswith("SCAN") for step in steps), steps


async def test_a_resource_is_found_by_its_index_newest_first(store: SqliteStore) -> None:
    # verb=update on 300 spans (common), only 3 objects are deployments (rare, an object tag): same answer.
    spans = [
        child(ObjectRef("prod", "", "v1", "pods", "default", f"p{i}"), W0, f"a{i}", verb="update") for i in range(300)
    ]
    spans += [
        child(
            ObjectRef("prod", "apps", "v1", "deployments", "default", f"d{i}"),
            W0 + i,
            f"d{i}",
            verb="update" if i else "patch",
        )
        for i in range(3)
    ]
    await store.write(spans)
    hits = await store.find_traces(whole_range(tags={"verb": "update", "resource": "deployments"}, service="audit"))
    assert [hit.ref.name for hit in hits] == ["d2", "d1"]
    sql, params = find_traces_sql(whole_range(tags={"resource": "deployments", "namespace": "default"}))

    def plan() -> list[str]:
        return [str(row[-1]) for row in store._connection().execute(f"EXPLAIN QUERY PLAN {sql}", params)]

    steps = await store._run(plan)
    # Newest first straight from the index: no sort of every deployment's traces before the limit.
    assert steps[0].startswith("SEARCH t USING INDEX traces_by_resource (resource=? AND start_ns<?)"), steps
    assert not any(step.startswith("SCAN") or "TEMP B-TREE FOR ORDER BY" in step for step in steps), steps


async def test_tag_values_of_every_type_are_found_by_their_text(store: SqliteStore) -> None:
    audit = child(POD, W0, "a1", verb="update", responseCode=200)
    audit.attributes.update({"sourceIPs": ["10.0.0.1", "10.0.0.2"], "dryRun": False, "ratio": 0.5, "note": ""})
    other = child(DEPLOY, W0, "a2", verb="Update", responseCode=2000)
    other.attributes.update({"sourceIPs": ["10.0.0.3"], "dryRun": True, "odd key": 'say "hi" \u00e9\u4e2d'})
    await store.write([object_span(POD, W0), audit, object_span(DEPLOY, W0), other])

    async def found(**tags: str) -> set[ObjectRef]:
        return {hit.ref for hit in await store.find_traces(whole_range(tags=tags))}

    assert await found(sourceIPs="10.0.0.2") == {POD}  # any item of a list
    assert await found(sourceIPs="10.0.0.1", verb="update") == {POD}
    assert await found(dryRun="false") == {POD} and await found(dryRun="true") == {DEPLOY}
    assert await found(ratio="0.5") == {POD} and await found(responseCode="200") == {POD}
    assert await found(note="") == {POD}
    assert await found(**{"odd key": 'say "hi" \u00e9\u4e2d'}) == {DEPLOY}
    # Exact text only: no case folding, no prefix, no list written as one string, no bool as a number.
    for tags in (
        {"verb": "UPDATE"},
        {"responseCode": "20"},
        {"sourceIPs": "10.0.0.1 10.0.0.2"},
        {"dryRun": "0"},
        {"dryRun": "False"},
        {"odd key": "say"},
        {"note": "x"},
    ):
        assert await found(**tags) == set(), tags
    assert await found(verb="Update") == {DEPLOY}
    assert await store.tag_values("sourceIPs") == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert await store.tag_values("dryRun") == ["false", "true"]
    assert await store.tag_values("verb", W0 * WINDOW_NS, (W0 + 1) * WINDOW_NS) == ["Update", "update"]
    assert await store.tag_values("verb", (W0 + 2) * WINDOW_NS, (W0 + 3) * WINDOW_NS) == []


async def test_key_and_value_never_run_into_each_other(store: SqliteStore) -> None:
    # "ab"="c" and "a"="bc" must stay different tags; so must a key ending in the separator's letter.
    await store.write(
        [child(POD, W0, "a1", ab="c"), child(DEPLOY, W0, "a2", a="bc"), child(STAGING_POD, W0, "a3", x="x")]
    )
    assert [hit.ref for hit in await store.find_traces(whole_range(tags={"ab": "c"}))] == [POD]
    assert [hit.ref for hit in await store.find_traces(whole_range(tags={"a": "bc"}))] == [DEPLOY]
    assert [hit.ref for hit in await store.find_traces(whole_range(tags={"x": "x"}))] == [STAGING_POD]
    assert await store.find_traces(whole_range(tags={"a": "b"})) == []
    assert await store.tag_values("a") == ["bc"]


async def test_a_long_value_is_one_exact_tag(store: SqliteStore) -> None:
    long_value = "spec.template " * 5000  # far beyond one index page
    await store.write([child(POD, W0, "a1", change=long_value), child(DEPLOY, W0, "a2", change=long_value[:-1])])
    assert [hit.ref for hit in await store.find_traces(whole_range(tags={"change": long_value}))] == [POD]
    assert await store.tag_values("change") == sorted([long_value, long_value[:-1]])


async def test_one_object_with_span_tags_on_different_spans(store: SqliteStore) -> None:
    # The name narrows to a few traces, each checked for one span with every tag (Jaeger's rule).
    spans = []
    for window in range(W0, W0 + 3):
        spans += [
            object_span(POD, window),
            child(POD, window, f"a{window}", verb="update", username="bob"),
            child(POD, window, f"b{window}", verb="patch", username="alice"),
        ]
    spans.append(child(POD, W0 + 2, "c", verb="update", username="alice"))
    await store.write(spans)

    async def windows(service: str | None = None, **tags: str) -> list[int]:
        hits = await store.find_traces(whole_range(tags={"name": "web-1", **tags}, service=service))
        return [hit.start_ns // WINDOW_NS for hit in hits]

    assert await windows(verb="update", username="alice") == [W0 + 2]
    assert await windows(verb="update", username="bob") == [W0 + 2, W0 + 1, W0]
    assert await windows(verb="update", username="alice", service="event") == []
    assert await windows(verb="delete") == []
    assert await windows(service="audit") == [W0 + 2, W0 + 1, W0]


async def test_redelivered_and_repeated_spans_are_indexed_once(store: SqliteStore) -> None:
    first = child(POD, W0, "a1", verb="update")
    changed = child(POD, W0, "a1", verb="patch")
    # The same span twice in one batch, with different tags: the later copy wins, as it would in two batches.
    await store.write([object_span(POD, W0), first, changed])
    await store.write([object_span(POD, W0), changed])  # a re-delivery of what is stored
    assert await store.find_traces(whole_range(tags={"verb": "update"})) == []
    assert len(await store.find_traces(whole_range(tags={"verb": "patch"}))) == 1
    assert await store.tag_values("verb") == ["patch"]
    assert len(await store.get_trace(first.trace_id)) == 2

    # One document, with one term, for the one span with attributes of its own: its verb, as an audit span's.
    assert await checked_span_documents(store) == 1


async def test_a_reopened_store_goes_on_numbering_a_trace_s_spans(tmp_path: Path) -> None:
    path = str(tmp_path / "t.db")
    async with SqliteStore(path) as store:
        await store.write([object_span(POD, W0), child(POD, W0, "a1", verb="update", username="bob")])
    async with SqliteStore(path) as store:
        await store.write([child(POD, W0, "a2", verb="patch", username="alice")])
        await store.write([child(POD, W0, "a3", verb="create", username="carol")])
        assert len(await store.get_trace(object_trace_id(POD.key, W0))) == 4
        # Each span kept its own document: none replaced another's.
        for verb, username in (("update", "bob"), ("patch", "alice"), ("create", "carol")):
            hits = await store.find_traces(whole_range(tags={"verb": verb, "username": username}))
            assert [hit.ref for hit in hits] == [POD], verb
        assert await store.find_traces(whole_range(tags={"verb": "update", "username": "alice"})) == []


async def test_a_span_written_again_after_the_writer_forgot_its_trace_replaces_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writer knows a trace's span ids from memory; after a reopen, or once it has remembered too many, it
    # reads them back from the trace's rows, so a re-delivered span still finds its own row and document.
    monkeypatch.setattr(sqlite_store, "_SPAN_CACHE", 3)
    path = str(tmp_path / "t.db")
    async with SqliteStore(path) as store:
        await store.write([object_span(POD, W0), child(POD, W0, "a1", verb="update", username="bob")])
    async with SqliteStore(path) as store:
        await store.write([child(POD, W0, "a1", verb="patch", username="bob")])  # read back after the reopen
        await store.write([object_span(DEPLOY, W0), child(DEPLOY, W0, "d1", verb="create")])  # forgets POD's
        await store.write([child(POD, W0, "a1", verb="delete", username="bob"), child(POD, W0, "a2", verb="get")])
        spans = await store.get_trace(object_trace_id(POD.key, W0))
        assert sorted(str(span.attributes.get("verb")) for span in spans) == ["None", "delete", "get"]
        for verb in ("update", "patch"):
            assert await store.find_traces(whole_range(tags={"verb": verb})) == [], verb
        hits = await store.find_traces(whole_range(tags={"verb": "delete", "username": "bob"}))
        assert [hit.ref for hit in hits] == [POD]
        assert await store.tag_values("verb") == ["create", "delete", "get"]

        def integrity() -> None:
            store._connection().execute("INSERT INTO span_terms (span_terms, rank) VALUES ('integrity-check', 0)")

        await store._run(integrity)


async def test_a_file_in_another_store_format_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE traces (tid INTEGER PRIMARY KEY)")
    conn.execute("PRAGMA user_version=2")
    conn.commit()
    conn.close()
    with pytest.raises(RuntimeError, match="store format 2, this version reads format 5; move the file aside"):
        await SqliteStore(str(path)).open()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'spans'").fetchone()[0] == 0
    conn.close()


async def test_a_trace_beyond_its_span_numbers_drops_only_the_extra_spans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "_SEQ_LIMIT", 3)
    metrics = Metrics()
    async with SqliteStore(str(tmp_path / "t.db"), metrics=metrics) as store:
        await store.write([object_span(POD, W0), child(POD, W0, "a1", verb="update")])
        await store.write([child(POD, W0, "a2", verb="patch"), child(POD, W0, "a3", verb="create")])
        await store.write([object_span(DEPLOY, W0)])
        assert len(await store.get_trace(object_trace_id(POD.key, W0))) == 3
        assert len(await store.get_trace(object_trace_id(DEPLOY.key, W0))) == 1
        dropped = metrics.registry.get_sample_value("kelemetry_spans_dropped_total", {"writer": "sqlite"})
        assert dropped == 1
        assert len(await store.find_traces(whole_range(tags={"verb": "patch"}))) == 1


@pytest.mark.parametrize(("durable_commits", "synchronous"), [(True, 2), (False, 1)])
async def test_commits_are_fsynced_when_the_span_log_relies_on_it(
    tmp_path: Path, durable_commits: bool, synchronous: int
) -> None:
    # The span log moves past spans once write returns: durable commits fsync the WAL at each commit (FULL = 2);
    # otherwise (spool.fsync interval or never) NORMAL (1) leaves it to checkpoints.
    async with SqliteStore(str(tmp_path / "t.db"), durable_commits=durable_commits) as store:
        await store.write([object_span(POD, W0)])
        mode = await store._run(lambda: scalar(store._connection(), "PRAGMA synchronous"))
        assert mode == synchronous


async def test_a_stored_span_given_twice_in_one_batch_ends_as_the_later_copy(store: SqliteStore) -> None:
    await store.write([object_span(POD, W0), child(POD, W0, "a1", verb="update", code=1)])
    await store.write([child(POD, W0, "a1", verb="patch", code=2), child(POD, W0, "a1", verb="delete", code=3)])
    (audit,) = [span for span in await store.get_trace(object_trace_id(POD.key, W0)) if span.service == "audit"]
    assert (audit.attributes["verb"], audit.attributes["code"]) == ("delete", 3)
    assert await store.tag_values("verb") == ["delete"]
    assert await store.tag_values("code") == ["3"]
    assert len(await store.find_traces(whole_range(tags={"verb": "delete", "code": "3"}, service="audit"))) == 1
    for tags in ({"verb": "update"}, {"verb": "patch"}, {"code": "2"}):
        assert await store.find_traces(whole_range(tags=tags)) == [], tags

    def check() -> None:
        store._connection().execute("INSERT INTO span_terms (span_terms, rank) VALUES ('integrity-check', 0)")

    await store._run(check)


class _Label(str):
    """A str subclass with its own text, as a plugin's enum might be."""

    def __str__(self) -> str:
        return f"label:{super().__str__()}"


def _awkward_attributes(count: int, *, subclass: bool = True) -> list[dict[str, object]]:
    """Attributes of ``count`` spans with every kind of value a column can hold, mixed within columns (a str
    subclass only with ``subclass``: the store's encoder refuses it, and drops such a span)."""
    attributes: list[dict[str, object]] = []
    for number in range(count):
        attrs: dict[str, object] = {
            "cluster": "prod",
            "name": f"web-{number % 7}",
            "auditID": f"{number:08x}-0000-4000-8000-000000000000",  # unique: no cache
            "verb": ("update", "patch", "get")[number % 3],  # repeated: through the cache
            "responseCode": (200, 201, 409)[number % 3],
            "flag": (True, 1, 1.0, "1", False, 0)[number % 6],  # equal as Python values, not as texts
            "sourceIPs": [f"10.0.0.{number % 4}", "10.0.0.9"] if number % 5 else [],
            "agent": "kubectl/v1.30 " + "x" * (number % 3) * 20,  # some beyond the digest's length
            "text": "é" * (14 + number % 2),  # 28 or 30 bytes of UTF-8, under the digest's length
            "wide": "中" * 14,  # 42 bytes: a digest although 14 characters
            "edge": "a" * (40 + number % 2),  # either side of the digest's length
            "nothing": None,
        }
        if subclass:
            attrs["label"] = _Label("blue")
        if number % 4 == 0:
            attrs["namespace"] = 7  # an object key whose value is not text: one of the span's own tags
        elif number % 4 == 1:
            attrs["namespace"] = "default"
        if number % 2:
            del attrs["verb"]  # absent from some spans
        attributes.append(attrs)
    return attributes


def test_a_batch_is_indexed_exactly_as_its_spans_one_by_one() -> None:
    prefixes: dict[str, str] = {}

    def prefix_of(service: str, key: str) -> str | None:
        if key == "nothing":
            return None  # a key without a number has no terms
        return prefixes.setdefault(f"{service}/{key}", sqlite_store.key_prefix(len(prefixes) + 1))

    caches: dict[str, dict[object, str]] = {}
    for count in (1, 2, 12, 40):  # small batches take the unique path for every column, larger ones the cache
        for _ in range(2):  # again, from a warm cache
            attributes = _awkward_attributes(count)
            documents = sqlite_store.batch_index("audit", attributes, prefix_of, caches)  # type: ignore[arg-type]
            for attrs, document in zip(attributes, documents, strict=True):
                one_document = sqlite_store.index_terms("audit", attrs, prefix_of)  # type: ignore[arg-type]
                assert sorted(document.split()) == sorted(one_document.split()), attrs


async def test_awkward_batches_are_found_by_each_tag_and_purged_without_a_trace(tmp_path: Path) -> None:
    async with SqliteStore(str(tmp_path / "t.db"), retention_hours=1) as store:
        spans = [object_span(POD, W0)]
        for number, attrs in enumerate(_awkward_attributes(40, subclass=False)):
            span = child(POD, W0, f"a{number}")
            span.attributes = {**span.attributes, **attrs}  # type: ignore[dict-item]
            spans.append(span)
        await store.write(spans)
        whole = whole_range(tags={"flag": "1.0"})
        assert len(await store.find_traces(whole)) == 1
        assert await store.find_traces(whole_range(tags={"flag": "1.00"})) == []
        assert len(await store.find_traces(whole_range(tags={"nothing": "None"}))) == 1
        assert len(await store.find_traces(whole_range(tags={"wide": "中" * 14}))) == 1
        assert len(await store.find_traces(whole_range(tags={"namespace": "default", "verb": "update"}))) == 1
        assert await store.purge_expired(now_ns=(W0 + 4) * WINDOW_NS) == 1

        # The integrity check fails when a deletion's terms differ from what was inserted: the documents were built
        # batch-wise, the deletions span by span.
        assert await checked_span_documents(store) == 0


async def test_a_trace_is_named_by_its_first_span_filled_in_then_by_its_object_span(store: SqliteStore) -> None:
    created = child(DEPLOY, W0, "create", verb="create")
    created.attributes["uid"] = ""  # the create request comes before the object has a uid
    await store.write([created])
    assert [hit.ref.uid for hit in await store.find_traces(whole_range(tags={"name": "web"}))] == [""]
    await store.write([child(DEPLOY, W0, "update", verb="update")])  # a later request knows it
    hits = await store.find_traces(whole_range(tags={"uid": "deploy-uid", "verb": "create"}))
    assert [hit.ref for hit in hits] == [DEPLOY]
    renamed = object_span(dataclasses.replace(DEPLOY, namespace="other"), W0)
    renamed.trace_id = created.trace_id
    await store.write([renamed])  # the object span's tags name the object from now on, filled in or not
    assert await store.find_traces(whole_range(tags={"namespace": "default"})) == []
    assert [hit.ref.namespace for hit in await store.find_traces(whole_range(tags={"uid": "deploy-uid"}))] == ["other"]
    assert await store.tag_values("uid") == ["deploy-uid"]  # never the empty one


@pytest.mark.parametrize("count", [1, 2, 63, 64, 65, 127, 200])
def test_rows_inserted_many_to_a_statement_all_arrive_in_order(count: int) -> None:
    conn = apsw.Connection(":memory:")
    conn.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT)")
    rows = [(number * 7, f"row {number}") for number in range(count)]
    sqlite_store._insert_rows(conn, "INSERT INTO t (a, b)", rows)
    assert list(conn.execute("SELECT a, b FROM t ORDER BY rowid")) == rows
    sqlite_store._insert_rows(conn, "INSERT INTO t (a, b)", [])  # nothing to insert is no statement at all
    with pytest.raises(apsw.ConstraintError):  # a row the table refuses fails the call, as executemany did
        sqlite_store._insert_rows(conn, "INSERT INTO t (a, b)", [(count * 7 + 1, "new"), (0, "taken")])


async def test_a_tag_key_without_utf8_drops_its_span_alone(tmp_path: Path) -> None:
    metrics = Metrics()
    async with SqliteStore(str(tmp_path / "t.db"), metrics=metrics) as store:
        good = [object_span(POD, W0), child(POD, W0, "ok", verb="update")]
        bad_key = child(POD, W0, "bad-key", verb="update")
        bad_key.attributes["\udc80"] = "x"  # a key no UTF-8 holds: never numbered, so never written to term_keys
        await store.write([good[0], bad_key, good[1]])
        assert sorted(span.span_id for span in await store.get_trace(good[0].trace_id)) == sorted(
            span.span_id for span in good
        )
        assert metrics.registry.get_sample_value("kelemetry_spans_dropped_total", {"writer": "sqlite"}) == 1
        later = child(POD, W0, "later", verb="patch")  # the next batch brings a new key of its own and lands
        later.attributes["reason"] = "fine"
        await store.write([later])
        assert len(await store.find_traces(whole_range(tags={"reason": "fine"}))) == 1
