"""The analyze and trace commands against a loopback server over replayed fixture data."""

from __future__ import annotations

import asyncio
import re

import jsonschema
import orjson
import pytest

from kelemetry_py.analysis.schema import ANALYSIS_SCHEMA
from kelemetry_py.cli import main
from tests.analysis.conftest import Served, ServeScenario


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    # The command runs its own event loop, so it gets a thread of its own.
    code = await asyncio.to_thread(main, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def span_args(served: Served) -> list[str]:
    return ["--server", served.url, "--start", f"{served.start_ns / 1e9:.6f}", "--end", f"{served.end_ns / 1e9:.6f}"]


async def test_analyze_prints_rollout_steps_with_durations(
    serve_scenario: ServeScenario, capsys: pytest.CaptureFixture[str]
) -> None:
    served = await serve_scenario("deployment-lifecycle")
    code, out, err = await run(capsys, "analyze", "deploy/web", "-n", "shop", *span_args(served))
    assert code == 0, err
    assert out.startswith("Analysis of deployments shop/web in cluster fixture")
    for section in ("OBJECTS", "ROLLOUTS", "FAILURES", "CHANGES", "TIMELINE"):
        assert f"\n{section}" in out
    assert re.search(r"#1 create of deployments shop/web by admin at \d\d:\d\d:\d\d\.\d{3}: [\d.]+m?s, converged", out)
    for step in ("spec change", "new ReplicaSet", "pod created", "pod scheduled", "pod ready"):
        assert re.search(rf"^\s+{step}\s+\S+\s+\S+\s+\d\d:\d\d:\d\d\.\d{{3}}\s+[\d.]+(µs|ms|s)", out, re.M), step
    assert out.count("<- slowest") == 5
    assert "├─ replicasets shop/web-" in out or "└─ replicasets shop/web-" in out
    assert 'spec.template.spec.containers[nginx].image = "nginx:1.26"' in out


async def test_analyze_json_output_matches_the_schema_and_the_api(
    serve_scenario: ServeScenario, capsys: pytest.CaptureFixture[str]
) -> None:
    served = await serve_scenario("errors-and-links")
    code, out, err = await run(
        capsys, "analyze", "deployments.apps/broken", "-n", "shop", "-o", "json", *span_args(served)
    )
    assert code == 0, err
    document = orjson.loads(out)
    jsonschema.validate(document, ANALYSIS_SCHEMA)
    assert [(r["code"], r["reason"], r["user"]) for r in document["failures"]["requests"]] == [
        (422, "Invalid", "admin")
    ]

    code, out, _ = await run(capsys, "analyze", "cm/settings", "-n", "shop", *span_args(served))
    assert code == 0
    failures = out[out.index("\nFAILURES\n") : out.index("\nCHANGES\n")]
    (row,) = [line for line in failures.splitlines() if " 409 " in line]
    assert "configmaps shop/settings" in row and "admin" in row and "Conflict" in row


async def test_trace_prints_the_object_tree_with_logs(
    serve_scenario: ServeScenario, capsys: pytest.CaptureFixture[str]
) -> None:
    served = await serve_scenario("deployment-lifecycle")
    code, out, err = await run(capsys, "trace", "deploy/web", "-n", "shop", *span_args(served))
    assert code == 0, err
    lines = out.splitlines()
    assert re.fullmatch(r"trace ff[0-9a-f]{30}  \(times from \d\d:\d\d:\d\d\.\d{3} UTC\)", lines[0])
    assert lines[1].startswith("deployments: shop web  +")
    replica_sets = [line for line in lines if re.match(r"^(├─|└─) replicasets: shop web-", line)]
    assert len(replica_sets) == 2
    pods = [line for line in lines if re.match(r"^(│  |   )(├─|└─) pods: shop web-", line)]
    assert len(pods) == 8
    assert any("· +" in line and "admin create" in line for line in lines), "logs are shown under their span"

    code, bare, _ = await run(capsys, "trace", "deploy/web", "-n", "shop", "--no-logs", *span_args(served))
    assert code == 0 and "· +" not in bare and len(bare.splitlines()) == 1 + 1 + 2 + 8

    def services(output: str) -> set[str]:
        return {process["serviceName"] for process in orjson.loads(output)["processes"].values()}

    json_args = ["trace", "deploy/web", "-n", "shop", "-o", "json", *span_args(served)]
    code, out, _ = await run(capsys, *json_args, "--mode", "tree [owned objects]")
    assert code == 0 and services(out) == {"deployments", "replicasets", "pods", "audit"}
    code, out, _ = await run(capsys, *json_args, "--mode", "tree")
    assert code == 0 and services(out) == {"deployments", "audit"}


async def test_commands_report_errors_clearly(
    serve_scenario: ServeScenario, capsys: pytest.CaptureFixture[str]
) -> None:
    served = await serve_scenario("errors-and-links")
    code, _, err = await run(capsys, "analyze", "deploy/nothing-here", "-n", "shop", *span_args(served))
    assert code == 1 and "no trace of deployments/nothing-here in shop" in err
    code, _, err = await run(capsys, "trace", "frobnicator/x", *span_args(served))
    assert code == 2 and "'frobnicator' is not a known kind" in err
    code, _, err = await run(capsys, "analyze", "web2", *span_args(served))
    assert code == 2 and "KIND/NAME" in err
    code, _, err = await run(capsys, "trace", "deploy/web2", "-n", "shop", "--mode", "upside-down", *span_args(served))
    assert code == 2 and "unknown display mode" in err
    code, _, err = await run(capsys, "analyze", "deploy/web2", "--since", "soon", "--server", served.url)
    assert code == 2 and "--since" in err
    code, _, err = await run(capsys, "analyze", "deploy/web2", "--server", "http://127.0.0.1:9", "--since", "1h")
    assert code == 1 and "cannot reach http://127.0.0.1:9" in err
