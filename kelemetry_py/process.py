"""The process's resources: the event loop it runs on, how its cyclic collector runs, how its C allocator keeps and
hands back freed pages, its memory, and the CPUs it may use."""

from __future__ import annotations

import asyncio
import ctypes
import functools
import gc
import logging
import math
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import uvloop

GC_THRESHOLDS = (30_000, 50, 100)
THREAD_SWITCH_SECONDS = 0.001
_RELEASE_CHECK_SECONDS = 2.0
# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it takes on 64-bit.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 << 20
# Freed memory the C allocator may hold at the top of each heap while busy, rather than hand back at once: several
# batches' buffers (about 1 MB each), far from a burst's worth.
KEPT_FREE_BYTES = 16 << 20

log = logging.getLogger(__name__)
_T = TypeVar("_T")


def run_event_loop(main: Coroutine[Any, Any, _T]) -> _T:
    """``asyncio.run`` on libuv's event loop (uvloop), as every process of the tracer runs: its transports and
    callbacks cost less than the standard loop's, a few percent of the webhook's CPU per batch
    (``python -m bench webhook``)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def release_free_memory() -> None:
    """Return the C allocator's free pages to the system (glibc's malloc_trim; elsewhere nothing to do)."""
    trim = getattr(_process_symbols(), "malloc_trim", None)
    if trim is not None:
        trim(0)


def keep_freed_memory() -> None:
    """Have glibc's allocator reuse freed memory while the process is busy instead of handing it back at once.

    By default a buffer above its mmap threshold (a batch's body, its encoded records) gets fresh pages from the
    kernel each time, and freed pages at the top of the heap go back as soon as a few MiB are free: every batch
    faulted its pages in again. In the ingest process that was 150 page faults per 400-event batch, over half its
    system time and 7 % of its CPU (``python -m bench webhook``). Pair with :func:`release_memory_when_idle`,
    which gives them back once the burst is over. Elsewhere than glibc, nothing to do."""
    mallopt = getattr(_process_symbols(), "mallopt", None)
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
        mallopt(_M_TRIM_THRESHOLD, KEPT_FREE_BYTES)


async def release_memory_when_idle(idle: Callable[[], bool], done: Callable[[], int], every: int) -> None:
    """Until cancelled: a burst leaves the C allocator holding the pages of everything it parsed and queued; once
    ``idle()`` and ``done()`` (work handled so far) has grown by ``every`` since the last time, they go back to the
    system, so that memory returns towards its idle level. Meanwhile the allocator keeps what is freed for reuse
    (:func:`keep_freed_memory`)."""
    keep_freed_memory()
    released_at = 0
    while True:
        await asyncio.sleep(_RELEASE_CHECK_SECONDS)
        if idle() and done() - released_at >= every:
            released_at = done()
            before = resident_memory_mib()
            await asyncio.to_thread(release_free_memory)
            log.debug("gave freed memory back to the system: RSS %.0f -> %.0f MiB", before, resident_memory_mib())


def resident_memory_mib() -> float:
    """This process's resident set size, in MiB (Linux; NaN elsewhere)."""
    return resident_bytes() / (1 << 20)


def resident_bytes(pid: int | None = None) -> float:
    """A process's resident set size (this one's by default), in bytes (Linux; NaN elsewhere or once it is gone)."""
    try:
        resident_pages = int(Path(f"/proc/{pid or 'self'}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return float("nan")
    return float(resident_pages * os.sysconf("SC_PAGE_SIZE"))


@functools.cache
def _process_symbols() -> ctypes.CDLL:
    return ctypes.CDLL(None)  # the C library this interpreter runs on, among others


def tune_garbage_collector() -> None:
    """Audit batches allocate tens of thousands of short-lived dicts per second; with CPython's default
    threshold (700) the collector runs thousands of times a second and full collections stall the webhook
    (python -m bench webhook --otlp-only: p99 85 ms → 31 ms, +35% throughput). Too high a threshold stalls it
    too: a young generation of 100,000 objects, many of them parsed bodies still queued, took 50-85 ms to
    collect; 30,000 takes under 12 ms for less time in all. Objects alive at start-up are frozen out of it.
    Decoding workers call it too: their batches allocate the same way."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def shorten_thread_switches() -> None:
    """A thread that wants the GIL waits for its holder to give it up: at most the switch interval, 5 ms by
    default. The serving process's spool and store threads want it back after every system call, while its event
    loop holds it for the pipeline's Python, and a batch's answer waits on the spool thread's write, then on the
    loop. At full speed (``python -m bench webhook``) a batch waited a median 10 ms for the serving process to keep
    it, of which the write and fsync took 2-3. At 1 ms the p50 and p99 of the saturating run fell 5 % and 6 %
    (median of 7 pairs alternated with the code before; 8 % and 9 % in 7 instrumented pairs), for the same CPU per
    batch over the sender's."""
    sys.setswitchinterval(THREAD_SWITCH_SECONDS)


def usable_cpus(cgroups: Path = Path("/sys/fs/cgroup"), membership: Path = Path("/proc/self/cgroup")) -> int:
    """The CPUs this process may run on, at most its CPU quota rounded up: a container limited to 1.5 CPUs on a
    16-core node may use 2, not 16."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = cpu_quota(cgroups, membership)
    return cpus if quota is None else max(1, min(cpus, math.ceil(quota)))


def cpu_quota(cgroups: Path, membership: Path) -> float | None:
    """CPUs' worth of time per period the process's cgroups allow (the tightest of its own and its ancestors'), or
    None when unlimited or unknown. cgroup v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us``; a container usually sees its
    own cgroup mounted at the root, so the root is looked at too."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return None
    quotas: list[float] = []
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        relative = path.strip("/")
        if controllers == "":  # v2: one hierarchy
            places = [cgroups / relative, *(cgroups / relative).parents] if relative else [cgroups]
            quotas += [q for place in places if place.is_relative_to(cgroups) and (q := _v2_quota(place)) is not None]
        elif "cpu" in controllers.split(","):
            mount = cgroups / controllers
            for place in {mount / relative, mount}:
                if (quota := _v1_quota(place)) is not None:
                    quotas.append(quota)
    return min(quotas, default=None)


def _v2_quota(place: Path) -> float | None:
    try:
        quota, period = (place / "cpu.max").read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _v1_quota(place: Path) -> float | None:
    try:
        quota = int((place / "cpu.cfs_quota_us").read_text())
        period = int((place / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None
