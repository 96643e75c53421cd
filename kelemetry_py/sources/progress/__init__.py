"""How far a watcher's leader has handled each resource: per (cluster, watcher) and resource, a resourceVersion.

The leader saves its marks every retry period and when it steps down; a standby reads them to let go of what
it no longer needs to hold, and reads them once more when it takes over, to resume right after them.
Implementations side by side: :mod:`.memory` (one process) and :mod:`.redis` (replicas share the marks).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable


@runtime_checkable
class ProgressMarks(Protocol):
    async def load(self, cluster: str, watcher: str) -> dict[str, str]:
        """resource → resourceVersion as last saved for (cluster, watcher); empty when none was."""

    async def save(self, cluster: str, watcher: str, marks: Mapping[str, str]) -> None:
        """Record ``marks``; a mark never moves back (a replica stepping down late cannot undo a newer one)."""

    async def close(self) -> None: ...
