"""The object differ: every watched change becomes a diff (or a create/delete snapshot) in the diff cache.

Audit spans claim the diff of the resourceVersion their response carries (:mod:`kelemetry_py.sources.diffs`);
a change nobody claims within ``kube.diff_wait_seconds`` (plus a margin) is emitted as its own ``diff``
observation, attributed to the field manager found in ``managedFields``.

Diff format (DESIGN §3): :class:`Change` ``{path, op, old, new}`` plus one rendered line per change. Lists of
dicts that all carry a distinct ``name`` (containers, env, ports, volumes...) or ``type`` (conditions) are
matched by that key, so paths read ``spec.template.spec.containers[nginx].image`` and
``status.conditions[Available].status``.

Memory: per watched object the differ keeps its redacted state without managedFields as zlib-compressed JSON,
the resourceVersion, the uid and a tuple summarising managedFields (who wrote when) — nothing else.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from kelemetry_py.config import RedactionConfig
from kelemetry_py.kube.watch import ResourceType
from kelemetry_py.metrics import Metrics
from kelemetry_py.model import LogEntry, ObjectRef, Observation
from kelemetry_py.pipeline import ObservationSink
from kelemetry_py.sources.diffcache import Change, DiffCache, DiffRecord, RecordKind
from kelemetry_py.sources.diffing import ITEM_MARKER as _ITEM
from kelemetry_py.sources.diffing import diff_segments
from kelemetry_py.sources.diffing import strip_bookkeeping as strip_bookkeeping  # importers of it from here
from kelemetry_py.sources.redaction import redact

log = logging.getLogger(__name__)

MAX_RENDERED_VALUE = 300

# ---------------------------------------------------------------------------------------------------- diffing


def _render_value(value: Any) -> str:
    text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    if len(text) > MAX_RENDERED_VALUE:
        text = text[: MAX_RENDERED_VALUE - 1] + "…"
    return text


def render_change(change: Change) -> str:
    """``spec.replicas 2 -> 4``; ``metadata.labels.tier added "web"``; ``...removed (was "web")``."""
    if change.op == "add":
        return f"{change.path} added {_render_value(change.new)}"
    if change.op == "remove":
        return f"{change.path} removed (was {_render_value(change.old)})"
    return f"{change.path} {_render_value(change.old)} -> {_render_value(change.new)}"


def _diff_segments(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[list[Any], Change]]:
    return diff_segments(old, new)


def compute_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    """The changes from ``old`` to ``new`` (redact both first), sorted by path; bookkeeping fields ignored."""
    return [change for _, change in _diff_segments(old, new)]


# ------------------------------------------------------------------------------------------------ attribution

ManagerSummary = tuple[tuple[str, str, str, str], ...]  # (manager, operation, subresource, time)


def summarize_managers(obj: Mapping[str, Any]) -> ManagerSummary:
    entries = (obj.get("metadata") or {}).get("managedFields") or []
    return tuple(_summary(e) for e in entries if isinstance(e, dict))


def _summary(entry: Mapping[str, Any]) -> tuple[str, str, str, str]:
    # Interned: a few managers and timestamps repeat across every watched object.
    get = entry.get
    return (
        sys.intern(str(get("manager", ""))),
        sys.intern(str(get("operation", ""))),
        sys.intern(str(get("subresource", ""))),
        sys.intern(str(get("time", ""))),
    )


@functools.lru_cache(maxsize=4096)
def _item_key(key: str) -> dict[str, Any] | None:
    """The identity of a list item in ``fieldsV1`` (``k:{"type":"Ready"}``); the same few recur on every object."""
    try:
        item = orjson.loads(key[2:])
    except orjson.JSONDecodeError:
        return None
    return item if isinstance(item, dict) else None


def _ownership(fields: Any, segments: Sequence[Any]) -> tuple[bool, int]:
    """Whether a ``fieldsV1`` set owns the field at ``segments`` (or an enclosing atomic field), and how many
    leading segments it owns: a removed field has no owner left; the owner of its siblings likely removed it.
    """
    node = fields
    for depth, segment in enumerate(segments):
        if not isinstance(node, dict):
            return False, depth
        child: Any = None
        if isinstance(segment, str) and segment.startswith(_ITEM):
            wanted = segment[1:]
            for key, value in node.items():
                if key.startswith("k:"):
                    item = _item_key(key)
                    if item is not None and wanted in (item.get("name"), item.get("type")):
                        child = value
                        break
        elif isinstance(segment, int):
            # Positional items are owned through their list; owning any item is close enough.
            return any(k.startswith(("k:", "v:", "i:")) for k in node) or depth > 0, depth
        else:
            child = node.get(f"f:{segment}")
        if child is None:
            # An owned leaf without children is an atomic field: its owner owns everything inside it.
            return depth > 0 and not any(k != "." for k in node), depth
        node = child
    return True, len(segments)


def attribute(previous: ManagerSummary, obj: Mapping[str, Any], changed: Sequence[Sequence[Any]]) -> tuple[str, str]:
    """(field manager, operation) that most plausibly made this change.

    Preference: the entry owning most of the changed fields, then the one owning most of their parents, then
    an entry new or re-timed since the previous state, then the newest ``time``. Ownership comes first because
    a write through a subresource (``kubectl scale``) re-times no entry, while the status writer's is newer.
    """
    entries = [e for e in (obj.get("metadata") or {}).get("managedFields") or [] if isinstance(e, dict)]
    if not entries:
        return "", ""
    before = set(previous)
    best: tuple[tuple[int, int, int, str], dict[str, Any]] | None = None
    for entry in entries:
        summary = _summary(entry)
        owned = [_ownership(entry.get("fieldsV1"), segments) for segments in changed]
        covered = sum(1 for full, _ in owned if full)
        nearby = sum(depth for _, depth in owned)
        score = (covered, nearby, int(summary not in before), summary[3])
        if best is None or score > best[0]:
            best = (score, entry)
    assert best is not None
    if changed and best[0][:3] == (0, 0, 0):
        # Nobody owns a changed field and nobody wrote since last time (a binding, a graceful delete):
        # naming the newest writer would be a guess dressed as a fact.
        return "", ""
    return str(best[1].get("manager", "")), str(best[1].get("operation", ""))


# ------------------------------------------------------------------------------------------------ log entries


def record_log_entry(record: DiffRecord, time_ns: int) -> LogEntry:
    """The log an audit span or diff span carries for ``record``: "diff", or "snapshot" for create/delete."""
    if record.is_snapshot:
        return LogEntry(
            time_ns,
            "snapshot",
            {
                "operation": record.kind,
                "snapshot": orjson.dumps(record.snapshot or {}).decode(),
                "resourceVersion": record.resource_version,
            },
        )
    return LogEntry(
        time_ns,
        "diff",
        {
            "diff": "\n".join(record.lines),
            "changes": record.changes_json(),
            "resourceVersion": record.resource_version,
        },
    )


def record_observation(record: DiffRecord) -> Observation:
    """A change no audit span claimed, as its own ``diff`` observation."""
    who = " ".join(part for part in (record.field_manager, record.operation) if part)
    if record.kind == "diff":
        title = who or "unknown change"
    elif record.kind == "create":
        title = f"{record.field_manager or 'unknown'} create"
    else:
        title = "delete"
    return Observation(
        ref=record.ref,
        kind="diff",
        title=title,
        start_ns=record.time_ns,
        end_ns=record.time_ns,
        tags={
            "fieldManager": record.field_manager,
            "operation": record.operation,
            "resourceVersion": record.resource_version,
            "change": record.kind,
        },
        logs=[record_log_entry(record, record.time_ns)],
        body=record.snapshot if record.kind == "create" else None,
        dedup_key=f"diff/{record.resource_version}",
    )


# ------------------------------------------------------------------------------------------------ the differ


@dataclass(slots=True)
class _State:
    uid: str
    resource_version: str
    blob: bytes  # zlib(orjson(redacted object without bookkeeping))
    managers: ManagerSummary

    def load(self) -> dict[str, Any]:
        loaded: dict[str, Any] = orjson.loads(zlib.decompress(self.blob))
        return loaded


class ObjectDiffer:
    """A :class:`kelemetry_py.kube.watch.WatchHandler` that records diffs and emits the unclaimed ones."""

    def __init__(
        self,
        sink: ObservationSink,
        metrics: Metrics,
        cache: DiffCache,
        *,
        redaction: RedactionConfig | None = None,
        claim_wait_seconds: float = 3.0,
        margin_seconds: float = 1.0,
        max_pending: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        wall_clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._sink = sink
        self._metrics = metrics
        self._cache = cache
        self._redaction = redaction or RedactionConfig()
        self._hold = claim_wait_seconds + margin_seconds
        self._max_pending = max_pending
        self._clock = clock
        self._wall_clock_ns = wall_clock_ns
        self._states: dict[str, _State] = {}
        self._pending: deque[tuple[float, DiffRecord]] = deque()
        self._pending_added = asyncio.Event()

    def _redact(self, obj: dict[str, Any], resource: str) -> Mapping[str, Any]:
        # A copy only when something is stripped; most objects hold nothing secret and are never mutated here.
        return redact(obj, resource, self._redaction)

    @property
    def watched_objects(self) -> int:
        return len(self._states)

    @property
    def pending(self) -> int:
        return len(self._pending)

    # ---- WatchHandler

    async def on_event(
        self,
        cluster: str,
        rtype: ResourceType,
        event_type: str,
        obj: dict[str, Any],
        *,
        relisted: bool,
    ) -> None:
        metadata = obj.get("metadata")
        if not isinstance(metadata, dict) or not metadata.get("name"):
            log.debug("ignoring %s %s without metadata.name", event_type, rtype.resource)
            return
        uid = str(metadata.get("uid", ""))
        rv = str(metadata.get("resourceVersion", ""))
        ref = ObjectRef(
            cluster,
            rtype.group,
            rtype.version,
            rtype.resource,
            str(metadata.get("namespace", "")),
            str(metadata["name"]),
            uid,
        )
        clean = strip_bookkeeping(self._redact(obj, rtype.resource))
        managers = summarize_managers(obj)
        previous = self._states.get(ref.key)

        if event_type == "DELETED":
            self._states.pop(ref.key, None)
            await self._record(ref, rv, "delete", obj, previous, snapshot=orjson.loads(orjson.dumps(clean)))
            return
        if event_type not in ("ADDED", "MODIFIED"):
            raise ValueError(f"unknown watch event type {event_type!r}")

        encoded = orjson.dumps(clean)
        self._states[ref.key] = _State(uid, rv, zlib.compress(encoded, 1), managers)
        if previous is not None and previous.uid == uid:
            if previous.resource_version != rv:
                await self._record_diff(ref, rv, previous, clean, obj)
        elif previous is not None or (event_type == "ADDED" and not relisted):
            # A new object, or one replaced by a namesake (a relist after a gap): show it whole.
            await self._record(ref, rv, "create", obj, None, snapshot=orjson.loads(encoded))

    async def on_relist_done(self, cluster: str, rtype: ResourceType, present_uids: set[str]) -> None:
        """Objects the differ knew that a fresh list no longer has were deleted while the watch was down."""
        prefix = f"{cluster}/{rtype.group}/{rtype.resource}/"
        gone = [
            (key, state)
            for key, state in self._states.items()
            if key.startswith(prefix) and state.uid not in present_uids
        ]
        for key, state in gone:
            del self._states[key]
            ref = ObjectRef.from_key(key, rtype.version, state.uid)
            snapshot = state.load()
            # No watch event saw the deletion, so no resourceVersion of it exists for an audit span to name.
            gone_rv = f"{state.resource_version}+deleted"
            await self._record(ref, gone_rv, "delete", {}, None, snapshot=snapshot)

    # ---- recording

    async def _record_diff(
        self, ref: ObjectRef, rv: str, previous: _State, clean: Mapping[str, Any], obj: Mapping[str, Any]
    ) -> None:
        found = _diff_segments(previous.load(), clean)
        if not found:
            return
        manager, operation = attribute(previous.managers, obj, [segments for segments, _ in found])
        changes = tuple(change for _, change in found)
        record = DiffRecord(
            ref=ref,
            resource_version=rv,
            kind="diff",
            time_ns=self._wall_clock_ns(),
            field_manager=manager,
            operation=operation,
            changes=changes,
            lines=tuple(render_change(change) for change in changes),
        )
        await self._store(record)

    async def _record(
        self,
        ref: ObjectRef,
        rv: str,
        kind: RecordKind,
        obj: Mapping[str, Any],
        previous: _State | None,
        *,
        snapshot: dict[str, Any],
    ) -> None:
        manager, operation = ("", "")
        if kind == "create":
            manager, operation = attribute((), obj, [])
        record = DiffRecord(
            ref=ref,
            resource_version=rv,
            kind=kind,
            time_ns=self._wall_clock_ns(),
            field_manager=manager,
            operation=operation,
            snapshot=snapshot,
        )
        await self._store(record)

    async def _store(self, record: DiffRecord) -> None:
        await self._cache.put(record)
        self._pending.append((self._clock() + self._hold, record))
        self._pending_added.set()
        if len(self._pending) > self._max_pending:
            # Bounded: the oldest unclaimed changes are emitted early rather than forgotten.
            await self._emit([self._pending.popleft()[1]])

    # ---- unclaimed diffs

    async def flush_unclaimed(self, now: float | None = None) -> int:
        """Emit each change whose claim window has passed and that nobody claimed; returns how many."""
        now = self._clock() if now is None else now
        due: list[DiffRecord] = []
        while self._pending and self._pending[0][0] <= now:
            due.append(self._pending.popleft()[1])
        return await self._emit(due)

    async def _emit(self, records: Iterable[DiffRecord]) -> int:
        observations = [
            record_observation(record)
            for record in records
            if await self._cache.claim(record.object_key, record.resource_version)
        ]
        if observations:
            await self._sink.submit(observations, wait=True)
        return len(observations)

    async def run(self, sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        """Emit unclaimed changes as their windows pass, until cancelled."""
        while True:
            if not self._pending:
                self._pending_added.clear()
                await self._pending_added.wait()
                continue
            delay = self._pending[0][0] - self._clock()
            if delay > 0:
                await sleep(delay)
            try:
                await self.flush_unclaimed()
            except Exception:
                log.exception("emitting unclaimed diffs failed; retrying at the next deadline")
