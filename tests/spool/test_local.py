"""The local durable log on a real directory: order, per-consumer progress, restarts, torn tails, bounds."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

from kelemetry_py.spool import Record, RecordTooLarge, SpoolFull, local
from kelemetry_py.spool.local import LocalLog


def _segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def _set_aside(directory: Path) -> list[Path]:
    """Consumed segments renamed out of the log and not yet freed."""
    return sorted(directory.glob("*.discard"))


def _cursor(directory: Path, consumer: str) -> int:
    return int((directory / f"cursor-{consumer}").read_text())


def _bytes_on_disk(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.iterdir())


def _log(directory: Path, **options: object) -> LocalLog:
    settings: dict[str, object] = {"max_bytes": 1 << 20, "segment_bytes": 256, "cursor_interval_seconds": 0.01}
    settings.update(options)
    return LocalLog(directory, name="test", **settings)  # type: ignore[arg-type]


async def _drain(consumer: object, count: int) -> list[bytes]:
    out: list[bytes] = []
    while len(out) < count:
        records = await consumer.read(count - len(out))  # type: ignore[attr-defined]
        out.extend(record.payload for record in records)
        await consumer.ack(records)  # type: ignore[attr-defined]
    return out


async def test_each_consumer_reads_everything_in_order_at_its_own_pace(tmp_path: Path) -> None:
    log = _log(tmp_path)
    await log.open()
    fast, slow = log.consumer("fast"), log.consumer("slow")
    payloads = [f"record-{i}".encode() * 5 for i in range(50)]  # spans several 256-byte segments
    for payload in payloads:
        await log.append([payload], [payload.decode()])
    assert await _drain(fast, 50) == payloads
    assert fast.backlog()[0] == 0
    assert slow.backlog()[0] == 50 and slow.backlog()[1] > 0
    first = await slow.read(10)
    assert [record.payload for record in first] == payloads[:10]
    await log.close()


async def test_records_not_acknowledged_come_back_after_a_restart_marked_replayed(tmp_path: Path) -> None:
    log = _log(tmp_path)
    await log.open()
    consumer = log.consumer("writer")
    for i in range(30):
        await log.append([f"r{i}".encode()])
    done = await consumer.read(10)
    await consumer.ack(done)
    await consumer.read(10)  # read but never acknowledged: the process "dies" here
    await log.close()

    again = _log(tmp_path)
    await again.open()
    consumer = again.consumer("writer")
    assert consumer.backlog()[0] == 20
    records = await consumer.read(100)
    assert [record.payload for record in records] == [f"r{i}".encode() for i in range(10, 30)]
    assert all(record.replayed and record.value is None for record in records)
    await again.append([b"new"])
    (fresh,) = await consumer.read(1)
    assert fresh.payload == b"new" and not fresh.replayed
    await again.close()


async def test_a_torn_tail_is_cut_and_appends_continue(tmp_path: Path) -> None:
    log = _log(tmp_path, segment_bytes=1 << 20)
    await log.open()
    await log.append([b"whole-1", b"whole-2"])
    await log.close()
    (segment,) = _segments(tmp_path)
    with segment.open("ab") as file:
        file.write(b"\x40\x00\x00\x00\x01\x02\x03\x04half a rec")  # a header promising 64 bytes, and 10 of them
    again = _log(tmp_path, segment_bytes=1 << 20)
    await again.open()
    await again.append([b"after"])
    assert await _drain(again.consumer("c"), 3) == [b"whole-1", b"whole-2", b"after"]
    await again.close()


async def test_consumed_segments_are_deleted_once_every_cursor_is_persisted(tmp_path: Path) -> None:
    log = _log(tmp_path)
    await log.open()
    a, b = log.consumer("a"), log.consumer("b")
    for i in range(40):
        await log.append([b"x" * 60 + str(i).encode()])
    segments_before = len(_segments(tmp_path))
    used_before = log.used_bytes()
    assert segments_before > 3
    await _drain(a, 40)
    await log._persist_cursors()
    await log._delete_consumed()
    assert len(_segments(tmp_path)) == segments_before  # b still needs them
    await _drain(b, 40)
    await log._persist_cursors()
    await log._delete_consumed()
    assert len(_segments(tmp_path)) == 1  # the active segment stays
    await log._finish_freeing()
    assert not _set_aside(tmp_path)
    assert log.used_bytes() < used_before
    await log.close()


async def test_large_consumed_segments_are_freed_whole(tmp_path: Path) -> None:
    """Segments larger than one freeing step (they are given back a few MiB at a time) leave nothing behind."""
    log = _log(tmp_path, max_bytes=64 << 20, segment_bytes=9 << 20)
    await log.open()
    consumer = log.consumer("c")
    payloads = [bytes([i]) * (1 << 20) for i in range(30)]
    for payload in payloads:
        await log.append([payload])
    assert len(_segments(tmp_path)) >= 3
    assert await _drain(consumer, len(payloads)) == payloads
    await log._persist_cursors()
    await log._delete_consumed()
    assert len(_segments(tmp_path)) == 1
    await log._finish_freeing()
    assert not _set_aside(tmp_path)
    assert _bytes_on_disk(tmp_path) < 10 << 20  # the active segment alone
    await log.close()


async def test_freeing_consumed_segments_holds_up_neither_cursors_nor_appends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Giving a segment's space back takes a while (steps apart): meanwhile cursor files are written, appends kept
    and later segments set aside as usual, and close waits for the freeing."""
    release = threading.Event()
    freed: list[Path] = []

    def held_free(paths: list[Path], step: int, hurry: threading.Event) -> None:
        release.wait()
        freed.extend(paths)
        for path in paths:
            path.unlink()

    monkeypatch.setattr(local, "_free_gradually", held_free)
    log = _log(tmp_path)
    await log.open()
    consumer = log.consumer("a")
    try:
        for i in range(20):
            await log.append([b"x" * 60 + str(i).encode()])
        await _drain(consumer, 20)
        await log._persist_cursors()
        # Each wait_for guards against a hang; no time is being measured.
        await asyncio.wait_for(log._delete_consumed(), timeout=10)  # its freeing is held
        assert _set_aside(tmp_path)
        for i in range(20):  # appends, cursor files and another round of setting aside, all while it is held
            await log.append([b"y" * 60 + str(i).encode()])
        await _drain(consumer, 20)
        await asyncio.wait_for(log._persist_cursors(), timeout=10)
        assert _cursor(tmp_path, "a") == consumer.committed
        await asyncio.wait_for(log._delete_consumed(), timeout=10)
        assert len(_segments(tmp_path)) == 1
        assert not freed
    finally:
        release.set()
        await log.close()
    assert freed and not _set_aside(tmp_path)


async def test_a_segment_set_aside_but_not_yet_freed_is_gone_after_a_restart(tmp_path: Path) -> None:
    """A process that ends while a consumed segment is being freed leaves it renamed and part-truncated: the next
    start removes it and never reads it as part of the log, even for a consumer with no cursor yet."""
    log = _log(tmp_path)
    await log.open()
    consumer = log.consumer("a")
    payloads = [b"x" * 60 + str(i).encode() for i in range(40)]
    for payload in payloads:
        await log.append([payload])
    assert await _drain(consumer, 40) == payloads
    await log._persist_cursors()
    first, *kept = _segments(tmp_path)
    (discarded,) = log._set_aside([first])  # the first step of freeing it, then the process ends
    os.truncate(discarded, discarded.stat().st_size // 2)
    await log.close()

    again = _log(tmp_path)
    await again.open()
    assert not _set_aside(tmp_path)
    assert _segments(tmp_path) == kept
    late = again.consumer("late")
    records = await late.read(100)
    assert [record.payload for record in records] == payloads[len(payloads) - len(records) :]
    assert not any(record.damaged for record in records)
    await again.close()


async def test_a_full_log_refuses_appends_and_never_drops_what_it_holds(tmp_path: Path) -> None:
    log = _log(tmp_path, max_bytes=400)
    await log.open()
    consumer = log.consumer("c")
    with pytest.raises(RecordTooLarge):
        await log.append([b"y" * 500])
    kept = [f"{i:02d}".encode() * 20 for i in range(12)]
    accepted = []
    with pytest.raises(SpoolFull):
        for payload in kept:
            await log.append([payload])
            accepted.append(payload)
    assert 0 < len(accepted) < len(kept)
    assert await _drain(consumer, len(accepted)) == accepted
    await log.close()


async def test_a_bound_below_the_segment_size_still_frees_what_was_consumed(tmp_path: Path) -> None:
    """spool.max_bytes set below spool.segment_bytes: a log whose consumer keeps up must never stay full."""
    log = _log(tmp_path, max_bytes=4096, segment_bytes=64 << 20)
    await log.open()
    consumer = log.consumer("c")
    # Five times the bound, some records nearly as large as a record may be (three quarters of the bound).
    payloads = [bytes([i]) * (3000 if i % 3 == 0 else 500) for i in range(30)]
    for payload in payloads:
        await log.append([payload])
        assert await _drain(consumer, 1) == [payload]
        await log._persist_cursors()
        await log._delete_consumed()
    assert log.used_bytes() <= 4096
    with pytest.raises(RecordTooLarge):  # it could be refused for good beside the segment being written
        await log.append([b"z" * 3100])
    await log.close()


async def test_with_interval_fsync_a_segment_is_synced_before_it_is_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The interval fsync only reaches the segment being written: an earlier one must have been synced already."""
    synced: set[str] = set()
    fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.add(os.readlink(f"/proc/self/fd/{fd}"))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    log = _log(tmp_path, fsync="interval", fsync_interval_seconds=3600)
    await log.open()
    for i in range(40):
        await log.append([b"x" * 60 + str(i).encode()])
    closed = _segments(tmp_path)[:-1]
    assert len(closed) > 3
    assert {str(path) for path in closed} <= synced
    await log.close()


async def test_concurrent_appends_share_commits_and_keep_their_order_per_caller(tmp_path: Path) -> None:
    log = _log(tmp_path, segment_bytes=1 << 20)
    await log.open()
    consumer = log.consumer("c")

    async def writer(name: str) -> None:
        for i in range(20):
            await log.append([f"{name}-{i}".encode()])

    await asyncio.gather(*(writer(name) for name in "abcd"))
    seen = [payload.decode() for payload in await _drain(consumer, 80)]
    for name in "abcd":
        mine = [int(item.split("-")[1]) for item in seen if item.startswith(name)]
        assert mine == list(range(20))
    await log.close()


def _damage(segment: Path, record: int) -> None:
    """Flip a byte in the payload of the segment's ``record``-th record, as a failing disk would."""
    data = bytearray(segment.read_bytes())
    offset = 0
    for _ in range(record):
        offset += 8 + int.from_bytes(data[offset : offset + 4], "little")
    data[offset + 8] ^= 0xFF
    segment.write_bytes(bytes(data))


async def test_a_record_damaged_on_disk_is_read_as_damaged_and_the_records_after_it_are_kept(tmp_path: Path) -> None:
    log = _log(tmp_path, segment_bytes=1 << 20)
    await log.open()
    payloads = [f"record-{i}".encode() for i in range(5)]
    await log.append(payloads)
    await log.close()
    (segment,) = _segments(tmp_path)
    _damage(segment, 2)  # in the segment being written: the restart must not take it for a torn tail
    again = _log(tmp_path, segment_bytes=1 << 20)
    await again.open()
    records = await again.consumer("c").read(10)
    assert [record.payload for record in records if not record.damaged] == [p for i, p in enumerate(payloads) if i != 2]
    assert [record.damaged for record in records] == [False, False, True, False, False]
    await again.close()


async def test_a_crash_that_leaves_zeros_at_the_end_is_a_torn_tail(tmp_path: Path) -> None:
    log = _log(tmp_path, segment_bytes=1 << 20)
    await log.open()
    await log.append([b"whole"])
    await log.close()
    (segment,) = _segments(tmp_path)
    with segment.open("ab") as file:
        file.write(bytes(64))  # the file grew, its data never reached the disk
    again = _log(tmp_path, segment_bytes=1 << 20)
    await again.open()
    consumer = again.consumer("c")
    assert [record.payload for record in await consumer.read(10)] == [b"whole"]
    assert segment.stat().st_size == 8 + len(b"whole")
    with pytest.raises(ValueError):
        await again.append([b""])
    await again.close()


async def test_a_segment_cut_short_or_gone_is_read_past_as_damaged_records(tmp_path: Path) -> None:
    log = _log(tmp_path)
    await log.open()
    payloads = [b"x" * 60 + str(i).encode() for i in range(40)]
    for payload in payloads:
        await log.append([payload])
    await log.close()
    sealed = _segments(tmp_path)[:-1]
    assert len(sealed) >= 3
    with sealed[0].open("r+b") as file:
        file.truncate(sealed[0].stat().st_size // 2)
    sealed[1].unlink()
    again = _log(tmp_path)
    await again.open()
    consumer = again.consumer("c")
    records: list[Record] = []
    async with asyncio.timeout(10):  # a hang detector: a consumer that skipped ids waits for ever
        while len(records) < 40:
            records.extend(await consumer.read(7))
    assert [record.id for record in records] == list(range(40))
    damaged = {record.id for record in records if record.damaged}
    assert damaged and max(damaged) < 40 - 3  # at least the last segment's records are whole
    assert all(record.payload == payloads[record.id] for record in records if record.id not in damaged)
    await again.close()
