"""Following one log file through rotation. Blocking file I/O: call these methods in a worker thread.

Rotation by rename (kube-apiserver's own ``--audit-log-maxsize``/``maxage`` rotation, logrotate's default): the
open handle keeps the old file, which is read to its end before the new file at the path is opened, so the
lines written just before the rename are not lost. Rotation by ``copytruncate``: the file shrinks below the
offset, so reading restarts at 0. Only complete lines are returned; a partial last line waits for its newline.

A cursor also keeps a digest of the file's first bytes: a file that reuses a removed file's inode, or one that
was truncated and grew past the old offset between two polls, does not match it and is read from its start.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

logger = logging.getLogger(__name__)

_HEAD_BYTES = 256


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where reading resumes: a file identity (device, inode, digest of its first bytes) and a byte offset just
    after a complete line."""

    device: int
    inode: int
    offset: int
    head_length: int = 0
    head_digest: str = ""

    def to_json(self) -> dict[str, int | str]:
        return {
            "device": self.device,
            "inode": self.inode,
            "offset": self.offset,
            "head_length": self.head_length,
            "head_digest": self.head_digest,
        }

    @classmethod
    def from_json(cls, value: object) -> Cursor | None:
        if not isinstance(value, dict):
            return None
        fields = [value.get(name) for name in ("device", "inode", "offset")]
        if not all(isinstance(item, int) and item >= 0 for item in fields):
            return None
        device, inode, offset = fields
        assert isinstance(device, int) and isinstance(inode, int) and isinstance(offset, int)
        head_length, head_digest = value.get("head_length", 0), value.get("head_digest", "")
        if not isinstance(head_length, int) or not isinstance(head_digest, str) or not 0 <= head_length <= offset:
            head_length, head_digest = 0, ""
        return cls(device, inode, offset, head_length, head_digest)


@dataclass(frozen=True, slots=True)
class Chunk:
    """Complete lines read, and the cursor to commit once they have been handed on."""

    lines: list[bytes]
    after: Cursor


class TailedFile:
    def __init__(
        self, path: Path, cursor: Cursor | None, *, start_at_end: bool = False, read_bytes: int = 1 << 20
    ) -> None:
        self.path = path
        self.cursor = cursor
        self._start_at_end = start_at_end
        self._read_bytes = read_bytes
        self._handle: BinaryIO | None = None
        self._identity: tuple[int, int] | None = None  # of the open handle

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
            self._identity = None

    def commit(self, chunk: Chunk) -> None:
        self.cursor = chunk.after

    def read(self) -> Chunk | None:
        """The next complete lines, or None when there is nothing new. Call :meth:`commit` before the next read.

        A chunk with no lines only moves the cursor (to a new file after a rotation, or to 0 after a truncation).
        """
        if self._handle is None and not self._open():
            return None
        assert self._handle is not None and self._identity is not None and self.cursor is not None
        if self.cursor.offset and not self._head_matches(self._handle, self.cursor):
            logger.info("%s was truncated and rewritten (copytruncate rotation); reading from its start", self.path)
            return Chunk([], Cursor(*self._identity, 0))
        lines, offset = self._complete_lines(self._handle, self.cursor.offset, final=False)
        if offset != self.cursor.offset:
            return Chunk(lines, self._cursor_at(offset))
        current = _stat(self.path)
        if current is not None and current == self._identity:
            size = os.fstat(self._handle.fileno()).st_size
            if size < self.cursor.offset:
                logger.info("%s was truncated (copytruncate rotation); reading from its start", self.path)
                return Chunk([], Cursor(*self._identity, 0))
            return None
        # Rotated (renamed or removed): whatever the old file got before the rotation is read first, with a
        # last line that lacks its newline kept, since nothing will complete it now.
        lines, offset = self._complete_lines(self._handle, self.cursor.offset, final=True)
        if offset != self.cursor.offset:
            return Chunk(lines, self._cursor_at(offset))
        if current is None:
            return None  # the new file is not there yet
        logger.info("%s was rotated; following the new file", self.path)
        self.close()
        return Chunk([], Cursor(current[0], current[1], 0))

    def _open(self) -> bool:
        """Open the file the cursor points at: the path, or the rotated file still holding unread lines."""
        current = _stat(self.path)
        if self.cursor is None:
            if current is None:
                return False
            size = self.path.stat().st_size if self._start_at_end else 0
            self.cursor = Cursor(current[0], current[1], size)
        wanted = (self.cursor.device, self.cursor.inode)
        if current == wanted:
            if self._open_path(self.path, wanted):
                if self._head_matches(self._handle, self.cursor):
                    return True
                self.close()
        else:
            rotated = _find_by_identity(self.path.parent, wanted)
            if rotated is not None and self._open_path(rotated, wanted):
                if self._head_matches(self._handle, self.cursor):
                    logger.info("%s was rotated to %s while stopped; reading the rest of it first", self.path, rotated)
                    return True
                self.close()
        if current is None:
            return False
        logger.warning(
            "%s: the file read up to byte %d is gone; lines it got after that are lost. Reading %s from its start",
            self.path,
            self.cursor.offset,
            self.path,
        )
        self.cursor = Cursor(current[0], current[1], 0)
        return self._open_path(self.path, current)

    def _cursor_at(self, offset: int) -> Cursor:
        assert self._handle is not None and self._identity is not None and self.cursor is not None
        length = min(_HEAD_BYTES, offset)
        if (self.cursor.device, self.cursor.inode) == self._identity and self.cursor.head_length == length:
            digest = self.cursor.head_digest
        else:
            digest = _digest(self._handle, length)
        return Cursor(*self._identity, offset, length, digest)

    @staticmethod
    def _head_matches(handle: BinaryIO | None, cursor: Cursor) -> bool:
        if handle is None or not cursor.head_length:
            return True
        return _digest(handle, cursor.head_length) == cursor.head_digest

    def _open_path(self, path: Path, identity: tuple[int, int]) -> bool:
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            return False
        stat = os.fstat(handle.fileno())
        if (stat.st_dev, stat.st_ino) != identity:  # replaced between stat and open
            handle.close()
            return False
        self._handle, self._identity = handle, identity
        return True

    def _complete_lines(self, handle: BinaryIO, offset: int, *, final: bool) -> tuple[list[bytes], int]:
        size = self._read_bytes
        while True:
            handle.seek(offset)
            data = handle.read(size)
            end = data.rfind(b"\n") + 1
            if end == 0 and len(data) == size:
                size *= 2  # one line longer than a read: read more
                continue
            if final and end < len(data):
                end = len(data)
            lines = [line for line in data[:end].splitlines() if line.strip()]
            return lines, offset + end


def _digest(handle: BinaryIO, length: int) -> str:
    handle.seek(0)
    return hashlib.blake2b(handle.read(length), digest_size=16).hexdigest()


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


def _find_by_identity(directory: Path, identity: tuple[int, int]) -> Path | None:
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return None
    for entry in entries:
        try:
            stat = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if (stat.st_dev, stat.st_ino) == identity:
            return Path(entry.path)
    return None
