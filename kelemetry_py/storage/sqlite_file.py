"""A small SQLite file used from one dedicated thread: the state files beside the store (event cursor, differ
state, alert state). Opened on first use in WAL mode; every statement runs on its thread, off the event loop."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

_T = TypeVar("_T")


class SqliteFile:
    def __init__(self, path: str | Path, schema: str, *, thread_name: str, synchronous: str = "NORMAL") -> None:
        self.path = Path(path)
        self._schema = schema
        self._thread_name = thread_name
        self._synchronous = synchronous
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def open(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._thread_name)
            await self.run(self._open_sync)

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.executescript(self._schema)
        self._conn = conn

    async def run(self, func: Callable[..., _T], *args: Any) -> _T:
        """``func(*args)`` on the file's thread (opening the file first if need be)."""
        if self._executor is None:
            await self.open()
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    @property
    def connection(self) -> sqlite3.Connection:
        """The connection, for code running on the file's thread."""
        if self._conn is None:
            raise RuntimeError(f"{self.path} is closed")
        return self._conn

    async def close(self) -> None:
        if self._executor is None:
            return
        await self.run(self._close_sync)
        self._executor.shutdown(wait=True)
        self._executor = None

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
