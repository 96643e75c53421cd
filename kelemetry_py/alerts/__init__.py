"""Alert rules over audit records and Events, delivered to Alertmanager (docs/alerting.md)."""

from __future__ import annotations

from pathlib import Path

from kelemetry_py.alerts.alertmanager import AlertmanagerClient
from kelemetry_py.alerts.evaluator import AlertEvaluator
from kelemetry_py.alerts.rules import load_rules
from kelemetry_py.alerts.state import AlertState
from kelemetry_py.config import Config
from kelemetry_py.metrics import Metrics


async def start_alerts(config: Config, metrics: Metrics) -> AlertEvaluator:
    alerts = config.alerts
    rules = load_rules(alerts.rules_file, config.search.workspaces)
    state: AlertState
    if config.redis.url:
        from kelemetry_py.alerts.redis import RedisAlertState

        state = RedisAlertState(config.redis.url, config.redis.key_prefix)
    else:
        from kelemetry_py.alerts.sqlite import SqliteAlertState

        path = Path(alerts.state_path) if alerts.state_path else Path(config.store.path).parent / "alerts.db"
        state = await SqliteAlertState(path).open()
    sender = AlertmanagerClient(
        alerts.alertmanager_url, metrics, retries=alerts.send_retries, timeout_seconds=alerts.timeout_seconds
    )
    evaluator = AlertEvaluator(
        rules,
        state,
        sender,
        external_url=alerts.external_url,
        interval_seconds=alerts.evaluation_interval_seconds,
    )
    evaluator.start()
    return evaluator


__all__ = ["AlertEvaluator", "start_alerts"]
