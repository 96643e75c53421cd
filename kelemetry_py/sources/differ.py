"""The object differ: every watched change becomes a diff (or a create/delete snapshot) in the diff cache.

Audit spans claim the diff of the resourceVersion their response carries (:mod:`kelemetry_py.sources.diffs`);
a change nobody claims within ``kube.diff_hold_seconds`` is emitted as its own ``diff`` observation,
attributed to the field manager found in ``managedFields``. A change is held until it is claimed or its
emission has been accepted, in memory bounded by ``kube.diff_pending_max_bytes``, and in the state file
(:mod:`kelemetry_py.sources.differstate`) when one is configured. A change seen by a (re)list rather than a
watch event happened while nobody watched: its diff span is tagged ``observedLate``.

Diff format (DESIGN §3): :class:`Change` ``{path, op, old, new}`` plus one rendered line per change. Lists of
dicts that all carry a distinct ``name`` (containers, env, ports, volumes...) or ``type`` (conditions) are
matched by that key, so paths read ``spec.template.spec.containers[nginx].image`` and
``status.conditions[Available].status``.

Memory: per watched object the differ keeps its redacted state without managedFields as zlib-compressed JSON,
the resourceVersion, the uid and a tuple summarising managedFields (who wrote when) — nothing else; a warm
standby keeps exactly the same. Objects that changed recently (watched changes and creations, not lists) keep
their state as uncompressed JSON per top-level field instead (:class:`HotStates`), within
``kube.diff_hot_state_max_bytes`` for all of them: the next change of a hot object is diffed without a decompress
or a compress, parsing only the fields whose JSON changed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import sys
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, ClassVar

import orjson

from kelemetry_py.config import RedactionConfig
from kelemetry_py.kube.watch import ResourceType, handled_by, version_number
from kelemetry_py.metrics import Metrics
from kelemetry_py.model import Attributes, LogEntry, ObjectRef, Observation
from kelemetry_py.pipeline import ObservationSink
from kelemetry_py.sources.diffcache import Change, DiffCache, DiffRecord, RecordKind
from kelemetry_py.sources.differstate import DifferStateStore
from kelemetry_py.sources.diffing import ITEM_MARKER as _ITEM
from kelemetry_py.sources.diffing import diff_segments
from kelemetry_py.sources.diffing import strip_bookkeeping as strip_bookkeeping  # importers of it from here
from kelemetry_py.sources.redaction import redactor_for

log = logging.getLogger(__name__)

MAX_RENDERED_VALUE = 300

# ---------------------------------------------------------------------------------------------------- diffing


def _shortened(text: str) -> str:
    return text[: MAX_RENDERED_VALUE - 1] + "…" if len(text) > MAX_RENDERED_VALUE else text


def _render_value(value: Any) -> str:
    return _shortened(orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode())


def render_change(change: Change) -> str:
    """``spec.replicas 2 -> 4``; ``metadata.labels.tier added "web"``; ``...removed (was "web")``."""
    op = change.op
    if op == "change":
        # Inline for the usual short values (no more bytes than characters allowed, so none is cut): a call per
        # value cost more than encoding it.
        old = orjson.dumps(change.old, option=orjson.OPT_SORT_KEYS)
        new = orjson.dumps(change.new, option=orjson.OPT_SORT_KEYS)
        if len(old) <= MAX_RENDERED_VALUE >= len(new):
            return f"{change.path} {old.decode()} -> {new.decode()}"
        return f"{change.path} {_shortened(old.decode())} -> {_shortened(new.decode())}"
    if op == "add":
        return f"{change.path} added {_render_value(change.new)}"
    return f"{change.path} removed (was {_render_value(change.old)})"


def compute_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    """The changes from ``old`` to ``new`` (redact both first), sorted by path; bookkeeping fields ignored."""
    return [change for _, change in diff_segments(old, new)]


# ------------------------------------------------------------------------------------------------ attribution

ManagerSummary = tuple[tuple[str, str, str, str], ...]  # (manager, operation, subresource, time)


def summarize_managers(obj: Mapping[str, Any]) -> ManagerSummary:
    entries = (obj.get("metadata") or {}).get("managedFields") or []
    return tuple([_summary(e) for e in entries if isinstance(e, dict)])


_SUMMARIES: dict[tuple[Any, ...], tuple[str, str, str, str]] = {}
_MAX_SUMMARIES = 4096  # bounded; forgotten at once when full


def _summary(entry: Mapping[str, Any]) -> tuple[str, str, str, str]:
    # One shared tuple of interned strings per distinct entry: a few managers and timestamps repeat across every
    # watched object and every update of it, so the tuple is looked up rather than built from four str/intern calls.
    get = entry.get
    raw = (get("manager", ""), get("operation", ""), get("subresource", ""), get("time", ""))
    try:
        found = _SUMMARIES.get(raw)
    except TypeError:  # an unhashable value: not from the apiserver, but summarised all the same
        found = None
    if found is None:
        found = (sys.intern(str(raw[0])), sys.intern(str(raw[1])), sys.intern(str(raw[2])), sys.intern(str(raw[3])))
        if type(raw[0]) is str and type(raw[1]) is str and type(raw[2]) is str and type(raw[3]) is str:
            if len(_SUMMARIES) >= _MAX_SUMMARIES:
                _SUMMARIES.clear()
            _SUMMARIES[found] = found
    return found


@functools.lru_cache(maxsize=4096)
def _item_key(key: str) -> dict[str, Any] | None:
    """The identity of a list item in ``fieldsV1`` (``k:{"type":"Ready"}``); the same few recur on every object."""
    try:
        item = orjson.loads(key[2:])
    except orjson.JSONDecodeError:
        return None
    return item if isinstance(item, dict) else None


# Changed paths as a tree of their segments, so that a ``fieldsV1`` set is walked once for all of them. A node is
# [children by segment, paths through or ending at it, paths ending at it] (a list: built for every diff).
_PathTree = list[Any]


def _path_tree(changed: Sequence[Sequence[Any]]) -> _PathTree:
    root: _PathTree = [{}, len(changed), 0]
    for segments in changed:
        node = root
        for segment in segments:
            child = node[0].get(segment)
            if child is None:
                child = node[0][segment] = [{}, 0, 0]
            child[1] += 1
            node = child
        node[2] += 1
    return root


def _ownership(node: Any, paths: _PathTree, depth: int = 0) -> tuple[int, int]:
    """For the changed ``paths`` below ``node`` (a ``fieldsV1`` set at ``depth``): how many it owns (or an enclosing
    atomic field of them), and the sum of how many leading segments of each it owns: a removed field has no owner
    left; the owner of its siblings likely removed it.
    """
    children, _, ends = paths
    covered = ends
    nearby = ends * depth
    for segment, below in children.items():
        count = below[1]
        nearby += count * depth
        if not isinstance(node, dict):
            continue
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
            if depth > 0 or any(k.startswith(("k:", "v:", "i:")) for k in node):
                covered += count
            continue
        else:
            child = node.get(f"f:{segment}")
        if child is None:
            # An owned leaf without children is an atomic field: its owner owns everything inside it.
            if depth > 0 and not any(k != "." for k in node):
                covered += count
            continue
        nearby -= count * depth  # counted again, deeper, below
        owned, near = _ownership(child, below, depth + 1)
        covered += owned
        nearby += near
    return covered, nearby


class _OwnershipMemo:
    """What :func:`_ownership` found, per changed paths and ``fieldsV1`` (as JSON). Both recur: a kubelet's field
    set is the same on every Pod of a template and on each of its status updates, which change the same fields.
    Bounded by bytes; forgotten at once when full."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._found: dict[tuple[tuple[Any, ...], ...], dict[bytes, tuple[int, int]]] = {}

    def for_paths(self, changed: tuple[tuple[Any, ...], ...]) -> dict[bytes, tuple[int, int]]:
        """What is known for these changed paths, by ``fieldsV1``: read it, and :meth:`put` into it."""
        found = self._found.get(changed)
        if found is None:
            self._make_room()
            found = self._found[changed] = {}
            self.bytes += 100 * (1 + sum(len(segments) for segments in changed))
        return found

    def put(self, known: dict[bytes, tuple[int, int]], fields: bytes, owned: tuple[int, int]) -> None:
        self._make_room()
        known[fields] = owned
        self.bytes += len(fields) + 100

    def _make_room(self) -> None:
        if self.bytes > self.max_bytes:
            self._found.clear()
            self.bytes = 0


_OWNED = _OwnershipMemo(4 * 1024 * 1024)


@functools.lru_cache(maxsize=1024)
def _roots(firsts: frozenset[Any]) -> frozenset[str] | None:
    """The ``fieldsV1`` keys of the changed top-level fields, if all are plain names; a few recur on every change."""
    if all(type(first) is str and not first.startswith(_ITEM) for first in firsts):
        return frozenset(f"f:{first}" for first in firsts)
    return None


def attribute(
    previous: ManagerSummary,
    obj: Mapping[str, Any],
    changed: Sequence[Sequence[Any]],
    managers: ManagerSummary | None = None,
) -> tuple[str, str]:
    """(field manager, operation) that most plausibly made this change.

    Preference: the entry owning most of the changed fields, then the one owning most of their parents, then
    an entry new or re-timed since the previous state, then the newest ``time``. Ownership comes first because
    a write through a subresource (``kubectl scale``) re-times no entry, while the status writer's is newer.
    ``managers``: ``summarize_managers(obj)``, when the caller has it already.
    """
    entries = [e for e in (obj.get("metadata") or {}).get("managedFields") or [] if isinstance(e, dict)]
    if not entries:
        return "", ""
    if managers is None:
        managers = tuple(_summary(entry) for entry in entries)
    known = _OWNED.for_paths(tuple(map(tuple, changed)))
    # The top-level fields changed: a set owning none of them owns nothing changed (unless the whole object is).
    # (Only plain field names: an empty path is the whole object, and an item key is matched differently.)
    roots = _roots(frozenset(map(itemgetter(0), changed))) if all(changed) else None
    paths: _PathTree | None = None
    best: tuple[tuple[int, int, int, str], dict[str, Any]] | None = None
    for entry, summary in zip(entries, managers, strict=True):
        fields = entry.get("fieldsV1")
        if not changed or (roots is not None and type(fields) is dict and roots.isdisjoint(fields)):
            # A create (nobody owns what did not change), or a set that owns none of the changed fields.
            fields_json: bytes | None = None
            owned: tuple[int, int] | None = (0, 0)
        else:
            try:
                fields_json = orjson.dumps(fields)
            except orjson.JSONEncodeError:
                fields_json = None
            owned = None if fields_json is None else known.get(fields_json)
        if owned is None:
            if paths is None:
                paths = _path_tree(changed)
            owned = _ownership(fields, paths)
            if fields_json is not None:
                _OWNED.put(known, memoryview(fields_json).tobytes(), owned)
        covered, nearby = owned
        score = (covered, nearby, int(summary not in previous), summary[3])
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
    tags: Attributes = {
        "fieldManager": record.field_manager,
        "operation": record.operation,
        "resourceVersion": record.resource_version,
        "change": record.kind,
    }
    if record.late:
        tags["observedLate"] = True
    return Observation(
        ref=record.ref,
        kind="diff",
        title=title,
        start_ns=record.time_ns,
        end_ns=record.time_ns,
        tags=tags,
        logs=[record_log_entry(record, record.time_ns)],
        body=record.snapshot if record.kind == "create" else None,
        dedup_key=f"diff/{record.resource_version}",
    )


# ------------------------------------------------------------------------------------------------ the differ

RelationLearner = Callable[[ObjectRef, Mapping[str, Any]], Awaitable[None]]


Sections = dict[str, bytes]  # an object's top-level fields, each as JSON


def encode_sections(obj: Mapping[str, Any], previous: Sections | None = None) -> Sections:
    """``obj``'s sections; those equal to ``previous``'s are ``previous``'s own bytes objects."""
    sections: Sections = {}
    for key, value in obj.items():
        encoded = orjson.dumps(value)
        before = previous.get(key) if previous is not None else None
        # Copied when new: orjson's own result keeps a buffer of at least 4 KiB, however short the JSON.
        sections[key] = before if before == encoded else memoryview(encoded).tobytes()
    return sections


def join_sections(sections: Sections) -> bytes:
    """The object's JSON, byte for byte what ``orjson.dumps`` makes of it whole."""
    return b"{" + b",".join(orjson.dumps(key) + b":" + value for key, value in sections.items()) + b"}"


@dataclass(slots=True)
class _State:
    uid: str
    resource_version: str
    blob: bytes  # zlib(orjson(redacted object without bookkeeping)); empty while ``sections`` hold it
    managers: ManagerSummary
    sections: Sections | None = None  # while the state is hot (see HotStates)

    def load(self) -> dict[str, Any]:
        loaded: dict[str, Any] = orjson.loads(self.encoded())
        return loaded

    def diff_base(self, new: Mapping[str, Any], new_sections: Sections | None) -> dict[str, Any]:
        """This state as an object to diff ``new`` against. Sections whose JSON did not change (``new_sections``
        from :func:`encode_sections` against these) are ``new``'s own values: the diff skips them by identity,
        without parsing or comparing them."""
        if self.sections is None or new_sections is None:
            return self.load()
        return {
            key: new[key] if new_sections.get(key) is value else orjson.loads(value)
            for key, value in self.sections.items()
        }

    def encoded(self) -> bytes:
        return zlib.decompress(self.blob) if self.sections is None else join_sections(self.sections)

    def compressed(self) -> bytes:
        return self.blob if self.sections is None else zlib.compress(self.encoded(), 1)

    def cool(self) -> None:
        if self.sections is not None:
            self.blob = self.compressed()
            self.sections = None


class HotStates:
    """The states of recently changed objects, kept as JSON per top-level field rather than compressed, bounded
    by bytes.

    An object that changes is likely to change again soon (a Pod's kubelet, a rollout's ReplicaSets): its next
    diff then needs no decompress (nor a compress before it), and parses and walks only the fields whose JSON
    changed (``status``, not ``spec``). Past ``max_bytes`` the least recently changed states are compressed, as
    every state not in here is.
    """

    # Beyond the JSON: per section its bytes object and dict slot; per entry this tier's slot and the dict.
    SECTION_OVERHEAD: ClassVar[int] = 100
    ENTRY_OVERHEAD: ClassVar[int] = 200

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._states: dict[str, tuple[_State, int]] = {}  # least recently admitted first

    def __len__(self) -> int:
        return len(self._states)

    @classmethod
    def cost(cls, sections: Sections) -> int:
        return cls.ENTRY_OVERHEAD + cls.SECTION_OVERHEAD * len(sections) + sum(map(len, sections.values()))

    def admit(self, key: str, state: _State) -> None:
        """Keep ``state`` (hot) as ``key``'s newest, compressing the least recent past the bound."""
        self.discard(key)
        assert state.sections is not None
        cost = self.cost(state.sections)
        if cost > self.max_bytes:
            state.cool()
            return
        self._states[key] = (state, cost)
        self.bytes += cost
        while self.bytes > self.max_bytes:
            oldest = next(iter(self._states))
            evicted, evicted_cost = self._states.pop(oldest)
            self.bytes -= evicted_cost
            evicted.cool()

    def discard(self, key: str) -> None:
        """``key``'s state is replaced or gone: stop counting it (it is not compressed)."""
        entry = self._states.pop(key, None)
        if entry is not None:
            self.bytes -= entry[1]


@dataclass(slots=True)
class _Held:
    """A change waiting for its audit span to claim it (or, on a standby, for the leader to handle it)."""

    deadline: float
    record: DiffRecord
    size: int
    resource: str


def resource_of(ref: ObjectRef) -> str:
    """The ``resource.group`` a progress mark is kept under (as :attr:`ResourceType.group_resource`)."""
    return f"{ref.resource}.{ref.group}" if ref.group else ref.resource


class ObjectDiffer:
    """A :class:`kelemetry_py.kube.watch.WatchHandler` that records diffs and emits the unclaimed ones.

    Leadership is per cluster. A cluster's leader stores each change in the diff cache (for audit spans to
    claim) and emits what nobody claimed once ``hold_seconds`` have passed; it keeps every change until it is
    claimed or its emission has been accepted. A standby (``stand_by``) keeps the same state and the same held
    changes without storing or emitting them, drops those the leader reports handled (``trim``), and on
    ``take_over`` hands the rest on, so a change made while nobody led is still shown.
    """

    def __init__(
        self,
        sink: ObservationSink,
        metrics: Metrics,
        cache: DiffCache,
        *,
        redaction: RedactionConfig | None = None,
        claim_wait_seconds: float = 3.0,
        margin_seconds: float = 1.0,
        hold_seconds: float | None = None,
        max_pending_bytes: int = 64 * 1024 * 1024,
        hot_state_bytes: int = 16 * 1024 * 1024,
        state: DifferStateStore | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock_ns: Callable[[], int] = time.time_ns,
        learn: RelationLearner | None = None,
    ) -> None:
        self._sink = sink
        # Relations an object's watch state carries go straight to the object graph: on first sight (a list at
        # start, on any replica) and when its ownerReferences or annotations change; its later windows link from
        # that even in clusters without the audit webhook.
        self._learn = learn
        self._metrics = metrics
        self._cache = cache
        self._redaction = redaction or RedactionConfig()
        self._redactor = redactor_for(self._redaction)
        # Never shorter than an audit span's own wait for the diff, or a slow watch would lose the race.
        self._hold = max(hold_seconds or 0.0, claim_wait_seconds + margin_seconds)
        self._max_pending_bytes = max_pending_bytes
        self._persisted = state
        self._clock = clock
        self._wall_clock_ns = wall_clock_ns
        self._states: dict[str, _State] = {}
        self._hot = HotStates(hot_state_bytes)
        self._held: dict[str, deque[_Held]] = {}
        self._held_bytes = 0
        self._pending_added = asyncio.Event()
        metrics.watch_held_bytes.labels("objects").set_function(lambda: self._held_bytes)
        self._standby: set[str] = set()
        # Per cluster and resource, the newest resourceVersion whose change (and every earlier one) is handled.
        self._handled: dict[str, dict[str, str]] = {}
        self.dropped = 0  # held changes a standby let go past the byte bound
        # Write-behind for the state file: what changed since the last persist().
        self._dirty: dict[str, _State | None] = {}
        self._held_added: list[tuple[str, float, DiffRecord]] = []
        self._held_removed: list[tuple[str, str]] = []

    def _redact(self, obj: dict[str, Any], resource: str) -> Mapping[str, Any]:
        # A copy only when something is stripped; most objects hold nothing secret and are never mutated here.
        return self._redactor.redact(obj, resource)

    @property
    def watched_objects(self) -> int:
        return len(self._states)

    @property
    def hot_state_bytes(self) -> int:
        """What the uncompressed states of recently changed objects cost (estimated), within their bound."""
        return self._hot.bytes

    @property
    def pending(self) -> int:
        return sum(len(queue) for queue in self._held.values())

    @property
    def pending_bytes(self) -> int:
        return self._held_bytes

    def leads(self, cluster: str) -> bool:
        return cluster not in self._standby


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
        managers = summarize_managers(obj)
        key = ref.key
        previous = self._states.get(key)
        # Hot: anything the watch (not a list) shows, since more changes are likely to follow, including the first
        # change seen of an object this differ had not listed. A listed object stays compressed.
        hot = not relisted and event_type in ("ADDED", "MODIFIED")
        known = previous.sections if hot and previous is not None else None
        redactor = self._redactor
        sections: Sections | None = None
        if known is not None and not redactor.needs(obj, rtype.resource, specs_redacted=True):
            # Encoded before redaction: a pod spec whose JSON is the previous (redacted) state's has no env value
            # left to redact, which spares walking its containers' env on every status update.
            clean = strip_bookkeeping(obj)
            sections = encode_sections(clean, known)
            same_specs = sections.get("spec") is known.get("spec") and sections.get("template") is known.get("template")
            if not same_specs and redactor.needs(obj, rtype.resource):
                clean = strip_bookkeeping(redactor.redact(obj, rtype.resource))
                sections = encode_sections(clean, known)
        else:
            clean = strip_bookkeeping(self._redact(obj, rtype.resource))
            sections = encode_sections(clean, known) if hot else None

        if event_type == "DELETED":
            self._forget(key)
            await self._record(ref, rv, "delete", obj, clean, late=relisted)
            return
        if event_type not in ("ADDED", "MODIFIED"):
            raise ValueError(f"unknown watch event type {event_type!r}")

        if sections is not None:
            state = _State(uid, rv, b"", managers, sections)
            self._hot.admit(key, state)
        else:
            state = _State(uid, rv, zlib.compress(orjson.dumps(clean), 1), managers)
            self._hot.discard(key)
        self._states[key] = state
        if self._persisted is not None:
            self._dirty[key] = state
        if self._learn is not None and (previous is None or previous.uid != uid):
            await self._learn(ref, clean)
        if previous is not None and previous.uid == uid:
            if previous.resource_version != rv:
                # A change a (re)list shows happened while nobody watched (a gap, or a restart over a saved state).
                base = previous.diff_base(clean, sections)
                await self._record_diff(ref, rv, base, previous.managers, clean, obj, managers, late=relisted)
        elif previous is not None or (event_type == "ADDED" and not relisted):
            # A new object, or one replaced by a namesake (a relist after a gap): show it whole.
            await self._record(ref, rv, "create", obj, clean, late=relisted)

    def _forget(self, key: str) -> None:
        self._states.pop(key, None)
        self._hot.discard(key)
        if self._persisted is not None:
            self._dirty[key] = None

    async def on_relist_done(self, cluster: str, rtype: ResourceType, present_uids: set[str]) -> None:
        """Objects the differ knew that a fresh list no longer has were deleted while the watch was down."""
        prefix = f"{cluster}/{rtype.group}/{rtype.resource}/"
        gone = [
            (key, state)
            for key, state in self._states.items()
            if key.startswith(prefix) and state.uid not in present_uids
        ]
        for key, state in gone:
            self._forget(key)
            ref = ObjectRef.from_key(key, rtype.version, state.uid)
            # No watch event saw the deletion, so no resourceVersion of it exists for an audit span to name.
            gone_rv = f"{state.resource_version}+deleted"
            await self._record(ref, gone_rv, "delete", {}, state.load(), late=True)

    # ---- recording

    async def _record_diff(
        self,
        ref: ObjectRef,
        rv: str,
        base: Mapping[str, Any],
        previous_managers: ManagerSummary,
        clean: Mapping[str, Any],
        obj: Mapping[str, Any],
        managers: ManagerSummary,
        *,
        late: bool = False,
    ) -> None:
        """The change from ``base`` (the previous state, see :meth:`_State.diff_base`) to ``clean``."""
        found = diff_segments(base, clean, stripped=True)
        if not found:
            return
        if self._learn is not None and any(
            segments[:1] == ["metadata"] and segments[1:2] in (["ownerReferences"], ["annotations"])
            for segments, _ in found
        ):
            await self._learn(ref, clean)
        changed, changes = zip(*found, strict=True)  # the paths, and the changes
        manager, operation = attribute(previous_managers, obj, changed, managers)
        record = DiffRecord(
            ref=ref,
            resource_version=rv,
            kind="diff",
            time_ns=self._wall_clock_ns(),
            field_manager=manager,
            operation=operation,
            changes=changes,
            lines=tuple(map(render_change, changes)),
            late=late,
        )
        await self._store(record)

    async def _record(
        self,
        ref: ObjectRef,
        rv: str,
        kind: RecordKind,
        obj: Mapping[str, Any],
        snapshot: dict[str, Any],
        *,
        late: bool = False,
    ) -> None:
        """A create or delete: ``snapshot`` is the redacted object without bookkeeping. The record keeps it as it
        is: the differ's own state is JSON, and nothing mutates an object once the watch has handed it over."""
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
            late=late,
        )
        await self._store(record)

    async def _store(self, record: DiffRecord) -> None:
        cluster = record.ref.cluster
        if self.leads(cluster):
            await self._cache.put(record)
        self._hold_record(cluster, record, self._clock() + self._hold)
        self._pending_added.set()
        while self._held_bytes > self._max_pending_bytes and self._held.get(cluster):
            # Bounded: a leader emits its oldest unclaimed changes early rather than forgetting them; a standby
            # lets go of its oldest, which the leader holds too.
            if self.leads(cluster):
                await self._emit(cluster, limit=1)
            else:
                self._release(cluster, self._held[cluster].popleft())
                self.dropped += 1
                self._metrics.watch_held_dropped.labels("objects").inc()

    def _hold_record(self, cluster: str, record: DiffRecord, deadline: float) -> None:
        held = _Held(deadline, record, record.size_bytes(), resource_of(record.ref))
        queue = self._held.get(cluster)
        if queue is None:  # not setdefault: that builds a deque (and its first block) for every change
            queue = self._held[cluster] = deque()
        queue.append(held)
        self._held_bytes += held.size
        if self._persisted is not None:
            self._held_added.append((cluster, time.time() + (deadline - self._clock()), record))

    def _release(self, cluster: str, held: _Held) -> None:
        """``held`` has left the queue (claimed, emitted, or handled by the leader)."""
        self._held_bytes -= held.size
        handled = self._handled.get(cluster)
        if handled is None:
            handled = self._handled[cluster] = {}
        handled[held.resource] = held.record.resource_version
        if self._persisted is not None:
            self._held_removed.append((held.record.object_key, held.record.resource_version))

    # ---- unclaimed diffs

    async def flush_unclaimed(self, now: float | None = None) -> int:
        """Emit each change whose claim window has passed and that nobody claimed, on the clusters this replica
        leads; returns how many. A failure leaves the changes held, to be tried again."""
        now = self._clock() if now is None else now
        emitted = 0
        for cluster in list(self._held):
            while self.leads(cluster) and (queue := self._held[cluster]) and queue[0].deadline <= now:
                emitted += await self._emit(cluster, due=now)
        return emitted

    async def _emit(self, cluster: str, *, due: float = math.inf, limit: int = 500) -> int:
        """Emit the first held changes (up to ``limit``, deadline at or before ``due``) nobody claimed."""
        queue = self._held.get(cluster)
        if not queue:
            return 0
        batch: list[_Held] = []
        for held in queue:
            if held.deadline > due or len(batch) >= limit:
                break
            batch.append(held)
        if not batch:
            return 0
        cache = self._cache
        claimed = [
            held.record
            for held in batch
            if await cache.claim(held.record.object_key, held.record.resource_version, "differ")
        ]
        if claimed:
            await self._sink.submit([record_observation(record) for record in claimed], wait=True)
            for record in claimed:
                await cache.confirm(record.object_key, record.resource_version)
        for _ in batch:
            self._release(cluster, queue.popleft())
        return len(claimed)

    def _next_deadline(self) -> float | None:
        heads = [queue[0].deadline for cluster, queue in self._held.items() if queue and self.leads(cluster)]
        return min(heads) if heads else None

    async def run(self, sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        """Emit unclaimed changes as their windows pass, until cancelled."""
        while True:
            deadline = self._next_deadline()
            if deadline is None:
                self._pending_added.clear()
                await self._pending_added.wait()
                continue
            delay = deadline - self._clock()
            if delay > 0:
                await sleep(delay)
            try:
                await self.flush_unclaimed()
            except Exception:
                log.exception("emitting unclaimed diffs failed; they stay held and are retried")
                await sleep(1.0)

    # ---- leadership (see kelemetry_py.sources.watchers)

    def stand_by(self, cluster: str) -> None:
        """Keep watching ``cluster`` but leave storing and emitting its changes to the leader."""
        self._standby.add(cluster)

    def progress(self, cluster: str) -> dict[str, str]:
        """Per resource, the newest resourceVersion up to which every change of ``cluster`` is handled."""
        marks = dict(self._handled.get(cluster, {}))
        # Changes are released in arrival order, which a relist does not keep in resourceVersion order: a mark
        # never passes a change still held.
        lowest: dict[str, int] = {}
        for held in self._held.get(cluster, ()):
            number = version_number(held.record.resource_version)
            if number is not None and number < lowest.get(held.resource, number + 1):
                lowest[held.resource] = number
        for resource, number in lowest.items():
            mark = version_number(marks.get(resource, ""))
            if mark is not None and mark >= number:
                marks[resource] = str(number - 1)
        return marks

    def trim(self, cluster: str, marks: Mapping[str, str]) -> int:
        """Let go of held changes the leader's ``marks`` say are handled; returns how many."""
        queue = self._held.get(cluster)
        if not queue:
            return 0
        kept: deque[_Held] = deque()
        for held in queue:
            if handled_by(held.record.resource_version, marks.get(held.resource)):
                self._release(cluster, held)
            else:
                kept.append(held)
        trimmed = len(queue) - len(kept)
        self._held[cluster] = kept
        return trimmed

    async def take_over(self, cluster: str, marks: Mapping[str, str]) -> int:
        """Lead ``cluster``: every held change after the previous leader's ``marks`` becomes claimable and is
        emitted if nobody claims it. Returns how many changes are resumed."""
        self.trim(cluster, marks)
        self._standby.discard(cluster)
        resumed = list(self._held.get(cluster, ()))
        for held in resumed:
            await self._cache.put(held.record)
        self._pending_added.set()
        return len(resumed)

    # ---- the state file (one replica restarting without loss)

    async def restore(self) -> int:
        """Load the state and held changes saved by :meth:`persist`: the first list after a restart is diffed
        against them. Returns how many objects were restored."""
        if self._persisted is None:
            return 0
        states, held = await self._persisted.load()
        for key, (uid, rv, blob, managers) in states.items():
            self._states[key] = _State(uid, rv, blob, managers)
        now_wall, now = time.time(), self._clock()
        for cluster, deadline_wall, record in held:
            self._hold_record(cluster, record, now + max(0.0, deadline_wall - now_wall))
            if self.leads(cluster):
                await self._cache.put(record)
        self._held_added.clear()  # they are in the file already
        self._pending_added.set()
        return len(states)

    async def persist(self) -> None:
        """Write what changed since the last call to the state file (write-behind, off the event loop)."""
        if self._persisted is None or not (self._dirty or self._held_added or self._held_removed):
            return
        dirty, self._dirty = self._dirty, {}
        added, self._held_added = self._held_added, []
        removed, self._held_removed = self._held_removed, []
        states = {
            key: None if state is None else (state.uid, state.resource_version, state.compressed(), state.managers)
            for key, state in dirty.items()
        }
        try:
            await self._persisted.save(states, added, removed)
        except BaseException:
            # Not written: keep it for the next attempt (newer changes win over the older ones put back).
            self._dirty = {**dirty, **self._dirty}
            self._held_added[:0] = added
            self._held_removed[:0] = removed
            raise

    async def persist_forever(self, interval_seconds: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval_seconds)
            try:
                await self.persist()
            except Exception:
                log.exception("saving the differ state failed; retrying")
