"""A kelemetry-py source that tails kube-apiserver audit log files, for clusters where the audit webhook cannot
be configured (``--audit-log-path`` with ``--audit-log-format=json``: one audit event per line).

Settings (``plugins.settings.audit-log``):

- ``path``: the audit log file, or a list of them (one cluster per source instance);
- ``cluster``: the cluster name the events belong to (default: the top-level ``cluster``);
- ``offsets_file``: where read positions are kept across restarts (default: ``auditlog-offsets.json`` beside
  the embedded store's database);
- ``start_at``: ``beginning`` (default) or ``end``, for a file seen for the first time;
- ``poll_interval_seconds``: how often a quiet file is checked (default 1).

Events go through the same audit filter, redaction and conversion as the webhook's, so the spans are the same.
A batch's read position is saved only after the pipeline accepted the batch: a restart resumes right after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from kelemetry_auditlog_source.tailer import Chunk, Cursor, TailedFile
from kelemetry_py.config import records_wanted
from kelemetry_py.plugins import ObservationSink, SourceContext
from kelemetry_py.sources.audit import AuditConverter, AuditEvent, InvalidAuditBatch, parse_event

__all__ = ["AuditLogSource", "Cursor", "OffsetStore", "TailedFile"]

logger = logging.getLogger(__name__)


class OffsetStore:
    """Read positions per file path, in a small JSON file replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Cursor]:
        try:
            document = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.error("audit-log offsets %s unreadable (%s); starting over", self.path, exc)
            return {}
        files = document.get("files") if isinstance(document, dict) else None
        cursors: dict[str, Cursor] = {}
        for name, value in (files or {}).items():
            cursor = Cursor.from_json(value)
            if cursor is not None:
                cursors[name] = cursor
        return cursors

    def save(self, cursors: dict[str, Cursor]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        document = {"version": 1, "files": {name: cursor.to_json() for name, cursor in cursors.items()}}
        with temporary.open("w") as handle:
            json.dump(document, handle)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(self.path)


class AuditLogSource:
    name = "audit-log"

    def __init__(
        self,
        *,
        path: str | Sequence[str] = (),
        cluster: str = "",
        offsets_file: str = "",
        start_at: str = "beginning",
        poll_interval_seconds: float = 1.0,
    ) -> None:
        paths = [path] if isinstance(path, str) else list(path)
        self.paths = [Path(item) for item in paths if item]
        if start_at not in ("beginning", "end"):
            raise ValueError(f"start_at must be 'beginning' or 'end', not {start_at!r}")
        if poll_interval_seconds <= 0:
            raise ValueError(f"poll_interval_seconds must be greater than 0, not {poll_interval_seconds}")
        self.cluster = cluster
        self.offsets_file = offsets_file
        self.start_at_end = start_at == "end"
        self.poll_interval = poll_interval_seconds
        self.bad_lines = 0
        self.events_read = 0
        self._passes = 0  # completed polls that found every file at its end
        self._progress = asyncio.Condition()

    async def run(self, sink: ObservationSink, context: SourceContext) -> None:
        if not self.paths:
            logger.warning("audit-log source enabled without a path (plugins.settings.audit-log.path); idle")
            return
        converter = AuditConverter(
            context.config.audit, context.config.redaction, records=records_wanted(context.config)
        )
        cluster = self.cluster or context.default_cluster
        offsets_path = Path(self.offsets_file or Path(context.config.store.path).parent / "auditlog-offsets.json")
        store = OffsetStore(offsets_path)
        saved = await asyncio.to_thread(store.load)
        cursors = dict(saved)
        files = [TailedFile(path, saved.get(str(path)), start_at_end=self.start_at_end) for path in self.paths]
        try:
            while not context.stopping.is_set():
                for tailed in files:
                    while not context.stopping.is_set():
                        chunk = await asyncio.to_thread(tailed.read)
                        if chunk is None:
                            break
                        await self._deliver(chunk, cluster, converter, sink, tailed)
                        tailed.commit(chunk)
                        cursors[str(tailed.path)] = chunk.after
                        await asyncio.to_thread(store.save, cursors)
                async with self._progress:
                    self._passes += 1
                    self._progress.notify_all()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(context.stopping.wait(), self.poll_interval)
        finally:
            for tailed in files:
                tailed.close()

    async def caught_up(self) -> None:
        """Wait until a whole poll that began after this call found nothing left to read."""
        async with self._progress:
            target = self._passes + 2
            await self._progress.wait_for(lambda: self._passes >= target)

    async def _deliver(
        self, chunk: Chunk, cluster: str, converter: AuditConverter, sink: ObservationSink, tailed: TailedFile
    ) -> None:
        events: list[AuditEvent] = []
        for line in chunk.lines:
            try:
                events.append(parse_event(line))
            except InvalidAuditBatch as exc:
                self.bad_lines += 1
                logger.warning("%s: skipped a line that is not an audit event (%s): %.200r", tailed.path, exc, line)
        self.events_read += len(events)
        observations = converter.convert(cluster, events)
        if observations:
            await sink.submit(observations, wait=True)
