"""``kelemetry-py demo`` as a user runs it: a real process, its own port and data dir, the bundled recordings."""

from __future__ import annotations

import gzip
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from kelemetry_py.demo import RECORDINGS, SCENARIOS, WATCH_RECORDING, Delivery, load_recordings, paced, shift_timestamps
from tests.demo.bundle import watch_lines

DEADLINE_SECONDS = 30.0
# The console script pip installed beside the interpreter, as a user runs it.
KELEMETRY_PY = str(Path(sys.executable).parent / "kelemetry-py")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def _status(url: str) -> int:
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0  # not listening yet


def test_bundled_recordings_are_the_fixtures_byte_for_byte(fixtures_dir: Path) -> None:
    for scenario in SCENARIOS:
        bundled = gzip.decompress((RECORDINGS / f"{scenario}.audit.jsonl.gz").read_bytes())
        assert bundled == (fixtures_dir / scenario / "audit.jsonl").read_bytes()
    # The watch recording is derived from the fixtures' LIST and watch files (python -m tests.demo.bundle).
    assert gzip.decompress((RECORDINGS / WATCH_RECORDING).read_bytes()) == watch_lines()


def test_timestamps_move_by_the_offset_and_keep_their_precision() -> None:
    body = b'{"a":"2026-11-21T05:35:33.476608Z","b":"2026-11-21T23:59:59Z","c":"not 2026-11-21T05:35:33Z"}'
    assert shift_timestamps(body, 3600.4) == (
        b'{"a":"2026-11-21T06:35:33.476608Z","b":"2026-11-22T00:59:59Z","c":"not 2026-11-21T05:35:33Z"}'
    )


async def test_fast_replay_ends_now_and_recorded_pace_starts_now() -> None:
    recording = load_recordings()
    assert [d.recorded_at for d in recording] == sorted(d.recorded_at for d in recording)
    assert {d.watch for d in recording} == {True, False}
    last = recording[-1].recorded_at
    sent = [d async for d in paced(recording[-2:], fast=True, now=lambda: last + 10_000.0)]
    assert [d.recorded_at for d in sent] == [pytest.approx(d.recorded_at + 10_000.0 - 0.3) for d in recording[-2:]]
    assert b"2026-11-21T05:3" not in b"".join(d.body for d in sent)

    # At the recorded pace the first delivery goes at once, moved so that it happened just now.
    first = Delivery(1000.0, b'{"stageTimestamp":"1970-01-01T00:16:40.5Z"}')
    later = paced([first], fast=False, now=lambda: 4600.0)
    assert [d.body async for d in later] == [b'{"stageTimestamp":"1970-01-01T01:16:40.5Z"}']


def test_demo_fast_serves_a_deployment_trace_within_30_seconds(tmp_path: Path) -> None:
    port = _free_port()
    server = f"http://127.0.0.1:{port}"
    # What an earlier run left behind is not this run's: the demo starts afresh in its own directory.
    leftovers = tmp_path / "kelemetry-demo"
    leftovers.mkdir()
    for name in ("traces.db", "state.db"):
        (leftovers / name).write_bytes(b"an earlier run's file, not a database")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("KELEMETRY_CONFIG", None)
    demo = subprocess.Popen(
        [KELEMETRY_PY, "demo", "--fast", "--http-port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        redirect = (
            f"{server}/redirect?cluster=demo&group=apps&resource=deployments&namespace=shop&name=web"
        )
        deadline = time.monotonic() + DEADLINE_SECONDS
        status = 0
        while time.monotonic() < deadline and demo.poll() is None:
            status = _status(redirect)
            if status == 302:
                break
            time.sleep(0.2)  # polling an observable condition with a deadline
        assert status == 302, f"/redirect answered {status}"

        trace = subprocess.run(
            [KELEMETRY_PY, "trace", "deploy/web", "-n", "shop", "--server", server],
            capture_output=True,
            text=True,
            timeout=DEADLINE_SECONDS,
        )
        assert trace.returncode == 0, trace.stderr
        lines = trace.stdout.splitlines()
        assert lines[1].startswith("deployments: shop web ")
        # Both ReplicaSets of the rollout nested under the Deployment, and the pods under them.
        assert sum(line.startswith(("├─ replicasets: shop web-", "└─ replicasets: shop web-")) for line in lines) == 2
        assert any("pods: shop web-" in line for line in lines)
        assert "audit: admin create" in trace.stdout
        # The recorded watch events went to the real event tracker and differ: Events on the Deployment, and the
        # scale's diff attached to kubectl's audit span.
        assert "ScalingReplicaSet: Scaled up replica set web-" in trace.stdout
        scale = lines.index(next(line for line in lines if "audit: admin patch scale" in line))
        assert any("diff: metadata.generation 1 -> 2" in line for line in lines[scale : scale + 4])
        assert any("spec.replicas 2 -> 4" in line for line in lines[scale : scale + 5])
    finally:
        demo.send_signal(signal.SIGTERM)
        out, err = demo.communicate(timeout=30)
    assert demo.returncode == 0, err
    assert f"{server}/redirect?cluster=demo" in out
    assert f"kelemetry-py trace deploy/web -n shop --server {server}" in out
    assert (tmp_path / "kelemetry-demo" / "traces.db").is_file()


def test_the_recordings_are_package_data() -> None:
    """A ``pip install`` (not only a clone) has them: setuptools ships what these globs match."""
    import tomllib

    package = RECORDINGS.parent.parent
    pyproject = tomllib.loads((package.parent / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["kelemetry_py"]
    shipped = {path for pattern in globs for path in package.glob(pattern)}
    recordings = set(RECORDINGS.iterdir())
    assert len(recordings) == len(SCENARIOS) + 1 and recordings <= shipped
