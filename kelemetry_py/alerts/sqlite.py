"""Alert rule state in a SQLite file beside the store, for one replica without Redis; survives restarts."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson

from kelemetry_py.storage.sqlite_file import SqliteFile

_T = TypeVar("_T")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (rule TEXT NOT NULL, record INTEGER NOT NULL, expires REAL NOT NULL,
                                 PRIMARY KEY (rule, record)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS hits (rule TEXT NOT NULL, grp TEXT NOT NULL, record INTEGER NOT NULL,
                                 time_ms INTEGER NOT NULL, PRIMARY KEY (rule, grp, record)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS firing (rule TEXT NOT NULL, grp TEXT NOT NULL, alert BLOB NOT NULL,
                                   PRIMARY KEY (rule, grp)) WITHOUT ROWID;
"""


class SqliteAlertState:
    def __init__(self, path: str | Path, dedup_ms: int = 86_400_000) -> None:
        self.path = Path(path)
        self._dedup_ms = dedup_ms
        # Each count is its own transaction: a crash must not re-fire, so the file is synced at every commit.
        self._file = SqliteFile(path, _SCHEMA, thread_name="alert-state", synchronous="FULL")
        self._counted = 0

    async def open(self) -> SqliteAlertState:
        await self._file.open()
        return self

    async def _run(self, func: Callable[..., _T], *args: Any) -> _T:
        return await self._file.run(func, *args)

    def _db(self) -> sqlite3.Connection:
        return self._file.connection

    async def count(self, rule: str, group: str, record_id: int, time_ms: int, window_ms: int) -> int | None:
        return await self._run(self._count_sync, rule, group, record_id, time_ms, window_ms)

    def _count_sync(self, rule: str, group: str, record_id: int, time_ms: int, window_ms: int) -> int | None:
        conn = self._db()
        now = time.time()
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            inserted = conn.execute(
                "INSERT INTO seen VALUES (?, ?, ?) ON CONFLICT DO UPDATE SET expires = excluded.expires "
                "WHERE seen.expires <= ?",
                (rule, record_id, now + max(self._dedup_ms, 2 * window_ms) / 1000, now),
            ).rowcount
            if not inserted:
                return None
            conn.execute("INSERT OR REPLACE INTO hits VALUES (?, ?, ?, ?)", (rule, group, record_id, time_ms))
            conn.execute(
                "DELETE FROM hits WHERE rule = ? AND grp = ? AND time_ms < ?", (rule, group, time_ms - window_ms)
            )
            found = conn.execute(
                "SELECT COUNT(*) FROM hits WHERE rule = ? AND grp = ? AND time_ms >= ?",
                (rule, group, time_ms - window_ms),
            ).fetchone()[0]
        self._counted += 1
        if self._counted % 1000 == 0:
            conn.execute("DELETE FROM seen WHERE expires <= ?", (now,))
        return int(found)

    async def count_since(self, rule: str, group: str, since_ms: int) -> int:
        return await self._run(self._count_since_sync, rule, group, since_ms)

    def _count_since_sync(self, rule: str, group: str, since_ms: int) -> int:
        conn = self._db()
        conn.execute("DELETE FROM hits WHERE rule = ? AND grp = ? AND time_ms < ?", (rule, group, since_ms))
        return int(conn.execute("SELECT COUNT(*) FROM hits WHERE rule = ? AND grp = ?", (rule, group)).fetchone()[0])

    async def start_firing(self, rule: str, group: str, alert: dict[str, Any]) -> bool:
        return await self._run(self._start_sync, rule, group, orjson.dumps(alert))

    def _start_sync(self, rule: str, group: str, alert: bytes) -> bool:
        return bool(self._db().execute("INSERT OR IGNORE INTO firing VALUES (?, ?, ?)", (rule, group, alert)).rowcount)

    async def firing(self) -> list[tuple[str, str, dict[str, Any]]]:
        rows = await self._run(lambda: self._db().execute("SELECT rule, grp, alert FROM firing").fetchall())
        return [(rule, group, orjson.loads(alert)) for rule, group, alert in rows]

    async def resolve(self, rule: str, group: str) -> dict[str, Any] | None:
        return await self._run(self._resolve_sync, rule, group)

    def _resolve_sync(self, rule: str, group: str) -> dict[str, Any] | None:
        row = (
            self._db()
            .execute("DELETE FROM firing WHERE rule = ? AND grp = ? RETURNING alert", (rule, group))
            .fetchone()
        )
        return None if row is None else dict(orjson.loads(row[0]))

    async def claim_tick(self, tick: int, ttl_ms: int) -> bool:
        return True  # one replica: every tick is its own

    async def close(self) -> None:
        await self._file.close()
