"""The search API over recorded data, against counts computed from the fixture files independently."""

from __future__ import annotations

import csv
import io
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from aiohttp import ClientSession

from kelemetry_py.app import App
from tests.conftest import FAKE_SECRET_VALUES
from tests.e2e.conftest import AppFactory, replay_scenario
from tests.search.conftest import (
    AUDITING,
    EVENTS,
    LOGGING_EVENTS,
    recorded_audit,
    recorded_events,
    start_search_app,
)
from tests.support.kube_double import KubeApiDouble


async def get(app: App, path: str, **params: Any) -> tuple[int, Any]:
    query = {k: str(v) for k, v in params.items()}
    async with ClientSession() as session, session.get(f"{app.base_url}{path}", params=query) as response:
        body = await response.read()
        return response.status, orjson.loads(body) if body else None


async def get_text(app: App, path: str, headers: dict[str, str] | None = None, **params: Any) -> tuple[int, str]:
    async with (
        ClientSession() as session,
        session.get(f"{app.base_url}{path}", params=params, headers=headers or {}) as response,
    ):
        return response.status, await response.text()


def occurred(event: dict[str, Any]) -> datetime:
    """When an Event occurrence happened: a repeat when last seen, a first occurrence at its event time."""
    repeated = ((event.get("series") or {}).get("count") or event.get("count") or 1) > 1
    text = (event.get("lastTimestamp") if repeated else None) or event.get("eventTime") or event["firstTimestamp"]
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def audit_user(item: dict[str, Any]) -> str:
    return str((item.get("impersonatedUser") or item["user"]).get("username", ""))


async def test_totals_match_the_recordings(
    make_app: AppFactory, fixtures_dir: Path, tmp_path: Path, events_double: KubeApiDouble
) -> None:
    app = await start_search_app(make_app, fixtures_dir, tmp_path, events_double)
    audit, events = recorded_audit(fixtures_dir), recorded_events(fixtures_dir)

    # Every audit record the policy sent, not only the traced ones.
    status, answer = await get(app, AUDITING, size=0)
    assert status == 200 and answer["query"] == {"total": len(audit), "records": []}
    patches = [i for i in audit if i["verb"] == "patch" and (i.get("objectRef") or {}).get("namespace") == "shop"]
    _, answer = await get(app, AUDITING, objectref_namespace_filter="shop", verb_filter="patch", size=100)
    assert answer["query"]["total"] == len(patches) > 0
    assert sorted(r["auditID"] for r in answer["query"]["records"]) == sorted(i["auditID"] for i in patches)
    assert all("requestObject" not in r and "responseObject" not in r for r in answer["query"]["records"])
    reads = [i for i in audit if i["verb"] in ("get", "list")]
    _, answer = await get(app, AUDITING, verb_filter="get,list", size=0)
    assert answer["query"]["total"] == len(reads) > 0
    denied = [i for i in audit if (i.get("responseStatus") or {}).get("code") == 403]
    _, answer = await get(app, AUDITING, response_code_filter="403", size=0)
    assert answer["query"]["total"] == len(denied) > 0
    nobody = [i for i in audit if "NOBODY" in audit_user(i).upper()]
    _, answer = await get(app, AUDITING, user_search="NoBoDy", size=0)
    assert answer["query"]["total"] == len(nobody) > 0
    masters = [i for i in audit if "system:masters" in (i.get("impersonatedUser") or i["user"]).get("groups", [])]
    _, answer = await get(app, AUDITING, group_search="MASTERS", size=0)
    assert answer["query"]["total"] == len(masters) > 0

    # Events: occurrences, reasons, fuzzy matching and statistics.
    for path in (EVENTS, LOGGING_EVENTS):
        _, answer = await get(app, path, size=0)
        assert answer["query"]["total"] == len(events)
    scheduled = [e for e in events if e["reason"] == "Scheduled"]
    _, answer = await get(app, EVENTS, reason_filter="Scheduled", size=1000)
    assert answer["query"]["total"] == len(scheduled) > 0
    assert {r["metadata"]["uid"] for r in answer["query"]["records"]} == {e["metadata"]["uid"] for e in scheduled}
    fuzzy = [e for e in events if "schedul" in e["reason"].lower()]
    for keyword in ("schedul", "SCHEDUL", "sChEdUl"):
        _, answer = await get(app, EVENTS, reason_search=keyword, size=0)
        assert answer["query"]["total"] == len(fuzzy)
    pulled_or_created = [e for e in events if e["reason"] in ("Pulled", "Created") and e["type"] == "Normal"]
    _, answer = await get(app, EVENTS, reason_filter="Pulled,Created", type_filter="Normal", size=0)
    assert answer["query"]["total"] == len(pulled_or_created) > 0
    pods = [e for e in events if e["involvedObject"]["kind"] == "Pod"]
    _, answer = await get(app, EVENTS, operation="statistics", involved_object_kind_filter="Pod")
    involved = {(e["involvedObject"]["namespace"], e["involvedObject"]["name"]) for e in pods}
    assert answer == {"statistics": {"events": len(pods), "resources": len(involved)}}

    # Histogram buckets cover the total, one minute apart, in order.
    _, answer = await get(app, EVENTS, operation="histogram", interval="1m")
    buckets = answer["histogram"]["buckets"]
    assert answer["histogram"]["total"] == len(events) == sum(b["count"] for b in buckets)
    assert all(b["time"] % 60_000 == 0 for b in buckets)
    assert [b["time"] for b in buckets] == list(range(buckets[0]["time"], buckets[-1]["time"] + 1, 60_000))
    _, answer = await get(app, AUDITING, operation="histogram", interval="10s", objectref_namespace_filter="shop")
    _, total = await get(app, AUDITING, objectref_namespace_filter="shop", size=0)
    assert (
        answer["histogram"]["total"]
        == total["query"]["total"]
        == sum(b["count"] for b in answer["histogram"]["buckets"])
    )

    # Paging: pages of 7 cover the matches once each; sort=asc is in time order.
    seen: list[str] = []
    for offset in range(0, len(patches) + 7, 7):
        _, page = await get(
            app,
            AUDITING,
            objectref_namespace_filter="shop",
            verb_filter="patch",
            size=7,
            sort="asc",
            **{"from": offset},
        )
        seen.extend(r["auditID"] for r in page["query"]["records"])
    assert len(seen) == len(set(seen)) == len(patches)
    _, answer = await get(app, EVENTS, sort="asc", size=1000)
    times = [occurred(r) for r in answer["query"]["records"]]
    assert len(times) == len(events) and times == sorted(times)
    _, descending = await get(app, EVENTS, size=1000)
    ascending_uids = [r["metadata"]["uid"] for r in answer["query"]["records"]]
    assert [r["metadata"]["uid"] for r in descending["query"]["records"]] == ascending_uids[::-1]

    # Calendar intervals: every recording is from one month, so one bucket at the start of that month.
    _, answer = await get(app, AUDITING, operation="histogram", interval="1M")
    months = {datetime.fromisoformat(i["stageTimestamp"].replace("Z", "+00:00")).strftime("%Y-%m") for i in audit}
    (month,) = months
    start_of_month = int(datetime.fromisoformat(f"{month}-01T00:00:00+00:00").timestamp() * 1000)
    assert answer["histogram"] == {"total": len(audit), "buckets": [{"time": start_of_month, "count": len(audit)}]}

    # Time range: start_time/end_time in unix seconds.
    first_second = min(int(orjson.loads(orjson.dumps(b))["time"]) for b in buckets) // 1000
    _, answer = await get(app, EVENTS, start_time=first_second, end_time=first_second + 59, size=0)
    assert answer["query"]["total"] == buckets[0]["count"]


async def test_export_streams_every_match_and_replays_are_idempotent(
    make_app: AppFactory, fixtures_dir: Path, tmp_path: Path, events_double: KubeApiDouble
) -> None:
    app = await start_search_app(make_app, fixtures_dir, tmp_path, events_double)
    audit = recorded_audit(fixtures_dir)
    status, text = await get_text(app, AUDITING, operation="export")
    assert status == 200
    lines = [orjson.loads(line) for line in text.splitlines()]
    assert len(lines) == len(audit)
    assert Counter(r["verb"] for r in lines) == Counter(i["verb"] for i in audit)
    status, text = await get_text(
        app, EVENTS, headers={"Accept": "text/csv"}, operation="export", reason_filter="Scheduled"
    )
    rows = list(csv.DictReader(io.StringIO(text)))
    assert status == 200 and len(rows) == len([e for e in recorded_events(fixtures_dir) if e["reason"] == "Scheduled"])
    assert {row["kind"] for row in rows} == {"Pod"} and all(row["message"] for row in rows)

    # Secrets: the fake values are in no record, export or byte of the index file.
    for value in FAKE_SECRET_VALUES:
        assert value.decode() not in text
    _, everything = await get_text(app, AUDITING, operation="export")
    assert not any(value.decode() in everything for value in FAKE_SECRET_VALUES)

    # Replaying again overwrites: the same totals, the same record counts in /metrics.
    async with ClientSession() as session, session.get(f"{app.base_url}/metrics") as response:
        before = await response.text()
    await replay_scenario(app, fixtures_dir, "errors-and-links")
    _, answer = await get(app, AUDITING, size=0)
    assert answer["query"]["total"] == len(audit)
    async with ClientSession() as session, session.get(f"{app.base_url}/metrics") as response:
        after = await response.text()
    metric = f'kelemetry_search_records{{kind="audit"}} {float(len(audit))}'
    assert metric in before and metric in after
    assert "kelemetry_search_bytes " in after
    assert app.components is not None and app.components.search is not None
    index_file = app.components.search.path
    for value in FAKE_SECRET_VALUES:
        for path in (index_file, Path(f"{index_file}-wal")):
            assert not path.exists() or value not in path.read_bytes()


async def test_bad_parameters_answer_400_naming_them(
    make_app: AppFactory, fixtures_dir: Path, tmp_path: Path, events_double: KubeApiDouble
) -> None:
    app = await make_app(**{"search.enabled": True, "search.workspaces": {"retail": ["shop"]}})
    cases = {
        "size": {"size": "100000"},
        "from": {"from": "-1"},
        "operation": {"operation": "drop"},
        "interval": {"operation": "histogram", "interval": "5 minutes"},
        "start_time": {"start_time": "yesterday"},
        "end_time": {"start_time": "200", "end_time": "100"},
        "verb_filterz": {"verb_filterz": "get"},
        "response_code_filter": {"response_code_filter": "abc"},
        "format": {"operation": "export", "format": "xml"},
    }
    for name, params in cases.items():
        status, answer = await get(app, AUDITING, **params)
        assert status == 400 and answer["message"].startswith(f"{name}:"), (name, answer)
    status, answer = await get(app, EVENTS, reason_filter=",".join(str(i) for i in range(101)))
    assert status == 400 and answer["message"].startswith("reason_filter:")
    # Workspaces map through the configured table; with none configured they are refused.
    await replay_scenario(app, fixtures_dir, "errors-and-links")
    _, shop = await get(app, AUDITING, objectref_namespace_filter="shop", size=0)
    _, retail = await get(app, AUDITING, workspace_filter="retail", size=0)
    _, fuzzy = await get(app, AUDITING, workspace_search="RET", size=0)
    _, other = await get(app, AUDITING, workspace_filter="unknown", size=0)
    assert retail == fuzzy == shop and shop["query"]["total"] > 0 and other["query"]["total"] == 0
    plain = await make_app(**{"search.enabled": True})
    status, answer = await get(plain, AUDITING, workspace_filter="retail")
    assert status == 400 and answer["message"].startswith("workspace_filter:")
