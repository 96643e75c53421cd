"""Where one replica keeps the object differ's state across restarts: a SQLite file beside the store.

Per watched object the differ's compressed state (as it holds it in memory), and the changes it still holds
for an audit span to claim. Written behind the watch (about once a second, one transaction), so a ``kill -9``
costs at most the last second: the first list after the restart diffs against the saved state, and what
changed in between comes out as one diff, marked as observed late.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import orjson

from kelemetry_py.sources.diffcache import DiffRecord
from kelemetry_py.storage.sqlite_file import SqliteFile

# (uid, resourceVersion, zlib(orjson(state)), managedFields summary)
SavedState = tuple[str, str, bytes, tuple[tuple[str, str, str, str], ...]]
# (cluster, wall-clock deadline, record)
SavedHeld = tuple[str, float, DiffRecord]


@runtime_checkable
class DifferStateStore(Protocol):
    async def load(self) -> tuple[dict[str, SavedState], list[SavedHeld]]: ...

    async def save(
        self,
        states: Mapping[str, SavedState | None],
        held_added: Sequence[SavedHeld],
        held_removed: Sequence[tuple[str, str]],
    ) -> None:
        """Upsert (or, for None, delete) states by object key; add and remove held changes, atomically."""

    async def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS differ_state (
    object_key TEXT PRIMARY KEY,
    uid TEXT NOT NULL,
    resource_version TEXT NOT NULL,
    blob BLOB NOT NULL,
    managers BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS differ_held (
    object_key TEXT NOT NULL,
    resource_version TEXT NOT NULL,
    cluster TEXT NOT NULL,
    deadline REAL NOT NULL,
    record BLOB NOT NULL,
    PRIMARY KEY (object_key, resource_version)
);
"""


class SqliteDifferState:
    """The state in a SQLite file (shared with the event cursor's ``state.db``); one thread does all I/O."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = SqliteFile(path, _SCHEMA, thread_name="differ-state")

    async def open(self) -> SqliteDifferState:
        await self._db.open()
        return self

    async def load(self) -> tuple[dict[str, SavedState], list[SavedHeld]]:
        return await self._db.run(self._load_sync)

    def _load_sync(self) -> tuple[dict[str, SavedState], list[SavedHeld]]:
        conn = self._db.connection
        states: dict[str, SavedState] = {}
        for key, uid, rv, blob, managers in conn.execute(
            "SELECT object_key, uid, resource_version, blob, managers FROM differ_state"
        ):
            summary = tuple(
                (sys.intern(m), sys.intern(o), sys.intern(sub), sys.intern(t))
                for m, o, sub, t in orjson.loads(managers)
            )
            states[key] = (uid, rv, bytes(blob), summary)
        held = [
            (cluster, float(deadline), DiffRecord.from_json(record))
            for cluster, deadline, record in conn.execute(
                "SELECT cluster, deadline, record FROM differ_held ORDER BY deadline"
            )
        ]
        return states, held

    async def save(
        self,
        states: Mapping[str, SavedState | None],
        held_added: Sequence[SavedHeld],
        held_removed: Sequence[tuple[str, str]],
    ) -> None:
        await self._db.run(self._save_sync, dict(states), list(held_added), list(held_removed))

    def _save_sync(
        self,
        states: dict[str, SavedState | None],
        held_added: list[SavedHeld],
        held_removed: list[tuple[str, str]],
    ) -> None:
        conn = self._db.connection
        upserts = [
            (key, state[0], state[1], state[2], orjson.dumps(state[3]))
            for key, state in states.items()
            if state is not None
        ]
        deletes = [(key,) for key, state in states.items() if state is None]
        with conn:
            conn.execute("BEGIN")
            conn.executemany("INSERT OR REPLACE INTO differ_state VALUES (?, ?, ?, ?, ?)", upserts)
            conn.executemany("DELETE FROM differ_state WHERE object_key = ?", deletes)
            conn.executemany(
                "INSERT OR REPLACE INTO differ_held VALUES (?, ?, ?, ?, ?)",
                [
                    (record.object_key, record.resource_version, cluster, deadline, record.to_json())
                    for cluster, deadline, record in held_added
                ],
            )
            conn.executemany(
                "DELETE FROM differ_held WHERE object_key = ? AND resource_version = ?", held_removed
            )

    async def close(self) -> None:
        await self._db.close()
