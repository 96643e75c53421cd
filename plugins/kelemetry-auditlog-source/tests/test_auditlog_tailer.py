"""TailedFile and OffsetStore on real files: partial lines, rename and copytruncate rotation, restarts."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from kelemetry_auditlog_source import OffsetStore, TailedFile


def drain(tailed: TailedFile) -> list[bytes]:
    """Every line the tailer has for now, committing as the source does."""
    lines: list[bytes] = []
    while (chunk := tailed.read()) is not None:
        lines.extend(chunk.lines)
        tailed.commit(chunk)
    return lines


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as handle:
        handle.write(data)


def test_complete_lines_only(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(b'{"n":1}\n{"n":2')
    tailed = TailedFile(log, None)
    assert drain(tailed) == [b'{"n":1}']
    append(log, b'}\n\n{"n":3}\n')
    assert drain(tailed) == [b'{"n":2}', b'{"n":3}']
    assert tailed.cursor is not None and tailed.cursor.offset == log.stat().st_size
    tailed.close()


def test_rename_rotation_reads_the_old_file_to_its_end_first(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(b"a\nb\n")
    tailed = TailedFile(log, None)
    assert drain(tailed) == [b"a", b"b"]
    append(log, b"c\n")  # written just before the rotation, not yet read
    log.rename(tmp_path / "audit-2026-11-21T05-26-14.123.log")
    assert drain(tailed) == [b"c"]  # the new file is not there yet
    log.write_bytes(b"d\n")
    assert drain(tailed) == [b"d"]
    append(log, b"e\n")
    assert drain(tailed) == [b"e"]
    tailed.close()


def test_copytruncate_starts_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(b"one\ntwo\n")
    tailed = TailedFile(log, None)
    assert drain(tailed) == [b"one", b"two"]
    (tmp_path / "audit.log.1").write_bytes(log.read_bytes())
    with log.open("r+b") as handle:
        handle.truncate(0)
    append(log, b"3\n")
    with caplog.at_level(logging.INFO):
        assert drain(tailed) == [b"3"]
    assert any("truncated" in record.getMessage() for record in caplog.records)
    tailed.close()


def test_restart_resumes_after_the_last_commit_even_across_a_rotation(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    store = OffsetStore(tmp_path / "state" / "offsets.json")
    log.write_bytes(b"1\n2\n")
    first = TailedFile(log, None)
    assert drain(first) == [b"1", b"2"]
    assert first.cursor is not None
    store.save({str(log): first.cursor})
    first.close()
    # While stopped: more lines, a rotation, and lines in the new file.
    append(log, b"3\n")
    log.rename(tmp_path / "audit.log.1")
    log.write_bytes(b"4\n")
    second = TailedFile(log, store.load()[str(log)])
    assert drain(second) == [b"3", b"4"]
    second.close()


def test_a_rotated_file_that_is_gone_is_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(b"1\n")
    first = TailedFile(log, None)
    drain(first)
    cursor = first.cursor
    first.close()
    log.unlink()
    log.write_bytes(b"x" * 40 + b"\n")  # a new file (new inode) larger than the old offset
    with caplog.at_level(logging.WARNING):
        assert drain(TailedFile(log, cursor)) == [b"x" * 40]
    assert any("lost" in record.getMessage() for record in caplog.records)


def test_start_at_end_skips_history(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(b"old\n")
    tailed = TailedFile(log, None, start_at_end=True)
    assert drain(tailed) == []
    append(log, b"new\n")
    assert drain(tailed) == [b"new"]
    tailed.close()


def test_lines_longer_than_one_read(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    long_line = b"y" * 100
    log.write_bytes(long_line + b"\nz\n")
    tailed = TailedFile(log, None, read_bytes=16)
    assert drain(tailed) == [long_line, b"z"]
    tailed.close()


def test_unreadable_offsets_start_over(tmp_path: Path) -> None:
    path = tmp_path / "offsets.json"
    path.write_text("{not json")
    assert OffsetStore(path).load() == {}
    files = {"/a": {"device": 1, "inode": 2, "offset": -5}, "/b": {"device": 1, "inode": 2, "offset": 3}}
    path.write_text(json.dumps({"files": files}))
    assert list(OffsetStore(path).load()) == ["/b"]


def test_copytruncate_that_grew_past_the_old_offset_is_noticed(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(b"first\n")
    tailed = TailedFile(log, None)
    assert drain(tailed) == [b"first"]
    with log.open("r+b") as handle:
        handle.truncate(0)
    append(log, b"second line, longer than the first\n")
    assert drain(tailed) == [b"second line, longer than the first"]
    tailed.close()
