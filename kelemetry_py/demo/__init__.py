"""``kelemetry-py demo``: serve on the embedded defaults and replay the bundled recordings into it.

The recordings (``recordings/*.audit.jsonl.gz``) are the audit webhook batches of three scripted scenarios on a
Kubernetes 1.24 control plane, recorded one after the other. Every timestamp in them is moved by one offset so
the story happens now: at the recorded pace it unfolds live, with ``fast`` it is posted at once and ends now.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import re
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import TextIO

from kelemetry_py.config import Config
from kelemetry_py.sources.replay import ReplayResult, replay_bodies

CLUSTER = "demo"
SCENARIOS = ("deployment-lifecycle", "errors-and-links", "batch-and-stateful")
# The apiserver's webhook backend posts a batch about this long after its newest event's stageTimestamp.
_SEND_DELAY_SECONDS = 0.3
_TIMESTAMP = re.compile(rb'"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d+)?Z"')
_STAGE_TIMESTAMP = re.compile(rb'"stageTimestamp":"([^"]+)"')


@dataclass(frozen=True)
class Batch:
    recorded_at: float  # unix seconds of the newest stageTimestamp in the batch
    body: bytes


def load_recordings() -> list[Batch]:
    """Every bundled batch, in recorded order. Blocking: run it in a thread."""
    batches: list[Batch] = []
    folder = resources.files(__package__) / "recordings"
    for scenario in SCENARIOS:
        data = gzip.decompress((folder / f"{scenario}.audit.jsonl.gz").read_bytes())
        for line in data.splitlines():
            if line.strip():
                stages = [_unix(match.group(1).decode()) for match in _STAGE_TIMESTAMP.finditer(line)]
                batches.append(Batch(max(stages), line))
    batches.sort(key=lambda batch: batch.recorded_at)
    return batches


def shift_timestamps(body: bytes, offset_seconds: float) -> bytes:
    """Move every RFC 3339 UTC timestamp in a batch by a whole number of seconds, keeping its precision."""
    offset = round(offset_seconds)
    moved: dict[bytes, bytes] = {}

    def move(match: re.Match[bytes]) -> bytes:
        base = match.group(1)
        new = moved.get(base)
        if new is None:
            moment = datetime.strptime(base.decode(), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
            new = moved[base] = datetime.fromtimestamp(moment.timestamp() + offset, UTC).strftime(
                "%Y-%m-%dT%H:%M:%S"
            ).encode()
        return b'"' + new + (match.group(2) or b"") + b'Z"'

    return _TIMESTAMP.sub(move, body)


async def paced(
    batches: list[Batch], *, fast: bool, now: Callable[[], float] = time.time
) -> AsyncIterator[bytes]:
    """The batches with their times moved to now. At the recorded pace each is yielded when it would have been
    sent; ``fast`` yields them at once, the last one ending now."""
    if not batches:
        return
    # Fast: the newest batch was sent just now. Paced: the oldest one is sent now.
    anchor = batches[-1].recorded_at + _SEND_DELAY_SECONDS if fast else batches[0].recorded_at
    offset = now() - anchor
    for batch in batches:
        if not fast:
            delay = batch.recorded_at + offset + _SEND_DELAY_SECONDS - now()
            if delay > 0:
                await asyncio.sleep(delay)
        yield await asyncio.to_thread(shift_timestamps, batch.body, offset)


def _unix(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def banner(base_url: str, data_dir: str, batches: list[Batch], fast: bool) -> str:
    span = batches[-1].recorded_at - batches[0].recorded_at if batches else 0.0
    pace = "all at once (--fast)" if fast else f"at the recorded pace, over {span / 60:.1f} minutes"
    server = f"--server {base_url}"
    redirect = (
        f"{base_url}/redirect?cluster={CLUSTER}&group=apps&resource=deployments&namespace=shop&name=web"
    )
    return f"""\
kelemetry-py demo: serving {base_url} (data in {data_dir}), cluster "{CLUSTER}"
Replaying {len(batches)} recorded audit batches of {len(SCENARIOS)} scenarios {pace}:
  {", ".join(SCENARIOS)}

Open:
  built-in UI           {base_url}/
  a Deployment's trace  {redirect}
  Jaeger API            {base_url}/api/services  (Jaeger UI and Grafana's Jaeger data source: {base_url})
  metrics               {base_url}/metrics

Try:
  kelemetry-py trace deploy/web -n shop {server}
  kelemetry-py analyze deploy/web -n shop {server}
  kelemetry-py trace statefulset/db -n jobs {server}
  kelemetry-py trace job/report -n jobs --mode "tree [owned objects]" {server}

Ctrl-C stops it; the traces stay in {data_dir}.
"""


async def run(config: Config, *, data_dir: str, fast: bool, out: TextIO) -> ReplayResult:
    """Serve ``config`` until SIGINT or SIGTERM, replaying the recordings into it once."""
    from kelemetry_py.app import App

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    app = App(config)
    await app.start()
    try:
        batches = await asyncio.to_thread(load_recordings)
        out.write(banner(app.base_url, data_dir, batches, fast))
        out.flush()
        replaying = asyncio.create_task(
            replay_bodies(paced(batches, fast=fast), target=app.base_url, cluster=CLUSTER)
        )
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({replaying, stopping}, return_when=asyncio.FIRST_COMPLETED)
        result = ReplayResult()
        if replaying.done():
            result = replaying.result()
            assert app.components is not None
            await app.components.pipeline.drain()
            out.write(
                f"Replayed {result.batches} batches ({result.events} audit events, {result.failed} failed); "
                "every trace is written.\n"
            )
            out.flush()
            await stopping
        else:
            replaying.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await replaying
        stopping.cancel()
        return result
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await app.stop()
