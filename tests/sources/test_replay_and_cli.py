from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from kelemetry_py import __version__
from kelemetry_py.cli import main
from kelemetry_py.sources.replay import read_batches, replay, webhook_url
from tests.sources.test_webhook import SMALL_SPOOL, make_harness


async def test_replay_honours_429_and_delivers_every_batch(fixtures_dir: Path, tmp_path: Path) -> None:
    h = await make_harness(tmp_path, spool_bytes=SMALL_SPOOL)
    h.writer.gate.clear()  # the logs fill up and the webhook starts answering 429
    try:
        audit = fixtures_dir / "deployment-lifecycle" / "audit.jsonl"
        replaying = asyncio.create_task(replay(read_batches([audit]), target=h.url, cluster="fixture"))
        await asyncio.wait_for(h.throttled.wait(), 30)
        h.writer.gate.set()
        result = await replaying
        assert result.failed == 0 and result.throttled >= 1
        assert result.batches == len(audit.read_bytes().splitlines())
        assert result.events == 491  # fixtures/README.md: 491 audit events in 20 POSTs
        accepted = h.metrics.audit_events_accepted.labels("fixture")._value.get()
        assert accepted == 491
    finally:
        await h.close()


def test_webhook_url_from_a_base_or_a_full_url() -> None:
    assert webhook_url("http://h:8080", "c1") == "http://h:8080/audit/c1"
    assert webhook_url("http://h:8080/", "c1") == "http://h:8080/audit/c1"
    assert webhook_url("http://h:8080/audit/x", "c1") == "http://h:8080/audit/x"


def test_config_prints_the_effective_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("cluster: from-file\nhttp:\n  port: 9000\nstore:\n  path: /tmp/x.db\n")
    monkeypatch.setenv("KELEMETRY_HTTP__PORT", "9100")
    assert main(["config", "-c", str(path), "--redis-url", "redis://r:6379/0"]) == 0
    effective = yaml.safe_load(capsys.readouterr().out)
    assert effective["cluster"] == "from-file"  # file
    assert effective["http"]["port"] == 9100  # environment over file
    assert effective["redis"]["url"] == "redis://r:6379/0"  # flag
    assert main(["config", "-c", str(path), "--http-port", "9200"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["http"]["port"] == 9200  # flag over environment


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["config", "--otlp-endpoint", "tempo:4317"], "otlp.endpoint: 'tempo:4317' must be grpc://HOST:PORT"),
        (["config", "--redis-url", "localhost"], "redis.url: 'localhost' is not a redis://"),
        (["config", "--http-port", "70000"], "http.port: 70000 is not a TCP port"),
        (["config", "-c", "/nonexistent/k.yaml"], "config file /nonexistent/k.yaml"),
    ],
)
def test_bad_configuration_fails_with_the_key_and_reason(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_unknown_keys_in_the_file_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("otlp:\n  endpiont: grpc://x:1\n")
    assert main(["config", "-c", str(path)]) == 2
    assert "otlp.endpiont: unknown key" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == f"kelemetry-py {__version__}"
