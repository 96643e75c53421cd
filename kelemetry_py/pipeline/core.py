"""Observations in, spans out.

Each object key hashes to one of N partitions, so one object's observations are handled in order while objects
run in parallel. Capacity is counted across partitions: a batch is accepted whole or refused whole. The spans of
the partitions' batches that are ready while a write is in flight go to the writer together, in one call.

Link spans come from the object graph, the linkers' memory: an observation carrying a body feeds its linkers'
relations into the graph, and every observation writes its object's relations (and its ancestors') into its window,
once per window, whether it carried a body or not. A delete ends the object's relations after its own window has
them. See docs/graph.md.

Emission claims (which replica writes an object or link span) are kept only once the spans are written; a write
that fails is retried, and claims are given back if the pipeline stops before it succeeds. Observations fed with a
:class:`Ticket` report back when every one of them is written, so a durable log can acknowledge them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import zlib
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any

from kelemetry_py.config import PipelineConfig
from kelemetry_py.export import SpanWriter
from kelemetry_py.linking import METADATA_ONLY, Linker
from kelemetry_py.linking.graph import ObjectGraph
from kelemetry_py.linking.run import LINKER_TIMEOUT_SECONDS, run_linkers
from kelemetry_py.metrics import Metrics
from kelemetry_py.model import (
    SERVICE_LINK,
    SERVICE_OBJECT,
    Link,
    ObjectRef,
    Observation,
    Span,
    child_span_id,
    object_span_id,
    object_trace_id,
    window_of,
)
from kelemetry_py.pipeline import ObservationHook, Overloaded
from kelemetry_py.pipeline.decorators import Decorator, apply_decorators
from kelemetry_py.pipeline.emission import EmissionSet
from kelemetry_py.pipeline.priority import Priority

log = logging.getLogger(__name__)

_BATCH = 256  # observations a partition worker turns into spans at a time
# The most spans of several partitions' batches written together (one batch alone may hold more): the span log's
# encoding of a group runs on the event loop, between slices, and a record this size is one writer's delivery.
GROUP_SPANS = 2048
# Observations turned into spans in one slice of the loop's time: a request arriving meanwhile waits for one slice.
_SLICE = 32
# What one window's memory holds at most of each kind (claims, relation markers; ids), cleared when full: beyond
# it a claim is asked of the emission set again, a relation looked at again, an id recomputed.
_WINDOW_ENTRIES = 100_000
_WINDOW_IDS = 25_000
_RETRY_MAX_SECONDS = 5.0
_DELETE_VERBS = frozenset(("delete", "deletecollection"))  # a deletecollection is told on each object it removed
_MAX_ANCESTRY = 8  # levels of parents written into a window beside an object's own relations


class Ticket:
    """A batch fed by a durable log: ``on_done`` runs once all its observations are written. A replayed batch
    (an earlier run or a dead replica may have handled part of it) writes object and link spans regardless of
    claims, since the claim may have outlived a write that never happened; ids are deterministic, so at worst a
    span is written twice."""

    __slots__ = ("on_done", "remaining", "replayed")

    def __init__(self, count: int, on_done: Callable[[], None], *, replayed: bool = False) -> None:
        self.remaining = count
        self.on_done = on_done
        self.replayed = replayed

    def done(self, count: int) -> None:
        self.remaining -= count
        if self.remaining == 0:
            self.on_done()


_Item = tuple[Observation, Ticket | None]


class _WindowMemory:
    """What this process did in one window, to spare the emission set a round trip and the graph a look."""

    __slots__ = ("claimed", "ids", "linked")

    def __init__(self) -> None:
        self.claimed: set[str] = set()  # emission keys claimed (or found claimed) here
        self.linked: dict[tuple[str, bool], int] = {}  # (object key, parents only) -> graph revision written
        self.ids: dict[str, tuple[int, int]] = {}  # object key -> (trace id, object span id)


class Pipeline:
    def __init__(
        self,
        *,
        writer: SpanWriter,
        emission: EmissionSet,
        metrics: Metrics,
        config: PipelineConfig | None = None,
        linkers: Sequence[Linker] = (),
        hooks: Sequence[ObservationHook] = (),
        graph: ObjectGraph | None = None,
        decorators: Sequence[Decorator] = (),
        linker_timeout_seconds: float = LINKER_TIMEOUT_SECONDS,
        priority: Priority | None = None,
    ) -> None:
        self._priority = priority or Priority()
        self._config = config or PipelineConfig()
        self._writer = writer
        self._emission = emission
        self._metrics = metrics
        self._linkers = list(linkers)
        self._linker_timeout = linker_timeout_seconds
        self._hooks = list(hooks)
        self.graph = graph if graph is not None else ObjectGraph()
        # Only the windows still being written: the newest one and the one before (claims last two windows), and
        # a late observation's until another window is started. Memory follows the objects active in them, not
        # the history: an LRU over all windows held hundreds of thousands of entries of windows long closed.
        self._windows: dict[int, _WindowMemory] = {}
        self._newest_window = -1
        self._latest_s = 0.0  # the newest observation time seen: the graph forgets what ended well before it
        self._decorators = list(decorators)
        self._window_ns = self._config.window_seconds * 1_000_000_000
        # Each partition's share of one feed goes in as one list: a put and a get per observation cost more than
        # the partition's own work on many of them.
        self._queues: list[asyncio.Queue[list[_Item]]] = [
            asyncio.Queue() for _ in range(self._config.partitions)
        ]
        self._workers: list[asyncio.Task[None]] = []
        self._parked: set[asyncio.Task[None]] = set()
        self._pending = 0
        self.handled = 0  # observations done since start (written, or dropped alone)
        self._room = asyncio.Condition()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._unwritten: list[tuple[list[Span], asyncio.Future[None]]] = []  # partition batches' spans, to write
        self._group_writer: asyncio.Task[None] | None = None
        # A writer that gains from fewer, larger writes (the embedded store written directly: each commit rewrites
        # its index pages) lets a group gather this long after the last one began, unless a full group waits.
        self._write_linger = float(getattr(writer, "linger_seconds", 0.0))
        self._group_began = 0.0
        self._group_full: asyncio.Event | None = None  # set during a linger: a full group is waiting

    @property
    def pending(self) -> int:
        return self._pending

    def add_hook(self, hook: ObservationHook) -> None:
        self._hooks.append(hook)

    async def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._run_partition(queue), name=f"pipeline-partition-{i}")
            for i, queue in enumerate(self._queues)
        ]

    @property
    def reads_whole_bodies(self) -> bool:
        """Whether anything here reads more of an observation's body than its metadata (see :class:`Linker`)."""
        metadata_only = all(getattr(linker, "reads", None) == METADATA_ONLY for linker in self._linkers)
        return bool(self._decorators) or not metadata_only

    async def submit(self, observations: Sequence[Observation], *, wait: bool = False) -> None:
        await self.feed(observations, None, wait=wait)

    async def feed(self, observations: Sequence[Observation], ticket: Ticket | None, *, wait: bool = True) -> None:
        """Enqueue ``observations``; ``ticket.done`` is called as they are written."""
        if not observations:
            return
        if self._closing:
            raise Overloaded(retry_after_seconds=5)
        count = len(observations)
        capacity = self._config.queue_capacity
        if self._pending + count > capacity and (self._pending > 0 or not wait):
            if not wait:
                raise Overloaded(retry_after_seconds=1)
            async with self._room:
                await self._room.wait_for(lambda: self._pending + count <= capacity or self._pending == 0)
        self._pending += count
        self._idle.clear()
        self._metrics.queue_depth.set(self._pending)
        partitions = self._config.partitions
        shares: list[list[_Item]] = [[] for _ in range(partitions)]
        kinds: dict[str, int] = {}
        for observation in observations:
            kinds[observation.kind] = kinds.get(observation.kind, 0) + 1
            shares[zlib.crc32(observation.ref.key.encode()) % partitions].append((observation, ticket))
        for queue, share in zip(self._queues, shares, strict=True):
            if share:
                queue.put_nowait(share)
        for kind, count in kinds.items():
            self._metrics.observations_submitted.labels(kind).inc(count)

    async def drain(self) -> None:
        """Wait until every accepted observation has been written and the writer has flushed."""
        await self._idle.wait()
        await self._writer.flush()

    async def stop(self, deadline: float | None = None) -> None:
        """Stop accepting, finish everything accepted (until the monotonic ``deadline``, if given), flush the
        writer. Work cut off by the deadline is not lost when it came from a durable log: it was never acked."""
        self._closing = True
        if deadline is None:
            await self._idle.wait()
        else:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await self._idle.wait()
        tasks = [*self._workers, *self._parked]
        if self._group_writer is not None:
            tasks.append(self._group_writer)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._workers = []
        await self._writer.flush()

    async def _done(self, items: Sequence[_Item]) -> None:
        for _, ticket in items:
            if ticket is not None:
                ticket.done(1)
        count = len(items)
        self._pending -= count
        self.handled += count
        self._metrics.queue_depth.set(self._pending)
        if self._pending == 0:
            self._idle.set()
        async with self._room:
            self._room.notify_all()

    async def _run_partition(self, queue: asyncio.Queue[list[_Item]]) -> None:
        while True:
            first = await queue.get()
            # A batch lives in the call below, so none of it stays referenced while the next get waits.
            await self._run_batch(first, queue)
            del first

    async def _run_batch(self, first: list[_Item], queue: asyncio.Queue[list[_Item]]) -> None:
        batch = first
        while len(batch) < _BATCH and not queue.empty():
            batch.extend(queue.get_nowait())
        ready: list[_Item] = []
        for item in batch:
            waiting = self._run_hooks(item, 0) if self._hooks else None
            if waiting is None:
                ready.append(item)
            else:
                task = asyncio.create_task(waiting)
                self._parked.add(task)
                task.add_done_callback(self._parked.discard)
        try:
            await self._write_observations(ready)
        except Exception:
            # Writers retry and count their own failures; anything reaching here is a bug worth a traceback, but
            # one bad batch must not stop the partition.
            log.exception("pipeline: failed to turn %d observations into spans", len(ready))
        await self._done(ready)

    def _run_hooks(self, item: _Item, start: int) -> Coroutine[Any, Any, None] | None:
        observation = item[0]
        for index in range(start, len(self._hooks)):
            hook = self._hooks[index]
            try:
                pending = hook.prepare(observation)
            except Exception:
                self._metrics.plugin_errors.labels(hook.name).inc()
                log.exception("pipeline hook %s failed; observation kept without it", hook.name)
                continue
            if pending is not None:
                return self._finish_parked(item, pending, index + 1)
        return None

    async def _finish_parked(self, item: _Item, pending: Awaitable[None], next_hook: int) -> None:
        try:
            try:
                await pending
            except Exception:
                log.exception("pipeline hook failed while waiting; observation kept without it")
            more = self._run_hooks(item, next_hook)
            if more is not None:
                await more
                return  # the nested call wrote the observation and did the accounting
            await self._write_observations([item])
        except Exception:
            log.exception("pipeline: failed to write a parked observation")
        await self._done([item])

    async def _write_observations(self, items: Sequence[_Item]) -> None:
        if not items:
            return
        spans: list[Span] = []
        claims: list[str] = []
        for start in range(0, len(items), _SLICE):
            async with self._priority.background():
                await self._spans_of(items[start : start + _SLICE], spans, claims)
        if not spans:
            return
        try:
            await self._write(spans)
        except BaseException:
            await self._release(claims)
            raise

    async def _write(self, spans: list[Span]) -> None:
        """Write ``spans`` together with those of the other partitions' batches that are ready by then: a record of
        the observation log spreads over every partition, and one writer call for all of them costs the span log,
        and each writer behind it, one record instead of one per partition."""
        written = asyncio.get_running_loop().create_future()
        self._unwritten.append((spans, written))
        if self._group_full is not None and self._unwritten_spans() >= GROUP_SPANS:
            self._group_full.set()
        if self._group_writer is None:
            self._group_writer = asyncio.create_task(self._write_groups(), name="pipeline-writer")
        await written

    async def _write_groups(self) -> None:
        group: list[tuple[list[Span], asyncio.Future[None]]] = []
        try:
            await asyncio.sleep(0)  # the partitions finishing in this turn of the loop join the first group
            while self._unwritten:
                if self._write_linger:
                    await self._linger()
                taken = size = 0
                for spans, _ in self._unwritten:
                    if taken and size + len(spans) > GROUP_SPANS:
                        break
                    taken, size = taken + 1, size + len(spans)
                group, self._unwritten = self._unwritten[:taken], self._unwritten[taken:]
                await self._write_retrying([span for spans, _ in group for span in spans])
                for _, written in group:
                    if not written.done():  # its partition may have been cancelled meanwhile
                        written.set_result(None)
        finally:
            self._group_writer = None
            # Cancelled (the pipeline stops): what was not written is told so, and stays in the observation log.
            for _, written in [*group, *self._unwritten]:
                if not written.done():
                    written.cancel()
            self._unwritten = []

    def _unwritten_spans(self) -> int:
        return sum(len(spans) for spans, _ in self._unwritten)

    async def _linger(self) -> None:
        """Until the writer's linger since the last group began is over, or a full group waits."""
        wait = self._write_linger - (time.monotonic() - self._group_began)
        if wait > 0 and self._unwritten_spans() < GROUP_SPANS:
            self._group_full = asyncio.Event()
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._group_full.wait()
            finally:
                self._group_full = None
        self._group_began = time.monotonic()

    async def _write_retrying(self, spans: list[Span]) -> None:
        delay = 0.05
        while True:
            try:
                await self._writer.write(spans)
                return
            except Exception as exc:
                # The writer is the durable span log, or the embedded store alone: it fails only when the disk
                # does, or when the log is full because a backend is down. Wait rather than lose what was accepted.
                log.warning("pipeline: writing %d spans failed (%s); retrying in %.2fs", len(spans), exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_SECONDS)

    async def _spans_of(self, items: Sequence[_Item], spans: list[Span], claims: list[str]) -> None:
        for observation, ticket in items:
            force = ticket is not None and ticket.replayed
            span_mark, claim_mark = len(spans), len(claims)
            try:
                await self._spans_for(observation, spans, claims, force)
            except Exception:
                # One observation that cannot become spans is dropped alone, never with its neighbours.
                del spans[span_mark:]
                await self._release(claims[claim_mark:])
                del claims[claim_mark:]
                self._metrics.observations_failed.labels(observation.kind).inc()
                log.exception("pipeline: dropped an observation of %s that could not become spans", observation.ref)

    async def _release(self, claims: Sequence[str]) -> None:
        if not claims:
            return
        for memory in self._windows.values():
            memory.linked.clear()  # some relations must be written again
            memory.claimed.difference_update(claims)
        for key in claims:
            with contextlib.suppress(Exception):
                await self._emission.release(key)

    async def _spans_for(self, observation: Observation, out: list[Span], claims: list[str], force: bool) -> None:
        ref = observation.ref
        window = window_of(observation.start_ns, self._config.window_seconds)
        key = ref.key
        trace_id, object_span = self._ids(key, window)
        memory = self._memory(window)
        # The checks that usually find the work done are made here, before a coroutine is made for it.
        if force or _object_claim(key, window) not in memory.claimed:
            await self._ensure_object_span(ref, window, out, claims, force, observation.body)
        seen = observation.start_ns / 1e9
        if observation.body is not None and self._linkers:
            self.graph.sync_links(ref, await self._links(ref, observation.body), seen)
        else:
            self.graph.add_object(ref, seen)
        if force or memory.linked.get((key, False)) != self.graph.revision(key):
            await self._write_relations(ref, window, observation.start_ns, out, claims, force)
        if _is_delete(observation):
            self.graph.delete_object(ref, seen)
        self._forget_old_relations(seen)
        identity = observation.dedup_key or f"{observation.kind}:{observation.start_ns}:{os.urandom(6).hex()}"
        attributes = ref.tags()
        attributes.update(observation.tags)
        if observation.error is not None:
            attributes["error"] = True  # what Jaeger UI users search for; the status alone is not a tag
        span = Span(
            trace_id=trace_id,
            span_id=child_span_id(trace_id, identity),
            parent_id=object_span,
            service=observation.kind,
            name=observation.title,
            start_ns=observation.start_ns,
            end_ns=max(observation.end_ns, observation.start_ns),
            attributes=attributes,
            logs=observation.logs,
            error=observation.error is not None,
            status_message=observation.error or "",
        )
        if self._decorators:
            await apply_decorators(self._decorators, span, ref, observation.body, self._metrics)
        out.append(span)

    async def learn(self, ref: ObjectRef, body: Mapping[str, Any]) -> None:
        """Relations of an object seen outside any observation (a watch list): into the graph, no span. Its
        next window writes them like any other relations."""
        if self._linkers:
            self.graph.sync_links(ref, await self._links(ref, body))

    async def _links(self, ref: ObjectRef, body: Mapping[str, Any]) -> list[Link]:
        return await run_linkers(self._linkers, ref, body, self._metrics, timeout_seconds=self._linker_timeout)

    async def _write_relations(
        self, ref: ObjectRef, window: int, time_ns: int, out: list[Span], claims: list[str], force: bool
    ) -> None:
        """Link spans, in ``window``, for every relation the graph holds of ``ref`` during it, and for its
        ancestors' relations to their own parents, so that a window with a Pod's span also links its
        ReplicaSet to its Deployment. Each object's relations are looked at again only when they change."""
        window_start_s = window * self.window_seconds
        pending: list[tuple[str, bool, int]] = [(ref.key, False, 0)]
        visited: set[str] = set()
        linked = self._memory(window).linked
        while pending:
            key, parents_only, depth = pending.pop()
            if key in visited:
                continue
            visited.add(key)
            marker = (key, parents_only)
            revision = self.graph.revision(key, parents_only=parents_only)
            if not force and linked.get(marker) == revision:
                continue  # already written in this window (the ancestors' markers cover theirs)
            for relation in self.graph.relations(key, since=window_start_s, parents_only=parents_only):
                is_parent = relation.child.key == key
                owner = relation.child if is_parent else relation.parent
                await self._link_spans(owner, relation.link_from(key), window, time_ns, out, claims, force)
                if is_parent and depth < _MAX_ANCESTRY:
                    pending.append((relation.parent.key, True, depth + 1))
            if len(linked) >= _WINDOW_ENTRIES:
                linked.clear()
            linked[marker] = revision

    @property
    def window_seconds(self) -> int:
        return self._config.window_seconds

    def _forget_old_relations(self, seen: float) -> None:
        """Relations that ended, and objects deleted, before the previous window are needed by no window that
        is still being written (the emission claims last two windows too)."""
        if seen > self._latest_s:
            self._latest_s = seen
            window_start = window_of(int(seen * 1e9), self.window_seconds) * self.window_seconds
            self.graph.expire(window_start - self.window_seconds)

    def _memory(self, window: int) -> _WindowMemory:
        memory = self._windows.get(window)
        if memory is None:
            self._newest_window = max(self._newest_window, window)
            for closed in [old for old in self._windows if old < self._newest_window - 1]:
                del self._windows[closed]
            memory = self._windows[window] = _WindowMemory()
        return memory

    def _ids(self, key: str, window: int) -> tuple[int, int]:
        """(trace id, object span id) of an object's window: hashed once, asked for by every span in it."""
        cache = self._memory(window).ids
        ids = cache.get(key)
        if ids is None:
            if len(cache) >= _WINDOW_IDS:
                cache.clear()
            ids = cache[key] = (object_trace_id(key, window), object_span_id(key, window))
        return ids

    async def _claim(self, key: str, window: int, claims: list[str], force: bool) -> bool:
        claimed = self._memory(window).claimed
        if key in claimed:
            return force
        if len(claimed) >= _WINDOW_ENTRIES:
            claimed.clear()
        claimed.add(key)
        if not await self._emission.claim(key, 2 * self._config.window_seconds):
            return force
        claims.append(key)
        return True

    async def _ensure_object_span(
        self,
        ref: ObjectRef,
        window: int,
        out: list[Span],
        claims: list[str],
        force: bool,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        key = ref.key
        if not await self._claim(_object_claim(key, window), window, claims, force):
            return
        start = window * self._window_ns
        trace_id, span_id = self._ids(key, window)
        span = Span(
            trace_id=trace_id,
            span_id=span_id,
            parent_id=None,
            service=SERVICE_OBJECT,
            name=f"{ref.resource}/{ref.name}",
            start_ns=start,
            end_ns=start + self._window_ns,
            attributes=ref.tags(),
        )
        if self._decorators:
            await apply_decorators(self._decorators, span, ref, body, self._metrics)
        out.append(span)

    async def _link_spans(
        self,
        ref: ObjectRef,
        link: Link,
        window: int,
        time_ns: int,
        out: list[Span],
        claims: list[str],
        force: bool,
    ) -> None:
        inverse = "child" if link.role == "parent" else "parent"
        ends = ((ref, link.target, link.role), (link.target, ref, inverse))
        claimed = self._memory(window).claimed
        for owner, other, role in ends:
            claim = f"link\x00{owner.key}\x00{window}\x00{other.key}\x00{role}\x00{link.link_class}"
            if (not force and claim in claimed) or not await self._claim(claim, window, claims, force):
                continue
            if force or _object_claim(owner.key, window) not in claimed:
                await self._ensure_object_span(owner, window, out, claims, force)
            trace_id, object_span = self._ids(owner.key, window)
            attributes = owner.tags()
            attributes.update(
                linkedCluster=other.cluster,
                linkedGroup=other.group,
                linkedVersion=other.version,
                linkedResource=other.resource,
                linkedNamespace=other.namespace,
                linkedName=other.name,
                linkRole=role,
                linkClass=link.link_class,
            )
            out.append(
                Span(
                    trace_id=trace_id,
                    span_id=child_span_id(trace_id, claim),
                    parent_id=object_span,
                    service=SERVICE_LINK,
                    name=f"{role} {other.resource}/{other.name}",
                    start_ns=time_ns,
                    end_ns=time_ns,
                    attributes=attributes,
                )
            )


def _object_claim(key: str, window: int) -> str:
    """The emission key of an object's span in a window."""
    return f"obj\x00{key}\x00{window}"


def _is_delete(observation: Observation) -> bool:
    """Whether the observation tells of the object's deletion (an audit delete that succeeded, or the differ
    seeing it go)."""
    tags = observation.tags
    if observation.kind == "diff":
        return tags.get("change") == "delete"
    if observation.kind != "audit" or tags.get("verb") not in _DELETE_VERBS or observation.error is not None:
        return False
    if "subresource" in tags:
        return False
    metadata = observation.body.get("metadata") if observation.body is not None else None
    if not isinstance(metadata, Mapping):
        return True  # the response was a Status: the object is gone
    # A graceful delete or one held by finalizers returns the object, which lives on until they are done.
    return not metadata.get("finalizers") and not metadata.get("deletionGracePeriodSeconds")
