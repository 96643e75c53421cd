"""Attach the object differ's diff to the audit span whose response carries that resourceVersion.

The watch usually has the change before the audit event arrives, so the common case attaches at once. When it
does not, the observation waits (parked by the pipeline, not blocking its partition) up to
``kube.diff_wait_seconds`` for the differ to store it, woken by the cache — no polling. The claim is shared
through the diff cache, so a diff is shown once: on the audit span, or as the differ's own diff span.

An audit batch arriving late (the apiserver holds batches up to ``--audit-webhook-batch-max-wait``, 30 s by
default) still finds its diff at once: the differ holds unclaimed changes for ``kube.diff_hold_seconds``
(90 s by default) before it emits them on their own. ``kelemetry_diff_attach_total{result}`` counts hits and
misses.
"""

from __future__ import annotations

from collections.abc import Awaitable

from kelemetry_py.metrics import Metrics
from kelemetry_py.model import Observation
from kelemetry_py.sources.diffcache import DiffCache, DiffRecord
from kelemetry_py.sources.differ import record_log_entry


class DiffAttacher:
    """An :class:`kelemetry_py.pipeline.ObservationHook` for ``audit`` observations."""

    name = "diffs"

    def __init__(self, cache: DiffCache, wait_seconds: float = 3.0, metrics: Metrics | None = None) -> None:
        if wait_seconds < 0:
            raise ValueError("wait_seconds must not be negative")
        self._cache = cache
        self._wait = wait_seconds
        self._results = metrics.diff_attach if metrics is not None else None
        self.attached = 0
        self.given_up = 0

    def prepare(self, observation: Observation) -> Awaitable[None] | None:
        if observation.kind != "audit" or not observation.resource_version:
            return None
        record = self._cache.claim_nowait(observation.ref.key, observation.resource_version)
        if record is not None:
            self._attach(observation, record)
            return None
        return self._attach_later(observation, observation.resource_version)

    async def _attach_later(self, observation: Observation, resource_version: str) -> None:
        key = observation.ref.key
        record = await self._cache.wait(key, resource_version, self._wait)
        if record is None or not await self._cache.claim(key, resource_version):
            self.given_up += 1
            if self._results is not None:
                self._results.labels("miss").inc()
            return
        self._attach(observation, record)

    def _attach(self, observation: Observation, record: DiffRecord) -> None:
        if self._results is not None:
            self._results.labels("hit").inc()
        if record.is_snapshot and any(entry.name == "snapshot" for entry in observation.logs):
            # The audit converter already put the create/delete snapshot there; claiming is enough.
            self.attached += 1
            return
        observation.logs.append(record_log_entry(record, observation.end_ns))
        self.attached += 1
