"""A durable log on local disk: append-only segment files with group commit, a cursor file per consumer, and
the newest records kept in memory so consumers that keep up never read the disk or decode anything.

Record framing: ``<u32 length><u32 crc32>payload``, never an empty payload. A torn tail (a crash in the middle of
a write) is cut off at start-up; a record damaged in place is kept and read as ``damaged``, for consumers to skip
and count. Segments are deleted once every consumer's *persisted* cursor is past them, so a crash can only make a
consumer see records again, never skip one.

fsync policy (``spool.fsync``): ``always`` fsyncs each group commit before any append of it returns (a 200 survives
power loss); ``interval`` fsyncs in the background every ``fsync_interval_seconds`` (a crash of the process loses
nothing, a power loss up to that interval); ``never`` leaves it to the kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import struct
import threading
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kelemetry_py.spool import Record, RecordTooLarge, SpoolFull

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")
_SUFFIX = ".seg"
# A consumed segment is renamed to this before its space is given back, so no restart ever reads it as the log's.
_DISCARD_SUFFIX = ".discard"
# Freed this much at a time, this far apart: on a file system that discards freed blocks at its journal commit
# (ext4 mounted with ``discard``), unlinking 64 MiB at once held an fsync beside it for 13-23 ms; 2 MiB steps
# 10 ms apart kept the slowest append at 2-10 ms, for a few tenths of a millisecond on the appends beside each
# step (``python -m bench spool``).
FREE_STEP_BYTES = 2 << 20
_FREE_PAUSE_SECONDS = 0.01
_CURSOR_PREFIX = "cursor-"
_T = TypeVar("_T")
FSYNC_POLICIES = ("always", "interval", "never")


class SpoolWriteError(Exception):
    """The disk refused an append (full, read-only...); nothing of it was kept."""


@dataclass(slots=True)
class _Segment:
    first: int
    path: Path
    count: int = 0
    size: int = 0

    @property
    def end(self) -> int:
        return self.first + self.count


class LocalLog:
    def __init__(
        self,
        directory: str | Path,
        *,
        name: str,
        max_bytes: int,
        fsync: str = "always",
        fsync_interval_seconds: float = 0.2,
        segment_bytes: int = 64 << 20,
        cache_bytes: int = 8 << 20,
        cursor_interval_seconds: float = 0.2,
        free_step_bytes: int = FREE_STEP_BYTES,
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}")
        self.name = name
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._fsync = fsync
        self._fsync_interval = fsync_interval_seconds
        # Only whole consumed segments are freed, never the one being written: a segment as large as the bound
        # would leave a log whose consumers keep up full for good.
        self._segment_bytes = max(1, min(segment_bytes, max_bytes // 4))
        self._cache_limit = cache_bytes
        self._cursor_interval = cursor_interval_seconds
        self._segments: list[_Segment] = []
        self._next = 0  # sequence number of the next record to be written
        self._recovered_end = 0  # records below this were written by an earlier run
        self._used = 0  # bytes on disk, plus appends reserved but not yet written
        self._pending: list[tuple[bytes, Any]] = []
        self._pending_bytes = 0
        self._pending_done: asyncio.Future[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._cache: deque[Record] = deque()
        self._cache_bytes = 0
        self._consumers: dict[str, LocalConsumer] = {}
        self._saved_cursors: dict[str, int] = {}
        self._changed = asyncio.Event()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"spool-{name}")
        # Cursor files (two fsyncs) and renaming consumed segments, off the writer thread: they must never hold up
        # the appends queued behind them.
        self._maintainer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"spool-{name}-maintenance")
        # Giving back a consumed segment's space takes a fraction of a second per 64 MiB (see _FREE_PAUSE_SECONDS):
        # on a thread of its own, so that it never delays a cursor file or the interval fsync.
        self._freer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"spool-{name}-free")
        self._freeing: asyncio.Future[None] | None = None  # the latest freeing; the freer runs them in order
        # Touched only on the writer thread: the active segment's descriptor and (first seq, path, size).
        self._active_fd: int | None = None
        self._segments_snapshot_last: tuple[int, Path, int] | None = None
        self._unsynced = False
        self._background: asyncio.Task[None] | None = None
        self._closing = False
        self._free_step_bytes = free_step_bytes  # 0: a consumed segment is unlinked at once
        self._hurry = threading.Event()  # set on close: consumed segments are freed without pauses

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def open(self) -> None:
        self._segments, self._saved_cursors = await self._on_writer(self._recover_sync)
        self._next = self._recovered_end = self._segments[-1].end
        self._used = sum(segment.size for segment in self._segments)
        self._background = asyncio.get_running_loop().create_task(self._maintain(), name=f"spool-{self.name}")

    def consumer(self, name: str) -> LocalConsumer:
        if name not in self._consumers:
            start = self._saved_cursors.get(name, self._segments[0].first if self._segments else 0)
            start = max(start, self._segments[0].first)
            self._consumers[name] = LocalConsumer(self, name, start)
        return self._consumers[name]

    def stop_reading(self) -> None:
        self._closing = True
        self._notify()

    async def close(self) -> None:
        if self._background is None:
            return
        self.stop_reading()
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await self._flusher
        self._hurry.set()
        self._background.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._background
        self._background = None
        await self._persist_cursors()  # after any job of the cancelled maintenance: one worker, in order
        self._maintainer.shutdown(wait=True)
        await self._finish_freeing()
        self._freer.shutdown(wait=True)
        await self._on_writer(self._close_sync)
        self._writer.shutdown(wait=True)

    # -- appending -------------------------------------------------------------------------------------------

    def used_bytes(self) -> int:
        return self._used

    @property
    def end(self) -> int:
        """The sequence number the next record will get."""
        return self._next

    async def append(self, payloads: Sequence[bytes], values: Sequence[Any] | None = None) -> None:
        if not payloads:
            return
        if not all(payloads):
            raise ValueError("an empty payload: a crash's zero-filled tail would read the same")
        size = sum(len(payload) for payload in payloads) + _HEADER.size * len(payloads)
        if size > self.max_bytes - self._segment_bytes:  # beside the segment being written, which is not freed
            raise RecordTooLarge(f"{size} bytes can never fit a spool of {self.max_bytes} bytes")
        if self._closing:
            raise SpoolFull("the spool is closing")
        if self._used + size > self.max_bytes:
            raise SpoolFull(f"spool {self.name} is full ({self._used} of {self.max_bytes} bytes)")
        self._used += size
        self._pending_bytes += size
        if values is None:
            self._pending.extend((payload, None) for payload in payloads)
        else:
            self._pending.extend(zip(payloads, values, strict=True))
        if self._pending_done is None:
            self._pending_done = asyncio.get_running_loop().create_future()
        done = self._pending_done
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_pending())
        await asyncio.shield(done)

    async def _flush_pending(self) -> None:
        # Appends that arrive while a group is being written go together into the next one (group commit).
        while self._pending:
            batch, self._pending = self._pending, []
            size, self._pending_bytes = self._pending_bytes, 0
            done, self._pending_done = self._pending_done, None
            assert done is not None
            first = self._next
            try:
                placed = await self._on_writer(self._write_sync, first, [payload for payload, _ in batch])
            except Exception as exc:
                self._used -= size
                log.error("spool %s: could not write %d records: %s", self.name, len(batch), exc)
                done.set_exception(SpoolWriteError(str(exc)))
                done.exception()  # retrieved: appenders that gave up must not leave it "never retrieved"
                continue
            for segment_first, path, count, added in placed:
                if not self._segments or self._segments[-1].first != segment_first:
                    self._segments.append(_Segment(segment_first, path))
                self._segments[-1].count += count
                self._segments[-1].size += added
            for offset, (payload, value) in enumerate(batch):
                record = Record(first + offset, payload, value)
                self._cache.append(record)
                self._cache_bytes += len(payload)
            self._next = first + len(batch)
            self._trim_cache()
            done.set_result(None)
            self._notify()

    def _write_sync(self, first: int, payloads: list[bytes]) -> list[tuple[int, Path, int, int]]:
        """Write frames, rotating segments; returns (segment first seq, path, records, bytes) per segment."""
        placed: list[tuple[int, Path, int, int]] = []
        active = self._segments_snapshot_last
        fd = self._active_fd
        assert fd is not None and active is not None
        seg_first, seg_path, seg_size = active
        start_size = seg_size
        chunk: list[bytes] = []
        chunk_count = 0
        seq = first
        try:
            for payload in payloads:
                frame_size = _HEADER.size + len(payload)
                if seg_size > 0 and seg_size + frame_size > self._segment_bytes:
                    self._write_all(fd, chunk)
                    placed.append((seg_first, seg_path, chunk_count, seg_size - start_size))
                    chunk, chunk_count = [], 0
                    fd = self._start_segment_sync(fd, seq)
                    seg_first, seg_path = seq, self._segment_path(seq)
                    seg_size = start_size = 0
                chunk.append(_HEADER.pack(len(payload), zlib.crc32(payload)))
                chunk.append(payload)
                chunk_count += 1
                seg_size += frame_size
                seq += 1
            self._write_all(fd, chunk)
            if self._fsync == "always":
                os.fsync(fd)
            else:
                self._unsynced = True
        except BaseException:
            # Cut what this group wrote of the active segment, so no half record is ever read.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start_size)
            self._segments_snapshot_last = (seg_first, seg_path, start_size)
            raise
        placed.append((seg_first, seg_path, chunk_count, seg_size - start_size))
        self._segments_snapshot_last = (seg_first, seg_path, seg_size)
        if seg_size >= self._segment_bytes:
            # A full segment is closed now, not at the next append: only closed segments are freed, and a full
            # log gets no next append.
            try:
                self._start_segment_sync(fd, seq)
            except OSError as exc:  # it stays the active one; the next append tries again
                log.warning("spool %s: could not start a new segment: %s", self.name, exc)
                return placed
            self._segments_snapshot_last = (seq, self._segment_path(seq), 0)
            placed.append((seq, self._segment_path(seq), 0, 0))
        return placed

    def _start_segment_sync(self, full: int, first: int) -> int:
        """Close the full segment's descriptor and open a new segment starting at record ``first``."""
        # The interval fsync reaches only the segment being written, so the full one is synced before it closes.
        if self._fsync != "never":
            os.fsync(full)
        path = self._segment_path(first)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        if self._fsync != "never":
            try:
                self._sync_directory()
            except OSError:
                os.close(fd)
                path.unlink(missing_ok=True)  # no empty segment left to claim the records that follow
                raise
        os.close(full)
        self._active_fd = fd
        return fd

    @staticmethod
    def _write_all(fd: int, chunk: list[bytes]) -> None:
        data = b"".join(chunk)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]

    def _segment_path(self, first: int) -> Path:
        return self.directory / f"{first:020d}{_SUFFIX}"

    def _sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- recovery --------------------------------------------------------------------------------------------

    def _recover_sync(self) -> tuple[list[_Segment], dict[str, int]]:
        self.directory.mkdir(parents=True, exist_ok=True)
        for path in self.directory.glob(f"*{_DISCARD_SUFFIX}"):  # consumed, and being freed when the process ended
            path.unlink(missing_ok=True)
        paths = sorted(self.directory.glob(f"*{_SUFFIX}"))
        segments = [_Segment(int(path.stem), path) for path in paths]
        for segment, following in itertools.pairwise(segments):
            segment.count = following.first - segment.first
            segment.size = segment.path.stat().st_size
        if not segments:
            segments.append(_Segment(0, self._segment_path(0)))
            segments[0].path.touch(mode=0o600)
        last = segments[-1]
        last.count, last.size = self._scan_and_repair(last.path)
        self._active_fd = os.open(last.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._segments_snapshot_last = (last.first, last.path, last.size)
        cursors: dict[str, int] = {}
        for path in self.directory.glob(f"{_CURSOR_PREFIX}*"):
            if path.suffix == ".tmp":
                continue
            with contextlib.suppress(ValueError, OSError):
                cursors[path.name[len(_CURSOR_PREFIX) :]] = int(path.read_text().strip())
        return segments, cursors

    def _scan_and_repair(self, path: Path) -> tuple[int, int]:
        """Count the whole records of the active segment and cut a torn tail.

        A record whose checksum fails but that whole records follow, to the end of the file, was damaged in place,
        not torn: it is kept (consumers skip it, counted) so that the records after it are not cut with it."""
        count = 0
        good = 0
        damaged: list[int] = []  # records whose checksum failed
        scanned, scanned_size = 0, 0
        size = path.stat().st_size
        with path.open("rb") as file:
            while True:
                header = file.read(_HEADER.size)
                if len(header) < _HEADER.size:
                    break
                length, crc = _HEADER.unpack(header)
                if not length or scanned_size + _HEADER.size + length > size:
                    break  # torn, zeros a crash left (no payload is empty), or a garbage length: never read it
                payload = file.read(length)
                scanned += 1
                scanned_size += _HEADER.size + length
                if zlib.crc32(payload) != crc:
                    damaged.append(scanned - 1)
                    continue
                count, good = scanned, scanned_size
        if kept := [index for index in damaged if index < count]:
            log.error("spool %s: records %s of %s are damaged; consumers will skip them", self.name, kept, path.name)
        if good != size:
            log.warning("spool %s: cutting a torn tail of %s after %d records", self.name, path.name, count)
            os.truncate(path, good)
        return count, good

    # -- reading ---------------------------------------------------------------------------------------------

    def _read_sync(self, start: int, limit: int, segments: list[_Segment]) -> list[Record]:
        records: list[Record] = []
        seq = start
        for segment in segments:
            if seq >= segment.end or len(records) >= limit:
                continue
            position = segment.first
            try:
                with segment.path.open("rb") as file:
                    while position < segment.end and len(records) < limit:
                        header = file.read(_HEADER.size)
                        if len(header) < _HEADER.size:
                            break
                        length, crc = _HEADER.unpack(header)
                        if position < seq:
                            file.seek(length, os.SEEK_CUR)
                        else:
                            payload = file.read(length)
                            # The disk changed it: never decoded as if whole.
                            damaged = len(payload) < length or zlib.crc32(payload) != crc
                            records.append(Record(position, payload, None, position < self._recovered_end, damaged))
                        position += 1
            except OSError as exc:
                log.error("spool %s: cannot read %s: %s", self.name, segment.path.name, exc)
            if position < segment.end and len(records) < limit:
                # Cut short or gone: what it no longer holds is handed out as damaged, so consumers move past it.
                log.error("spool %s: %s lacks records %d-%d", self.name, segment.path.name, position, segment.end - 1)
                for missing in range(max(position, seq), segment.end):
                    if len(records) >= limit:
                        break
                    records.append(Record(missing, b"", None, missing < self._recovered_end, True))
            if records:
                seq = max(seq, records[-1].id + 1)
        return records

    async def _read(self, start: int, max_records: int) -> list[Record]:
        cache_start = self._cache[0].id if self._cache else self._next
        if start >= cache_start:
            index = start - cache_start
            return [self._cache[i] for i in range(index, min(len(self._cache), index + max_records))]
        limit = min(max_records, cache_start - start)
        snapshot = [_Segment(s.first, s.path, s.count, s.size) for s in self._segments if s.end > start]
        return await asyncio.to_thread(self._read_sync, start, limit, snapshot)

    def _trim_cache(self) -> None:
        slowest = min((consumer.position for consumer in self._consumers.values()), default=self._next)
        cache = self._cache
        while cache and (cache[0].id < slowest or self._cache_bytes > self._cache_limit):
            self._cache_bytes -= len(cache.popleft().payload)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_for_records(self, position: int) -> None:
        while position >= self._next and not self._closing:
            await self._changed.wait()

    # -- bookkeeping -----------------------------------------------------------------------------------------

    def bytes_between(self, start: int, end: int) -> int:
        """Bytes of records [start, end), estimated within a segment from its average record size."""
        total = 0
        for segment in self._segments:
            low, high = max(start, segment.first), min(end, segment.end)
            if high > low and segment.count:
                total += segment.size * (high - low) // segment.count
        return total

    async def _maintain(self) -> None:
        interval = min(self._cursor_interval, self._fsync_interval)
        while True:
            await asyncio.sleep(interval)
            try:
                if self._fsync == "interval" and self._unsynced:
                    await self._on_writer(self._fsync_active)
                await self._persist_cursors()
                await self._delete_consumed()
            except Exception:
                log.exception("spool %s: maintenance failed; will retry", self.name)

    def _fsync_active(self) -> None:
        self._unsynced = False
        if self._active_fd is not None:
            os.fsync(self._active_fd)

    async def _persist_cursors(self) -> None:
        dirty = {name: c.committed for name, c in self._consumers.items() if c.committed != c.persisted}
        if not dirty:
            return
        await self._on_maintainer(self._write_cursors_sync, dirty)
        for name, committed in dirty.items():
            self._consumers[name].persisted = committed

    def _write_cursors_sync(self, cursors: dict[str, int]) -> None:
        for name, committed in cursors.items():
            path = self.directory / f"{_CURSOR_PREFIX}{name}"
            tmp = path.with_suffix(".tmp")
            with tmp.open("w") as file:
                file.write(str(committed))
                if self._fsync == "always":
                    file.flush()
                    os.fsync(file.fileno())
            os.replace(tmp, path)
        if self._fsync == "always":
            self._sync_directory()

    async def _delete_consumed(self) -> None:
        if not self._consumers:
            return
        safe = min(consumer.persisted for consumer in self._consumers.values())
        doomed = [segment for segment in self._segments[:-1] if segment.end <= safe]
        if not doomed:
            return
        discarded = await self._on_maintainer(self._set_aside, [segment.path for segment in doomed])
        self._segments = self._segments[len(doomed) :]
        self._used -= sum(segment.size for segment in doomed)
        self._notify()  # appenders waiting for room may try again
        if discarded:
            self._freeing = asyncio.get_running_loop().run_in_executor(
                self._freer, _free_gradually, discarded, self._free_step_bytes, self._hurry
            )
            self._freeing.add_done_callback(self._freed)

    def _freed(self, freeing: asyncio.Future[None]) -> None:
        if not freeing.cancelled() and (exc := freeing.exception()) is not None:
            # Renamed out of the log already: only the space waits, and the next start removes what is left.
            log.warning("spool %s: could not free consumed segments: %s", self.name, exc)

    async def _finish_freeing(self) -> None:
        """Wait until every consumed segment set aside so far has been freed (or has failed to be)."""
        if self._freeing is not None:
            await asyncio.wait((self._freeing,))

    def _set_aside(self, paths: list[Path]) -> list[Path]:
        """Rename consumed segments out of the log (durably with ``always``), to be freed at leisure."""
        discarded = []
        for path in paths:
            target = path.with_suffix(_DISCARD_SUFFIX)
            with contextlib.suppress(FileNotFoundError):
                os.replace(path, target)
                discarded.append(target)
        if self._fsync == "always":
            self._sync_directory()
        return discarded

    def _close_sync(self) -> None:
        if self._active_fd is not None:
            if self._fsync != "never":
                os.fsync(self._active_fd)
            os.close(self._active_fd)
            self._active_fd = None

    async def _on_writer(self, func: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._writer, func, *args)

    async def _on_maintainer(self, func: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._maintainer, func, *args)


def _free_gradually(paths: list[Path], step: int, hurry: threading.Event) -> None:
    """Give back each file's space ``step`` bytes at a time, ``_FREE_PAUSE_SECONDS`` apart (no pause once ``hurry``
    is set: the log is closing), then unlink it."""
    for path in paths:
        if step <= 0:
            path.unlink(missing_ok=True)
            continue
        try:
            fd = os.open(path, os.O_WRONLY)
        except FileNotFoundError:
            continue
        try:
            size = os.fstat(fd).st_size
            while size > step:
                size -= step
                os.ftruncate(fd, size)
                hurry.wait(_FREE_PAUSE_SECONDS)
        finally:
            os.close(fd)
        path.unlink(missing_ok=True)


class LocalConsumer:
    def __init__(self, log: LocalLog, name: str, start: int) -> None:
        self.name = name
        self._log = log
        self.position = start  # next record to hand out
        self.committed = start  # every record below it is acknowledged
        self.persisted = start  # what the cursor file says
        self._acked: set[int] = set()

    async def read(self, max_records: int) -> list[Record]:
        log = self._log
        await log._wait_for_records(self.position)
        if log._closing:
            return []
        records = await log._read(self.position, max_records)
        if records:
            self.position = records[-1].id + 1
            log._trim_cache()
        return records

    async def ack(self, records: Sequence[Record]) -> None:
        acked = self._acked
        acked.update(record.id for record in records)
        committed = self.committed
        while committed in acked:
            acked.discard(committed)
            committed += 1
        self.committed = committed

    async def refresh(self) -> None:
        return None

    def backlog(self) -> tuple[int, int]:
        end = self._log._next
        return end - self.committed, self._log.bytes_between(self.committed, end)
