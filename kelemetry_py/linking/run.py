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
) -> list[Link]:
    """Every linker's links, in linker order.

    Linkers run in turn (a task per linker per observation would cost more than the linking). One that raises,
    returns something other than links, or outlives ``timeout_seconds`` is logged, counted in
    ``metrics.plugin_errors`` and contributes nothing.
    """
    found: list[Link] = []
    for linker in linkers:
        try:
            call = linker.links(ref, body)
            # Most linkers are dictionary work that never suspends: those finish on their first step and need
            # no timer (a timer per linker per observation cost a fifth of the webhook's throughput); only one
            # that suspends runs the rest of its way under ``asyncio.timeout``.
            try:
                step = call.send(None)
            except StopIteration as done:
                links = done.value
            else:
                async with asyncio.timeout(timeout_seconds):
                    links = await _resume(call, step)
            if type(links) is not list or (links and not all(type(item) is Link for item in links)):
                links = _checked(links)  # the usual answer, a list of Links, is checked without the ABCs
        except Exception as exc:  # a plugin's bug must not stop the pipeline
            name = plugin_name(linker)
            reason = "timed out" if isinstance(exc, TimeoutError) else f"failed: {exc!r}"
            logger.warning("linker %s %s on %s", name, reason, ref.key, exc_info=not isinstance(exc, TimeoutError))
            if metrics is not None:
                metrics.plugin_errors.labels(plugin=name).inc()
            continue
        found.extend(links)
    return found


def _checked(links: object) -> Sequence[Link]:
    if not isinstance(links, Sequence) or isinstance(links, str | bytes):
        raise TypeError(f"returned {type(links).__name__}, not a sequence of Links")
    bad = [item for item in links if not isinstance(item, Link)]
    if bad:
        raise TypeError(f"returned {len(bad)} item(s) that are not Links, e.g. {bad[0]!r}")
    return links


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
