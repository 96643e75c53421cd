"""The search index: audit records and Events in their own SQLite file (WAL), written on one thread and read on
a small pool of others, so queries run while records are written and nothing blocks the event loop."""

from __future__ import annotations

import asyncio
import calendar
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson

from kelemetry_py.metrics import Metrics
from kelemetry_py.model import Observation
from kelemetry_py.search.filters import RecordFilter, Table
from kelemetry_py.search.rows import record_row

log = logging.getLogger(__name__)
_T = TypeVar("_T")

_OBJECT_COLUMNS = "time_ms, cluster, api_group, resource, namespace, name, obj"
COLUMNS: dict[Table, tuple[str, ...]] = {
    "audit": (
        "id",
        "time_ms",
        "cluster",
        "api_group",
        "resource",
        "subresource",
        "namespace",
        "name",
        "obj",
        "verb",
        "level",
        "stage",
        "user",
        "user_groups",
        "source_ips",
        "code",
        "status",
        "body",
    ),
    "events": (
        "id",
        "time_ms",
        "cluster",
        "api_group",
        "resource",
        "namespace",
        "name",
        "obj",
        "kind",
        "reason",
        "type",
        "message",
        "body",
    ),
}
_INTEGER_COLUMNS = {"id", "time_ms", "obj", "code"}
# One (column, time) index per column users filter on most, so a filtered page is an ordered index range.
_INDEXED: dict[Table, tuple[str, ...]] = {
    "audit": ("namespace", "name", "user", "verb", "resource"),
    "events": ("namespace", "name", "reason", "kind", "type"),
}
# Most selective first: an object's name, then who, then where, then what.
_SELECTIVITY: dict[Table, tuple[str, ...]] = {
    "audit": ("name", "user", "namespace", "resource", "verb"),
    "events": ("name", "reason", "namespace", "kind", "type"),
}
KIND_LABEL: dict[Table, str] = {"audit": "audit", "events": "event"}
_EVICT_FRACTION = 0.1


def _schema() -> str:
    statements = []
    for table, columns in COLUMNS.items():
        # Rows are appended in arrival order (rowid); the record key ``id`` is a hash, kept in a unique index of its
        # own: as the table's key it would scatter every insert over the whole file. Bodies live in a table of their
        # own, so the rows a filter reads stay small and cached.
        definitions = ", ".join(
            f"{column} {'INTEGER' if column in _INTEGER_COLUMNS else 'TEXT'} NOT NULL"
            + (" UNIQUE" if column == "id" else "")
            for column in columns
            if column != "body"
        )
        statements.append(f"CREATE TABLE IF NOT EXISTS {table} (rowid INTEGER PRIMARY KEY, {definitions})")
        statements.append(f"CREATE TABLE IF NOT EXISTS {table}_body (rowid INTEGER PRIMARY KEY, body BLOB NOT NULL)")
        statements.append(f"CREATE INDEX IF NOT EXISTS {table}_by_time ON {table} (time_ms)")
        for column in _INDEXED[table]:
            statements.append(f"CREATE INDEX IF NOT EXISTS {table}_by_{column} ON {table} ({column}, time_ms)")
    return ";\n".join(statements) + ";"


def _source(record_filter: RecordFilter) -> str:
    """The table, with the index to read it by: the most selective column the filter fixes, else time.

    Chosen here rather than by SQLite's planner, whose sampled statistics cannot tell a namespace from a verb."""
    table = record_filter.table
    fixed = {condition.column for condition in record_filter.conditions if not condition.fuzzy}
    for column in _SELECTIVITY[table]:
        if column in fixed:
            return f"{table} INDEXED BY {table}_by_{column}"
    if record_filter.start_ms is not None or record_filter.end_ms is not None:
        return f"{table} INDEXED BY {table}_by_time"
    return table


Clause = tuple[str, list[Any]]


def _where(record_filter: RecordFilter, scope: Clause | None) -> Clause:
    where, params = record_filter.where()
    if scope is not None:
        where = f"{where} AND ({scope[0]})"
        params = [*params, *scope[1]]
    return where, params


class SearchIndex:
    def __init__(
        self,
        path: str | Path,
        *,
        metrics: Metrics | None = None,
        retention_hours: float = 0.0,
        max_bytes: int = 2 * 1024**3,
        readers: int = 2,
        maintenance_seconds: float = 300.0,
    ) -> None:
        self.path = Path(path)
        self._metrics = metrics
        self._retention_ms = int(retention_hours * 3_600_000)
        self._max_bytes = max_bytes
        self._readers = readers
        self._maintenance_seconds = maintenance_seconds
        self._writer: ThreadPoolExecutor | None = None
        self._reader_pool: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._counts: dict[Table, int] = {"audit": 0, "events": 0}
        self.bytes_used = 0
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------------

    async def open(self) -> SearchIndex:
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="search-writer")
        self._reader_pool = ThreadPoolExecutor(max_workers=self._readers, thread_name_prefix="search-reader")
        await self._write(self._open_sync)
        await self.purge_expired()
        self._task = asyncio.get_running_loop().create_task(self._maintain(), name="search-maintenance")
        return self

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect on a new file: lets the size bound shrink it
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA cache_size=-32768")
        conn.executescript(_schema())
        for table in COLUMNS:
            self._counts[table] = int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
        self._conn = conn
        self._update_size(conn)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._writer is not None:
            await self._write(self._close_sync)
            self._writer.shutdown(wait=True)
            self._writer = None
        if self._reader_pool is not None:
            self._reader_pool.shutdown(wait=True)
            self._reader_pool = None
        with self._lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _write(self, func: Callable[..., _T], *args: Any) -> _T:
        assert self._writer is not None, "SearchIndex is not open"
        return await asyncio.get_running_loop().run_in_executor(self._writer, func, *args)

    async def _read(self, func: Callable[..., _T], *args: Any) -> _T:
        assert self._reader_pool is not None, "SearchIndex is not open"
        return await asyncio.get_running_loop().run_in_executor(self._reader_pool, func, *args)

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect_reader()
            self._local.conn = conn
        return conn

    def _connect_reader(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA query_only=ON")
        conn.execute("PRAGMA cache_size=-32768")
        with self._lock:
            self._reader_conns.append(conn)
        return conn

    # -- writing -----------------------------------------------------------------------------------------------

    async def index(self, observations: Sequence[Observation]) -> None:
        """Store the records the observations carry. Keyed by audit ID and stage, or Event uid and occurrence:
        a replay overwrites."""
        rows: dict[Table, dict[int, dict[str, Any]]] = {"audit": {}, "events": {}}
        for observation in observations:
            found = record_row(observation)
            if found is not None:
                table, row = found
                rows[table][row["id"]] = row
        if rows["audit"] or rows["events"]:
            await self._write(self._index_sync, rows)

    def _index_sync(self, rows: dict[Table, dict[int, dict[str, Any]]]) -> None:
        conn = self._connection()
        added: dict[Table, int] = {}
        conn.execute("BEGIN")
        try:
            for table, by_id in rows.items():
                if not by_id:
                    continue
                ids = orjson.dumps(list(by_id)).decode()
                present = conn.execute(
                    f"SELECT COUNT(*) FROM {table} WHERE id IN (SELECT value FROM json_each(?))", (ids,)
                ).fetchone()[0]
                columns = [column for column in COLUMNS[table] if column != "body"]
                updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c != "id")
                conn.executemany(
                    f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)}) "
                    f"ON CONFLICT (id) DO UPDATE SET {updates}",
                    list(by_id.values()),
                )
                rowids = conn.execute(
                    f"SELECT id, rowid FROM {table} WHERE id IN (SELECT value FROM json_each(?))", (ids,)
                )
                conn.executemany(
                    f"INSERT OR REPLACE INTO {table}_body (rowid, body) VALUES (?, ?)",
                    [(rowid, by_id[record_id]["body"]) for record_id, rowid in rowids],
                )
                added[table] = len(by_id) - int(present)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        for table, count in added.items():
            self._counts[table] += count
        self._update_size(conn)
        if self.bytes_used > self._max_bytes:
            self._evict_sync(conn)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("SearchIndex is closed")
        return self._conn

    def _update_size(self, conn: sqlite3.Connection) -> None:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        self.bytes_used = int((pages - free) * size)
        if self._metrics is not None:
            self._metrics.search_bytes.set(self.bytes_used)
            for table, count in self._counts.items():
                self._metrics.search_records.labels(KIND_LABEL[table]).set(count)

    def _evict_sync(self, conn: sqlite3.Connection) -> None:
        """Delete the oldest records until the index is under its size bound again."""
        for _ in range(20):
            if self.bytes_used <= self._max_bytes or not any(self._counts.values()):
                return
            for table in COLUMNS:
                count = max(1, int(self._counts[table] * _EVICT_FRACTION)) if self._counts[table] else 0
                if count:
                    deleted = self._delete_sync(
                        conn, table, f"rowid IN (SELECT rowid FROM {table} ORDER BY time_ms LIMIT ?)", (count,)
                    )
                    self._evicted(table, deleted, "size")
            conn.execute("PRAGMA incremental_vacuum")
            self._update_size(conn)
        log.warning("search index %s is still over its size bound after evicting", self.path)

    @staticmethod
    def _delete_sync(conn: sqlite3.Connection, table: Table, where: str, params: tuple[Any, ...]) -> int:
        conn.execute("BEGIN")
        try:
            conn.execute(f"DELETE FROM {table}_body WHERE rowid IN (SELECT rowid FROM {table} WHERE {where})", params)
            deleted = int(conn.execute(f"DELETE FROM {table} WHERE {where}", params).rowcount)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return deleted

    def _evicted(self, table: Table, count: int, reason: str) -> None:
        self._counts[table] -= count
        if self._metrics is not None and count:
            self._metrics.search_records_evicted.labels(reason).inc(count)

    async def purge_expired(self, now_ms: int | None = None) -> int:
        """Delete records older than the retention period (store.retention_hours; 0 keeps all)."""
        if self._retention_ms <= 0:
            return 0
        cutoff = (now_ms if now_ms is not None else int(time.time() * 1000)) - self._retention_ms
        return await self._write(self._purge_sync, cutoff)

    def _purge_sync(self, cutoff_ms: int) -> int:
        conn = self._connection()
        total = 0
        for table in COLUMNS:
            deleted = self._delete_sync(conn, table, "time_ms < ?", (cutoff_ms,))
            self._evicted(table, deleted, "retention")
            total += deleted
        if total:
            conn.execute("PRAGMA incremental_vacuum")
        self._update_size(conn)
        return total

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(self._maintenance_seconds)
            try:
                await self.purge_expired()
            except Exception:
                log.exception("search index retention pass failed")

    # -- reading -----------------------------------------------------------------------------------------------

    async def query(
        self, record_filter: RecordFilter, scope: Clause | None, *, ascending: bool, offset: int, size: int
    ) -> tuple[int, list[bytes]]:
        return await self._read(self._query_sync, record_filter, scope, ascending, offset, size)

    def _query_sync(
        self, record_filter: RecordFilter, scope: Clause | None, ascending: bool, offset: int, size: int
    ) -> tuple[int, list[bytes]]:
        table = record_filter.table
        where, params = _where(record_filter, scope)
        order = "ASC" if ascending else "DESC"
        conn = self._reader()
        conn.execute("BEGIN")  # one snapshot for the total and the page
        try:
            source = _source(record_filter)
            total = int(conn.execute(f"SELECT COUNT(*) FROM {source} WHERE {where}", params).fetchone()[0])
            page = (
                f"SELECT rowid AS r, time_ms AS t FROM {source} WHERE {where} "
                f"ORDER BY time_ms {order}, rowid {order} LIMIT ? OFFSET ?"
            )
            sql = (
                f"SELECT b.body FROM ({page}) AS page JOIN {table}_body AS b ON b.rowid = page.r "
                f"ORDER BY page.t {order}, page.r {order}"
            )
            bodies = [bytes(row[0]) for row in conn.execute(sql, [*params, size, offset])] if size else []
        finally:
            conn.execute("COMMIT")
        return total, bodies

    async def statistics(self, record_filter: RecordFilter, scope: Clause | None) -> tuple[int, int]:
        """(matching records, distinct objects among them)."""
        return await self._read(self._statistics_sync, record_filter, scope)

    def _statistics_sync(self, record_filter: RecordFilter, scope: Clause | None) -> tuple[int, int]:
        where, params = _where(record_filter, scope)
        row = (
            self._reader()
            .execute(f"SELECT COUNT(*), COUNT(DISTINCT obj) FROM {_source(record_filter)} WHERE {where}", params)
            .fetchone()
        )
        return int(row[0]), int(row[1])

    async def histogram(
        self, record_filter: RecordFilter, scope: Clause | None, interval: Interval
    ) -> list[tuple[int, int]]:
        """(bucket start in unix ms, count) of every non-empty bucket, in time order."""
        return await self._read(self._histogram_sync, record_filter, scope, interval)

    def _histogram_sync(
        self, record_filter: RecordFilter, scope: Clause | None, interval: Interval
    ) -> list[tuple[int, int]]:
        where, params = _where(record_filter, scope)
        bucket, bucket_params = interval.sql()
        rows = self._reader().execute(
            f"SELECT {bucket} AS bucket, COUNT(*) FROM {_source(record_filter)} WHERE {where} "
            "GROUP BY bucket ORDER BY bucket",
            [*bucket_params, *params],
        )
        return [(interval.start_ms(int(index)), int(count)) for index, count in rows]

    async def distinct_objects(
        self, record_filter: RecordFilter, limit: int
    ) -> list[tuple[int, str, str, str, str, str]]:
        """(obj, cluster, group, resource, namespace, name) of up to ``limit`` distinct objects matched."""
        return await self._read(self._distinct_sync, record_filter, limit)

    def _distinct_sync(self, record_filter: RecordFilter, limit: int) -> list[tuple[int, str, str, str, str, str]]:
        where, params = record_filter.where()
        rows = self._reader().execute(
            f"SELECT DISTINCT obj, cluster, api_group, resource, namespace, name FROM {_source(record_filter)} "
            f"WHERE {where} LIMIT ?",
            [*params, limit],
        )
        return [tuple(row) for row in rows]

    async def export(
        self, record_filter: RecordFilter, scope: Clause | None, *, ascending: bool, chunk: int = 500
    ) -> AsyncGenerator[list[bytes], None]:
        """Every matching record body, ``chunk`` at a time, from one snapshot on a connection of its own."""
        where, params = _where(record_filter, scope)
        order = "ASC" if ascending else "DESC"
        table = record_filter.table
        sql = (
            f"SELECT b.body FROM {_source(record_filter)} JOIN {table}_body AS b ON b.rowid = {table}.rowid "
            f"WHERE {where} ORDER BY {table}.time_ms {order}, {table}.rowid {order}"
        )
        conn = await self._read(self._export_connection)
        try:
            cursor = await self._read(conn.execute, sql, params)
            while True:
                rows = await self._read(cursor.fetchmany, chunk)
                if not rows:
                    return
                yield [bytes(row[0]) for row in rows]
        finally:
            await self._read(conn.close)

    def _export_connection(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False)  # one statement: it reads one snapshot
        conn.execute("PRAGMA query_only=ON")
        return conn

    def counts(self) -> dict[str, int]:
        return {KIND_LABEL[table]: count for table, count in self._counts.items()}


class Interval:
    """A histogram interval: ``[0-9]+[smhdwMqy]``. s to w are fixed lengths from the epoch; M, q and y are
    calendar months, quarters and years (UTC)."""

    _FIXED_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
    _MONTHS = {"M": 1, "q": 3, "y": 12}

    def __init__(self, count: int, unit: str) -> None:
        self.count = count
        self.unit = unit

    def sql(self) -> tuple[str, list[Any]]:
        if self.unit in self._FIXED_MS:
            return "time_ms / ?", [self.count * self._FIXED_MS[self.unit]]
        months = (
            "((CAST(strftime('%Y', time_ms / 1000, 'unixepoch') AS INTEGER) - 1970) * 12"
            " + CAST(strftime('%m', time_ms / 1000, 'unixepoch') AS INTEGER) - 1)"
        )
        return f"{months} / ?", [self.count * self._MONTHS[self.unit]]

    def start_ms(self, index: int) -> int:
        if self.unit in self._FIXED_MS:
            return index * self.count * self._FIXED_MS[self.unit]
        months = index * self.count * self._MONTHS[self.unit]
        year, month = divmod(months, 12)
        return calendar.timegm(datetime(1970 + year, month + 1, 1, tzinfo=UTC).timetuple()) * 1000

    def index_of(self, start_ms: int) -> int:
        if self.unit in self._FIXED_MS:
            return start_ms // (self.count * self._FIXED_MS[self.unit])
        moment = datetime.fromtimestamp(start_ms / 1000, UTC)
        return ((moment.year - 1970) * 12 + moment.month - 1) // (self.count * self._MONTHS[self.unit])
