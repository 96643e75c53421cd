"""Progress marks in one process: enough for one replica, and for replicas sharing a process in tests."""

from __future__ import annotations

from collections.abc import Mapping

from kelemetry_py.kube.watch import handled_by


class MemoryProgressMarks:
    def __init__(self) -> None:
        self._marks: dict[tuple[str, str], dict[str, str]] = {}

    async def load(self, cluster: str, watcher: str) -> dict[str, str]:
        return dict(self._marks.get((cluster, watcher), {}))

    async def save(self, cluster: str, watcher: str, marks: Mapping[str, str]) -> None:
        stored = self._marks.setdefault((cluster, watcher), {})
        for resource, rv in marks.items():
            current = stored.get(resource)
            if current is None or not handled_by(rv, current):
                stored[resource] = rv

    async def close(self) -> None:
        return None
