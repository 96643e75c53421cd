"""Alert rules end to end: Events through the Kubernetes API double and audit through the webhook, two Apps
sharing one Redis, a real Alertmanager receiving the alerts."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from kelemetry_py.app import App
from tests.alerts.conftest import Alertmanager, free_port, running_alertmanager
from tests.e2e.conftest import AppFactory, replay_scenario
from tests.kube.helpers import DOUBLE_TOKEN, all_watching, caught_up, watcher_settings
from tests.support.kube_double import KubeApiDouble

BACKOFF_RULES = {
    "rules": [
        {
            "name": "PodBackOffBurst",
            "source": "events",
            "match": {"reason_filter": "BackOff", "involved_object_kind_filter": "Pod"},
            "group_by": ["cluster", "namespace", "name"],
            "window": "3s",
            "threshold": 5,
            "labels": {"severity": "warning"},
            "annotations": {"summary": "{count} BackOff events for pod {namespace}/{name} in {window}"},
        }
    ]
}


async def sent(app: App, state: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"{app.base_url}/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith(f'kelemetry_alerts_sent_total{{state="{state}"}}'):
            return float(line.split()[-1])
    return 0.0


def backoff(pod: str, count: int, uid: str) -> dict[str, Any]:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{pod}.backoff", "namespace": "shop", "uid": uid},
        "involvedObject": {"kind": "Pod", "namespace": "shop", "name": pod, "apiVersion": "v1", "uid": f"{pod}-uid"},
        "reason": "BackOff",
        "message": "Back-off restarting failed container",
        "type": "Warning",
        "count": count,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "source": {"component": "kubelet", "host": "node-1"},
    }


async def test_backoff_burst_fires_once_across_two_replicas_and_resolves(
    make_app: AppFactory, fixtures_dir: Path, tmp_path: Path, alertmanager: Alertmanager, redis_url: str
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(BACKOFF_RULES))
    async with KubeApiDouble(fixtures_dir / "deployment-lifecycle", tokens=[DOUBLE_TOKEN]) as double:
        double.release()
        apps = []
        for _ in range(2):
            settings = watcher_settings(
                tmp_path,
                double.url,
                **{
                    "kube.watch_objects": False,
                    "kube.event_max_age_seconds": 3600.0,  # the recorded Events are old: only the new ones count
                    "redis.url": redis_url,
                    "alerts.rules_file": str(rules),
                    "alerts.alertmanager_url": alertmanager.url,
                    "alerts.evaluation_interval_seconds": 0.3,
                    "alerts.external_url": "http://kelemetry.example:8080",
                },
            )
            app = await make_app(**settings)
            await all_watching(app, kinds=("events",))
            apps.append(app)
        # web-1 backs off six times (more than five: fires); web-2 three times (stays quiet even if both
        # replicas saw and counted each of its Events).
        for count in range(1, 7):
            double.put_object("", "v1", "events", backoff("web-1", count, "ev-web-1"))
        for count in range(1, 4):
            double.put_object("", "v1", "events", backoff("web-2", count, "ev-web-2"))
        for app in apps:
            await caught_up(app, double)

        def backoff_alerts(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [a for a in alerts if a["labels"].get("alertname") == "PodBackOffBurst"]

        firing = backoff_alerts(await alertmanager.wait_for(lambda alerts: backoff_alerts(alerts)))
        assert len(firing) == 1
        alert = firing[0]
        assert alert["labels"] == {
            "alertname": "PodBackOffBurst",
            "severity": "warning",
            "cluster": "fixture",
            "namespace": "shop",
            "name": "web-1",
        }
        assert alert["annotations"]["summary"] == "6 BackOff events for pod shop/web-1 in 3s"
        assert alert["annotations"]["trace_url"].startswith(
            "http://kelemetry.example:8080/redirect?cluster=fixture&group=&resource=pods&namespace=shop&name=web-1"
        )
        assert alert["annotations"]["ui_url"] == "http://kelemetry.example:8080/objects/fixture/pods/shop/web-1"
        assert alert["generatorURL"] == alert["annotations"]["trace_url"]
        assert sum([await sent(app, "firing") for app in apps]) == 1

        # After its window the burst is over: resolved once, gone from Alertmanager's active alerts.
        await alertmanager.wait_for(lambda alerts: not backoff_alerts(alerts))
        for app in apps:  # the metric counts a delivery once Alertmanager has answered it
            assert app.components is not None and app.components.alerts is not None
            await app.components.alerts.flush()
        assert sum([await sent(app, "resolved") for app in apps]) == 1
        assert sum([await sent(app, "firing") for app in apps]) == 1


async def test_namespace_delete_fires_once_and_not_again_after_a_restart(
    make_app: AppFactory, fixtures_dir: Path, tmp_path: Path, alertmanager: Alertmanager
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        yaml.safe_dump(
            {
                "rules": [
                    {
                        "name": "NamespaceDeleted",
                        "source": "audit",
                        "match": {"verb_filter": "delete", "objectref_resource_filter": "namespaces"},
                        "group_by": ["cluster", "name"],
                        "window": "366d",
                        "threshold": 0,
                    }
                ]
            }
        )
    )
    settings = {
        "alerts.rules_file": str(rules),
        "alerts.alertmanager_url": alertmanager.url,
        "alerts.state_path": str(tmp_path / "alerts.db"),
        "alerts.evaluation_interval_seconds": 0.3,
    }
    first = await make_app(**settings)
    await replay_scenario(first, fixtures_dir, "batch-and-stateful")
    alerts = await alertmanager.wait_for(
        lambda found: any(a["labels"]["alertname"] == "NamespaceDeleted" for a in found)
    )
    assert [a["labels"] for a in alerts] == [{"alertname": "NamespaceDeleted", "cluster": "fixture", "name": "jobs"}]
    assert first.components is not None and first.components.alerts is not None
    await first.components.alerts.flush()
    assert await sent(first, "firing") == 1
    await first.stop()

    # A restart with the same state, and the same audit stream delivered again (the apiserver retrying).
    second = await make_app(**settings)
    await replay_scenario(second, fixtures_dir, "batch-and-stateful")
    assert await sent(second, "firing") == 0
    alerts = await alertmanager.alerts()
    assert [a["labels"]["name"] for a in alerts if a["labels"]["alertname"] == "NamespaceDeleted"] == ["jobs"]


async def test_an_alertmanager_that_comes_up_late_still_gets_the_alert(
    make_app: AppFactory, fixtures_dir: Path, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        yaml.safe_dump(
            {
                "rules": [
                    {
                        "name": "ForbiddenRequests",
                        "source": "audit",
                        "match": {"response_code_filter": "403"},
                        "group_by": ["cluster", "user"],
                        "window": "366d",
                        "threshold": 1,
                    }
                ]
            }
        )
    )
    port = free_port()
    app = await make_app(
        **{
            "alerts.rules_file": str(rules),
            "alerts.alertmanager_url": f"http://127.0.0.1:{port}",
            "alerts.send_retries": 8,
        }
    )
    await replay_scenario(app, fixtures_dir, "errors-and-links")
    assert app.components is not None
    metrics = app.components.metrics.registry
    async with asyncio.timeout(10):
        while True:  # the failed first attempt is only visible as this counter: poll it with a deadline
            if metrics.get_sample_value("kelemetry_alert_send_errors_total"):
                break
            await asyncio.sleep(0.05)
    async with running_alertmanager(tmp_path / "late", port) as manager:
        alerts = await manager.wait_for(lambda found: bool(found), within=30)
        denied = {i["impersonatedUser"]["username"] for i in _forbidden(fixtures_dir)}
        assert [a["labels"]["user"] for a in alerts] == sorted(denied)
        assert await sent(app, "firing") == 1


def _forbidden(fixtures_dir: Path) -> list[dict[str, Any]]:
    items = [
        item
        for line in (fixtures_dir / "errors-and-links" / "audit.jsonl").open("rb")
        for item in json.loads(line)["items"]
    ]
    return [i for i in items if (i.get("responseStatus") or {}).get("code") == 403]
