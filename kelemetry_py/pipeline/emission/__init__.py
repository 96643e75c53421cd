"""Span-emission sets decide which replica writes an object span or link span, so each is written once."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class EmissionSet(Protocol):
    async def claim(self, key: str, ttl_seconds: int) -> bool:
        """True for the first caller to claim ``key`` within ``ttl_seconds`` (across replicas when shared).
        When the set cannot tell (Redis unreachable) it says True: a duplicate span is harmless, a missing
        one is not."""

    async def release(self, key: str) -> None:
        """Give a claim back because its span was not written after all."""

    async def close(self) -> None: ...
