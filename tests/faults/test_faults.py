"""Issue #8, "How it is shown": the real ``serve`` process under kill -9, SIGTERM, an OTLP outage, poison events
and a replica killed beside another on one Redis. Acknowledged means answered 200; expected means the audit ID
becomes a span (the product's AuditConverter says which); lost means acknowledged, expected and missing."""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest

from tests.faults import scenarios
from tests.faults.params import EVENTS, OUTAGE_SECONDS
from tests.faults.scenarios import FaultEnv, Figures

RSS_LIMIT_MIB = 400
RecordProperty = Callable[[str, object], None]  # pytest's record_property: the figures go into the JUnit XML


def shown(figures: Figures) -> dict[str, object]:
    return {k: v for k, v in figures.as_dict().items() if k != "stderr_tail"}


def summary(figures: Figures) -> str:
    """The figures and serve's last words, for assertion messages."""
    return f"{shown(figures)}\nserve stderr (tail):\n{figures.stderr_tail}"


def report(figures: Figures, record_property: RecordProperty) -> None:
    for key in ("events_acknowledged", "lost_at_receiver", "lost_in_store", "duplicate_deliveries", "exit_code"):
        record_property(key, getattr(figures, key))
    print(shown(figures))


async def test_undisturbed_run_delivers_exactly_the_expected_audit_ids(
    fault_env: FaultEnv, record_property: RecordProperty
) -> None:
    """The baseline the other tests compare against: with nothing going wrong, the receiver and the store hold
    exactly the audit IDs the converter says become spans (re-deliveries are harmless and only reported)."""
    figures = await scenarios.undisturbed(fault_env, EVENTS // 4)
    report(figures, record_property)
    assert figures.batches_acknowledged == len(fault_env.workload.templates) * fault_env.workload.copies_for(
        EVENTS // 4
    ), summary(figures)
    assert figures.expected_audit_ids > 0
    assert figures.lost_at_receiver == 0 and figures.details["received_not_expected"] == 0, summary(figures)
    assert figures.lost_in_store == 0 and figures.details["stored_not_expected"] == 0, summary(figures)
    assert figures.split_roots == 0 and figures.orphan_traces == 0, summary(figures)
    assert figures.exit_code == 0, summary(figures)


async def test_kill_9_mid_load_then_restart_loses_no_acknowledged_event(
    fault_env: FaultEnv, record_property: RecordProperty
) -> None:
    figures = await scenarios.kill_and_restart(fault_env, EVENTS, kill_at=0.5)
    report(figures, record_property)
    assert figures.details["killed_with"] == -9
    assert 0 < figures.batches_acknowledged < len(fault_env.workload.templates) * fault_env.workload.copies_for(
        EVENTS
    ), "the kill must strike mid-load"
    assert figures.lost_at_receiver == 0, (
        f"{figures.lost_at_receiver} of {figures.expected_audit_ids} acknowledged audit events never reached the "
        f"receiver after the restart\n{summary(figures)}"
    )
    assert figures.lost_in_store == 0, (
        f"{figures.lost_in_store} of {figures.expected_audit_ids} acknowledged audit events are not in the store "
        f"after the restart\n{summary(figures)}"
    )
    assert figures.split_roots == 0 and figures.orphan_traces == 0, summary(figures)
    assert figures.drained, f"backlog after the restart: {figures.details['backlog']}\n{summary(figures)}"
    assert figures.exit_code == 0, summary(figures)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_sigterm_mid_load_drains_everything_acknowledged_and_exits_0(
    fault_env: FaultEnv, record_property: RecordProperty, signum: int
) -> None:
    """Within the default grace period (25 s; the wait allows 10 s more for the interpreter), no restart."""
    figures = await scenarios.sigterm(fault_env, EVENTS, term_at=0.5, signum=signum)
    report(figures, record_property)
    assert figures.batches_acknowledged > 0
    assert figures.exit_code == 0, f"{figures.scenario} ended serve with {figures.exit_code}\n{summary(figures)}"
    assert figures.lost_at_receiver == 0, (
        f"{figures.lost_at_receiver} of {figures.expected_audit_ids} acknowledged audit events did not reach the "
        f"receiver before serve exited\n{summary(figures)}"
    )
    assert figures.lost_in_store == 0, summary(figures)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9-restart", "SIGTERM"])
async def test_with_the_store_alone_an_acknowledged_event_survives_kill_9_and_sigterm(
    fault_env: FaultEnv, record_property: RecordProperty, signum: int
) -> None:
    """The default configuration writes spans straight into the store: an observation is acknowledged only once
    the store has committed its spans, so what a kill cut off is handled again after the restart."""
    figures = await scenarios.store_alone(fault_env, EVENTS, signum)
    report(figures, record_property)
    assert 0 < figures.batches_acknowledged < len(fault_env.workload.templates) * fault_env.workload.copies_for(
        EVENTS
    ), "the signal must strike mid-load"
    assert figures.expected_audit_ids > 0
    assert figures.details["span_log_bytes"] == 0, "the store alone is written past the span log"
    assert figures.lost_in_store == 0, (
        f"{figures.lost_in_store} of {figures.expected_audit_ids} acknowledged audit events are not in the store"
        f"\n{summary(figures)}"
    )
    if signum == signal.SIGKILL:
        assert figures.details["killed_with"] == -9
        assert figures.drained, f"backlog after the restart: {figures.details['backlog']}\n{summary(figures)}"
    assert figures.exit_code == 0, summary(figures)


async def test_otlp_outage_at_full_load_grows_the_disk_backlog_not_memory(
    fault_env: FaultEnv, record_property: RecordProperty
) -> None:
    figures = await scenarios.otlp_outage(fault_env, OUTAGE_SECONDS)
    report(figures, record_property)
    details = figures.details
    assert details["received_during_outage"] == 0, "the receiver was down: nothing can have arrived"
    assert details["store_caught_up"], (
        f"the store did not keep pace while OTLP was down: {details['backlog_during_outage']}\n{summary(figures)}"
    )
    assert details["backlog_during_outage"]["otlp"] > 0, "the OTLP backlog must be on disk, counted in /readyz"
    for unit in ("records", "bytes"):
        assert details[f"metrics_backlog_{unit}"].get("otlp", 0) > 0, f"/metrics must show the OTLP backlog: {details}"
    assert figures.peak_rss_mib is not None and figures.peak_rss_mib < RSS_LIMIT_MIB, summary(figures)
    assert figures.lost_at_receiver == 0, (
        f"{figures.lost_at_receiver} of {figures.expected_audit_ids} acknowledged audit events never reached the "
        f"receiver once it was back\n{summary(figures)}"
    )
    assert figures.lost_in_store == 0, summary(figures)
    assert figures.orphan_traces == 0 and figures.split_roots == 0, summary(figures)
    assert figures.drained and figures.exit_code == 0, summary(figures)


async def test_poison_events_never_take_clean_events_down(
    fault_env: FaultEnv, record_property: RecordProperty
) -> None:
    """Each poison in its own batch of clean events (and all of them in one), among concurrent clean batches:
    a poison batch is refused whole with a 400 naming the item and field, or accepted with the poison dropped."""
    figures = await scenarios.poison(fault_env, EVENTS // 3)
    report(figures, record_property)
    details = figures.details
    assert figures.server_errors == 0, f"5xx answers: {details['poison']}\n{summary(figures)}"
    assert not details["clean_batches_refused"] and details["clean_batches_unanswered"] == 0, summary(figures)
    refused = {name: answer for name, answer in details["poison"].items() if answer[:3] not in ("200", "400")}
    assert not refused, f"poison batches must get 200 or 400: {refused}"
    assert not details["misnamed_400"], f"a 400 must name the item index and the field: {details['misnamed_400']}"
    assert figures.lost_at_receiver == 0, (
        f"{figures.lost_at_receiver} of {figures.expected_audit_ids} acknowledged clean audit events never reached "
        f"the receiver\n{summary(figures)}"
    )
    assert figures.lost_in_store == 0, summary(figures)
    assert figures.orphan_traces == 0, summary(figures)


async def test_two_replicas_on_redis_one_killed_lose_nothing(
    fault_env: FaultEnv, redis_url: str, record_property: RecordProperty
) -> None:
    """The survivor claims the dead replica's pending work; duplicates are harmless (deterministic ids) and only
    reported, but no object window may get two different root spans, and none may lose its root."""
    fault_env.redis_url = redis_url
    figures = await scenarios.replicas_kill(fault_env, EVENTS, kill_at=0.5)
    report(figures, record_property)
    assert figures.details["killed_with"] == -9
    assert min(figures.details["acknowledged_by"].values()) > 0, "both replicas must have taken load"
    assert figures.lost_at_receiver == 0, (
        f"{figures.lost_at_receiver} of {figures.expected_audit_ids} acknowledged audit events never reached the "
        f"receiver\n{summary(figures)}"
    )
    assert figures.split_roots == 0, summary(figures)
    assert figures.orphan_traces == 0, summary(figures)
    assert figures.exit_code == 0, summary(figures)
