"""A tenant token scoped to `shop` gets no `jobs` record from any operation, and totals that count only `shop`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from aiohttp import ClientSession

from tests.e2e.conftest import AppFactory
from tests.search.conftest import AUDITING, EVENTS, recorded_audit, recorded_events, start_search_app
from tests.support.kube_double import KubeApiDouble

TOKEN = "tenant-shop-token"


async def fetch(url: str, token: str, **params: Any) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"}
    async with ClientSession() as session, session.get(url, params=params, headers=headers) as response:
        return response.status, await response.read()


async def test_a_shop_tenant_sees_only_shop(
    make_app: AppFactory, fixtures_dir: Path, tmp_path: Path, events_double: KubeApiDouble
) -> None:
    app = await start_search_app(
        make_app,
        fixtures_dir,
        tmp_path,
        events_double,
        **{
            "auth.mode": "token",
            "auth.tokens": [
                {
                    "token": TOKEN,
                    "user": "shop-team",
                    "clusters": ["fixture"],
                    "namespaces": ["shop"],
                    "cluster_scoped": False,
                }
            ],
        },
    )
    audit_in_shop = [i for i in recorded_audit(fixtures_dir) if (i.get("objectRef") or {}).get("namespace") == "shop"]
    events_in_shop = [e for e in recorded_events(fixtures_dir) if e["involvedObject"].get("namespace") == "shop"]
    for path, expected in ((AUDITING, len(audit_in_shop)), (EVENTS, len(events_in_shop))):
        status, body = await fetch(app.base_url + path, TOKEN, size="1000")
        assert status == 200
        answer = orjson.loads(body)
        assert answer["query"]["total"] == expected
        assert b'"jobs"' not in body
        _, body = await fetch(app.base_url + path, TOKEN, operation="statistics")
        assert orjson.loads(body)["statistics"]["events"] == expected
        _, body = await fetch(app.base_url + path, TOKEN, operation="histogram", interval="1m")
        histogram = orjson.loads(body)["histogram"]
        assert histogram["total"] == sum(b["count"] for b in histogram["buckets"]) == expected
        status, body = await fetch(app.base_url + path, TOKEN, operation="export")
        assert status == 200 and len(body.splitlines()) == expected and b'"jobs"' not in body
        # Asking for jobs explicitly is no way around the scope.
        _, body = await fetch(
            app.base_url + path,
            TOKEN,
            cluster="fixture",
            size="10",
            **(
                {"objectref_namespace_filter": "jobs"}
                if path == AUDITING
                else {"involved_object_namespace_filter": "jobs"}
            ),
        )
        assert orjson.loads(body)["query"]["total"] == 0
    status, _ = await fetch(app.base_url + AUDITING, "wrong-token")
    assert status == 401
