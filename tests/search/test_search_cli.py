"""``kelemetry-py events`` and ``kelemetry-py audit`` against a running App."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import orjson

from kelemetry_py.cli import build_parser
from kelemetry_py.search.cli import main as search_main
from tests.e2e.conftest import AppFactory, replay_scenario
from tests.search.conftest import recorded_audit, recorded_events, start_search_app
from tests.support.kube_double import KubeApiDouble


async def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    args = build_parser().parse_args(list(argv))
    code = await asyncio.to_thread(search_main, args, out)
    return code, out.getvalue()


async def test_events_and_audit_commands(
    make_app: AppFactory, fixtures_dir: Path, tmp_path: Path, events_double: KubeApiDouble
) -> None:
    app = await start_search_app(make_app, fixtures_dir, tmp_path, events_double)
    server = app.base_url
    scheduled = [e for e in recorded_events(fixtures_dir) if e["reason"] == "Scheduled"]
    code, text = await run_cli("events", "--server", server, "--since", "3650d", "--reason", "Scheduled", "-n", "shop")
    lines = text.splitlines()
    assert code == 0 and lines[0].split() == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert len(lines) == 1 + len(scheduled) and all(" Scheduled " in line and " pod/web-" in line for line in lines[1:])

    code, text = await run_cli("events", "--server", server, "--since", "3650d", "--type", "Normal", "-o", "wide")
    assert code == 0 and "NAMESPACE" in text.splitlines()[0] and "SOURCE" in text.splitlines()[0]

    patches = [
        i
        for i in recorded_audit(fixtures_dir)
        if i["verb"] == "patch" and (i.get("objectRef") or {}).get("namespace") == "shop"
    ]
    code, text = await run_cli(
        "audit",
        "--server",
        server,
        "--since",
        "3650d",
        "-n",
        "shop",
        "--verb",
        "patch",
        "-o",
        "json",
        "--limit",
        "1000",
    )
    records = [orjson.loads(line) for line in text.splitlines()]
    assert code == 0 and sorted(r["auditID"] for r in records) == sorted(i["auditID"] for i in patches)
    code, text = await run_cli("audit", "--server", server, "--since", "3650d", "--user", "admin", "--verb", "delete")
    assert code == 0 and text.splitlines()[0].split()[:3] == ["TIME", "USER", "VERB"]
    assert all(line.split()[1:3] == ["admin", "delete"] for line in text.splitlines()[1:])

    # A bad flag value is the server's 400, said on stderr with a non-zero exit.
    code, _ = await run_cli("audit", "--server", server, "--verb", "x" * 600)
    assert code == 1
    code, _ = await run_cli("audit", "--server", server, "--since", "yesterday")
    assert code == 2
    await replay_scenario(app, fixtures_dir, "errors-and-links")  # the app still serves after the CLI's requests
