"""Decoding in worker processes: a batch's parse, checks and redaction run beside the event loop, and beside each
other, instead of taking turns with the pipeline on it; only the encoded, redacted observations come back.

Workers fork from a server process started fresh (``forkserver``), never from the serving process with its
threads and open files. They ignore SIGINT, so a terminal's Ctrl-C leaves shutdown to the serving process, which
answers the batches in flight before it stops them (SIGTERM they obey: a pool whose worker died stops the others
with it). When the serving process dies, even by SIGKILL, they exit too: each holds the read end of a pipe whose
only write end the serving process holds (their task queue cannot tell them, as each worker holds both of its
ends). Until they are up, and while new ones start after a worker died, batches are decoded on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import multiprocessing
import os
import signal
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext

from kelemetry_py.config import AuditConfig, RedactionConfig
from kelemetry_py.metrics import Metrics
from kelemetry_py.process import resident_bytes, tune_garbage_collector
from kelemetry_py.sources.audit import AuditConverter
from kelemetry_py.sources.auditdecode import DecodedBatch, DecoderUnavailable
from kelemetry_py.sources.auditdecode.inline import InlineDecoder, decode_batch

log = logging.getLogger(__name__)

_converter: AuditConverter | None = None  # a worker's own, built once when it starts
_RETRY_FIRST_SECONDS = 1.0
_RETRY_MAX_SECONDS = 60.0


def _start_worker(
    lifeline: Connection, audit: AuditConfig, redaction: RedactionConfig, records: bool, whole_bodies: bool
) -> None:
    global _converter
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_the_server, args=(lifeline,), name="lifeline", daemon=True).start()
    _converter = AuditConverter(audit, redaction, records=records, whole_bodies=whole_bodies)
    tune_garbage_collector()


def _exit_with_the_server(lifeline: Connection) -> None:
    with contextlib.suppress(EOFError, OSError):
        lifeline.recv_bytes()  # nothing is ever sent: this returns only when the serving process is gone
    os._exit(0)


def _worker_pid() -> int:
    return os.getpid()


def _decode_in_worker(cluster: str, body: bytes) -> DecodedBatch:
    assert _converter is not None
    # The observations go back encoded only: unpickling them would cost the loop what decoding them here saved.
    return decode_batch(_converter, cluster, body, keep_observations=False)


def _context() -> BaseContext:
    try:
        context = multiprocessing.get_context("forkserver")
    except ValueError:  # a platform without fork
        return multiprocessing.get_context("spawn")
    # Each worker then forks with the decoding code already imported (it takes effect before the server starts).
    context.set_forkserver_preload([__name__])
    return context


class ProcessDecoder:
    def __init__(
        self,
        processes: int,
        audit: AuditConfig,
        redaction: RedactionConfig,
        metrics: Metrics | None = None,
        *,
        records: bool,
        whole_bodies: bool = True,
    ) -> None:
        self._processes = processes
        self._metrics = metrics
        self._worker_args = (audit, redaction, records, whole_bodies)
        self._lifeline: tuple[Connection, Connection] | None = None
        self._inline = InlineDecoder(audit, redaction, records=records, whole_bodies=whole_bodies)
        self._pool: ProcessPoolExecutor | None = None
        self._starting: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        if metrics is not None:
            # Read at each scrape: a worker's memory grows with the largest batch it has decoded.
            metrics.audit_decode_workers_memory.set_function(self._workers_resident_bytes)

    def _workers_resident_bytes(self) -> float:
        sizes = [resident_bytes(pid) for pid in self.worker_pids]
        return sum(size for size in sizes if not math.isnan(size))  # NaN: a worker that exited meanwhile

    @property
    def worker_pids(self) -> list[int]:
        pool = self._pool
        return sorted(pool._processes) if pool is not None and pool._processes else []

    async def start(self) -> None:
        self._starting = asyncio.get_running_loop().create_task(self._start_pool())

    async def started(self) -> bool:
        if self._starting is not None:
            await asyncio.shield(self._starting)
        return self._pool is not None

    async def _start_pool(self) -> None:
        delay = _RETRY_FIRST_SECONDS
        while not self._closing.is_set():
            pool = await self._new_pool()
            if pool is not None:
                if self._closing.is_set():
                    await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
                    return
                self._pool = pool
                self._count_workers(self._processes)
                log.info("audit decoding: %d worker processes", self._processes)
                return
            # Meanwhile batches are decoded on the loop; a worker killed while starting (OOM) is no reason to give up.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), delay)
            delay = min(delay * 2, _RETRY_MAX_SECONDS)

    async def _new_pool(self) -> ProcessPoolExecutor | None:
        context = _context()
        if self._lifeline is None:
            self._lifeline = context.Pipe(duplex=False)  # (read end: every worker's; write end: ours alone)
        pool = ProcessPoolExecutor(
            self._processes,
            mp_context=context,
            initializer=_start_worker,
            initargs=(self._lifeline[0], *self._worker_args),
        )
        loop = asyncio.get_running_loop()
        try:
            # One call per worker, all at once: the pool starts a process for each call no idle worker can take.
            await asyncio.gather(*(loop.run_in_executor(pool, _worker_pid) for _ in range(self._processes)))
        except Exception:
            log.exception("audit decoding: worker processes could not start; decoding on the event loop meanwhile")
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
            return None
        return pool

    def _count_workers(self, count: int) -> None:
        if self._metrics is not None:
            self._metrics.audit_decode_workers.set(count)

    async def decode(self, cluster: str, body: bytes) -> DecodedBatch:
        pool = self._pool
        if pool is None:
            return await self._inline.decode(cluster, body)
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, _decode_in_worker, cluster, body)
        except BrokenProcessPool:
            # The batch may be what killed the worker: it is not decoded here, where it could take the whole
            # process down. The apiserver retries it; meanwhile new workers start.
            if self._pool is pool and not self._closing.is_set():
                log.error("audit decoding: a worker process died; starting new ones")
                self._pool = None
                self._count_workers(0)
                self._starting = asyncio.get_running_loop().create_task(self._replace(pool))
            raise DecoderUnavailable("a decoding worker process died") from None

    async def _replace(self, broken: ProcessPoolExecutor) -> None:
        await asyncio.to_thread(broken.shutdown, wait=True, cancel_futures=True)
        await self._start_pool()

    async def close(self) -> None:
        self._closing.set()
        if self._starting is not None:
            with contextlib.suppress(Exception):
                await self._starting
        pool, self._pool = self._pool, None
        if pool is not None:
            self._count_workers(0)
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
        if self._lifeline is not None:
            for end in self._lifeline:
                end.close()
            self._lifeline = None
