"""``kelemetry-py demo``: serve on the embedded defaults and replay the bundled recordings into it.

The recordings (``recordings/``) were made on a Kubernetes 1.24 control plane while three scripted scenarios ran
one after the other: the audit webhook's batches (``<scenario>.audit.jsonl.gz``, as the apiserver sent them) and
what the watchers saw (``watch.jsonl.gz``: the first LIST, then every watch event, with arrival times). Audit
batches go through the real webhook over HTTP; watch events go to the real object differ and event tracker, as the
watch engine hands them over. Every timestamp is moved by one offset so the story happens now: at the recorded
pace it unfolds live, with ``fast`` it is delivered at once and ends now.
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
from pathlib import Path
from typing import Any, TextIO

import orjson

from kelemetry_py.config import Config
from kelemetry_py.kube.catalog import ResourceCatalog
from kelemetry_py.kube.discovery import ResourceSelector, resource_type_of
from kelemetry_py.sources.replay import ReplayResult, replay
from kelemetry_py.sources.watchers import EVENT_RESOURCES

CLUSTER = "demo"
SCENARIOS = ("deployment-lifecycle", "errors-and-links", "batch-and-stateful")
RECORDINGS = Path(__file__).resolve().parent / "recordings"
WATCH_RECORDING = "watch.jsonl.gz"
# The apiserver's webhook backend posts a batch about this long after its newest event's stageTimestamp.
_SEND_DELAY_SECONDS = 0.3
_TIMESTAMP = re.compile(rb'"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d+)?Z"')
_STAGE_TIMESTAMP = re.compile(rb'"stageTimestamp":"([^"]+)"')


@dataclass(frozen=True)
class Delivery:
    recorded_at: float  # unix seconds: when the apiserver sent the batch, or the watcher received the line
    body: bytes
    watch: bool = False  # a watch line for the watchers; else an audit batch for the webhook


_AT = re.compile(rb'"at":([0-9.]+)')


def load_recordings(*, watch: bool = True) -> list[Delivery]:
    """Every bundled audit batch (and watch line), in recorded order. Blocking: run it in a thread."""
    deliveries: list[Delivery] = []
    folder = resources.files(__package__) / "recordings"
    for scenario in SCENARIOS:
        data = gzip.decompress((folder / f"{scenario}.audit.jsonl.gz").read_bytes())
        for line in data.splitlines():
            if line.strip():
                # Sent when its newest event completed.
                stages = [_unix(match.group(1).decode()) for match in _STAGE_TIMESTAMP.finditer(line)]
                deliveries.append(Delivery(max(stages), line))
    if watch:
        for line in gzip.decompress((folder / WATCH_RECORDING).read_bytes()).splitlines():
            match = _AT.search(line)
            assert match is not None, "every bundled watch line has its arrival time"
            deliveries.append(Delivery(float(match.group(1)), line, watch=True))
    deliveries.sort(key=lambda delivery: delivery.recorded_at)
    return deliveries


class ReplayClock:
    """The time the replay has reached, running on in real time between deliveries: at the recorded pace it is the
    wall clock, with ``fast`` it follows the moved recording, so what the watchers stamp with "now" (a diff no audit
    request claimed) lands where it happened."""

    def __init__(self, start: float) -> None:
        self._position = start
        self._set_at = time.monotonic()

    def advance(self, to: float) -> None:
        """Move to a delivery's (moved) time; never backwards."""
        if to > self._position:
            self._position, self._set_at = to, time.monotonic()

    def now(self) -> float:
        return self._position + time.monotonic() - self._set_at

    def now_ns(self) -> int:
        return int(self.now() * 1e9)


class WatchFeeder:
    """Hands recorded watch lines to the differ and the event tracker, as the watch engine would."""

    def __init__(self, config: Config, differ: Any, events: Any) -> None:
        self._catalog = ResourceCatalog.builtin()
        self._selector = ResourceSelector.from_config(config.kube)
        self._differ = differ if config.kube.watch_objects else None
        self._events = events if config.kube.watch_events else None

    async def deliver(self, line: bytes) -> None:
        document = orjson.loads(line)
        info = self._catalog.by_resource(document["group"], document["resource"], document["version"])
        if info is None:
            return
        rtype = resource_type_of(info)
        if rtype.group_resource in EVENT_RESOURCES:
            handler = self._events
        else:
            handler = self._differ if self._selector.selects(rtype) else None
        if handler is None:
            return
        obj: dict[str, Any] = document["object"]
        listed = document["type"] == "LIST"
        if listed:  # LIST items carry no apiVersion/kind; the engine fills them in
            obj.setdefault("apiVersion", rtype.api_version)
            obj.setdefault("kind", rtype.kind)
        await handler.on_event(CLUSTER, rtype, "ADDED" if listed else document["type"], obj, relisted=listed)


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
    batches: list[Delivery], *, fast: bool, now: Callable[[], float] = time.time
) -> AsyncIterator[Delivery]:
    """The deliveries with their times moved to now. At the recorded pace each is yielded when it happened;
    ``fast`` yields them at once, the last one ending now."""
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
        body = await asyncio.to_thread(shift_timestamps, batch.body, offset)
        yield Delivery(batch.recorded_at + offset, body, batch.watch)


def _remove(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _unix(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def banner(base_url: str, data_dir: str, deliveries: list[Delivery], fast: bool) -> str:
    span = deliveries[-1].recorded_at - deliveries[0].recorded_at if deliveries else 0.0
    batches = sum(not delivery.watch for delivery in deliveries)
    watched = len(deliveries) - batches
    pace = "all at once (--fast)" if fast else f"at the recorded pace, over {span / 60:.1f} minutes"
    server = f"--server {base_url}"
    redirect = (
        f"{base_url}/redirect?cluster={CLUSTER}&group=apps&resource=deployments&namespace=shop&name=web"
    )
    return f"""\
kelemetry-py demo: serving {base_url} (data in {data_dir}), cluster "{CLUSTER}"
Replaying {batches} recorded audit batches and {watched} watch events of {len(SCENARIOS)} scenarios {pace}:
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

Ctrl-C stops it; the traces stay in {data_dir} until the next demo.
"""


async def run(config: Config, *, data_dir: str, fast: bool, out: TextIO) -> ReplayResult:
    """Serve ``config`` until SIGINT or SIGTERM, replaying the recordings into it once."""
    from kelemetry_py.app import App
    from kelemetry_py.sources.differ import ObjectDiffer
    from kelemetry_py.sources.kubewatch import STATE_FILE, KubeWatching

    # Each demo starts afresh in its own directory: the recordings keep their uids and names from run to run, so
    # an earlier run's watcher state would skip the Events as already sent, and its traces would merge with this
    # run's. A store given with --store-path is never touched.
    own = Path(data_dir) / "traces.db"
    if Path(config.store.path) == own:
        stale = [own.with_name(name + suffix) for name in (own.name, STATE_FILE) for suffix in ("", "-wal", "-shm")]
        await asyncio.to_thread(_remove, stale)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    app = App(config)
    await app.start()
    assert app.components is not None
    components = app.components
    # The watchers' handlers with no cluster to watch: the recorded watch lines are their input.
    watching = KubeWatching(config, components.pipeline, components.metrics, components.catalogs)
    clock = ReplayClock(start=0.0)  # set by the first delivery, before anything is stamped
    watching.differ = ObjectDiffer(
        components.pipeline,
        components.metrics,
        watching.diff_cache,
        redaction=config.redaction,
        claim_wait_seconds=config.kube.diff_wait_seconds,
        wall_clock_ns=clock.now_ns,
    )
    await watching.start()
    feeder = WatchFeeder(config, watching.differ, watching.events)

    async def audit_batches() -> AsyncIterator[bytes]:
        async for delivery in paced(recording, fast=fast):
            clock.advance(delivery.recorded_at)
            if delivery.watch:
                await feeder.deliver(delivery.body)
            else:
                yield delivery.body

    try:
        recording = await asyncio.to_thread(load_recordings)
        out.write(banner(app.base_url, data_dir, recording, fast))
        out.flush()
        replaying = asyncio.create_task(replay(audit_batches(), target=app.base_url, cluster=CLUSTER))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({replaying, stopping}, return_when=asyncio.FIRST_COMPLETED)
        result = ReplayResult()
        if replaying.done():
            result = replaying.result()
            await components.pipeline.drain()
            out.write(
                f"Replayed {result.batches} batches ({result.events} audit events, {result.failed} failed) and the "
                "watch events; the traces are written.\n"
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
        await watching.stop()  # before the pipeline: unclaimed diffs become diff spans
        await app.stop()
