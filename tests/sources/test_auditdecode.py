"""The two ways of decoding a webhook batch give the same bytes, and the number of workers follows the CPUs."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kelemetry_py.config import AuditConfig, ConfigError, RedactionConfig, load_config
from kelemetry_py.metrics import Metrics
from kelemetry_py.process import GC_THRESHOLDS
from kelemetry_py.sources.audit import InvalidAuditBatch
from kelemetry_py.sources.auditdecode import DecodedBatch, decoder_processes
from kelemetry_py.sources.auditdecode.inline import InlineDecoder
from kelemetry_py.sources.auditdecode.processes import ProcessDecoder
from kelemetry_py.spool.codec import decode_observations
from tests.conftest import SCENARIOS
from tests.faults.serve import children

REDACTION = RedactionConfig(paths=["spec.template.spec.containers.*.image"])


@pytest.fixture
async def workers() -> AsyncIterator[ProcessDecoder]:
    decoder = ProcessDecoder(2, AuditConfig(), REDACTION, records=True)
    await decoder.start()
    assert await decoder.started()
    yield decoder
    await decoder.close()


def batches(fixtures_dir: Path) -> list[bytes]:
    return [
        line
        for scenario in SCENARIOS
        for line in (fixtures_dir / scenario / "audit.jsonl").read_bytes().splitlines()
        if line.strip()
    ]


def without_values(batch: DecodedBatch) -> DecodedBatch:
    return DecodedBatch(batch.accepted, batch.traced, batch.rejected, batch.dropped, batch.payloads)


async def test_workers_give_the_same_records_as_the_loop(workers: ProcessDecoder, fixtures_dir: Path) -> None:
    inline = InlineDecoder(AuditConfig(), REDACTION, records=True)
    bodies = batches(fixtures_dir)
    assert len(bodies) > 3
    for body in bodies:
        here = await inline.decode("fixture", body)
        there = await workers.decode("fixture", body)
        assert there.observations is None  # only bytes cross back: the loop decodes them when the pipeline needs
        assert there == without_values(here)
        assert here.observations is not None
        assert [decode_observations(payload) for payload in there.payloads] == here.observations
        assert max(len(record) for record in here.observations) <= 64


async def test_a_malformed_batch_is_named_the_same_from_a_worker(workers: ProcessDecoder) -> None:
    inline = InlineDecoder(AuditConfig(), REDACTION, records=False)
    body = b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{"auditID":7}]}'
    with pytest.raises(InvalidAuditBatch) as here:
        await inline.decode("c", body)
    with pytest.raises(InvalidAuditBatch) as there:
        await workers.decode("c", body)
    assert str(there.value) == str(here.value) and "items[0]" in str(there.value)


async def test_workers_run_the_collector_as_the_serving_process_does(workers: ProcessDecoder) -> None:
    # A parsed batch is tens of thousands of young objects: at CPython's default threshold a worker spent more
    # than a tenth of its time collecting them.
    pool = workers._pool
    assert pool is not None
    loop = asyncio.get_running_loop()
    answers = await asyncio.gather(*(loop.run_in_executor(pool, _collector_settings) for _ in range(4)))
    assert {thresholds for thresholds, _ in answers} == {GC_THRESHOLDS}
    assert all(frozen > 0 for _, frozen in answers)  # what the worker holds from its start is never traversed


def _collector_settings() -> tuple[tuple[int, int, int], int]:
    return gc.get_threshold(), gc.get_freeze_count()


async def test_the_workers_memory_is_reported_apart_from_the_serving_process() -> None:
    metrics = Metrics()
    decoder = ProcessDecoder(2, AuditConfig(), REDACTION, metrics, records=True)
    await decoder.start()
    assert await decoder.started()

    def reported() -> float | None:
        return metrics.registry.get_sample_value("kelemetry_audit_decode_workers_resident_bytes")

    try:
        workers = decoder.worker_pids
        assert len(workers) == 2
        resident = sum(map(vm_rss_bytes, workers))
        value = reported()
        assert value is not None and value > 2 * (10 << 20)  # two interpreters with the decoding code loaded
        assert abs(value - resident) < 0.1 * resident
    finally:
        await decoder.close()
    assert reported() == 0


def vm_rss_bytes(pid: int) -> int:
    """The kernel's own account of a process's resident memory (``/proc/PID/status``, in KiB there)."""
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def test_automatic_workers_follow_the_cpus_the_process_may_use() -> None:
    automatic = AuditConfig(decode_processes=-1)
    allowed = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(allowed)})
        assert decoder_processes(automatic) == 0  # on one CPU they could only take turns with the loop
        assert decoder_processes(AuditConfig(decode_processes=3)) == 3  # unless asked for
        if len(allowed) >= 2:
            os.sched_setaffinity(0, sorted(allowed)[:2])
            assert decoder_processes(automatic) == 2
    finally:
        os.sched_setaffinity(0, allowed)
    assert decoder_processes(AuditConfig()) == 0  # the default decodes on the loop


def test_a_negative_number_of_workers_is_refused() -> None:
    assert load_config(env={}, overrides={"audit.decode_processes": "2"}).audit.decode_processes == 2
    with pytest.raises(ConfigError, match=r"audit\.decode_processes"):
        load_config(env={}, overrides={"audit.decode_processes": -2})


async def test_workers_killed_while_they_start_are_started_again(
    fixtures_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """As an OOM kill during start-up would: the pool is built again after a pause, not given up for the loop."""
    stop = threading.Event()

    def kill_every_new_worker() -> None:
        while not stop.is_set():
            for server in children(os.getpid()):
                try:
                    cmdline = Path(f"/proc/{server}/cmdline").read_bytes()
                except OSError:
                    continue  # gone meanwhile
                if b"forkserver" in cmdline:
                    for worker in children(server):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(worker, signal.SIGKILL)

    killer = threading.Thread(target=kill_every_new_worker, daemon=True)
    killer.start()
    decoder = ProcessDecoder(2, AuditConfig(), REDACTION, records=True)
    try:
        await decoder.start()
        deadline = time.monotonic() + 20
        while "could not start" not in caplog.text:
            assert time.monotonic() < deadline, "no worker was killed while starting"
            await asyncio.sleep(0.01)
        stop.set()
        assert await decoder.started()
        decoded = await decoder.decode("fixture", batches(fixtures_dir)[0])
        assert decoded.observations is None and decoded.payloads  # decoded by a worker of the second pool
    finally:
        stop.set()
        killer.join()
        await decoder.close()
