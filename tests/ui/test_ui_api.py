"""The UI's JSON over real HTTP on loopback: the search box's language, object pages, mark details, the static
files, and tenant scope (a namespace-limited Scope put on each request as the auth middleware does)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web
from aiohttp.typedefs import Handler

from kelemetry_py.app import App
from kelemetry_py.auth import SCOPE_KEY, StaticScope
from kelemetry_py.config import FrontendConfig
from kelemetry_py.frontend.http import add_frontend_routes
from kelemetry_py.frontend.modes import FrontendError
from kelemetry_py.frontend.tracecache.memory import MemoryTraceCache
from kelemetry_py.model import ObjectRef
from kelemetry_py.ui.http import add_ui_routes, is_static_ui_path
from kelemetry_py.ui.query import parse_range, parse_search
from tests.e2e.conftest import AppFactory, replay_scenario

FROM, TO = "2026-11-21T05:30:00Z", "2026-11-21T05:45:00Z"
RANGE = {"from": FROM, "to": TO}


class NamespaceScope:
    """A tenant limited to some namespaces of one cluster, as token mode describes one."""

    user = "tenant"

    def __init__(self, namespaces: set[str]) -> None:
        self.namespaces = namespaces

    @property
    def sees_everything(self) -> bool:
        return False

    def static(self) -> StaticScope | None:
        return StaticScope(clusters=frozenset({"fixture"}), namespaces=frozenset(self.namespaces), cluster_scoped=False)

    def allows_cluster(self, cluster: str) -> bool:
        return cluster == "fixture"

    async def allows(self, ref: ObjectRef) -> bool:
        return ref.cluster == "fixture" and ref.namespace in self.namespaces

    async def visible(self, refs: Iterable[ObjectRef]) -> set[ObjectRef]:
        return {ref for ref in refs if await self.allows(ref)}


@pytest.fixture
async def recorded(make_app: AppFactory, fixtures_dir: Path) -> App:
    app = await make_app()
    for scenario in ("deployment-lifecycle", "errors-and-links", "batch-and-stateful"):
        await replay_scenario(app, fixtures_dir, scenario)
    return app


@asynccontextmanager
async def tenant_server(app: App, namespaces: set[str] | None = None, middleware: Any = None) -> AsyncIterator[str]:
    """The frontend and UI routes over ``app``'s store, behind a middleware that sets a tenant's scope (or the
    given one), on a loopback port."""

    @web.middleware
    async def tenant(request: web.Request, handler: Handler) -> web.StreamResponse:
        request[SCOPE_KEY] = NamespaceScope(namespaces or set())
        return await handler(request)

    assert app.components is not None and app.components.store is not None
    server = web.Application(middlewares=[middleware or tenant])
    add_frontend_routes(server, app.components.store, MemoryTraceCache(60), FrontendConfig())
    add_ui_routes(server)
    runner = web.AppRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert site._server is not None
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def get(url: str, path: str, **params: str) -> tuple[int, Any]:
    async with ClientSession() as session, session.get(url + path, params=params) as response:
        return response.status, await response.json()


def test_the_search_box_language() -> None:
    query = parse_search("deploy/web -n shop")
    assert (query.resource, query.group, query.namespace, query.name) == ("deployments", "apps", "shop", "web")
    assert query.store_tags() == {"resource": "deployments", "group": "apps", "namespace": "shop", "name": "web"}
    prefix = parse_search("pod/web-6b95…")
    assert (prefix.resource, prefix.name, prefix.name_prefix) == ("pods", "web-6b95", True)
    assert "name" not in prefix.store_tags() and prefix.name_matches("web-6b9546bc54-brs7b")
    assert not prefix.name_matches("web2-5669996685-hq5mc")
    assert parse_search("name=web").store_tags() == {"name": "web"}
    assert parse_search("username=admin").store_tags() == {"username": "admin"}
    errors = parse_search("error=true ns=jobs kind=StatefulSet")
    assert errors.errors_only and errors.store_tags() == {
        "namespace": "jobs",
        "resource": "statefulsets",
        "group": "apps",
    }
    assert parse_search("").store_tags() == {}
    for bad in ("error=maybe", "-n", "=x", "'unclosed"):
        with pytest.raises(FrontendError):
            parse_search(bad)


def test_time_range_words() -> None:
    now = 10_000 * 10**9
    assert parse_range("now-15m", "", now) == (now - 900 * 10**9, now)
    assert parse_range("now-7d", "now", now) == (now - 7 * 86400 * 10**9, now)
    assert parse_range("1795239300000", "1795239400000", now) == (1795239300000 * 10**6, 1795239400000 * 10**6)
    assert parse_range(FROM, TO, now)[1] - parse_range(FROM, TO, now)[0] == 900 * 10**9
    with pytest.raises(FrontendError):
        parse_range(TO, FROM, now)
    with pytest.raises(FrontendError):
        parse_range("yesterday", "", now)


async def test_search_object_and_mark_answers(recorded: App) -> None:
    url = recorded.base_url
    status, found = await get(url, "/api/ui/search", q="deploy/web -n shop", **RANGE)
    assert status == 200 and [obj["key"] for obj in found["objects"]] == ["fixture/apps/deployments/shop/web"]
    web_summary = found["objects"][0]
    assert (
        web_summary["errors"] == 4
        and web_summary["kind"] == "Deployment"
        and sum(web_summary["spark"]) == web_summary["marks"] > 0
    )
    status, pods = await get(url, "/api/ui/search", q="pod/web-6b95…", **RANGE)
    assert status == 200 and len(pods["objects"]) == 4
    assert all(obj["name"].startswith("web-6b95") and obj["kind"] == "Pod" for obj in pods["objects"])
    status, failing = await get(url, "/api/ui/search", q="error=true -n jobs", **RANGE)
    assert status == 200 and failing["objects"]
    assert all(obj["errors"] > 0 and obj["namespace"] == "jobs" for obj in failing["objects"])
    status, by_admin = await get(url, "/api/ui/search", q="username=admin", kind="deploy", **RANGE)
    assert {obj["name"] for obj in by_admin["objects"]} == {"web", "web2", "broken"}

    status, page = await get(
        url, "/api/ui/object", cluster="fixture", resource="deployments", namespace="shop", name="web", **RANGE
    )
    assert status == 200
    rows = page["objects"]
    assert [row["kind"] for row in rows].count("ReplicaSet") == 2 and [row["kind"] for row in rows].count("Pod") == 8
    assert rows[0]["key"] == "fixture/apps/deployments/shop/web" and rows[0]["depth"] == 0
    # Each bar starts at the object's first activity, not at its window's start.
    assert all(row["first"] == min(mark["t"] for mark in row["marks"]) for row in rows)
    conflicts = [mark for row in rows for mark in row["marks"] if mark["code"] == 409]
    assert conflicts and all(mark["error"] for mark in conflicts)
    assert page["analysis"]["latency"]["slowestStep"]["name"] == "pod ready"
    assert page["jaeger"] is None  # no Jaeger UI bundle configured

    scale = next(mark for mark in rows[0]["marks"] if mark["title"] == "admin patch scale")
    status, detail = await get(url, "/api/ui/mark", key=rows[0]["key"], id=scale["id"], **RANGE)
    assert status == 200 and detail["attributes"]["username"] == "admin"
    assert any(log["name"] == "request" and "replicas" in log["fields"]["patch"] for log in detail["logs"])

    status, owned = await get(
        url,
        "/api/ui/object",
        cluster="fixture",
        resource="pods",
        namespace="shop",
        name=rows[-1]["name"],
        mode="ancestors",
        **RANGE,
    )
    assert status == 200 and [row["kind"] for row in owned["objects"]] == ["Deployment", "ReplicaSet", "Pod"]

    for path, params in (
        ("/api/ui/object", {"cluster": "fixture", "resource": "deployments", "namespace": "shop", "name": "none"}),
        ("/api/ui/mark", {"key": rows[0]["key"], "id": "0000000000000000"}),
    ):
        status, body = await get(url, path, **params, **RANGE)
        assert status == 404 and body["error"]["message"]
    for path, params in (
        ("/api/ui/search", {"q": "error=maybe"}),
        ("/api/ui/search", {"limit": "100000"}),
        ("/api/ui/object", {"cluster": "fixture", "resource": "deployments", "name": "web", "mode": "sideways"}),
        ("/api/ui/mark", {"key": "not-a-key", "id": "1"}),
        ("/api/ui/search", {"from": "yesterday"}),
    ):
        status, body = await get(url, path, **params)
        assert status == 400 and body["error"]["message"], (path, params)


async def test_static_files_and_spa_paths(recorded: App) -> None:
    async with ClientSession() as session:
        for path in ("/", "/objects/fixture/deployments/shop/web"):
            async with session.get(recorded.base_url + path) as response:
                assert response.status == 200 and '<main id="main">' in await response.text()
        for path in ("/ui/app.js", "/ui/timeline.js", "/ui/style.css"):
            async with session.get(recorded.base_url + path) as response:
                assert response.status == 200
        async with session.get(recorded.base_url + "/ui/../../pyproject.toml") as response:
            assert response.status in (403, 404)
        async with session.get(recorded.base_url + "/jaeger/search") as response:
            assert response.status == 404  # no Jaeger UI bundle configured


async def test_a_tenant_sees_nothing_outside_its_namespaces(recorded: App) -> None:
    async with tenant_server(recorded, {"jobs"}) as url:
        status, found = await get(url, "/api/ui/search", q="error=true", **RANGE)
        assert status == 200 and found["objects"]
        assert {obj["namespace"] for obj in found["objects"]} == {"jobs"}
        status, admin = await get(url, "/api/ui/search", q="username=admin", limit="100", **RANGE)
        assert {obj["namespace"] for obj in admin["objects"]} == {"jobs"}  # no Namespace or ClusterRole either
        status, facets = await get(url, "/api/ui/facets", **RANGE)
        assert facets["namespaces"] == ["jobs"] and facets["clusters"] == ["fixture"]
        assert "ClusterRole" not in facets["kinds"] and "Deployment" in facets["kinds"]
        # Hidden objects answer exactly as absent ones.
        hidden = await get(
            url, "/api/ui/object", cluster="fixture", resource="deployments", namespace="shop", name="web", **RANGE
        )
        absent = await get(
            url,
            "/api/ui/object",
            cluster="fixture",
            resource="deployments",
            namespace="shop",
            name="never-was",
            **RANGE,
        )
        assert hidden == absent and hidden[0] == 404
        status, page = await get(
            url,
            "/api/ui/object",
            cluster="fixture",
            resource="pods",
            namespace="jobs",
            name="db-0",
            mode="full",
            **RANGE,
        )
        assert status == 200
        keys = {row["key"] for row in page["objects"]}
        assert "fixture/apps/statefulsets/jobs/db" in keys and all(key.split("/")[3] == "jobs" for key in keys)
        assert all(item["object"].split("/")[3] == "jobs" for item in page["analysis"]["timeline"])

    async with tenant_server(recorded, {"shop"}) as url:
        # A ConfigMap whose owner is a cluster-scoped ClusterRole: the tenant's tree starts at the ConfigMap.
        status, page = await get(
            url,
            "/api/ui/object",
            cluster="fixture",
            resource="configmaps",
            namespace="shop",
            name="owned-by-viewer-extra",
            mode="full",
            **RANGE,
        )
        assert status == 200 and [row["kind"] for row in page["objects"]] == ["ConfigMap"]
        assert "clusterroles" not in json.dumps(page)
        web_key = "fixture/apps/deployments/shop/web"
        status, web_page = await get(
            url, "/api/ui/object", cluster="fixture", resource="deployments", namespace="shop", name="web", **RANGE
        )
        rows = web_page["objects"]
        mark = rows[0]["marks"][0]
        assert (await get(url, "/api/ui/mark", key=web_key, id=mark["id"], **RANGE))[0] == 200
    async with tenant_server(recorded, {"jobs"}) as url:
        assert (await get(url, "/api/ui/mark", key=web_key, id=mark["id"], **RANGE))[0] == 404


async def test_a_redirect_lands_on_the_object_page(recorded: App) -> None:
    url = recorded.base_url
    async with ClientSession() as session:
        params = {"resource": "deployments", "namespace": "shop", "name": "web", "ts": "2026-11-21T05:35:40Z"}
        async with session.get(url + "/redirect", params=params, allow_redirects=False) as response:
            location = response.headers["Location"]
        async with session.get(url + location) as response:
            assert response.status == 200 and '<main id="main">' in await response.text()
    status, found = await get(url, "/api/ui/trace", id=location.removeprefix("/trace/"))
    assert status == 200
    assert (found["key"], found["mode"]) == ("fixture/apps/deployments/shop/web", "object")
    assert found["from"] <= 1795239340000 <= found["to"]
    assert (await get(url, "/api/ui/trace", id="ff" + "0" * 8 + "e1e3e7" + "0" * 16))[0] == 404
    assert (await get(url, "/api/ui/trace", id="not-hex"))[0] == 400


def test_which_paths_are_the_uis_own_files() -> None:
    for path in ("/", "/objects/fixture/pods/shop/web", "/trace/ff", "/ui/app.js", "/jaeger", "/jaeger/search"):
        assert is_static_ui_path(path), path
    for path in ("/api/ui/search", "/api/traces", "/jaeger/api/traces", "/redirect", "/api/analysis", "/metrics"):
        assert not is_static_ui_path(path), path


async def test_the_object_page_links_to_the_same_trace_in_jaeger_ui(
    make_app: AppFactory, fixtures_dir: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "jaeger-ui"
    bundle.mkdir()
    (bundle / "index.html").write_text('<html><base href="/" />jaeger</html>')
    app = await make_app(**{"frontend.ui_dir": str(bundle)})
    await replay_scenario(app, fixtures_dir, "deployment-lifecycle")
    status, facets = await get(app.base_url, "/api/ui/facets", **RANGE)
    assert status == 200 and facets["jaeger"] is True
    status, page = await get(
        app.base_url,
        "/api/ui/object",
        cluster="fixture",
        resource="deployments",
        namespace="shop",
        name="web",
        mode="owned",
        **RANGE,
    )
    assert status == 200 and page["jaeger"].startswith("/jaeger/trace/")
    trace_id = page["jaeger"].removeprefix("/jaeger/trace/")
    status, trace = await get(app.base_url, f"/jaeger/api/traces/{trace_id}")
    assert status == 200
    (jaeger_trace,) = trace["data"]
    services = [jaeger_trace["processes"][span["processID"]]["serviceName"] for span in jaeger_trace["spans"]]
    assert services.count("deployments") >= 1 and services.count("replicasets") >= 2 and "pods" in services
    async with ClientSession() as session, session.get(app.base_url + page["jaeger"]) as response:
        assert response.status == 200 and '<base href="/jaeger/"' in await response.text()
