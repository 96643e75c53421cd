"""Lease timings come from the configuration under client-go's names, checked at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from kelemetry_py.config import ConfigError, load_config
from kelemetry_py.metrics import Metrics
from kelemetry_py.sources.watchers import ClusterWatchers
from tests.kube.helpers import RecordingHandler


class _Client:
    cluster = "fixture"


def test_defaults_are_client_gos() -> None:
    kube = load_config(env={}).kube
    assert (kube.lease_duration_seconds, kube.renew_deadline(), kube.retry_period()) == (15.0, 10.0, 2.0)


def test_configured_timings_reach_the_electors(tmp_path: Path) -> None:
    config = load_config(
        env={"KELEMETRY_KUBE__RETRY_PERIOD_SECONDS": "0.5"},
        overrides={
            "kube.leader_election": True,
            "kube.lease_duration_seconds": 30,
            "kube.renew_deadline_seconds": 20,
            "kube.clusters": [{"name": "fixture", "kubeconfig": str(tmp_path / "none")}],
        },
    )
    cluster = ClusterWatchers(_Client(), config, {"objects": RecordingHandler()}, Metrics())  # type: ignore[arg-type]
    elector = cluster.electors["objects"]
    assert (elector.lease_duration, elector.renew_deadline, elector.retry_period) == (30.0, 20.0, 0.5)


@pytest.mark.parametrize(
    "timings",
    [
        {"kube.lease_duration_seconds": 10, "kube.renew_deadline_seconds": 10},
        {"kube.renew_deadline_seconds": 5, "kube.retry_period_seconds": 6},
        {"kube.retry_period_seconds": -1},
    ],
)
def test_inconsistent_timings_fail_at_start_naming_the_key(timings: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match=r"^kube\.renew_deadline_seconds: .*retry_period_seconds"):
        load_config(env={}, overrides=timings)


def test_the_diff_hold_must_be_positive() -> None:
    with pytest.raises(ConfigError, match=r"^kube\.diff_hold_seconds"):
        load_config(env={}, overrides={"kube.diff_hold_seconds": 0})
