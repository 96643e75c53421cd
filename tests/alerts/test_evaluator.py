"""Alert rules over records, with a real Alertmanager receiving what they fire."""

from __future__ import annotations

from pathlib import Path

import yaml

from kelemetry_py.alerts.alertmanager import AlertmanagerClient
from kelemetry_py.alerts.evaluator import AlertEvaluator
from kelemetry_py.alerts.rules import load_rules
from kelemetry_py.alerts.sqlite import SqliteAlertState
from kelemetry_py.metrics import Metrics
from kelemetry_py.model import KIND_RECORD, ObjectRef, Observation
from tests.alerts.conftest import Alertmanager

T0_NS = 1_790_000_000_000_000_000


def _deletion(audit_id: str) -> Observation:
    return Observation(
        ref=ObjectRef("prod", "", "v1", "configmaps", "shop", "settings"),
        kind=KIND_RECORD,
        title="delete",
        start_ns=T0_NS,
        end_ns=T0_NS,
        dedup_key=f"audit:{audit_id}:ResponseComplete",
        record={
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "auditID": audit_id,
            "stage": "ResponseComplete",
            "verb": "delete",
            "user": {"username": "alice"},
            "responseStatus": {"code": 200},
            "objectRef": {"resource": "configmaps", "namespace": "shop", "name": "settings"},
        },
    )


async def test_a_template_that_does_not_fit_the_record_is_sent_as_written(
    tmp_path: Path, alertmanager: Alertmanager
) -> None:
    """A format spec the value cannot take ({verb:d} on text) must not stop the rules: a rule that raised would never
    acknowledge its records, and the spool would fill until the webhook refused every batch."""
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(
        yaml.safe_dump(
            {
                "rules": [
                    {
                        "name": "ConfigMapDeleted",
                        "source": "audit",
                        "match": {"verb_filter": "delete"},
                        "threshold": 0,
                        "annotations": {"summary": "{user} deleted {name}", "typo": "{verb:d} by {user}"},
                    }
                ]
            }
        )
    )
    metrics = Metrics()
    sender = AlertmanagerClient(alertmanager.url, metrics)
    sender.start()
    state = await SqliteAlertState(tmp_path / "alerts.db").open()
    evaluator = AlertEvaluator(
        load_rules(rules_file), state, sender, external_url="http://kelemetry.example", interval_seconds=60
    )
    await evaluator.evaluate([_deletion("a-1")])
    await sender.flush()
    (alert,) = await alertmanager.wait_for(lambda alerts: alerts)
    assert alert["annotations"]["summary"] == "alice deleted settings"
    assert alert["annotations"]["typo"] == "{verb:d} by {user}"
    await sender.close()
    await state.close()
