"""Observations in, spans out.

Each object key hashes to one of N partitions, so one object's observations are handled in order while objects
run in parallel. Capacity is counted across partitions: a batch is accepted whole or refused whole.
"""

from __future__ import annotations

import asyncio
import logging
import os
import zlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kelemetry_py.config import PipelineConfig
from kelemetry_py.export import SpanWriter
from kelemetry_py.linking import Linker
from kelemetry_py.metrics import Metrics
from kelemetry_py.model import (
    KIND_RECORD,
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
from kelemetry_py.pipeline.emission import EmissionSet
from kelemetry_py.plugins.decorators import apply_decorators

if TYPE_CHECKING:
    from kelemetry_py.linking.graph import ObjectGraph
    from kelemetry_py.plugins import Decorator

log = logging.getLogger(__name__)

_BATCH = 256  # observations a partition worker turns into one writer call
_KNOWN_WINDOWS = 200_000  # (object, window) pairs remembered locally to spare the emission set a round trip


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
    ) -> None:
        self._config = config or PipelineConfig()
        self._writer = writer
        self._emission = emission
        self._metrics = metrics
        self._linkers = list(linkers)
        self._hooks = list(hooks)
        self._graph = graph
        self._decorators = list(decorators)
        self._window_ns = self._config.window_seconds * 1_000_000_000
        self._queues: list[asyncio.Queue[Observation]] = [
            asyncio.Queue() for _ in range(self._config.partitions)
        ]
        self._workers: list[asyncio.Task[None]] = []
        self._parked: set[asyncio.Task[None]] = set()
        self._pending = 0
        self._room = asyncio.Condition()
        self._idle = asyncio.Event()
        self._idle.set()
        self._known: OrderedDict[str, None] = OrderedDict()
        self._closing = False
        self._consumers: list[Callable[[Sequence[Observation]], Awaitable[None]]] = []

    @property
    def pending(self) -> int:
        return self._pending

    def add_hook(self, hook: ObservationHook) -> None:
        self._hooks.append(hook)

    def add_consumer(self, consumer: Callable[[Sequence[Observation]], Awaitable[None]]) -> None:
        """Also hand every observation batch to ``consumer`` (the search index, alert rules) before its spans are
        made. The durable spool will feed these consumers from its log instead."""
        self._consumers.append(consumer)

    async def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._run_partition(queue), name=f"pipeline-partition-{i}")
            for i, queue in enumerate(self._queues)
        ]

    async def submit(self, observations: Sequence[Observation], *, wait: bool = False) -> None:
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
        for observation in observations:
            self._metrics.observations_submitted.labels(observation.kind).inc()
            index = zlib.crc32(observation.ref.key.encode()) % partitions
            self._queues[index].put_nowait(observation)

    async def drain(self) -> None:
        """Wait until every accepted observation has been written and the writer has flushed."""
        await self._idle.wait()
        await self._writer.flush()

    async def stop(self) -> None:
        """Stop accepting, finish everything accepted, flush the writer."""
        self._closing = True
        await self._idle.wait()
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        await self._writer.flush()

    async def _done(self, count: int) -> None:
        self._pending -= count
        self._metrics.queue_depth.set(self._pending)
        if self._pending == 0:
            self._idle.set()
        async with self._room:
            self._room.notify_all()

    async def _run_partition(self, queue: asyncio.Queue[Observation]) -> None:
        while True:
            batch = [await queue.get()]
            while len(batch) < _BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            ready: list[Observation] = []
            for observation in batch:
                waiting = self._run_hooks(observation, 0)
                if waiting is None:
                    ready.append(observation)
                else:
                    task = asyncio.create_task(waiting)
                    self._parked.add(task)
                    task.add_done_callback(self._parked.discard)
            try:
                await self._write_observations(ready)
            except Exception:
                # Writers retry and count their own failures; anything reaching here is a bug worth a traceback,
                # but one bad batch must not stop the partition.
                log.exception("pipeline: failed to turn %d observations into spans", len(ready))
            await self._done(len(ready))

    def _run_hooks(self, observation: Observation, start: int) -> Coroutine[Any, Any, None] | None:
        for index in range(start, len(self._hooks)):
            hook = self._hooks[index]
            try:
                pending = hook.prepare(observation)
            except Exception:
                self._metrics.plugin_errors.labels(hook.name).inc()
                log.exception("pipeline hook %s failed; observation kept without it", hook.name)
                continue
            if pending is not None:
                return self._finish_parked(observation, pending, index + 1)
        return None

    async def _finish_parked(
        self, observation: Observation, pending: Awaitable[None], next_hook: int
    ) -> None:
        try:
            try:
                await pending
            except Exception:
                log.exception("pipeline hook failed while waiting; observation kept without it")
            more = self._run_hooks(observation, next_hook)
            if more is not None:
                await more
                return  # the nested call wrote the observation and did the accounting
            await self._write_observations([observation])
        except Exception:
            log.exception("pipeline: failed to write a parked observation")
        await self._done(1)

    async def _write_observations(self, observations: Sequence[Observation]) -> None:
        if not observations:
            return
        for consumer in self._consumers:
            try:
                await consumer(observations)
            except Exception:
                log.exception("pipeline: a record consumer failed on %d observations", len(observations))
        spans: list[Span] = []
        for observation in observations:
            if observation.kind != KIND_RECORD:
                await self._spans_for(observation, spans)
        if spans:
            await self._writer.write(spans)

    async def _spans_for(self, observation: Observation, out: list[Span]) -> None:
        ref = observation.ref
        window = window_of(observation.start_ns, self._config.window_seconds)
        key = ref.key
        trace_id = object_trace_id(key, window)
        await self._ensure_object_span(ref, window, out, observation.body)
        if observation.body is not None and self._linkers:
            for link in await self._links(ref, observation.body):
                await self._link_spans(ref, link, window, observation.start_ns, out)
        identity = observation.dedup_key or f"{observation.kind}:{observation.start_ns}:{os.urandom(6).hex()}"
        attributes = ref.tags()
        attributes.update(observation.tags)
        if observation.error is not None:
            attributes["error"] = True  # what Jaeger UI users search for; the status alone is not a tag
        span = Span(
            trace_id=trace_id,
            span_id=child_span_id(trace_id, identity),
            parent_id=object_span_id(key, window),
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

    async def _links(self, ref: ObjectRef, body: Mapping[str, Any]) -> list[Link]:
        links: list[Link] = []
        for linker in self._linkers:
            # Awaited in turn rather than gathered: a task per linker per observation costs more than the linking.
            try:
                found = await linker.links(ref, body)
            except Exception:
                self._metrics.plugin_errors.labels(linker.name).inc()
                log.exception("linker %s failed on %s; its links are skipped", linker.name, ref.key)
                continue
            links.extend(found)
        if self._graph is not None:
            self._graph.sync_links(ref, links)
        return links

    async def _claim(self, key: str) -> bool:
        if key in self._known:
            self._known.move_to_end(key)
            return False
        self._known[key] = None
        if len(self._known) > _KNOWN_WINDOWS:
            self._known.popitem(last=False)
        return await self._emission.claim(key, 2 * self._config.window_seconds)

    async def _ensure_object_span(
        self, ref: ObjectRef, window: int, out: list[Span], body: Mapping[str, Any] | None = None
    ) -> None:
        key = ref.key
        if not await self._claim(f"obj\x00{key}\x00{window}"):
            return
        start = window * self._window_ns
        span = Span(
            trace_id=object_trace_id(key, window),
            span_id=object_span_id(key, window),
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
        self, ref: ObjectRef, link: Link, window: int, time_ns: int, out: list[Span]
    ) -> None:
        inverse = "child" if link.role == "parent" else "parent"
        ends = ((ref, link.target, link.role), (link.target, ref, inverse))
        for owner, other, role in ends:
            claim = f"link\x00{owner.key}\x00{window}\x00{other.key}\x00{role}\x00{link.link_class}"
            if not await self._claim(claim):
                continue
            await self._ensure_object_span(owner, window, out)
            trace_id = object_trace_id(owner.key, window)
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
                    parent_id=object_span_id(owner.key, window),
                    service=SERVICE_LINK,
                    name=f"{role} {other.resource}/{other.name}",
                    start_ns=time_ns,
                    end_ns=time_ns,
                    attributes=attributes,
                )
            )
