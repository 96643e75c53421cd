"""Leader election on a coordination.k8s.io/v1 Lease, one per cluster and watcher.

The algorithm is client-go's: a candidate takes the lease when it is free or when its record has not changed
for a whole lease duration *as observed on the candidate's own clock* (so clock skew between replicas does not
matter); the leader renews every retry period and gives up leading if it cannot renew within the renew
deadline. Updates carry the lease's resourceVersion, so two candidates never both win (the loser gets 409).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from kelemetry_py.kube.client import KubeApiError, KubeClient

log = logging.getLogger(__name__)

LEASES = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"


def _micro_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Competes for one Lease; :meth:`run` runs ``lead`` only while this replica holds it."""

    def __init__(
        self,
        client: KubeClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float = 15.0,
        renew_deadline: float | None = None,
        retry_period: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        wake_on_release: bool = False,
    ) -> None:
        if not identity:
            raise ValueError("leader election needs a non-empty identity")
        self.client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline if renew_deadline is not None else lease_duration * 2 / 3
        self.retry_period = retry_period if retry_period is not None else lease_duration / 7.5
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("leader election needs 0 < retry_period < renew_deadline < lease_duration")
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._observed_rv = ""
        self._observed_at = 0.0
        self.is_leader = False
        self.leading = asyncio.Event()  # set while leading, for tests and readiness
        self.release_on_cancel = True
        self.terms = 0
        # Who held the lease before this replica took it: None when this replica created it, "" when the
        # previous holder had released it (a hand-over without waiting for expiry).
        self.previous_holder: str | None = None
        # With wake_on_release, a candidate watches its Lease and tries at once when the holder releases it,
        # instead of at its next retry period.
        self.wake_on_release = wake_on_release
        self._released = asyncio.Event()

    @property
    def _collection(self) -> str:
        return LEASES.format(namespace=self.namespace)

    async def try_acquire_or_renew(self) -> bool:
        """One attempt: True when this replica holds the lease afterwards."""
        now = self._wall_clock()
        try:
            lease = await self.client.get_json(f"{self._collection}/{self.name}")
        except KubeApiError as exc:
            if exc.status != 404:
                log.warning("lease %s/%s: cannot read: %s", self.namespace, self.name, exc)
                return False
            return await self._create(now)
        metadata = lease.get("metadata") or {}
        spec: dict[str, Any] = lease.get("spec") or {}
        rv = str(metadata.get("resourceVersion") or "")
        if rv != self._observed_rv:
            self._observed_rv, self._observed_at = rv, self._clock()
        holder = str(spec.get("holderIdentity") or "")
        if holder and holder != self.identity and self._observed_at + self.lease_duration > self._clock():
            return False
        new_spec = dict(spec)
        new_spec.update(
            holderIdentity=self.identity,
            leaseDurationSeconds=max(1, math.ceil(self.lease_duration)),
            renewTime=_micro_time(now),
        )
        if holder != self.identity:
            new_spec["acquireTime"] = _micro_time(now)
            new_spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if holder else 0)
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace, "resourceVersion": rv},
            "spec": new_spec,
        }
        try:
            updated = await self.client.request_json("PUT", f"{self._collection}/{self.name}", body=body)
        except KubeApiError as exc:
            if exc.status != 409:
                log.warning("lease %s/%s: cannot update: %s", self.namespace, self.name, exc)
            return False
        self._observe(updated)
        if holder != self.identity:
            self.previous_holder = holder
        return True

    async def _create(self, now: datetime) -> bool:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": max(1, math.ceil(self.lease_duration)),
                "acquireTime": _micro_time(now),
                "renewTime": _micro_time(now),
                "leaseTransitions": 0,
            },
        }
        try:
            created = await self.client.request_json("POST", self._collection, body=body)
        except KubeApiError as exc:
            if exc.status != 409:
                log.warning("lease %s/%s: cannot create: %s", self.namespace, self.name, exc)
            return False
        self._observe(created)
        self.previous_holder = None
        return True

    def _observe(self, lease: dict[str, Any]) -> None:
        self._observed_rv = str((lease.get("metadata") or {}).get("resourceVersion") or "")
        self._observed_at = self._clock()

    async def release(self) -> None:
        """Hand the lease back so another replica takes over at once instead of after it expires."""
        try:
            lease = await self.client.get_json(f"{self._collection}/{self.name}")
            spec = dict(lease.get("spec") or {})
            if spec.get("holderIdentity") != self.identity:
                return
            spec.update(holderIdentity="", leaseDurationSeconds=1, renewTime=_micro_time(self._wall_clock()))
            metadata = lease.get("metadata") or {}
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": self.name,
                    "namespace": self.namespace,
                    "resourceVersion": metadata.get("resourceVersion"),
                },
                "spec": spec,
            }
            await self.client.request_json("PUT", f"{self._collection}/{self.name}", body=body)
        except Exception as exc:  # the apiserver may be gone; the lease then expires on its own
            log.warning("lease %s/%s: cannot release: %s", self.namespace, self.name, exc)

    async def run(self, lead: Callable[[], Awaitable[None]]) -> None:
        """Campaign forever; while leading, run ``lead()`` and cancel it as soon as leadership is lost."""
        watcher = asyncio.create_task(self._watch_releases()) if self.wake_on_release else None
        try:
            while True:
                while True:
                    self._released.clear()  # before the attempt: a release seen after it must not be missed
                    if await self.try_acquire_or_renew():
                        break
                    await self._retry_wait()
                await self._lead_until_lost(lead)
                # Work that ended or crashed is not restarted in a busy loop.
                await self._sleep(self.retry_period)
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)

    async def _retry_wait(self) -> None:
        """One retry period, cut short when the Lease is seen released."""
        if not self.wake_on_release:
            await self._sleep(self.retry_period)
            return
        sleeping = asyncio.ensure_future(self._sleep(self.retry_period))
        released = asyncio.ensure_future(self._released.wait())
        try:
            await asyncio.wait({sleeping, released}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeping.cancel()
            released.cancel()

    async def _watch_releases(self) -> None:
        """Follow the Lease; set ``_released`` whenever it has no holder."""
        query = {"watch": "true", "fieldSelector": f"metadata.name={self.name}", "timeoutSeconds": "300"}
        while True:
            try:
                async with self.client.stream(self._collection, query, read_timeout=330) as response:
                    async for line in response.content:
                        self._note(line)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the candidate still retries every period; this only speeds it up
                log.debug("lease %s/%s: watch failed: %s", self.namespace, self.name, exc)
            await self._sleep(self.retry_period)

    def _note(self, line: bytes) -> None:
        try:
            event = orjson.loads(line)
            lease = event["object"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return
        if not isinstance(lease, dict) or (lease.get("metadata") or {}).get("name") != self.name:
            return
        if event.get("type") in ("ADDED", "MODIFIED") and not (lease.get("spec") or {}).get("holderIdentity"):
            self._released.set()

    async def _lead_until_lost(self, lead: Callable[[], Awaitable[None]]) -> None:
        self.is_leader = True
        self.terms += 1
        self.leading.set()
        log.info("lease %s/%s: %s is leading", self.namespace, self.name, self.identity)

        async def work() -> None:
            await lead()

        task = asyncio.create_task(work())
        last_renewal = self._clock()
        try:
            while not task.done():
                await self._sleep(self.retry_period)
                if task.done():
                    break
                if await self.try_acquire_or_renew():
                    last_renewal = self._clock()
                elif self._clock() - last_renewal > self.renew_deadline:
                    log.warning("lease %s/%s: %s lost leadership", self.namespace, self.name, self.identity)
                    break
        except asyncio.CancelledError:
            await self._stop(task)
            if self.release_on_cancel:
                await asyncio.shield(self.release())
            raise
        await self._stop(task)
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("lease %s/%s: leader work failed", self.namespace, self.name, exc_info=task.exception())

    async def _stop(self, task: asyncio.Task[None]) -> None:
        self.is_leader = False
        self.leading.clear()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
