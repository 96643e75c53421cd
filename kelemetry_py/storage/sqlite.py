"""The embedded trace store: one SQLite file in WAL mode, written on one thread and read on others.

Tables: ``traces`` (one row per raw trace: a small integer id, its time range and the object it belongs to),
``spans`` (keyed by trace id and span id, so a re-delivered span replaces itself; the span's own attributes and
logs as one MessagePack body), ``tag_sets`` (the object tags, cluster to uid, that every span of an object
repeats, stored once and referred to by id), and two tag indexes so that tag search is an index lookup:
``trace_tags`` holds the object tags once per trace, ``span_tags`` every other attribute per span.

Concurrent ``write`` calls are coalesced: spans that arrive while a transaction is committing go together into
the next one, and each ``write`` returns once its spans are committed, or raises if they were not. A span that
cannot be represented (a time or id beyond 64 bits) is dropped and counted, never failing the spans beside it.
Reads run on their own connections and threads, so a query never waits for a commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import msgspec

from kelemetry_py.metrics import Metrics
from kelemetry_py.model import OBJECT_TAGS, SERVICE_OBJECT, Attributes, AttrValue, LogEntry, ObjectRef, Span
from kelemetry_py.storage import TraceHit, TraceQuery

log = logging.getLogger(__name__)

WRITER_LABEL = "sqlite"
SCHEMA_VERSION = 2
READ_THREADS = 2
_T = TypeVar("_T")
_U64 = 1 << 64
_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1
# Tags every span of one object carries: indexed once per trace, stored once per distinct set.
OBJECT_KEYS = (*OBJECT_TAGS, "uid")
_OBJECT_KEY_SET = frozenset(OBJECT_KEYS)
# Among object tags, those that narrow a search most go first.
_SELECTIVE_OBJECT_KEYS = ("uid", "name")
_TAG_SET_CACHE = 100_000
# Tags are counted up to this many matches to pick the rarest; when all reach it, traces are walked newest first.
_DENSE_MATCHES = 5000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS traces (
    tid INTEGER PRIMARY KEY,
    trace_id BLOB NOT NULL UNIQUE,
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
);
CREATE INDEX IF NOT EXISTS traces_by_start ON traces (start_ns);
CREATE INDEX IF NOT EXISTS traces_by_end ON traces (end_ns);
CREATE TABLE IF NOT EXISTS tag_sets (
    id INTEGER PRIMARY KEY,
    body BLOB NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS spans (
    tid INTEGER NOT NULL,
    span_id INTEGER NOT NULL,
    parent_id INTEGER,
    service TEXT NOT NULL,
    name TEXT NOT NULL,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    error INTEGER NOT NULL,
    status_message TEXT NOT NULL,
    tag_set INTEGER NOT NULL,
    body BLOB NOT NULL,
    -- a rowid table: rows of about a kilobyte fill its pages, where a WITHOUT ROWID tree would leave them half empty
    UNIQUE (tid, span_id)
);
CREATE TABLE IF NOT EXISTS trace_tags (
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    tid INTEGER NOT NULL,
    PRIMARY KEY (key, value, tid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS span_tags (
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    tid INTEGER NOT NULL,
    span_id INTEGER NOT NULL,
    PRIMARY KEY (key, value, tid, span_id)
) WITHOUT ROWID;
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
RETURNING tid
"""
_SPAN_COLUMNS = "(tid, span_id, parent_id, service, name, start_ns, end_ns, error, status_message, tag_set, body)"
_INSERT_SPAN = f"INSERT OR IGNORE INTO spans {_SPAN_COLUMNS} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_REPLACE_SPAN = f"INSERT OR REPLACE INTO spans {_SPAN_COLUMNS} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_SPAN_TAG = "INSERT OR IGNORE INTO span_tags VALUES (?, ?, ?, ?)"

_encode = msgspec.msgpack.Encoder().encode
_decode_body = msgspec.msgpack.Decoder(tuple[dict[str, Any], list[tuple[int, str, dict[str, Any]]]]).decode
_decode_tag_set = msgspec.msgpack.Decoder(dict[str, str]).decode


class _Unrepresentable(ValueError):
    """A span the store cannot hold as it is (a time or an id outside 64 bits)."""


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


def _split(attributes: Attributes) -> tuple[dict[str, str], dict[str, AttrValue]]:
    """(object tags, the span's other attributes); an object tag that is not text stays with the others."""
    shared: dict[str, str] = {}
    own: dict[str, AttrValue] = {}
    for key, value in attributes.items():
        if key in _OBJECT_KEY_SET and isinstance(value, str):
            shared[key] = value
        else:
            own[key] = value
    return shared, own


def _span_tag_rows(own: dict[str, Any], tid: int, span_id: int) -> list[tuple[str, str, int, int]]:
    rows = []
    for key, value in own.items():
        if type(value) is str:
            rows.append((key, value, tid, span_id))
        else:
            rows.extend((key, text, tid, span_id) for text in tag_texts(value))
    return rows


def find_traces_sql(
    query: TraceQuery, *, driver: tuple[str, str] | None = None, newest_first_scan: bool = False
) -> tuple[str, list[Any]]:
    """The statement behind find_traces: tag matches come from the tag indexes, never a table scan.

    Object tags are the same on every span of a trace and are matched per trace; other tags must all be on one
    span (Jaeger's rule), as must ``service``. The ``driver`` tag (by default the first span tag, else the most
    selective object tag) is looked up first and the rest checked against it; ``newest_first_scan`` walks
    traces newest first instead and checks each, which stops after ``limit`` hits: the better plan when every
    tag matches most traces (verb=update).
    """
    sql = [
        "SELECT t.trace_id, t.start_ns, t.end_ns, t.cluster, t.grp, t.version, t.resource, t.namespace,",
        "t.name, t.uid FROM traces t WHERE t.end_ns >= ? AND t.start_ns <= ?",
    ]
    params: list[Any] = [query.start_ns, query.end_ns]
    items = [(key, str(value)) for key, value in query.tags.items()]
    span_level = [item for item in items if item[0] not in _OBJECT_KEY_SET]
    object_level = sorted(
        (item for item in items if item[0] in _OBJECT_KEY_SET),
        key=lambda item: item[0] not in _SELECTIVE_OBJECT_KEYS,
    )
    if driver is None or driver not in items:
        driver = span_level[0] if span_level else object_level[0] if object_level else None
    inner: list[str] = []
    inner_params: list[Any] = []
    if driver in span_level:
        inner.append(_span_match("a", span_level, driver, query.service, inner_params))
        for key, value in object_level:
            inner.append("AND EXISTS (SELECT 1 FROM trace_tags o WHERE o.key = ? AND o.value = ? AND o.tid = a.tid)")
            inner_params += [key, value]
    elif driver is not None:
        inner.append("SELECT a.tid FROM trace_tags a")
        others = [item for item in object_level if item != driver]
        for i, (key, value) in enumerate(others):
            alias = f"o{i}"
            inner.append(f"JOIN trace_tags {alias} ON {alias}.key = ? AND {alias}.value = ? AND {alias}.tid = a.tid")
            inner_params += [key, value]
        inner.append("WHERE a.key = ? AND a.value = ?")
        inner_params += list(driver)
        if span_level:
            inner.append("AND EXISTS (")
            inner.append(_span_match("s", span_level, span_level[0], query.service, inner_params))
            inner.append("AND s.tid = a.tid)")
        elif query.service:
            inner.append("AND EXISTS (SELECT 1 FROM spans sp WHERE sp.tid = a.tid AND sp.service = ?)")
            inner_params.append(query.service)
    if inner and newest_first_scan:
        sql.append(f"AND EXISTS ({' '.join(inner)} AND a.tid = t.tid)")
        params += inner_params
    elif inner:
        sql.append(f"AND t.tid IN ({' '.join(inner)})")
        params += inner_params
    elif query.service:
        sql.append("AND EXISTS (SELECT 1 FROM spans sp WHERE sp.tid = t.tid AND sp.service = ?)")
        params.append(query.service)
    sql.append("ORDER BY t.start_ns DESC, t.end_ns DESC LIMIT ?")
    params.append(query.limit)
    return " ".join(sql), params


def _span_match(
    alias: str, tags: list[tuple[str, str]], first: tuple[str, str], service: str | None, params: list[Any]
) -> str:
    """``SELECT <alias>.tid`` of spans carrying every tag (and the service), looked up from ``first``."""
    sql = [f"SELECT {alias}.tid FROM span_tags {alias}"]
    for i, (key, value) in enumerate(item for item in tags if item != first):
        other = f"{alias}{i}"
        sql.append(
            f"JOIN span_tags {other} ON {other}.key = ? AND {other}.value = ?"
            f" AND {other}.tid = {alias}.tid AND {other}.span_id = {alias}.span_id"
        )
        params += [key, value]
    if service:
        sql.append(f"JOIN spans {alias}p ON {alias}p.tid = {alias}.tid AND {alias}p.span_id = {alias}.span_id")
        sql.append(f"AND {alias}p.service = ?")
        params.append(service)
    sql.append(f"WHERE {alias}.key = ? AND {alias}.value = ?")
    params += list(first)
    return " ".join(sql)


class _Encoded:
    """One span as rows, made on the writer thread; the trace's integer id is filled in at commit."""

    __slots__ = ("own", "row", "shared", "shared_body", "span", "trace_key")

    def __init__(self, span: Span) -> None:
        for value in (span.start_ns, span.end_ns):
            if not _I64_MIN <= value <= _I64_MAX:
                raise _Unrepresentable(f"time {value} ns is beyond 64 bits")
        if not 0 <= span.trace_id < 1 << 128 or not 0 <= span.span_id < _U64:
            raise _Unrepresentable("trace or span id out of range")
        if span.parent_id is not None and not 0 <= span.parent_id < _U64:
            raise _Unrepresentable("parent id out of range")
        self.span = span
        self.trace_key = span.trace_id.to_bytes(16, "big")
        self.shared, self.own = _split(span.attributes)
        self.shared_body = _encode(self.shared)
        try:
            body = _encode((self.own, [(entry.time_ns, entry.name, entry.fields) for entry in span.logs]))
        except (OverflowError, TypeError, ValueError, msgspec.EncodeError) as exc:  # ValueError: bad UTF-16
            raise _Unrepresentable(f"attributes or logs: {exc}") from exc
        self.row: list[Any] = [
            0,
            _signed(span.span_id),
            None if span.parent_id is None else _signed(span.parent_id),
            span.service,
            span.name,
            span.start_ns,
            span.end_ns,
            1 if span.error else 0,
            span.status_message,
            0,  # the tag set's id, filled in at commit
            body,
        ]


def _trace_row(trace_key: bytes, spans: list[Span]) -> tuple[Any, ...]:
    """The traces row a batch of one trace's spans implies; the object span's tags name the object."""
    root = next((span for span in spans if span.service == SERVICE_OBJECT and span.parent_id is None), None)
    named_by = root or spans[0]
    tags = named_by.attributes
    ref = [str(tags.get(key, "")) for key in OBJECT_TAGS]
    return (
        trace_key,
        min(span.start_ns for span in spans),
        max(span.end_ns for span in spans),
        1 if root is not None else 0,
        *ref,
        str(tags.get("uid", "")),
    )


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
        self._readers: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # touched only on the writer's thread
        self._local = threading.local()  # each read thread's own connection
        self._read_conns: list[sqlite3.Connection] = []
        self._read_conns_lock = threading.Lock()
        self._tag_set_ids: dict[bytes, int] = {}  # writer thread only
        self._indexed: dict[tuple[int, int], None] = {}  # (trace, tag set) in trace_tags; writer thread only
        self._tag_sets: dict[int, dict[str, str]] = {}  # read threads; a lost race only repeats a lookup
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
        if self.path != ":memory:":  # a memory database is private to its connection: reads use the writer's
            self._readers = ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="sqlite-read")
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
        if self._readers is not None:
            self._readers.shutdown(wait=True)
            self._readers = None
        with self._read_conns_lock:
            for conn in self._read_conns:
                conn.close()
            self._read_conns.clear()
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
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            old = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'span_tags'").fetchone()
            if version != SCHEMA_VERSION and (version or old):
                raise RuntimeError(
                    f"{self.path} holds traces in an older store format ({version}); move it aside to start afresh"
                )
            # Before the first table exists: 16 KiB pages hold whole spans with little slack at the end of a page.
            conn.execute("PRAGMA page_size=16384")
            conn.execute("PRAGMA journal_mode=WAL")
            # With WAL, NORMAL loses at most the last commits on power loss, never consistency.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA cache_size=-16384")  # 16 MiB: tag rows go in sorted, so few index pages are hot
            # Checkpoint every 64 MiB of WAL rather than 4: hot index pages are copied back once, not sixteen times.
            conn.execute("PRAGMA wal_autocheckpoint=4096")
            conn.execute("PRAGMA journal_size_limit=67108864")
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _run(self, func: Callable[..., _T], *args: Any) -> _T:
        """Run on the writer's thread (writes, retention, and reads of a memory database)."""
        if self._executor is None:
            raise RuntimeError("SqliteStore is not open: await store.open() first")
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    async def _read(self, func: Callable[..., _T], *args: Any) -> _T:
        """Run a read on a read thread with its own connection, beside whatever the writer is doing."""
        if self._readers is None:
            return await self._run(lambda: func(self._connection(), *args))
        return await asyncio.get_running_loop().run_in_executor(
            self._readers, lambda: func(self._read_connection(), *args)
        )

    def _read_connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA query_only=1")
            conn.execute("PRAGMA cache_size=-8192")  # 8 MiB each
            self._local.conn = conn
            with self._read_conns_lock:
                self._read_conns.append(conn)
        return conn

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
                dropped = await self._run(self._write_sync, spans)
            except Exception as exc:
                log.exception("writing %d spans to %s failed", len(spans), self.path)
                if self._metrics is not None:
                    self._metrics.export_errors.labels(WRITER_LABEL).inc()
                done.set_exception(exc)
                done.exception()  # retrieved here, so no "never retrieved" warning when no writer awaits
            else:
                if self._metrics is not None:
                    self._metrics.spans_exported.labels(WRITER_LABEL).inc(len(spans) - dropped)
                    if dropped:
                        self._metrics.spans_dropped.labels(WRITER_LABEL).inc(dropped)
                done.set_result(None)

    def _write_sync(self, spans: list[Span]) -> int:
        """Commit ``spans`` in one transaction; returns how many were dropped as unrepresentable."""
        encoded: list[_Encoded] = []
        dropped = 0
        for span in spans:
            try:
                encoded.append(_Encoded(span))
            except _Unrepresentable as exc:
                dropped += 1
                log.warning("dropping span %016x of trace %032x: %s", span.span_id, span.trace_id, exc)
        if not encoded:
            return dropped
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            try:
                self._insert(conn, encoded)
            except (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.DataError, OverflowError, ValueError):
                # Something in one span only the database objects to: find it span by span, keep the rest.
                conn.execute("ROLLBACK")
                self._forget_uncommitted()  # ids handed out by the rolled-back transaction are void
                conn.execute("BEGIN IMMEDIATE")
                dropped += self._insert_one_by_one(conn, encoded)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._forget_uncommitted()
            raise
        return dropped

    def _insert_one_by_one(self, conn: sqlite3.Connection, encoded: list[_Encoded]) -> int:
        dropped = 0
        for item in encoded:
            conn.execute("SAVEPOINT one_span")
            try:
                self._insert(conn, [item])
            except (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.DataError, OverflowError, ValueError):
                conn.execute("ROLLBACK TO one_span")
                self._forget_uncommitted()
                dropped += 1
                log.warning("dropping span %016x of trace %032x: not storable", item.span.span_id, item.span.trace_id)
            conn.execute("RELEASE one_span")
        return dropped

    def _forget_uncommitted(self) -> None:
        """Ids and index rows a rolled-back transaction made do not exist: forget what was remembered of them."""
        self._tag_set_ids.clear()
        self._indexed.clear()

    def _tag_set_id(self, conn: sqlite3.Connection, body: bytes) -> int:
        found = self._tag_set_ids.get(body)
        if found is None:
            row = conn.execute(
                "INSERT INTO tag_sets (body) VALUES (?) ON CONFLICT (body) DO UPDATE SET body = body RETURNING id",
                (body,),
            ).fetchone()
            found = int(row[0])
            if len(self._tag_set_ids) >= _TAG_SET_CACHE:
                self._tag_set_ids.clear()
            self._tag_set_ids[body] = found
        return found

    def _insert(self, conn: sqlite3.Connection, encoded: list[_Encoded]) -> None:
        by_trace: dict[bytes, list[_Encoded]] = {}
        for item in encoded:
            by_trace.setdefault(item.trace_key, []).append(item)
        span_rows: list[list[Any]] = []
        trace_tag_rows: set[tuple[str, str, int]] = set()
        for trace_key, items in by_trace.items():
            tid = int(conn.execute(_UPSERT_TRACE, _trace_row(trace_key, [item.span for item in items])).fetchone()[0])
            for item in items:
                row = item.row
                row[0] = tid
                row[9] = tag_set = self._tag_set_id(conn, item.shared_body)
                span_rows.append(row)
                if (tid, tag_set) not in self._indexed:  # a trace's spans share their object tags
                    self._indexed[tid, tag_set] = None
                    trace_tag_rows.update((key, value, tid) for key, value in item.shared.items())
        if len(self._indexed) > _TAG_SET_CACHE:
            self._indexed.clear()
        before = conn.total_changes
        conn.executemany(_INSERT_SPAN, span_rows)
        if conn.total_changes - before != len(span_rows):
            # Some spans were there already (a re-delivery, or a span rewritten with other tags).
            self._rewrite_existing(conn, encoded)
        tag_rows: list[tuple[str, str, int, int]] = []
        for item in encoded:
            tag_rows += _span_tag_rows(item.own, item.row[0], item.row[1])
        tag_rows.sort()  # in index order: each B-tree page is visited once per batch, not once per row
        conn.executemany(_INSERT_SPAN_TAG, tag_rows)
        conn.executemany("INSERT OR IGNORE INTO trace_tags VALUES (?, ?, ?)", trace_tag_rows)

    def _rewrite_existing(self, conn: sqlite3.Connection, encoded: list[_Encoded]) -> None:
        """Spans stored with other content than this batch gives them: replace them, and unindex tags they lost."""
        for item in encoded:
            tid, span_id = item.row[0], item.row[1]
            stored = conn.execute(
                "SELECT parent_id, service, name, start_ns, end_ns, error, status_message, tag_set, body FROM spans"
                " WHERE tid = ? AND span_id = ?",
                (tid, span_id),
            ).fetchone()
            if stored is None or list(stored) == item.row[2:]:
                continue
            old_own, _ = _decode_body(stored[8])
            kept = set(_span_tag_rows(item.own, tid, span_id))
            conn.executemany(
                "DELETE FROM span_tags WHERE key = ? AND value = ? AND tid = ? AND span_id = ?",
                [tag for tag in _span_tag_rows(old_own, tid, span_id) if tag not in kept],
            )
            conn.execute(_REPLACE_SPAN, item.row)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("SqliteStore is not open")
        return self._conn

    # -- reading ---------------------------------------------------------------------------------------------

    async def find_traces(self, query: TraceQuery) -> list[TraceHit]:
        if query.limit <= 0:
            return []
        return await self._read(self._find_sync, query)

    @staticmethod
    def _find_sync(conn: sqlite3.Connection, query: TraceQuery) -> list[TraceHit]:
        # The tag matching fewest rows drives (counted up to a cap); when every tag is common, walk newest first.
        driver: tuple[str, str] | None = None
        dense = False
        selective = [(key, str(value)) for key, value in query.tags.items() if key in _SELECTIVE_OBJECT_KEYS]
        if selective:
            driver = selective[0]  # one object's name: no need to count
        elif query.tags:
            fewest = _DENSE_MATCHES
            for key, value in ((key, str(value)) for key, value in query.tags.items()):
                table = "trace_tags" if key in _OBJECT_KEY_SET else "span_tags"
                matches = conn.execute(
                    f"SELECT count(*) FROM (SELECT 1 FROM {table} WHERE key = ? AND value = ? LIMIT ?)",
                    (key, value, fewest),
                ).fetchone()[0]
                if matches < fewest:
                    driver, fewest = (key, value), matches
            dense = driver is None
        rows = conn.execute(*find_traces_sql(query, driver=driver, newest_first_scan=dense)).fetchall()
        return [
            TraceHit(
                trace_id=int.from_bytes(row[0], "big"),
                ref=ObjectRef(row[3], row[4], row[5], row[6], row[7], row[8], uid=row[9]),
                start_ns=row[1],
                end_ns=row[2],
            )
            for row in rows
        ]

    async def find_traces_many(self, queries: Sequence[TraceQuery]) -> list[list[TraceHit]]:
        def find_all(conn: sqlite3.Connection) -> list[list[TraceHit]]:
            return [self._find_sync(conn, query) if query.limit > 0 else [] for query in queries]

        return await self._read(find_all)

    async def get_traces(self, trace_ids: Sequence[int]) -> dict[int, list[Span]]:
        wanted = sorted({trace_id for trace_id in trace_ids if 0 <= trace_id < 1 << 128})
        return await self._read(self._get_traces_sync, wanted) if wanted else {}

    async def get_trace(self, trace_id: int) -> list[Span]:
        if not 0 <= trace_id < 1 << 128:
            return []
        return await self._read(self._get_trace_sync, trace_id)

    def _tag_set(self, conn: sqlite3.Connection, tag_set: int) -> dict[str, str]:
        found = self._tag_sets.get(tag_set)
        if found is None:
            row = conn.execute("SELECT body FROM tag_sets WHERE id = ?", (tag_set,)).fetchone()
            found = _decode_tag_set(row[0]) if row else {}
            if len(self._tag_sets) >= _TAG_SET_CACHE:
                self._tag_sets.clear()
            self._tag_sets[tag_set] = found
        return found

    def _get_trace_sync(self, conn: sqlite3.Connection, trace_id: int) -> list[Span]:
        return self._get_traces_sync(conn, [trace_id]).get(trace_id, [])

    def _get_traces_sync(self, conn: sqlite3.Connection, trace_ids: list[int]) -> dict[int, list[Span]]:
        found: dict[int, list[Span]] = {}
        for start in range(0, len(trace_ids), 500):
            chunk = trace_ids[start : start + 500]
            rows = conn.execute(
                "SELECT t.trace_id, s.span_id, s.parent_id, s.service, s.name, s.start_ns, s.end_ns, s.error,"
                " s.status_message, s.tag_set, s.body FROM traces t JOIN spans s ON s.tid = t.tid"
                f" WHERE t.trace_id IN ({','.join('?' * len(chunk))}) ORDER BY t.tid, s.start_ns, s.span_id",
                [trace_id.to_bytes(16, "big") for trace_id in chunk],
            ).fetchall()
            trace_key = b""
            spans: list[Span] = []
            trace_id = 0
            tag_sets: dict[int, dict[str, str]] = {}
            for key, span_id, parent_id, service, name, start, end, error, message, tag_set, body in rows:
                if key != trace_key:
                    trace_key, trace_id = key, int.from_bytes(key, "big")
                    spans = found[trace_id] = []
                shared = tag_sets.get(tag_set)
                if shared is None:
                    shared = tag_sets[tag_set] = self._tag_set(conn, tag_set)
                own, logs = _decode_body(body)
                attributes: Attributes = dict(shared)
                attributes.update(own)
                spans.append(
                    Span(
                        trace_id=trace_id,
                        span_id=span_id + _U64 if span_id < 0 else span_id,
                        parent_id=None if parent_id is None else parent_id + _U64 if parent_id < 0 else parent_id,
                        service=service,
                        name=name,
                        start_ns=start,
                        end_ns=end,
                        error=bool(error),
                        status_message=message,
                        attributes=attributes,
                        logs=[LogEntry(time_ns, log_name, fields) for time_ns, log_name, fields in logs]
                        if logs
                        else [],
                    )
                )
        return found

    async def tag_values(self, key: str, start_ns: int | None = None, end_ns: int | None = None) -> list[str]:
        """Distinct values of one tag, sorted; with a time range, only from traces overlapping it."""
        return await self._read(self._tag_values_sync, key, start_ns, end_ns)

    @staticmethod
    def _tag_values_sync(conn: sqlite3.Connection, key: str, start_ns: int | None, end_ns: int | None) -> list[str]:
        table = "trace_tags" if key in _OBJECT_KEY_SET else "span_tags"
        if start_ns is None and end_ns is None:
            rows = conn.execute(f"SELECT DISTINCT value FROM {table} WHERE key = ? ORDER BY value", (key,))
        else:
            rows = conn.execute(
                f"SELECT DISTINCT x.value FROM {table} x JOIN traces t ON t.tid = x.tid"
                " WHERE x.key = ? AND t.end_ns >= ? AND t.start_ns <= ? ORDER BY x.value",
                (key, start_ns if start_ns is not None else _I64_MIN, end_ns if end_ns is not None else _I64_MAX),
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
            expired = [row[0] for row in conn.execute("SELECT tid FROM traces WHERE end_ns < ?", (cutoff_ns,))]
            for tid in expired:
                # Tag rows are keyed by value first: find them from the spans rather than scanning the index.
                span_tags: list[tuple[str, str, int, int]] = []
                tag_sets: set[int] = set()
                for span_id, tag_set, body in conn.execute(
                    "SELECT span_id, tag_set, body FROM spans WHERE tid = ?", (tid,)
                ):
                    span_tags.extend(_span_tag_rows(_decode_body(body)[0], tid, span_id))
                    tag_sets.add(tag_set)
                conn.executemany(
                    "DELETE FROM span_tags WHERE key = ? AND value = ? AND tid = ? AND span_id = ?", span_tags
                )
                trace_tags = {(k, v, tid) for ts in tag_sets for k, v in self._tag_set(conn, ts).items()}
                conn.executemany("DELETE FROM trace_tags WHERE key = ? AND value = ? AND tid = ?", trace_tags)
                conn.execute("DELETE FROM spans WHERE tid = ?", (tid,))
                conn.execute("DELETE FROM traces WHERE tid = ?", (tid,))
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
