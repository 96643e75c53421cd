"""The data every stage shares: object references, observations (what sources emit) and raw spans.

Sources produce :class:`Observation`; the pipeline turns them into :class:`Span`; span writers and trace
readers move spans in and out of storage. Nothing here knows about OpenTelemetry or Kubernetes clients.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

AttrValue = str | bool | int | float | list[str]
Attributes = dict[str, AttrValue]

# Services of raw spans (DESIGN §3).
SERVICE_OBJECT = "object"
SERVICE_AUDIT = "audit"
SERVICE_EVENT = "event"
SERVICE_LINK = "link"
SERVICE_DIFF = "diff"
# The kind of an observation that only carries a search record (e.g. an audit event the audit filter does not
# trace): the pipeline hands it to record consumers and makes no span of it.
KIND_RECORD = "record"

# Tags every raw span carries so that any span can be found by the object it belongs to.
OBJECT_TAGS = ("cluster", "group", "version", "resource", "namespace", "name")


@dataclass(frozen=True, slots=True)
class _ObjectRefFields:
    cluster: str
    group: str
    version: str
    resource: str
    namespace: str
    name: str
    uid: str = field(default="", compare=False)


class ObjectRef(_ObjectRefFields):
    """A Kubernetes object, identified across clusters. ``uid`` and ``version`` are not part of the key."""

    # ``cluster/group/resource/namespace/name`` with ``%`` and ``/`` escaped inside each part, so two different
    # objects never share a key (``ns=x/y name=z`` vs ``ns=x name=y/z``). Parts without those characters (every
    # valid Kubernetes name) read as before, so span ids of real objects are unchanged.
    # Every stage asks for it, several times per observation: a slot outside the dataclass fields (neither encoded
    # nor compared), filled on first use by ``__getattr__``, so that each later read is a plain attribute read.
    __slots__ = ("key",)
    key: str

    if not TYPE_CHECKING:  # to the type checker, ``key`` is the attribute above and nothing else is dynamic

        def __getattr__(self, name: str) -> Any:
            if name != "key":
                raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
            key = self._make_key()
            object.__setattr__(self, "key", key)
            return key

    def _make_key(self) -> str:
        joined = f"{self.cluster}/{self.group}/{self.resource}/{self.namespace}/{self.name}"
        if joined.count("/") == 4 and "%" not in joined:  # the usual case: nothing to escape
            return joined
        return "/".join(
            _escape_part(part) for part in (self.cluster, self.group, self.resource, self.namespace, self.name)
        )

    @classmethod
    def from_key(cls, key: str, version: str = "", uid: str = "") -> ObjectRef:
        parts = key.split("/")
        if len(parts) != 5:
            raise ValueError(f"not an object key: {key!r}")
        cluster, group, resource, namespace, name = (_unescape_part(part) for part in parts)
        return cls(cluster, group, version, resource, namespace, name, uid)

    def tags(self) -> Attributes:
        tags: Attributes = {
            "cluster": self.cluster,
            "group": self.group,
            "version": self.version,
            "resource": self.resource,
            "namespace": self.namespace,
            "name": self.name,
        }
        if self.uid:
            tags["uid"] = self.uid
        return tags

    def __str__(self) -> str:
        return self.key


_ESCAPED = re.compile("%(25|2F)")


def _escape_part(part: str) -> str:
    if "%" in part or "/" in part:
        return part.replace("%", "%25").replace("/", "%2F")
    return part


def _unescape_part(part: str) -> str:
    if "%" in part:
        return _ESCAPED.sub(lambda match: "/" if match.group(1) == "2F" else "%", part)
    return part


@dataclass(slots=True)
class LogEntry:
    """A timestamped record on a span (an OTLP span event). ``name`` says what it is: audit, diff, snapshot..."""

    time_ns: int
    name: str
    fields: Attributes = field(default_factory=dict)


@dataclass(slots=True, kw_only=True)
class Observation:
    """One thing a source saw happen to one object. Sources know nothing about spans."""

    ref: ObjectRef
    kind: str  # "audit", "event", "diff", or a plugin source's name; becomes the span's service
    title: str
    start_ns: int
    end_ns: int
    tags: Attributes = field(default_factory=dict)
    logs: list[LogEntry] = field(default_factory=list)
    error: str | None = None  # set: the span gets status ERROR with this message
    # The (already redacted) object state the observation carries, for linkers and decorators. Never exported.
    body: Mapping[str, Any] | None = None
    # A stable identity (audit ID, event uid + count, ...): the same observation seen twice gets the same span id.
    dedup_key: str | None = None
    # The resourceVersion the request produced, so diffs recorded by the object differ can be attached.
    resource_version: str | None = None
    # The source record (an audit.k8s.io/v1 Event or a core/v1 Event), redacted and lean, for the search index and
    # alert rules. Plain data, so the durable log can encode it; set only when search or alerting is enabled.
    record: dict[str, Any] | None = None


@dataclass(slots=True, kw_only=True)
class Span:
    """A raw span as written: the common currency of span writers and trace readers."""

    trace_id: int  # 128 bit
    span_id: int  # 64 bit
    parent_id: int | None
    service: str
    name: str
    start_ns: int
    end_ns: int
    attributes: Attributes = field(default_factory=dict)
    logs: list[LogEntry] = field(default_factory=list)
    error: bool = False
    status_message: str = ""

    @property
    def trace_id_hex(self) -> str:
        return f"{self.trace_id:032x}"

    @property
    def span_id_hex(self) -> str:
        return f"{self.span_id:016x}"


LinkRole = Literal["parent", "child"]


@dataclass(frozen=True, slots=True)
class Link:
    """``target`` is related to the object a linker looked at; ``role`` is the target's role (its parent/child)."""

    target: ObjectRef
    role: LinkRole
    link_class: str


# Empty personalised hashers, copied for each id: a copy costs 0.4 µs where a new hasher, its keyword arguments
# parsed again, cost 1 µs (every observation's span id is one).
_TRACE_HASHER = hashlib.blake2b(digest_size=16, person=b"kelemetry-trace")
_OBJECT_SPAN_HASHER = hashlib.blake2b(digest_size=8, person=b"kelemetry-objspn")
_CHILD_SPAN_HASHER = hashlib.blake2b(digest_size=8, person=b"kelemetry-child")


def _digest(text: str, empty: hashlib.blake2b) -> int:
    hasher = empty.copy()
    hasher.update(text.encode())
    return int.from_bytes(hasher.digest(), "big") or 1  # an all-zero id is invalid in OTLP


def window_of(time_ns: int, window_seconds: int) -> int:
    return time_ns // 1_000_000_000 // window_seconds


def object_trace_id(object_key: str, window: int) -> int:
    """Every replica derives the same trace id for an object's window without asking anyone."""
    return _digest(f"{object_key}\x00{window}", _TRACE_HASHER)


def object_span_id(object_key: str, window: int) -> int:
    return _digest(f"{object_key}\x00{window}", _OBJECT_SPAN_HASHER)


def child_span_id(trace_id: int, identity: str) -> int:
    """A deterministic id for a child span, so a re-delivered observation overwrites rather than duplicates."""
    return _digest(f"{trace_id:032x}\x00{identity}", _CHILD_SPAN_HASHER)
