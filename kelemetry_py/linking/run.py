"""Running linkers so that one failing or slow linker harms nobody else: the one path production and tests use."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from kelemetry_py.linking import Linker
from kelemetry_py.metrics import Metrics
from kelemetry_py.model import Link, ObjectRef

logger = logging.getLogger(__name__)

# A linker that hangs would stall its partition; past this it is treated as failed.
LINKER_TIMEOUT_SECONDS = 5.0

_T = TypeVar("_T")


def plugin_name(plugin: object) -> str:
    name = getattr(plugin, "name", None)
    return name if isinstance(name, str) and name else type(plugin).__name__


async def run_linkers(
    linkers: Sequence[Linker],
    ref: ObjectRef,
    body: Mapping[str, Any],
    metrics: Metrics | None = None,
    *,
    timeout_seconds: float | None = LINKER_TIMEOUT_SECONDS,
) -> list[tuple[str, Link]]:
    """Every linker's links as ``(linker name, link)``, in linker order.

    Linkers run in turn (a task per linker per observation would cost more than the linking). One that raises,
    returns something other than links, or outlives ``timeout_seconds`` is logged, counted in
    ``metrics.plugin_errors`` and contributes nothing.
    """
    found: list[tuple[str, Link]] = []
    for linker in linkers:
        name = plugin_name(linker)
        found.extend((name, link) for link in await _run_one(linker, name, ref, body, metrics, timeout_seconds))
    return found


async def _run_one(
    linker: Linker,
    name: str,
    ref: ObjectRef,
    body: Mapping[str, Any],
    metrics: Metrics | None,
    timeout_seconds: float | None,
) -> Sequence[Link]:
    try:
        links = await _within(linker.links(ref, body), timeout_seconds)
        if type(links) is list and all(type(item) is Link for item in links):
            return links  # the usual answer, checked without the ABC machinery
        if not isinstance(links, Sequence) or isinstance(links, str | bytes):
            raise TypeError(f"returned {type(links).__name__}, not a sequence of Links")
        bad = [item for item in links if not isinstance(item, Link)]
        if bad:
            raise TypeError(f"returned {len(bad)} item(s) that are not Links, e.g. {bad[0]!r}")
        return links
    except Exception as exc:  # a plugin's bug must not stop the pipeline
        reason = "timed out" if isinstance(exc, TimeoutError) else f"failed: {exc!r}"
        logger.warning("linker %s %s on %s", name, reason, ref.key, exc_info=not isinstance(exc, TimeoutError))
        if metrics is not None:
            metrics.plugin_errors.labels(plugin=name).inc()
        return []


async def _within(call: Coroutine[Any, Any, _T], timeout_seconds: float | None) -> _T:
    """Await ``call`` under the timeout. Most linkers are dictionary work that never suspends: those finish on
    their first step and need no timer (a timer per linker per observation cost a fifth of the webhook's
    throughput); only one that suspends runs the rest of its way under ``asyncio.timeout``."""
    try:
        step = call.send(None)
    except StopIteration as done:
        result: _T = done.value
        return result
    async with asyncio.timeout(timeout_seconds):
        return await _resume(call, step)


async def _resume(call: Coroutine[Any, Any, _T], step: Any) -> _T:
    """Drive a coroutine that suspended on ``step`` (the future it waits for, or None for a bare yield) to its end,
    as a task would."""
    try:
        while True:
            if step is None:
                await asyncio.sleep(0)
            else:
                await asyncio.wait((step,))  # until it is done, without taking its result or error
            try:
                step = call.send(None)
            except StopIteration as done:
                result: _T = done.value
                return result
    except BaseException:
        if step is not None:
            step.cancel()
        call.close()
        raise
