"""Where rule evaluation keeps its state: which records each rule counted, their times per group, and which
alerts fire. Redis (shared by replicas: each record is counted once whichever replica sees it) or SQLite beside
the store (one replica, surviving restarts)."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class AlertState(Protocol):
    async def count(self, rule: str, group: str, record_id: int, time_ms: int, window_ms: int) -> int | None:
        """Count the record for the rule once. None when it was counted before (by anyone); else how many
        records of the group are at ``time_ms - window_ms`` or later. Later ones count too: records of different
        objects are evaluated concurrently, so they do not arrive in time order."""

    async def count_since(self, rule: str, group: str, since_ms: int) -> int:
        """Records of the group at or after ``since_ms`` (older ones are forgotten)."""

    async def start_firing(self, rule: str, group: str, alert: dict[str, Any]) -> bool:
        """Mark the group firing; True only for the one caller that made the change."""

    async def firing(self) -> list[tuple[str, str, dict[str, Any]]]: ...

    async def resolve(self, rule: str, group: str) -> dict[str, Any] | None:
        """Clear the firing mark; the alert only for the one caller that cleared it."""

    async def claim_tick(self, tick: int, ttl_ms: int) -> bool:
        """True for the one replica that runs evaluation tick ``tick``."""

    async def close(self) -> None: ...
