"""``auth.mode: token``: an admin and a tenant scoped to namespace shop, after all three recordings."""

from __future__ import annotations

from pathlib import Path

from aiohttp import ClientSession

from tests.conftest import SCENARIOS
from tests.e2e.conftest import AppFactory
from tests.e2e.test_frontend_backends import free_port
from tests.frontend.scenario import scenario_facts
from tests.security.tenant import Reader, check_tenant_view, recorded, replay_all

ADMIN_TOKEN = "admin-0123456789abcdef0123456789"
TENANT_TOKEN = "tenant-0123456789abcdef012345678"
TOKENS = [
    {"token": ADMIN_TOKEN, "user": "admin", "clusters": ["*"], "namespaces": ["*"], "cluster_scoped": True},
    {"token": TENANT_TOKEN, "user": "shop-team", "clusters": ["fixture"], "namespaces": ["shop"]},
]


async def test_tenant_token_sees_its_namespace_and_nothing_else(fixtures_dir: Path, make_app: AppFactory) -> None:
    facts = recorded(fixtures_dir, {s: scenario_facts(fixtures_dir, s) for s in SCENARIOS})
    port = free_port()
    app = await make_app(**{"auth.mode": "token", "auth.tokens": TOKENS, "frontend.grpc_port": port})
    await replay_all(app, fixtures_dir)
    async with ClientSession() as session:
        tenant = Reader(session, app.base_url, TENANT_TOKEN)
        admin = Reader(session, app.base_url, ADMIN_TOKEN)
        await check_tenant_view(tenant, admin, facts, port)
