"""Operability: a live /metrics after a replay passes ``promtool check metrics``; JSON logs carry request ids."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import shutil
import sys
from asyncio.subprocess import PIPE, STDOUT
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from aiohttp import ClientSession
from prometheus_client.parser import text_string_to_metric_families

from kelemetry_py.logs import REQUEST_ID_HEADER, configure_logging
from tests.e2e.conftest import AppFactory, replay_scenario


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_live_metrics_after_a_replay_pass_promtool(fixtures_dir: Path, make_app: AppFactory) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is installed by .ci/run"
    app = await make_app()
    await replay_scenario(app, fixtures_dir, "deployment-lifecycle")
    async with ClientSession() as session:
        json = {"Content-Type": "application/json"}
        async with session.post(f"{app.base_url}/audit/fixture", data=b"{not json", headers=json) as response:
            assert response.status == 400
        async with session.get(f"{app.base_url}/metrics") as response:
            assert response.status == 200
            text = await response.text()

    code, findings = await check_metrics(promtool, text)
    assert code == 0 and findings == "", findings  # not one lint finding

    values = samples(text)
    assert values[("kelemetry_build_info", (("python_version", _python()), ("version", _version())))] == 1
    assert values[("kelemetry_webhook_request_duration_seconds_count", (("code", "200"),))] == 20  # 20 POSTs
    assert values[("kelemetry_webhook_request_duration_seconds_count", (("code", "400"),))] == 1
    written = {labels: value for (name, labels), value in values.items() if name == "kelemetry_spans_written_total"}
    assert written[(("service", "audit"), ("writer", "sqlite"))] > 0
    assert written[(("service", "object"), ("writer", "sqlite"))] > 0
    store_size = await asyncio.to_thread(os.path.getsize, app.config.store.path)
    assert values[("kelemetry_store_size_bytes", ())] >= store_size > 0
    assert values[("kelemetry_pipeline_queue_depth", ())] == 0
    appended = {
        labels: value
        for (name, labels), value in values.items()
        if name == "kelemetry_spool_append_duration_seconds_count"
    }
    # One append per kept batch that held observations (a batch of reads holds none); the 400 kept nothing.
    assert 0 < appended[(("log", "observations"),)] <= 20
    # The store is the only writer: the pipeline writes into it past the span log.
    assert (("log", "spans"),) not in appended
    assert values[("kelemetry_spool_append_duration_seconds_sum", (("log", "observations"),))] > 0
    for family in ("kelemetry_spool_backlog_bytes", "kelemetry_leader", "kelemetry_watch_lag_seconds",
                   "kelemetry_diff_attach", "kelemetry_spool_dropped", "kelemetry_watchers_up"):
        assert f"# HELP {family}" in text and f"# TYPE {family}" in text

    # promtool does find what breaks the conventions, so a pass means something.
    code, findings = await check_metrics(promtool, "# HELP x_latency x\n# TYPE x_latency counter\nx_latency 1\n")
    assert code != 0 and "_total" in findings


async def check_metrics(promtool: str, exposition: str) -> tuple[int, str]:
    """``promtool check metrics`` on an exposition: its exit code and everything it printed."""
    process = await asyncio.create_subprocess_exec(
        promtool, "check", "metrics", stdin=PIPE, stdout=PIPE, stderr=STDOUT
    )
    out, _ = await process.communicate(exposition.encode())
    return process.returncode or 0, out.decode()


def _python() -> str:
    import platform

    return platform.python_version()


def _version() -> str:
    from kelemetry_py import __version__

    return __version__


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    configure_logging("info", "json")
    stream = io.StringIO()
    root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
    yield stream
    root.handlers[:], level = saved
    root.setLevel(level)


async def test_json_logs_carry_the_request_id_of_the_webhook_call(
    make_app: AppFactory, json_logs: io.StringIO
) -> None:
    # Logged in this process, where the test reads them (an ingest process logs the same lines on its stderr).
    app = await make_app(**{"log.format": "json", "ingest.process": False})
    async with ClientSession() as session:
        headers = {REQUEST_ID_HEADER: "apiserver-batch-7", "Content-Type": "application/json"}
        async with session.post(f"{app.base_url}/audit/fixture", data=b"[]", headers=headers) as response:
            assert response.status == 400
            assert response.headers[REQUEST_ID_HEADER] == "apiserver-batch-7"
        json = {"Content-Type": "application/json"}
        async with session.post(f"{app.base_url}/audit/fixture", data=b"[]", headers=json) as response:
            generated = response.headers[REQUEST_ID_HEADER]
        # An id that could forge log content is replaced by one of ours.
        forged = {REQUEST_ID_HEADER: 'x" "level":"error', **json}
        async with session.post(f"{app.base_url}/audit/fixture", data=b"[]", headers=forged) as response:
            replaced = response.headers[REQUEST_ID_HEADER]
    assert len(generated) == 16 and len(replaced) == 16 and replaced != generated

    lines = [orjson.loads(line) for line in json_logs.getvalue().splitlines()]
    rejected = [line for line in lines if "rejected a batch" in line["message"]]
    assert [line["request_id"] for line in rejected] == ["apiserver-batch-7", generated, replaced]
    assert all(line["level"] == "warning" and line["logger"] == "kelemetry_py.sources.webhook" for line in rejected)
    assert all(line["time"].endswith("+00:00") for line in lines)
    # Lines outside any request have no request id.
    assert any("listening on" in line["message"] and "request_id" not in line for line in lines)


async def test_the_serving_process_hands_the_gil_to_its_writer_threads_within_a_millisecond(
    make_app: AppFactory,
) -> None:
    # Its spool and store threads take the GIL back after every write; at the 5 ms default each hand-over could
    # keep a batch's answer waiting that long.
    interpreter_default = 0.005
    before = sys.getswitchinterval()
    sys.setswitchinterval(interpreter_default)
    try:
        await make_app()
        assert sys.getswitchinterval() <= 0.001
    finally:
        sys.setswitchinterval(before)
