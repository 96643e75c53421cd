"""``auth.mode: token``: an admin and a tenant scoped to namespace shop, after all three recordings."""

from __future__ import annotations

import asyncio
import sys
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


async def run_cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "kelemetry-py"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin"},
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_trace_command_sends_the_token(fixtures_dir: Path, make_app: AppFactory) -> None:
    facts = recorded(fixtures_dir, {s: scenario_facts(fixtures_dir, s) for s in SCENARIOS})
    app = await make_app(**{"auth.mode": "token", "auth.tokens": TOKENS})
    await replay_all(app, fixtures_dir)
    window = ["--start", str(facts.start_ns // 10**9), "--end", str(facts.end_ns // 10**9), "--server", app.base_url]
    code, out, _ = await run_cli("trace", "deploy/web", "-n", "shop", "--no-logs", "--token", TENANT_TOKEN, *window)
    assert code == 0 and "web" in out
    code, _, err = await run_cli("trace", "deploy/web", "-n", "shop", *window)
    assert code != 0 and "--token" in err
    code, out, err = await run_cli("analyze", "statefulset/db", "-n", "jobs", "--token", TENANT_TOKEN, *window)
    assert code != 0 and "no trace" in err and "db-0" not in out
    code, out, _ = await run_cli("analyze", "statefulset/db", "-n", "jobs", "--token", ADMIN_TOKEN, *window)
    assert code == 0 and "db" in out
