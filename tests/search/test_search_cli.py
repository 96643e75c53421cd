"""``kelemetry-py events`` and ``kelemetry-py audit`` against a running App."""

from __future__ import annotations

import asyncio
import io
import sys
from datetime import UTC, datetime
from pathlib import Path

import orjson

from kelemetry_py.cli import build_parser
from kelemetry_py.search.cli import main as search_main
from tests.e2e.conftest import AppFactory, replay_scenario
from tests.kube.helpers import DOUBLE_TOKEN, all_watching, caught_up, watcher_settings
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


async def test_watch_follows_new_events(make_app: AppFactory, tmp_path: Path, fixtures_dir: Path) -> None:
    async with KubeApiDouble(fixtures_dir / "deployment-lifecycle", tokens=[DOUBLE_TOKEN]) as double:
        app = await make_app(
            **watcher_settings(
                tmp_path,
                double.url,
                **{"search.enabled": True, "kube.watch_objects": False, "kube.event_max_age_seconds": 3600.0},
            )
        )
        await all_watching(app, kinds=("events",))

        def put(name: str) -> None:
            now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            event = {
                "metadata": {"name": f"{name}.watch", "namespace": "shop"},
                "involvedObject": {"kind": "Pod", "namespace": "shop", "name": name, "apiVersion": "v1"},
                "reason": "FailedMount",
                "message": f"volume of {name} not found",
                "type": "Warning",
                "count": 1,
                "firstTimestamp": now,
                "lastTimestamp": now,
            }
            double.put_object("", "v1", "events", event)

        put("first")
        await caught_up(app, double)
        script = Path(sys.executable).parent / "kelemetry-py"
        process = await asyncio.create_subprocess_exec(
            str(script),
            "events",
            "--watch",
            "--server",
            app.base_url,
            "--reason",
            "FailedMount",
            "--since",
            "10m",
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert process.stdout is not None
            async with asyncio.timeout(20):
                header = await process.stdout.readline()
                assert header.split()[:3] == [b"LAST", b"SEEN", b"TYPE"]
                assert b"pod/first" in await process.stdout.readline()
                put("second")  # the command polls; nothing to wait for here but its output
                line = await process.stdout.readline()
            assert b"FailedMount" in line and b"pod/second" in line and b"volume of second not found" in line
        finally:
            process.terminate()
            await process.wait()
