"""The embedded trace store: one SQLite file, written and read on one dedicated thread.

Tables: ``spans`` (keyed by trace and span id, so a re-delivered span replaces itself), ``traces`` (one row
per raw trace: its time range and the object it belongs to) and ``span_tags`` (every span attribute as text,
keyed by (key, value, trace, span)) so that tag search is an index lookup rather than a scan.

Concurrent ``write`` calls are coalesced: spans that arrive while a transaction is committing go together into
the next one, and each ``write`` returns once its spans are committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import orjson

from kelemetry_py.metrics import Metrics
from kelemetry_py.model import OBJECT_TAGS, SERVICE_OBJECT, AttrValue, LogEntry, ObjectRef, Span
from kelemetry_py.storage import TraceHit, TraceQuery

log = logging.getLogger(__name__)

WRITER_LABEL = "sqlite"
_T = TypeVar("_T")
_U64 = 1 << 64
_I64_MAX = (1 << 63) - 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spans (
    trace_id BLOB NOT NULL,
    span_id INTEGER NOT NULL,
    parent_id INTEGER,
    service TEXT NOT NULL,
    name TEXT NOT NULL,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    error INTEGER NOT NULL,
    status_message TEXT NOT NULL,
    attributes BLOB NOT NULL,
    logs BLOB NOT NULL,
    PRIMARY KEY (trace_id, span_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS traces (
    trace_id BLOB PRIMARY KEY,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    -- 1 once the object span was seen: its tags name the object, other spans' tags are only a stand-in
    has_root INTEGER NOT NULL,
    cluster TEXT NOT NULL,
    grp TEXT NOT NULL,
    version TEXT NOT NULL,
    resource TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    uid TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS traces_by_start ON traces (start_ns);
CREATE INDEX IF NOT EXISTS traces_by_end ON traces (end_ns);
CREATE TABLE IF NOT EXISTS span_tags (
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    trace_id BLOB NOT NULL,
    span_id INTEGER NOT NULL,
    service TEXT NOT NULL,
    PRIMARY KEY (key, value, trace_id, span_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS span_tags_by_span ON span_tags (trace_id, span_id);
"""

_UPSERT_TRACE = """
INSERT INTO traces
    (trace_id, start_ns, end_ns, has_root, cluster, grp, version, resource, namespace, name, uid)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (trace_id) DO UPDATE SET
    start_ns = min(traces.start_ns, excluded.start_ns),
    end_ns = max(traces.end_ns, excluded.end_ns),
    cluster = iif(excluded.has_root > traces.has_root, excluded.cluster, traces.cluster),
    grp = iif(excluded.has_root > traces.has_root, excluded.grp, traces.grp),
    version = iif(excluded.has_root > traces.has_root, excluded.version, traces.version),
    resource = iif(excluded.has_root > traces.has_root, excluded.resource, traces.resource),
    namespace = iif(excluded.has_root > traces.has_root, excluded.namespace, traces.namespace),
    name = iif(excluded.has_root > traces.has_root, excluded.name, traces.name),
    uid = iif(excluded.has_root > traces.has_root, excluded.uid, traces.uid),
    has_root = max(traces.has_root, excluded.has_root)
"""


_OBJECT_WIDE_TAGS = frozenset({"cluster", "group", "version", "resource", "namespace"})


def _signed(unsigned: int) -> int:
    """SQLite integers are signed 64-bit; span ids use all 64 bits."""
    return unsigned - _U64 if unsigned > _I64_MAX else unsigned


def _unsigned(signed: int) -> int:
    return signed + _U64 if signed < 0 else signed


def tag_texts(value: AttrValue) -> list[str]:
    """The strings a tag value is searchable by: Jaeger-style text, and each item of a list."""
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, list):
        return [str(item) for item in value]
    return [str(value)]


def _trace_row(trace_id: bytes, spans: list[Span]) -> tuple[Any, ...]:
    """The traces row a batch of one trace's spans implies; the object span's tags name the object."""
    root = next((span for span in spans if span.service == SERVICE_OBJECT and span.parent_id is None), None)
    named_by = root or spans[0]
    tags = named_by.attributes
    ref = [str(tags.get(key, "")) for key in OBJECT_TAGS]
    return (
        trace_id,
        min(span.start_ns for span in spans),
        max(span.end_ns for span in spans),
        1 if root is not None else 0,
        *ref,
        str(tags.get("uid", "")),
    )


def find_traces_sql(query: TraceQuery) -> tuple[str, list[Any]]:
    """The statement behind find_traces: tag matches come from the span_tags index, never a table scan."""
    sql = [
        "SELECT t.trace_id, t.start_ns, t.end_ns, t.cluster, t.grp, t.version, t.resource, t.namespace,",
        "t.name, t.uid FROM traces t WHERE t.end_ns >= ? AND t.start_ns <= ?",
    ]
    params: list[Any] = [query.start_ns, query.end_ns]
    # The first tag drives the search: put tags every span of an object shares (cluster, resource...) last,
    # so a selective one (name, verb, auditID) narrows the candidates first.
    tags = sorted(query.tags.items(), key=lambda item: item[0] in _OBJECT_WIDE_TAGS)
    if tags:
        # One span must carry every tag: join the tag rows on the same (trace, span).
        first_key, first_value = tags[0]
        inner = ["SELECT a.trace_id FROM span_tags a"]
        inner_params: list[Any] = []
        for i, (key, value) in enumerate(tags[1:]):
            alias = f"t{i}"
            inner.append(
                f"JOIN span_tags {alias} ON {alias}.key = ? AND {alias}.value = ?"
                f" AND {alias}.trace_id = a.trace_id AND {alias}.span_id = a.span_id"
            )
            inner_params += [key, str(value)]
        inner.append("WHERE a.key = ? AND a.value = ?")
        inner_params += [first_key, str(first_value)]
        if query.service:
            inner.append("AND a.service = ?")
            inner_params.append(query.service)
        sql.append(f"AND t.trace_id IN ({' '.join(inner)})")
        params += inner_params
    elif query.service:
        sql.append("AND EXISTS (SELECT 1 FROM spans s WHERE s.trace_id = t.trace_id AND s.service = ?)")
        params.append(query.service)
    sql.append("ORDER BY t.start_ns DESC, t.end_ns DESC LIMIT ?")
    params.append(query.limit)
    return " ".join(sql), params


class SqliteStore:
    """SpanWriter and TraceReader on one SQLite file; ``await store.open()`` (or ``async with``) first."""

    def __init__(
        self,
        path: str,
        *,
        retention_hours: float = 0,
        metrics: Metrics | None = None,
        retention_check_seconds: float = 300.0,
    ) -> None:
        self.path = path
        self.retention_ns = int(retention_hours * 3600 * 1_000_000_000)
        self._metrics = metrics
        self._retention_check_seconds = retention_check_seconds
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # touched only on the executor's thread
        self._pending: list[Span] = []
        self._pending_done: asyncio.Future[None] | None = None
        self._committer: asyncio.Task[None] | None = None
        self._retention_task: asyncio.Task[None] | None = None
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def open(self) -> SqliteStore:
        if self._executor is not None:
            return self
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        try:
            await self._run(self._open_sync)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        if self.retention_ns > 0:
            self._retention_task = asyncio.get_running_loop().create_task(
                self._retention_loop(), name="sqlite-retention"
            )
        return self

    async def close(self) -> None:
        if self._closed or self._executor is None:
            self._closed = True
            return
        self._closed = True
        if self._retention_task is not None:
            self._retention_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retention_task
        await self.flush()
        await self._run(self._close_sync)
        self._executor.shutdown(wait=True)
        self._executor = None

    async def __aenter__(self) -> SqliteStore:
        return await self.open()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _open_sync(self) -> None:
        if self.path != ":memory:":
            Path(self.path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        # With WAL, NORMAL loses at most the last commits on power loss, never consistency.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA cache_size=-65536")  # 64 MiB: the tag index is hot on every write
        conn.executescript(_SCHEMA)
        self._conn = conn

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _run(self, func: Callable[..., _T], *args: Any) -> _T:
        if self._executor is None:
            raise RuntimeError("SqliteStore is not open: await store.open() first")
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    # -- writing ---------------------------------------------------------------------------------------------

    async def write(self, spans: Sequence[Span]) -> None:
        if self._closed:
            raise RuntimeError("SqliteStore is closed")
        if self._executor is None:
            raise RuntimeError("SqliteStore is not open: await store.open() first")
        if not spans:
            return
        if self._pending_done is None:
            self._pending_done = asyncio.get_running_loop().create_future()
        done = self._pending_done
        self._pending.extend(spans)
        if self._committer is None or self._committer.done():
            self._committer = asyncio.get_running_loop().create_task(self._commit_pending())
        await asyncio.shield(done)

    async def flush(self) -> None:
        """Writes are committed before ``write`` returns; this waits for ones still in flight."""
        while self._committer is not None and not self._committer.done():
            await asyncio.shield(self._committer)

    async def _commit_pending(self) -> None:
        while self._pending:
            spans, self._pending = self._pending, []
            done, self._pending_done = self._pending_done, None
            assert done is not None
            try:
                await self._run(self._write_sync, spans)
            except Exception as exc:
                log.exception("writing %d spans to %s failed", len(spans), self.path)
                if self._metrics is not None:
                    self._metrics.export_errors.labels(WRITER_LABEL).inc()
                done.set_exception(exc)
                done.exception()  # retrieved here, so no "never retrieved" warning when no writer awaits
            else:
                if self._metrics is not None:
                    self._metrics.spans_exported.labels(WRITER_LABEL).inc(len(spans))
                done.set_result(None)

    def _write_sync(self, spans: list[Span]) -> None:
        conn = self._connection()
        by_trace: dict[bytes, list[Span]] = {}
        span_rows = []
        tag_rows = []
        keys = []
        for span in spans:
            trace_id = span.trace_id.to_bytes(16, "big")
            span_id = _signed(span.span_id)
            by_trace.setdefault(trace_id, []).append(span)
            keys.append((trace_id, span_id))
            span_rows.append(
                (
                    trace_id,
                    span_id,
                    None if span.parent_id is None else _signed(span.parent_id),
                    span.service,
                    span.name,
                    span.start_ns,
                    span.end_ns,
                    1 if span.error else 0,
                    span.status_message,
                    orjson.dumps(span.attributes),
                    orjson.dumps([[entry.time_ns, entry.name, entry.fields] for entry in span.logs]),
                )
            )
            for key, value in span.attributes.items():
                for text in tag_texts(value):
                    tag_rows.append((key, text, trace_id, span_id, span.service))
        conn.execute("BEGIN IMMEDIATE")
        try:
            # A re-delivered span may carry different tags; its old ones must not stay searchable.
            conn.executemany("DELETE FROM span_tags WHERE trace_id = ? AND span_id = ?", keys)
            conn.executemany(
                "INSERT OR REPLACE INTO spans VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", span_rows
            )
            conn.executemany("INSERT OR IGNORE INTO span_tags VALUES (?, ?, ?, ?, ?)", tag_rows)
            conn.executemany(
                _UPSERT_TRACE, [_trace_row(trace_id, group) for trace_id, group in by_trace.items()]
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("SqliteStore is not open")
        return self._conn

    # -- reading ---------------------------------------------------------------------------------------------

    async def find_traces(self, query: TraceQuery) -> list[TraceHit]:
        if query.limit <= 0:
            return []
        return await self._run(self._find_sync, query)

    def _find_sync(self, query: TraceQuery) -> list[TraceHit]:
        rows = self._connection().execute(*find_traces_sql(query)).fetchall()
        return [
            TraceHit(
                trace_id=int.from_bytes(row[0], "big"),
                ref=ObjectRef(row[3], row[4], row[5], row[6], row[7], row[8], uid=row[9]),
                start_ns=row[1],
                end_ns=row[2],
            )
            for row in rows
        ]

    async def get_trace(self, trace_id: int) -> list[Span]:
        return await self._run(self._get_trace_sync, trace_id)

    def _get_trace_sync(self, trace_id: int) -> list[Span]:
        rows = self._connection().execute(
            "SELECT span_id, parent_id, service, name, start_ns, end_ns, error, status_message,"
            " attributes, logs FROM spans WHERE trace_id = ? ORDER BY start_ns, span_id",
            (trace_id.to_bytes(16, "big"),),
        )
        return [
            Span(
                trace_id=trace_id,
                span_id=_unsigned(row[0]),
                parent_id=None if row[1] is None else _unsigned(row[1]),
                service=row[2],
                name=row[3],
                start_ns=row[4],
                end_ns=row[5],
                error=bool(row[6]),
                status_message=row[7],
                attributes=orjson.loads(row[8]),
                logs=[LogEntry(time_ns, name, fields) for time_ns, name, fields in orjson.loads(row[9])],
            )
            for row in rows
        ]

    async def tag_values(self, key: str, start_ns: int | None = None, end_ns: int | None = None) -> list[str]:
        """Distinct values of one tag, sorted; with a time range, only from traces overlapping it."""
        return await self._run(self._tag_values_sync, key, start_ns, end_ns)

    def _tag_values_sync(self, key: str, start_ns: int | None, end_ns: int | None) -> list[str]:
        conn = self._connection()
        if start_ns is None and end_ns is None:
            rows = conn.execute("SELECT DISTINCT value FROM span_tags WHERE key = ? ORDER BY value", (key,))
        else:
            rows = conn.execute(
                "SELECT DISTINCT st.value FROM span_tags st JOIN traces t ON t.trace_id = st.trace_id"
                " WHERE st.key = ? AND t.end_ns >= ? AND t.start_ns <= ? ORDER BY st.value",
                (
                    key,
                    start_ns if start_ns is not None else -(1 << 63),
                    end_ns if end_ns is not None else _I64_MAX,
                ),
            )
        return [row[0] for row in rows]

    # -- retention -------------------------------------------------------------------------------------------

    async def purge_expired(self, now_ns: int | None = None) -> int:
        """Delete traces that ended more than the retention period ago; returns how many. 0 keeps all."""
        if self.retention_ns <= 0:
            return 0
        cutoff = (now_ns if now_ns is not None else time.time_ns()) - self.retention_ns
        return await self._run(self._purge_sync, cutoff)

    def _purge_sync(self, cutoff_ns: int) -> int:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            expired = [
                row[0] for row in conn.execute("SELECT trace_id FROM traces WHERE end_ns < ?", (cutoff_ns,))
            ]
            ids = [(trace_id,) for trace_id in expired]
            conn.executemany("DELETE FROM span_tags WHERE trace_id = ?", ids)
            conn.executemany("DELETE FROM spans WHERE trace_id = ?", ids)
            conn.executemany("DELETE FROM traces WHERE trace_id = ?", ids)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return len(expired)

    async def _retention_loop(self) -> None:
        while True:
            try:
                purged = await self.purge_expired()
                if purged:
                    log.info("retention: deleted %d traces from %s", purged, self.path)
            except Exception:
                log.exception("retention pass on %s failed", self.path)
            await asyncio.sleep(self._retention_check_seconds)
