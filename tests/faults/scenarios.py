"""The fault scenarios of issue #8, each driving real ``serve`` processes, returning what it measured.

Scenarios assert nothing: the tests assert on the figures, ``bench/faults.py`` prints them. Every wait is on an
observable condition with a deadline (a receiver holding every expected audit ID, a backlog at 0, a process exit).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.faults.load import Load, LoadResult
from tests.faults.observe import Received, stored_audit_ids
from tests.faults.serve import DEFAULT_GRACE_SECONDS, Drain, ServeProcess, ingest_processes, serve_config
from tests.faults.workload import POISONS, BatchRef, Poison, Workload, poison_event, with_poison
from tests.support.otlp_receiver import GrpcOtlpReceiver
from tests.support.waiting import until

MIB = 1024 * 1024


@dataclass
class FaultEnv:
    """What every scenario needs: a scratch directory, the batches, the receiver, and how long to wait."""

    workdir: Path
    workload: Workload
    receiver: GrpcOtlpReceiver
    concurrency: int = 4
    # How long delivery may take once nothing disturbs it any more; only a failing run waits this long.
    settle_seconds: float = 60.0
    redis_url: str = ""
    processes: list[ServeProcess] = field(default_factory=list)
    sections: dict[str, Any] = field(default_factory=dict)  # configuration every server of the scenario gets

    def serve(self, name: str, *, otlp: bool = True, **sections: Any) -> ServeProcess:
        """A server of the scenario; without ``otlp`` the embedded store is its only writer, as by default."""
        data_dir = self.workdir / name
        endpoint = self.receiver.endpoint if otlp else ""
        config = serve_config(data_dir, otlp_endpoint=endpoint, **{**self.sections, **sections})
        process = ServeProcess(config, data_dir, name)
        self.processes.append(process)
        return process

    async def close(self) -> None:
        """Kill whatever a failed scenario left running."""
        for process in self.processes:
            if process.running:
                process.kill()
                await process.wait()

    def load(self, *servers: ServeProcess) -> Load:
        workload = self.workload
        return Load(
            [server.webhook_url for server in servers],
            workload.body,
            lambda ref: workload.events_per_batch[ref.index],
            concurrency=self.concurrency,
        )


@dataclass
class Figures:
    """What one scenario run measured. ``lost_*`` count expected audit IDs of acknowledged batches that are
    missing; ``None`` means not measured in this scenario."""

    scenario: str
    events_acknowledged: int = 0
    batches_acknowledged: int = 0
    batches_unanswered: int = 0
    expected_audit_ids: int = 0
    lost_at_receiver: int | None = 0
    lost_in_store: int | None = None
    duplicate_deliveries: int = 0
    split_roots: int = 0
    orphan_traces: int = 0
    server_errors: int = 0
    exit_code: int | None = None
    exit_seconds: float | None = None  # from the signal to the exit
    drained: bool | None = None
    drain_seconds: float | None = None
    peak_rss_mib: float | None = None
    load_seconds: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    stderr_tail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def count_load(self, result: LoadResult, workload: Workload) -> None:
        self.events_acknowledged = workload.events_in(result.acknowledged)
        self.batches_acknowledged = len(result.acknowledged)
        self.batches_unanswered = len(result.unanswered)
        self.server_errors = len(result.server_errors)
        self.statuses = {str(status): count for status, count in sorted(result.statuses.items())}
        self.load_seconds = result.seconds

    def count_received(self, received: Received, expected: set[str]) -> None:
        received.update()
        self.expected_audit_ids = len(expected)
        self.lost_at_receiver = len(expected - received.audit_ids)
        self.duplicate_deliveries = received.duplicate_deliveries
        self.split_roots = len(received.split_roots)
        self.orphan_traces = len(received.orphan_traces)

    async def count_stored(self, server: ServeProcess, expected: set[str]) -> None:
        self.lost_in_store = len(expected - await stored_audit_ids(server.config["store"]["path"]))

    async def count_delivered(self, received: Received, server: ServeProcess, expected: set[str]) -> None:
        """Once ``server`` has exited: what of ``expected`` is missing at the receiver and in its store."""
        self.count_received(received, expected)
        await self.count_stored(server, expected)

    def note_exit(self, server: ServeProcess, code: int | None) -> None:
        self.exit_code = code
        self.exit_seconds = server.exited_after
        self.stderr_tail = server.stderr()[-2000:]


async def _load_until(load: Load, workload: Workload, copies: int, fraction: float) -> asyncio.Task[LoadResult]:
    """Start loading ``copies`` copies; return once ``fraction`` of their events are answered 200 (or it ended)."""
    task = asyncio.create_task(load.run(workload.batches(range(copies))))
    waiter = asyncio.create_task(load.acknowledged_at_least(int(copies * workload.events_per_copy * fraction)))
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    return task


async def _full_load(
    env: FaultEnv, server: ServeProcess, figures: Figures, seconds: float
) -> tuple[set[str], Drain]:
    """Load as fast as ``server`` takes it for ``seconds``, then wait for its store to catch up, and note how fast
    the store took it in: audit spans per second from the first batch until its backlog is 0."""
    load = env.load(server)
    task = asyncio.create_task(load.run(env.workload.batches(itertools.count())))
    await asyncio.sleep(seconds)  # how long the load (and a fault during it) lasts, not a synchronisation
    load.stop()
    result = await task
    figures.count_load(result, env.workload)
    expected = env.workload.expected_ids(result.acknowledged)
    store = await server.wait_backlog(("pipeline", "sqlite"), env.settle_seconds)
    took = result.seconds + store.seconds
    figures.details["store_caught_up"] = store.done
    figures.details["store_seconds"] = took if store.done else None
    figures.details["store_audit_spans_per_second"] = len(expected) / took if store.done else None
    return expected, store


async def undisturbed(env: FaultEnv, events: int) -> Figures:
    """The baseline: the batches delivered with nothing going wrong."""
    figures = Figures("undisturbed")
    server = env.serve("undisturbed")
    received = Received(env.receiver)
    await server.start()
    try:
        load = env.load(server)
        result = await load.run(env.workload.batches(range(env.workload.copies_for(events))))
        figures.count_load(result, env.workload)
        expected = env.workload.expected_ids(result.acknowledged)
        await received.wait_for(expected, env.settle_seconds)
        drain = await server.wait_backlog(None, env.settle_seconds if received.audit_ids >= expected else 1)
        figures.drained, figures.drain_seconds = drain.done, drain.seconds
        figures.peak_rss_mib = server.peak_rss_bytes() / MIB
        figures.details["received_not_expected"] = len(received.update().audit_ids - expected)
    finally:
        # SIGINT, which serve has always stopped on gracefully (SIGTERM has its own scenario): the baseline must
        # not depend on the shutdown being tested.
        figures.note_exit(server, await server.stop(signum=signal.SIGINT))
    await figures.count_delivered(received, server, expected)
    stored = await stored_audit_ids(server.config["store"]["path"])
    figures.details["stored_not_expected"] = len(stored - expected)
    return figures


async def kill_and_restart(env: FaultEnv, events: int, kill_at: float = 0.5) -> Figures:
    """``kill -9`` once ``kill_at`` of the events are acknowledged; restart on the same data directory."""
    figures = Figures("kill -9, restart")
    server = env.serve("kill")
    received = Received(env.receiver)
    await server.start()
    load = env.load(server)
    task = await _load_until(load, env.workload, env.workload.copies_for(events), kill_at)
    load.stop()
    figures.details["rss_before_kill_mib"] = server.peak_rss_bytes() / MIB
    server.kill()
    figures.details["killed_with"] = await server.wait()
    result = await task
    figures.count_load(result, env.workload)
    expected = env.workload.expected_ids(result.acknowledged)
    figures.details["received_before_restart"] = len(expected & received.update().audit_ids)

    restarted = time.monotonic()
    await server.start()
    try:
        drain = await _deliver_then_drain(
            env, figures, received, server, expected, timed=("recovery_seconds", restarted)
        )
        figures.details["backlog"] = drain.backlog or drain.why
        figures.peak_rss_mib = server.peak_rss_bytes() / MIB
    finally:
        figures.note_exit(server, await server.stop())
    await figures.count_delivered(received, server, expected)
    return figures


async def _signal_mid_load(
    env: FaultEnv, server: ServeProcess, figures: Figures, events: int, at: float, signum: int
) -> tuple[int | None, set[str]]:
    """Start ``server``, load it, send ``signum`` once ``at`` of the events are acknowledged, and wait for its exit
    (a kill -9 after the grace period): its exit code and the expected audit IDs of the acknowledged batches."""
    await server.start()
    load = env.load(server)
    task = await _load_until(load, env.workload, env.workload.copies_for(events), at)
    load.stop()
    figures.peak_rss_mib = server.peak_rss_bytes() / MIB
    server.send(signum)
    code = await server.wait(DEFAULT_GRACE_SECONDS + 10)
    if code is None:
        server.kill()
        await server.wait()
    result = await task
    figures.count_load(result, env.workload)
    return code, env.workload.expected_ids(result.acknowledged)


async def sigterm(env: FaultEnv, events: int, term_at: float = 0.5, signum: int = signal.SIGTERM) -> Figures:
    """SIGTERM (or SIGINT) once ``term_at`` of the events are acknowledged; no restart."""
    figures = Figures(signal.Signals(signum).name)
    server = env.serve("sigterm")
    received = Received(env.receiver)
    code, expected = await _signal_mid_load(env, server, figures, events, term_at, signum)
    figures.note_exit(server, code)
    # No waiting: the process is gone, and what it delivered is here.
    await figures.count_delivered(received, server, expected)
    return figures


async def store_alone(env: FaultEnv, events: int, signum: int, at: float = 0.5) -> Figures:
    """The default configuration, the embedded store the only writer (the pipeline writes into it, past the span
    log): ``signum`` once ``at`` of the events are acknowledged. After a SIGKILL the server is started again on the
    same data and drains; after SIGTERM or SIGINT it is not. Only the store is counted: there is no receiver."""
    figures = Figures(f"store alone, {signal.Signals(signum).name}")
    server = env.serve("store-alone", otlp=False)
    code, expected = await _signal_mid_load(env, server, figures, events, at, signum)
    figures.expected_audit_ids = len(expected)
    figures.lost_at_receiver = None
    if signum == signal.SIGKILL:
        figures.details["killed_with"] = code
        stored = await stored_audit_ids(server.config["store"]["path"])
        figures.details["missing_before_restart"] = len(expected - stored)
        await server.start()
        try:
            drain = await server.wait_backlog(None, env.settle_seconds)
            figures.drained, figures.drain_seconds = drain.done, drain.seconds
            figures.details["backlog"] = drain.backlog or drain.why
        finally:
            code = await server.stop()
    figures.note_exit(server, code)
    spans_dir = Path(server.config["store"]["path"]).parent / "spool" / "spans"
    segments = spans_dir.glob("*.seg") if spans_dir.is_dir() else None
    figures.details["span_log_bytes"] = None if segments is None else sum(path.stat().st_size for path in segments)
    await figures.count_stored(server, expected)
    return figures


async def ingest_process_killed(env: FaultEnv, events: int, kill_at: float = 0.5) -> Figures:
    """``kill -9`` of the ingest process (``ingest.process``, configured in ``env.sections``) once ``kill_at`` of
    the events are acknowledged; the load goes on, retrying what the dead process left unanswered."""
    figures = Figures("ingest process kill -9")
    server = env.serve("ingest-kill")
    received = Received(env.receiver)
    await server.start()
    try:
        load = env.load(server)
        task = await _load_until(load, env.workload, env.workload.copies_for(events), kill_at)
        killed = ingest_processes(server.pid)
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        figures.details["killed"] = len(killed)
        result = await task
        figures.count_load(result, env.workload)
        # On the main port the serving process answers the webhook while no child serves, so the load can end
        # before the next child is up: polled for it, up to the settling time, instead of looked at once.
        with contextlib.suppress(AssertionError):  # none within it: counted as 0, which the test reports
            await until(
                "another ingest process", lambda: bool(ingest_processes(server.pid) - killed), within=env.settle_seconds
            )
        figures.details["replaced"] = len(ingest_processes(server.pid) - killed)
        figures.details["restarts"] = await server.metric("kelemetry_ingest_process_restarts_total", "")
        expected = env.workload.expected_ids(result.acknowledged)
        await _deliver_then_drain(env, figures, received, server, expected)
    finally:
        figures.note_exit(server, await server.stop())
    await figures.count_delivered(received, server, expected)
    return figures


async def otlp_outage(env: FaultEnv, outage_seconds: float) -> Figures:
    """Full load for ``outage_seconds`` while the OTLP receiver is down, then the receiver comes back."""
    figures = Figures(f"OTLP outage {outage_seconds:g}s")
    server = env.serve("outage")
    received = Received(env.receiver)
    await server.start()
    receiver_down = False
    try:
        await env.receiver.stop()
        receiver_down = True
        # The store keeps pace: its backlog empties while OTLP is still down.
        expected, store = await _full_load(env, server, figures, outage_seconds)
        figures.details["backlog_during_outage"] = store.backlog or store.why
        for unit in ("records", "bytes"):
            figures.details[f"metrics_backlog_{unit}"] = await server.metric(
                f"kelemetry_spool_backlog_{unit}", "consumer"
            )
        figures.details["rss_during_outage_mib"] = server.peak_rss_bytes() / MIB
        figures.details["received_during_outage"] = len(received.update().audit_ids & expected)

        await env.receiver.start()
        receiver_down = False
        back = time.monotonic()
        await _deliver_then_drain(
            env, figures, received, server, expected, timed=("delivery_after_outage_seconds", back)
        )
        figures.peak_rss_mib = server.peak_rss_bytes() / MIB
    finally:
        if receiver_down:
            await env.receiver.start()
        figures.note_exit(server, await server.stop())
    await figures.count_delivered(received, server, expected)
    return figures


async def full_load(env: FaultEnv, seconds: float) -> Figures:
    """The undisturbed counterpart of ``otlp_outage``: the same full load for the same time, receiver up."""
    figures = Figures(f"full load {seconds:g}s, receiver up")
    server = env.serve("rate")
    received = Received(env.receiver)
    await server.start()
    try:
        expected, _ = await _full_load(env, server, figures, seconds)
        await received.wait_for(expected, env.settle_seconds)
        figures.peak_rss_mib = server.peak_rss_bytes() / MIB
    finally:
        figures.note_exit(server, await server.stop())
    await figures.count_delivered(received, server, expected)
    return figures


async def poison(env: FaultEnv, clean_events: int) -> Figures:
    """A batch per poison (and one with all of them), each also carrying clean events, sent among clean batches.

    ``details["poison"]`` holds each poison batch's answer; ``details["misnamed_400"]`` the 400s that do not name
    the poisoned item's index and field."""
    figures = Figures("poison")
    workload = env.workload
    server = env.serve("poison")
    received = Received(env.receiver)
    await server.start()
    # Poison batches carry copies numbered from 1_000_000: never the same audit IDs as the clean copies.
    clean_copies = workload.copies_for(clean_events)
    poisoned: dict[BatchRef, tuple[str, list[Poison], int]] = {}
    bodies: dict[BatchRef, bytes] = {}
    groups = [[p] for p in POISONS] + [list(POISONS)]
    for n, group in enumerate(groups):
        ref = BatchRef(1_000_000 + n, n % len(workload.templates))
        clean = workload.body(ref)
        at = min(7, workload.events_per_batch[ref.index])
        events = [poison_event(workload, p, f"poison-{n}-{i}") for i, p in enumerate(group)]
        bodies[ref] = with_poison(clean, events, at)
        poisoned[ref] = ("all" if len(group) > 1 else group[0].name, group, at)
    clean_refs = list(workload.batches(range(clean_copies)))
    # Interleave: a poison batch after every few clean ones, so they are in flight together.
    order: list[BatchRef] = []
    step = max(1, len(clean_refs) // (len(poisoned) + 1))
    poison_refs = list(poisoned)
    for i, ref in enumerate(clean_refs):
        order.append(ref)
        if i % step == step - 1 and poison_refs:
            order.append(poison_refs.pop(0))
    order.extend(poison_refs)

    load = Load(
        [server.webhook_url],
        lambda ref: bodies.get(ref) or workload.body(ref),
        lambda ref: workload.events_per_batch[ref.index],
        concurrency=env.concurrency,
    )
    try:
        result = await load.run(order)
        figures.count_load(result, workload)
        clean_acked = [ref for ref in result.acknowledged if ref not in poisoned]
        figures.details["clean_batches_refused"] = {
            f"{ref.copy}/{ref.index}": f"{answer.status} {answer.text[:200]}"
            for ref, answer in result.answers.items()
            if ref not in poisoned and answer.status != 200
        }
        figures.details["clean_batches_unanswered"] = sum(1 for ref in result.unanswered if ref not in poisoned)
        answers: dict[str, str] = {}
        misnamed: dict[str, str] = {}
        for ref, (name, group, at) in poisoned.items():
            answer = result.answers.get(ref)
            answers[name] = f"{answer.status} {answer.text[:300]}" if answer else "no answer"
            if answer is not None and answer.status == 400 and len(group) == 1:
                fields_named = any(field_name in answer.text for field_name in group[0].fields)
                if not re.search(rf"(?<!\d){at}(?!\d)", answer.text) or not fields_named:
                    misnamed[name] = answer.text[:300]
        figures.details["poison"] = answers
        figures.details["misnamed_400"] = misnamed
        # Clean events are expected from every clean batch, and from poison batches answered 200.
        expected = workload.expected_ids(clean_acked + [ref for ref in result.acknowledged if ref in poisoned])
        await _deliver_then_drain(env, figures, received, server, expected)
    finally:
        figures.note_exit(server, await server.stop())
    await figures.count_delivered(received, server, expected)
    return figures


async def replicas_kill(env: FaultEnv, events: int, kill_at: float = 0.5, claim_idle_seconds: float = 2.0) -> Figures:
    """Two replicas on one Redis (Redis Streams spool), traces to OTLP only (DESIGN §5: at scale traces live in
    Tempo); the load balancer spreads batches over both; replica A gets ``kill -9`` mid-load and stays dead."""
    assert env.redis_url, "replicas need a Redis"
    figures = Figures("two replicas, kill -9 one")
    sections: dict[str, Any] = {
        "redis": {"url": env.redis_url},
        "spool": {"backend": "redis", "claim_idle_seconds": claim_idle_seconds},
        "store": {"enabled": False},
        "frontend": {"enabled": False},
    }
    replica_a, replica_b = env.serve("replica-a", **sections), env.serve("replica-b", **sections)
    received = Received(env.receiver)
    await asyncio.gather(replica_a.start(), replica_b.start())
    try:
        load = env.load(replica_a, replica_b)
        task = await _load_until(load, env.workload, env.workload.copies_for(events), kill_at)
        replica_a.kill()
        figures.details["killed_with"] = await replica_a.wait()
        figures.details["stderr_a"] = replica_a.stderr()[-1500:]
        result = await task  # the rest goes to replica B
        figures.count_load(result, env.workload)
        figures.details["acknowledged_by"] = {"a": result.acknowledged_by[0], "b": result.acknowledged_by[1]}
        expected = env.workload.expected_ids(result.acknowledged)
        killed = time.monotonic()
        await _deliver_then_drain(env, figures, received, replica_b, expected, timed=("recovery_seconds", killed))
    finally:
        if replica_a.running:
            replica_a.kill()
            await replica_a.wait()
        figures.note_exit(replica_b, await replica_b.stop())
    figures.count_received(received, expected)
    return figures


async def _deliver_then_drain(
    env: FaultEnv,
    figures: Figures,
    received: Received,
    server: ServeProcess,
    expected: set[str],
    *,
    timed: tuple[str, float] | None = None,
) -> Drain:
    """Wait until the receiver has every expected event, then until the backlog is empty (only a moment when
    delivery fell short: the lost counts tell that). ``timed``: a details key, and the moment from which it
    gets the seconds until delivery was complete."""
    complete = await received.wait_for(expected, env.settle_seconds)
    if timed is not None:
        key, since = timed
        figures.details[key] = time.monotonic() - since if complete else None
    drain = await server.wait_backlog(None, env.settle_seconds if complete else 1)
    figures.drained, figures.drain_seconds = drain.done, drain.seconds
    return drain
