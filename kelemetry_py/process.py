"""The process's resources: how its cyclic collector runs, and handing freed pages back to the system."""

from __future__ import annotations

import ctypes
import functools
import gc

GC_THRESHOLDS = (30_000, 50, 100)


def release_free_memory() -> None:
    """Return the C allocator's free pages to the system (glibc's malloc_trim; elsewhere nothing to do)."""
    trim = getattr(_process_symbols(), "malloc_trim", None)
    if trim is not None:
        trim(0)


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

