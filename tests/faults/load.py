"""A load generator that posts audit batches to one or more webhooks over loopback, as kube-apiserver would.

Batches go out concurrently; a 429 is retried after its Retry-After, a refused connection or a 503 on the next
target (the load balancer in front of replicas). Each batch's fate is recorded: only a 200 acknowledges it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import aiohttp

from tests.faults.workload import BatchRef

_MAX_ATTEMPTS = 60
_MAX_RETRY_AFTER = 5.0


@dataclass
class Answer:
    status: int
    text: str
    target: int  # index into the targets list


@dataclass
class LoadResult:
    acknowledged: list[BatchRef] = field(default_factory=list)  # answered 200
    acknowledged_by: Counter[int] = field(default_factory=Counter)  # target index → batches
    answers: dict[BatchRef, Answer] = field(default_factory=dict)  # the final answer of every answered batch
    unanswered: list[BatchRef] = field(default_factory=list)  # no final answer: connection lost or given up
    statuses: Counter[int] = field(default_factory=Counter)  # every answer, retried ones included
    throttled: int = 0
    started: float = 0.0
    ended: float = 0.0

    @property
    def server_errors(self) -> dict[BatchRef, Answer]:
        return {ref: answer for ref, answer in self.answers.items() if answer.status >= 500}

    @property
    def seconds(self) -> float:
        return self.ended - self.started


class Load:
    """Posts batches from ``bodies(ref)`` to ``targets`` (webhook URLs, e.g. ``http://127.0.0.1:P/audit/fixture``).

    ``run`` returns when every batch has a fate or ``stop()`` was called (batches in flight then finish or fail).
    """

    def __init__(
        self,
        targets: list[str],
        bodies: Callable[[BatchRef], bytes],
        events_of: Callable[[BatchRef], int],
        *,
        concurrency: int = 4,
    ) -> None:
        self.targets = targets
        self._bodies = bodies
        self._events_of = events_of
        self._concurrency = concurrency
        self._stopping = asyncio.Event()
        self._progress = asyncio.Condition()
        self.acknowledged_events = 0
        self.result = LoadResult()
        self._next_target = itertools.cycle(range(len(targets)))

    def stop(self) -> None:
        """Send nothing new: batches in flight finish, nothing is retried."""
        self._stopping.set()

    async def acknowledged_at_least(self, events: int) -> None:
        """Wait until batches holding ``events`` audit events have been answered 200."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.acknowledged_events >= events or self._stopping.is_set())

    async def run(self, refs: Iterable[BatchRef]) -> LoadResult:
        result = self.result
        result.started = time.monotonic()
        pending: Iterator[BatchRef] = iter(refs)
        connector = aiohttp.TCPConnector(limit=self._concurrency * 2)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            workers = [asyncio.create_task(self._worker(session, pending)) for _ in range(self._concurrency)]
            try:
                await asyncio.gather(*workers)
            finally:
                for worker in workers:
                    worker.cancel()
        result.ended = time.monotonic()
        async with self._progress:
            self._progress.notify_all()
        return result

    async def _worker(self, session: aiohttp.ClientSession, pending: Iterator[BatchRef]) -> None:
        while not self._stopping.is_set():
            ref = next(pending, None)
            if ref is None:
                return
            answer = await self._deliver(session, self._bodies(ref))
            if answer is None:
                self.result.unanswered.append(ref)
                continue
            self.result.answers[ref] = answer
            if answer.status == 200:
                self.result.acknowledged.append(ref)
                self.result.acknowledged_by[answer.target] += 1
                self.acknowledged_events += self._events_of(ref)
                async with self._progress:
                    self._progress.notify_all()

    async def _deliver(self, session: aiohttp.ClientSession, body: bytes) -> Answer | None:
        target = next(self._next_target)
        backoff = 0.05
        for _ in range(_MAX_ATTEMPTS):
            try:
                async with session.post(
                    self.targets[target], data=body, headers={"Content-Type": "application/json"}
                ) as response:
                    text = await response.text()
                    status = response.status
                    retry_after = response.headers.get("Retry-After", "1")
            except (aiohttp.ClientError, TimeoutError):
                status, text, retry_after = 0, "", ""
            if status:
                self.result.statuses[status] += 1
            if status == 429:
                self.result.throttled += 1
                if self._stopping.is_set():
                    return None
                # Backing off as the apiserver does; the server chose the delay.
                await asyncio.sleep(min(_MAX_RETRY_AFTER, _seconds(retry_after)))
                continue
            if status and status != 503:
                return Answer(status, text, target)
            # Refused, reset or draining: the apiserver retries, the load balancer picks another replica.
            if self._stopping.is_set():
                return None if not status else Answer(status, text, target)
            target = (target + 1) % len(self.targets)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)
        return None


def _seconds(retry_after: str) -> float:
    """Retry-After in seconds; anything else (an HTTP date) counts as 1 s."""
    try:
        return max(0.0, float(retry_after))
    except ValueError:
        return 1.0
