"""Drives the real ``kelemetry-py serve`` as a child process: start it with a config, wait for /readyz, signal it
(SIGKILL, SIGTERM), collect its exit code and stderr, read its peak RSS and its backlog."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml
from prometheus_client.parser import text_string_to_metric_families

# The documented default of shutdown_grace_seconds (issue #8): the tests leave it at its default.
DEFAULT_GRACE_SECONDS = 25.0
_START_DEADLINE = 60.0


def children(pid: int) -> set[int]:
    found: set[int] = set()
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            found.update(int(child) for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split())
    except (FileNotFoundError, ProcessLookupError):
        pass  # gone meanwhile
    return found


def descendants(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children(todo.pop()) - found:
            found.add(child)
            todo.append(child)
    return found


def _peak_rss_bytes(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return 0  # exited meanwhile
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0  # a zombie: nothing resident


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def alive(pids: set[int]) -> set[int]:
    """Those of ``pids`` still running (a zombie has finished: its parent has yet to reap it)."""
    running = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] != "Z":
                    running.add(pid)
        except FileNotFoundError:
            pass
    return running


def ingest_processes(pid: int) -> set[int]:
    """The ingest processes (ingest.process) among ``pid``'s children."""
    found = set()
    for child in children(pid):
        try:
            if b"kelemetry_py.sources.ingestproc.child" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.add(child)
        except FileNotFoundError:
            pass
    return found


def serve_command() -> list[str]:
    """The installed ``kelemetry-py`` console script beside this interpreter, or the same entry point through it."""
    script = Path(sys.executable).with_name("kelemetry-py")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from kelemetry_py.cli import main; sys.exit(main())"]


def serve_config(data_dir: Path, *, otlp_endpoint: str = "", **sections: Any) -> dict[str, Any]:
    """A loopback ``serve`` configuration keeping its data (store, spool) under ``data_dir``.

    Retention is off: the recordings are older than the default 72 hours, and a restart would purge them.
    ``sections`` are merged over it one level deep, e.g. ``spool={"backend": "redis"}``.
    """
    config: dict[str, Any] = {
        "cluster": "fixture",
        "log_level": "warning",
        "http": {"host": "127.0.0.1"},
        "store": {"path": str(data_dir / "traces.db"), "retention_hours": 0},
    }
    if otlp_endpoint:
        config["otlp"] = {"endpoint": otlp_endpoint}
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


class ServeProcess:
    """One ``kelemetry-py serve`` child. ``start`` may be called again after it exited: same config, same data."""

    def __init__(self, config: dict[str, Any], workdir: Path, name: str = "serve") -> None:
        self.config = config
        self.workdir = workdir
        self.name = name
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.port = 0
        self._proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self.returncode: int | None = None
        self.signalled_at: float | None = None
        self.exited_after: float | None = None  # seconds from the last signal to the exit

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def webhook_url(self) -> str:
        ingest_port = self.config.get("http", {}).get("ingest_port")
        base = f"http://127.0.0.1:{ingest_port}" if ingest_port else self.base_url
        return f"{base}/audit/fixture"

    @property
    def pid(self) -> int:
        assert self._proc is not None, "not started"
        return self._proc.pid

    @property
    def stderr_path(self) -> Path:
        return self.workdir / f"{self.name}.{self.starts}.stderr"

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def start(self) -> None:
        """Start and wait until /readyz answers 200 (on another free port if another process took the one picked)."""
        for _ in range(3):
            try:
                return await self._start()
            except PortTaken:
                continue
        raise RuntimeError(f"{self.name}: no free port after 3 attempts")

    async def _start(self) -> None:
        self.starts += 1
        self.port = free_port()
        self.returncode = None
        self.signalled_at = self.exited_after = None
        env = {key: value for key, value in os.environ.items() if not key.startswith("KELEMETRY_")}
        with self.stderr_path.open("wb") as stderr:
            self._proc = await asyncio.create_subprocess_exec(
                *serve_command(),
                "serve",
                "-c",
                str(self.config_path),
                "--http-port",
                str(self.port),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                env=env,
            )
        await self._wait_ready()

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + _START_DEADLINE
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while True:
                if not self.running:
                    await self.wait()
                    if "address already in use" in self.stderr().lower():
                        raise PortTaken(self.port)
                    raise RuntimeError(
                        f"{self.name} exited with {self.returncode} before it was ready:\n{self.stderr()[-3000:]}"
                    )
                try:
                    async with session.get(f"{self.base_url}/readyz") as response:
                        if response.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} not ready within {_START_DEADLINE}s:\n{self.stderr()[-3000:]}")
                await asyncio.sleep(0.1)  # polling a child's readiness, an observable condition

    def kill(self) -> None:
        """``kill -9``."""
        self.send(signal.SIGKILL)

    def terminate(self) -> None:
        self.send(signal.SIGTERM)

    def send(self, signum: int) -> None:
        assert self._proc is not None, "not started"
        self.signalled_at = time.monotonic()
        self._proc.send_signal(signum)

    async def wait(self, within: float | None = None) -> int | None:
        """The exit code (negative: killed by that signal), or None if still running after ``within`` seconds."""
        assert self._proc is not None, "not started"
        try:
            async with asyncio.timeout(within):
                self.returncode = await self._proc.wait()
        except TimeoutError:
            return None
        if self.signalled_at is not None:
            self.exited_after = time.monotonic() - self.signalled_at
        return self.returncode

    async def stop(self, within: float = DEFAULT_GRACE_SECONDS + 10, signum: int = signal.SIGTERM) -> int | None:
        """Send ``signum``, wait up to ``within`` seconds, then SIGKILL; returns the exit code (None when it had to
        be killed)."""
        if not self.running:
            return self.returncode
        self.send(signum)
        code = await self.wait(within)
        if code is None:
            self.kill()
            await self.wait()
        return code

    def peak_rss_bytes(self) -> int:
        """VmHWM, the peak resident set since it started, of the running process and every process under it (the
        webhook's decoding workers and the server they fork from): an upper bound, as forked ones share pages."""
        return sum(_peak_rss_bytes(pid) for pid in (self.pid, *descendants(self.pid)))

    async def readiness(self) -> tuple[int, Any]:
        """/readyz: its status and JSON body (the body's text when it is not JSON; status 0 when unreachable)."""
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
                session.get(f"{self.base_url}/readyz") as response,
            ):
                raw = await response.read()
                try:
                    return response.status, orjson.loads(raw)
                except orjson.JSONDecodeError:
                    return response.status, raw.decode(errors="replace")
        except (aiohttp.ClientError, TimeoutError):
            return 0, None

    async def metric(self, name: str, label: str) -> dict[str, float]:
        """One metric family of /metrics by the value of ``label`` (e.g. the backlog by consumer); {} if absent."""
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
            session.get(f"{self.base_url}/metrics") as response,
        ):
            text = await response.text()
        return {
            sample.labels.get(label, ""): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name
        }

    async def backlog(self) -> dict[str, int] | None:
        """Records each consumer (pipeline, sqlite, otlp) has still to process; None when /readyz has no backlog."""
        return self._backlog_of((await self.readiness())[1])

    @staticmethod
    def _backlog_of(body: Any) -> dict[str, int] | None:
        if isinstance(body, dict) and isinstance(body.get("backlog"), dict):
            return {str(key): int(value) for key, value in body["backlog"].items()}
        return None

    async def wait_backlog(self, consumers: tuple[str, ...] | None, within: float) -> Drain:
        """Poll /readyz until the backlog of ``consumers`` (None: all) is 0; an observable condition with a deadline."""
        started = time.monotonic()
        deadline = started + within
        while True:
            status, body = await self.readiness()
            backlog = self._backlog_of(body)
            if status == 200 and backlog is None:
                return Drain(False, time.monotonic() - started, None, f"/readyz has no backlog: {str(body)[:300]}")
            if backlog is not None:
                pending = {k: v for k, v in backlog.items() if consumers is None or k in consumers}
                missing = [k for k in consumers or () if k not in backlog]
                if missing:
                    why = f"/readyz backlog has no {', '.join(missing)}: {backlog}"
                    return Drain(False, time.monotonic() - started, backlog, why)
                if backlog and not any(pending.values()):
                    return Drain(True, time.monotonic() - started, backlog)
            if time.monotonic() > deadline or not self.running:
                return Drain(False, time.monotonic() - started, backlog, f"/readyz {status}: {str(body)[:300]}")
            await asyncio.sleep(0.2)  # the backlog has no push notification; polled with a deadline


class PortTaken(Exception):
    """The port picked for serve was taken by another process before serve bound it."""


@dataclass
class Drain:
    """Whether a backlog reached 0, how long that took, the last backlog seen and, if not, why."""

    done: bool
    seconds: float
    backlog: dict[str, int] | None
    why: str = ""
