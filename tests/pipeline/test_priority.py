"""The event loop's priority: requests waiting for their answer before the pipeline's background slices."""

from __future__ import annotations

import asyncio

import pytest

from kelemetry_py.config import ConfigError, load_config
from kelemetry_py.pipeline.priority import Priority


async def _turns(count: int = 100) -> None:
    """Give every runnable task its chance: a task still waiting after this is blocked, not merely late."""
    for _ in range(count):
        await asyncio.sleep(0)


async def test_background_slices_run_one_at_a_time() -> None:
    priority = Priority()
    inside = 0
    most = 0

    async def work() -> None:
        nonlocal inside, most
        async with priority.background():
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0)
            inside -= 1

    await asyncio.gather(*(work() for _ in range(5)))
    assert most == 1


async def test_a_slice_waits_while_a_request_is_served_and_runs_when_it_is_answered() -> None:
    priority = Priority(background_share=1e-9)  # after any slice, the next waits as long as requests are served
    order: list[str] = []

    async def first_slice() -> None:
        async with priority.background():
            await asyncio.sleep(0)  # some work: a slice of nonzero length

    async def second_slice() -> None:
        async with priority.background():
            order.append("slice")

    with priority.serving():
        await first_slice()
        waiting = asyncio.create_task(second_slice())
        await _turns()
        order.append("answered")
    await waiting
    assert order == ["answered", "slice"]


async def test_background_runs_freely_when_no_request_is_served() -> None:
    priority = Priority(background_share=1e-9)  # were it held back here, the slices would wait for ever

    async def slices() -> None:
        for _ in range(3):
            async with priority.background():
                await asyncio.sleep(0)

    await asyncio.wait_for(slices(), timeout=10)


async def test_background_still_progresses_behind_requests_that_never_stop() -> None:
    priority = Priority(background_share=0.5)

    async def slices() -> None:
        for _ in range(3):
            async with priority.background():
                await asyncio.sleep(0.001)  # a slice's work

    with priority.serving():
        await asyncio.wait_for(slices(), timeout=10)


def test_the_share_must_be_a_fraction() -> None:
    for share in (0, -0.1, 1.5):
        with pytest.raises(ValueError):
            Priority(background_share=share)


def test_the_share_is_configured_and_checked() -> None:
    assert load_config(env={}, overrides={}).pipeline.background_share == 1.0
    assert load_config(env={}, overrides={"pipeline.background_share": 0.2}).pipeline.background_share == 0.2
    for share in (0, 1.5):
        with pytest.raises(ConfigError, match=r"pipeline\.background_share"):
            load_config(env={}, overrides={"pipeline.background_share": share})
