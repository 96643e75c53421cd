"""The ingest process (``ingest.process``) around the real ``serve``, on either listener: killing it costs the batches
it had in flight a retry, never an acknowledged event; it never outlives ``serve``; SIGTERM drains through it."""

from __future__ import annotations

import asyncio
import signal

import pytest
from aiohttp import ClientSession, ClientTimeout

from tests.faults import scenarios
from tests.faults.params import EVENTS
from tests.faults.scenarios import FaultEnv
from tests.faults.serve import alive, descendants, free_port, ingest_processes
from tests.faults.test_faults import summary
from tests.support.waiting import until

_DEADLINE = 20.0


@pytest.fixture(params=["own listener", "main listener"])
def ingest_env(request: pytest.FixtureRequest, fault_env: FaultEnv) -> FaultEnv:
    """On a listener of its own (http.ingest_port), or on the main one, which passes it the webhook's connections."""
    fault_env.sections = {"ingest": {"process": True}}
    if request.param == "own listener":
        fault_env.sections["http"] = {"ingest_port": free_port()}
    return fault_env


async def test_kill_9_of_the_ingest_process_mid_load_loses_no_acknowledged_event(ingest_env: FaultEnv) -> None:
    figures = await scenarios.ingest_process_killed(ingest_env, EVENTS // 2)
    assert figures.details["killed"] == 1, summary(figures)
    assert figures.details["replaced"] == 1 and figures.details["restarts"] == {"": 1.0}, summary(figures)
    assert figures.batches_acknowledged == len(ingest_env.workload.templates) * ingest_env.workload.copies_for(
        EVENTS // 2
    ), f"every batch is answered 200 in the end\n{summary(figures)}"
    assert figures.lost_at_receiver == 0 and figures.lost_in_store == 0, summary(figures)
    assert figures.drained and figures.exit_code == 0, summary(figures)


async def test_sigterm_mid_load_drains_through_the_ingest_process(ingest_env: FaultEnv) -> None:
    figures = await scenarios.sigterm(ingest_env, EVENTS // 2, term_at=0.5)
    assert figures.batches_acknowledged > 0
    assert figures.exit_code == 0, summary(figures)
    assert figures.lost_at_receiver == 0 and figures.lost_in_store == 0, summary(figures)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
async def test_the_ingest_process_never_outlives_serve(ingest_env: FaultEnv, signum: signal.Signals) -> None:
    server = ingest_env.serve("outlive")
    await server.start()
    ingest = ingest_processes(server.pid)
    assert len(ingest) == 1
    everything = descendants(server.pid)
    server.send(signum)
    code = await server.wait(within=_DEADLINE)
    assert code == (-signal.SIGKILL if signum == signal.SIGKILL else 0), server.stderr()
    await until("every process serve started exits", lambda: not alive(everything))


async def test_probes_on_the_ingest_listener_fail_while_serve_hangs(fault_env: FaultEnv) -> None:
    """/healthz and /readyz on the ingest listener are answered by the ingest process, which asks ``serve``: while
    ``serve`` is stopped (SIGSTOP) both must fail, or the kubelet would never restart a hung replica; after SIGCONT
    they pass again."""
    port = free_port()
    fault_env.sections = {"http": {"ingest_port": port}, "ingest": {"process": True}}
    server = fault_env.serve("hung")
    await server.start()
    base = f"http://127.0.0.1:{port}"

    async def probe(session: ClientSession, path: str) -> tuple[int, str]:
        async with session.get(base + path, timeout=ClientTimeout(total=_DEADLINE)) as response:
            return response.status, await response.text()

    async def both(session: ClientSession) -> list[tuple[int, str]]:
        return list(await asyncio.gather(probe(session, "/healthz"), probe(session, "/readyz")))

    async with ClientSession() as session:
        assert [status for status, _ in await both(session)] == [200, 200]
        server.send(signal.SIGSTOP)
        try:
            hung = await both(session)
        finally:
            server.send(signal.SIGCONT)
        assert all(status == 503 and "does not answer" in text for status, text in hung), hung
        assert [status for status, _ in await both(session)] == [200, 200]
    assert await server.stop() == 0, server.stderr()
