"""Waiting for what a test can observe: a condition polled until it holds, with a deadline."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

Check = Callable[[], bool | Awaitable[bool]]


async def until(condition: str, check: Check, detail: Callable[[], str] = str, within: float = 20.0) -> None:
    """Poll ``check`` (a function or a coroutine function) until it holds; fail with ``detail()`` past ``within``."""
    deadline = time.monotonic() + within
    while not await _holds(check):
        assert time.monotonic() < deadline, f"not within {within:g} s: {condition}\n{detail()}"
        await asyncio.sleep(0.05)


async def _holds(check: Check) -> bool:
    answer = check()
    return await answer if inspect.isawaitable(answer) else answer
