"""A tenant in the built-in UI (``auth.mode: token``): a token scoped to namespace ``jobs`` of cluster ``fixture``
sees its objects and nothing outside them, in search results, object trees, analysis and mark details.

Needs the security work's ``auth`` configuration section (``auth.mode``, ``auth.tokens``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import ClientSession
from playwright.async_api import Page, expect

from kelemetry_py.app import App
from tests.e2e.conftest import AppFactory, replay_scenario
from tests.ui.conftest import Console

TENANT_TOKEN = "tenant-jobs-token"
ADMIN_TOKEN = "admin-everything-token"
FROM, TO = "2026-11-21T05:30:00Z", "2026-11-21T05:45:00Z"


async def tenant_app(make_app: AppFactory, fixtures_dir: Path) -> App:
    app = await make_app(
        **{
            "auth.mode": "token",
            "auth.tokens": [
                {
                    "token": TENANT_TOKEN,
                    "user": "team-jobs",
                    "clusters": ["fixture"],
                    "namespaces": ["jobs"],
                    "cluster_scoped": False,
                },
                {"token": ADMIN_TOKEN, "user": "admin", "clusters": ["*"], "namespaces": ["*"], "cluster_scoped": True},
            ],
        }
    )
    for scenario in ("errors-and-links", "batch-and-stateful"):
        await replay_scenario(app, fixtures_dir, scenario)
    return app


async def test_the_tenant_sees_only_its_namespace_in_the_ui(
    make_app: AppFactory,
    fixtures_dir: Path,
    page: Page,
    console: Console,
    screenshot: Callable[[str], Any],
) -> None:
    app = await tenant_app(make_app, fixtures_dir)
    # The UI's data answers 401 without a token; the page asks for one and keeps it.
    await page.goto(f"{app.base_url}/?q=error%3Dtrue&from={FROM}&to={TO}")
    dialog = page.locator("#token-dialog")
    await expect(dialog).to_be_visible()
    await page.fill("#token-input", TENANT_TOKEN)
    await page.click("#token-save")
    results = page.locator("a.result")
    await expect(results.first).to_be_visible()
    keys = await results.evaluate_all("links => links.map(a => a.dataset.key)")
    assert keys, "the tenant has failed requests in its namespace"
    assert all(key.split("/")[3] == "jobs" for key in keys), keys
    assert await page.evaluate("localStorage.getItem('kelemetry.token')") == TENANT_TOKEN
    await screenshot("tenant-search")

    # Its StatefulSet's page: the tree holds its own objects only (the Namespace and the Node are cluster-scoped).
    await page.goto(f"{app.base_url}/objects/fixture/statefulsets/jobs/db?from={FROM}&to={TO}")
    await expect(page.locator("#timeline")).to_have_attribute("data-ready", "true")
    row_keys = await page.locator(".tl-row").evaluate_all("rows => rows.map(r => r.dataset.key)")
    assert "fixture/apps/statefulsets/jobs/db" in row_keys
    assert all(key.split("/")[3] == "jobs" for key in row_keys), row_keys
    assert "shop" not in await page.locator("main").inner_text()
    await screenshot("tenant-object")

    # Another namespace's object is as absent as one that never existed.
    await page.goto(f"{app.base_url}/objects/fixture/deployments/shop/web2?from={FROM}&to={TO}")
    await expect(page.locator("#overlay")).to_contain_text("No activity of this object")

    # The same answers over HTTP: not a byte about shop, with the admin seeing it.
    async with ClientSession() as session:
        params = {"q": "error=true", "from": FROM, "to": TO}
        tenant = {"Authorization": f"Bearer {TENANT_TOKEN}"}
        async with session.get(f"{app.base_url}/api/ui/search", params=params, headers=tenant) as response:
            assert response.status == 200
            assert b"shop" not in await response.read()
        async with session.get(
            f"{app.base_url}/api/ui/search", params=params, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        ) as response:
            assert response.status == 200
            assert b"shop" in await response.read()
        async with session.get(f"{app.base_url}/api/ui/facets", params=params, headers=tenant) as response:
            facets = await response.json()
            assert facets["namespaces"] == ["jobs"]
        async with session.get(f"{app.base_url}/api/ui/search", params=params) as response:
            assert response.status == 401
    # Failed loads (the first 401s, the 404 of the hidden object) are expected here; nothing else.
    unexpected = [error for error in console.errors if "status of 401" not in error and "status of 404" not in error]
    assert unexpected == []
