"""The webhook's decoding worker processes, around the real ``serve``: they never outlive it, however it ends, and
one dying costs the batch it held a retry (503), never the server or a later batch."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.faults.serve import ServeProcess, alive, children, descendants, serve_config
from tests.faults.workload import BatchRef, Workload
from tests.support.waiting import until

_DEADLINE = 20.0
_WORKERS = 2


def _workers(server_pid: int) -> set[int]:
    """The decoding workers: forked by the fork server, the serving process's child that has children."""
    return {worker for child in children(server_pid) for worker in children(child)}


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ServeProcess]:
    serve = ServeProcess(serve_config(tmp_path, audit={"decode_processes": _WORKERS}), tmp_path)
    await serve.start()
    try:
        await until(f"{_WORKERS} decoding workers exist", lambda: len(_workers(serve.pid)) == _WORKERS)
        yield serve
    finally:
        if serve.running:
            await serve.stop()


async def _workers_up(serve: ServeProcess) -> bool:
    """Whether the server says its workers have started and take batches (they exist a little earlier)."""
    return await serve.metric("kelemetry_audit_decode_workers", "") == {"": _WORKERS}


async def _until_workers_up(serve: ServeProcess) -> None:
    await until("the workers started", lambda: _workers_up(serve), serve.stderr)


async def _post(serve: ServeProcess, body: bytes) -> tuple[int, str, str]:
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session, session.post(serve.webhook_url, data=body, headers=headers) as resp:
        return resp.status, await resp.text(), resp.headers.get("Retry-After", "")


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
async def test_no_process_of_the_server_outlives_it(
    server: ServeProcess, workload: Workload, signum: signal.Signals
) -> None:
    await _until_workers_up(server)
    status, text, _ = await _post(server, workload.body(BatchRef(0, 0)))
    assert status == 200, text
    everything = descendants(server.pid)
    assert _workers(server.pid) <= everything and len(everything) > _WORKERS
    server.send(signum)
    code = await server.wait(within=_DEADLINE)
    assert code == (-signal.SIGKILL if signum == signal.SIGKILL else 0), server.stderr()
    await until("every process the server started exits", lambda: not alive(everything))


async def test_a_dead_worker_costs_one_retry_not_the_server(server: ServeProcess, workload: Workload) -> None:
    await _until_workers_up(server)
    before = _workers(server.pid)
    os.kill(min(before), signal.SIGKILL)
    answers: list[tuple[int, str, str]] = []
    copy = 0

    async def accepted_by_new_workers() -> bool:
        nonlocal copy
        copy += 1
        answers.append(await _post(server, workload.body(BatchRef(copy, 0))))
        replaced = len(_workers(server.pid) - before) == _WORKERS
        return answers[-1][0] == 200 and replaced and await _workers_up(server)

    await until(
        "accepted again by new workers", accepted_by_new_workers, lambda: f"{answers[:3]}\n{server.stderr()}"
    )
    assert server.running
    for status, text, retry_after in answers:
        assert status in (200, 503), text
        if status == 503:  # the pool learnt of the death from this batch: the apiserver sends it again
            assert retry_after and "Traceback" not in text and "Broken" not in text, text
    assert not alive(before), "the pool's surviving worker is stopped with it"
    retried = sum(1 for status, _, _ in answers if status == 503)
    rejected = await server.metric("kelemetry_audit_batches_rejected_total", "reason")
    assert rejected.get("decoder_restarting", 0) == retried
    everything = descendants(server.pid)
    assert await server.stop() == 0, server.stderr()  # and it still shuts down cleanly, with its new workers
    await until("every process the server started exits", lambda: not alive(everything))
