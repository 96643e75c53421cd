"""Requests first: background slices wait for the requests being served, never forever."""

from __future__ import annotations

import asyncio

from kelemetry_py.metrics import Metrics
from kelemetry_py.pipeline.core import Pipeline
from kelemetry_py.pipeline.emission.memory import MemoryEmissionSet
from kelemetry_py.pipeline.priority import Priority
from tests.pipeline.test_pipeline import POD, observation
from tests.support.writers import CollectingWriter


async def test_a_background_slice_waits_for_the_request_being_served() -> None:
    priority = Priority(max_deferral_seconds=60)
    order: list[str] = []

    async def background() -> None:
        async with priority.background():
            order.append("background")

    with priority.foreground():
        task = asyncio.create_task(background())
        for _ in range(20):  # the background task gets many turns of the loop while the request is served
            await asyncio.sleep(0)
        order.append("request")
    await task
    assert order == ["request", "background"] and priority.deferrals == 1


async def test_a_steady_stream_of_requests_slows_the_background_but_never_stops_it() -> None:
    priority = Priority(max_deferral_seconds=0.01)
    with priority.foreground():  # a request that never ends
        async with priority.background():
            still_serving = priority.serving
    assert still_serving == 1 and priority.deferrals == 1


async def test_background_slices_run_one_at_a_time_and_at_once_when_nobody_waits() -> None:
    priority = Priority()
    running = 0
    most = 0

    async def slice_of_work() -> None:
        nonlocal running, most
        async with priority.background():
            running += 1
            most = max(most, running)
            await asyncio.sleep(0)
            running -= 1

    await asyncio.gather(*(slice_of_work() for _ in range(5)))
    assert most == 1 and priority.deferrals == 0


async def test_the_pipeline_writes_everything_while_requests_keep_coming() -> None:
    priority = Priority(max_deferral_seconds=0.005)
    writer = CollectingWriter()
    pipeline = Pipeline(writer=writer, emission=MemoryEmissionSet(), metrics=Metrics(), priority=priority)
    await pipeline.start()
    with priority.foreground():
        await pipeline.submit([observation(POD, 100 + i, f"k{i}") for i in range(200)])
        await pipeline.drain()  # finishes although the request is still being served
    await pipeline.stop()
    assert priority.deferrals >= 1
    assert {span.attributes.get("verb") for span in writer.spans if span.service == "audit"} == {
        f"k{i}" for i in range(200)
    }
