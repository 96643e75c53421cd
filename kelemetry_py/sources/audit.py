"""Audit events (audit.k8s.io/v1) → Observations, as DESIGN §3 describes audit spans."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Annotated, Any, Generic, TypedDict, TypeVar

import msgspec
import orjson

from kelemetry_py.config import AuditConfig, RedactionConfig
from kelemetry_py.metrics import Metrics
from kelemetry_py.model import KIND_RECORD, SERVICE_AUDIT, Attributes, LogEntry, ObjectRef, Observation
from kelemetry_py.sources.redaction import Redactor
from kelemetry_py.times import kube_time_ns as parse_time_ns

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_parse_iso = datetime.fromisoformat
_DENIED = (401, 403)
_PATCH_LOG_LIMIT = 4096
_HEAD = ("apiVersion", "kind", "metadata")  # of a body, what the built-in linkers read


class InvalidAuditBatch(ValueError):
    """The body is not an audit EventList the apiserver would send; the message says why."""


_ABSENT = msgspec.Raw(b"null")

# Decoded from JSON and never pointing back at anything, these structs cannot be part of a reference cycle: the
# cyclic collector need not track them (gc=False), which takes half of what a parsed batch gives it to traverse.


class TracedUser(msgspec.Struct, omit_defaults=True, gc=False):
    username: str = ""


class AuditUser(TracedUser, omit_defaults=True, gc=False):
    uid: str = ""
    groups: list[str] = msgspec.field(default_factory=list)


class AuditObjectRef(msgspec.Struct, omit_defaults=True, gc=False):
    resource: str = ""
    namespace: str = ""
    name: str = ""
    uid: str = ""
    apiGroup: str = ""
    apiVersion: str = ""
    subresource: str = ""


class AuditStatus(msgspec.Struct, omit_defaults=True, gc=False):
    code: int = 0
    status: str = ""
    reason: str = ""
    message: str = ""


class TracedAuditEvent(msgspec.Struct, gc=False):
    """What an audit.k8s.io/v1 Event's span is made of, all that is decoded when no search record is kept: its
    other fields (level, requestURI, annotations, the user's uid and groups: a third of the decoding) are skipped
    over, never built, and so never judged either. The request and response objects stay raw JSON until an event
    is kept."""

    auditID: str
    stage: str
    verb: str
    stageTimestamp: str
    requestReceivedTimestamp: str = ""
    user: TracedUser = msgspec.field(default_factory=TracedUser)
    impersonatedUser: TracedUser | None = None
    sourceIPs: list[str] = msgspec.field(default_factory=list)
    userAgent: str = ""
    objectRef: AuditObjectRef | None = None
    responseStatus: AuditStatus | None = None
    requestObject: msgspec.Raw = _ABSENT
    responseObject: msgspec.Raw = _ABSENT


class AuditEvent(TracedAuditEvent, gc=False):
    """The whole audit.k8s.io/v1 Event, as a search record keeps it."""

    user: AuditUser = msgspec.field(default_factory=AuditUser)
    impersonatedUser: AuditUser | None = None
    level: str = ""
    requestURI: str = ""
    annotations: dict[str, str] | None = None


_Event = TypeVar("_Event", bound=TracedAuditEvent)


class _EventList(msgspec.Struct, Generic[_Event], gc=False):
    kind: str = ""
    apiVersion: str = ""
    items: list[_Event] | None = None


class _Header(msgspec.Struct):
    kind: str = ""
    apiVersion: str = ""


# An integer every later stage can encode (MessagePack, SQLite). A larger one, which no apiserver stores in
# metadata, once went through as it was and failed its whole batch's encoding: its object is read by orjson instead.
_Int64 = Annotated[int, msgspec.Meta(ge=-(1 << 63), le=(1 << 63) - 1)]


class _ObjectMeta(TypedDict, total=False):
    """meta/v1 ObjectMeta as an apiserver stores it (it drops any other field), but for managedFields: often half
    of an object, and never read here. Decoded straight into dicts, in the body's own order, with the types an
    apiserver gives each field: metadata of any other shape is read by orjson, as a whole body is."""

    name: str
    generateName: str
    namespace: str
    selfLink: str
    uid: str
    resourceVersion: str
    generation: _Int64
    creationTimestamp: str
    deletionTimestamp: str
    deletionGracePeriodSeconds: _Int64
    labels: dict[str, str]
    annotations: dict[str, str]
    ownerReferences: list[dict[str, str | bool]]
    finalizers: list[str]
    clusterName: str  # before Kubernetes 1.25


class _Head(TypedDict, total=False):
    apiVersion: Any
    kind: Any
    metadata: _ObjectMeta


_decode_list = msgspec.json.Decoder(_EventList[AuditEvent]).decode
_decode_traced_list = msgspec.json.Decoder(_EventList[TracedAuditEvent]).decode
_decode_head = msgspec.json.Decoder(_Head).decode
_decode_header = msgspec.json.Decoder(_Header).decode
_decode_event = msgspec.json.Decoder(AuditEvent).decode


@dataclass(frozen=True, slots=True)
class Dropped:
    """An event dropped alone for a value Kubernetes would never have accepted, or a body of a shape no apiserver
    sends; ``field`` names where."""

    index: int
    audit_id: str
    field: str
    reason: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """An event of a batch that was dropped alone because a trace cannot represent it."""

    index: int
    reason: str
    message: str


def parse_batch(body: bytes) -> tuple[list[AuditEvent], list[Rejected]]:
    """Decode and check an ``EventList`` body. A malformed body (not JSON, wrong types, nested too deeply) raises
    :class:`InvalidAuditBatch` naming the item and field; events whose values no trace can hold are returned
    apart, so the rest of the batch is kept."""
    return _parse(body, _decode_list)


def parse_traced_batch(body: bytes) -> tuple[list[TracedAuditEvent], list[Rejected]]:
    """:func:`parse_batch` of only what spans are made of (:class:`TracedAuditEvent`), where no record is kept."""
    return _parse(body, _decode_traced_list)


def _parse(body: bytes, decode: Callable[[bytes], _EventList[_Event]]) -> tuple[list[_Event], list[Rejected]]:
    try:
        try:
            document = decode(body)
        except msgspec.DecodeError as exc:
            raise InvalidAuditBatch(_explain(body, exc)) from None  # explaining parses again: same guard
    except RecursionError:
        raise InvalidAuditBatch(f"{_deepest_place(body)}: JSON is nested too deeply") from None
    _check_header(document.kind, document.apiVersion)
    events: list[_Event] = []
    rejected: list[Rejected] = []
    for index, item in enumerate(document.items or []):
        try:
            problem = _unrepresentable(item)
        except ValueError as exc:
            raise InvalidAuditBatch(f"items[{index}]: {exc}") from None
        if problem is None:
            events.append(item)
        else:
            field, reason, message = problem
            rejected.append(Rejected(index, reason, f"items[{index}].{field}: {message}"))
    return events, rejected


_NESTING_LIMIT = 200  # far deeper than any Kubernetes object; msgspec's own limit is higher


def _deepest_place(body: bytes) -> str:
    """``items[i].field`` where an EventList body first nests past any sane depth (the error path only)."""
    stack: list[int] = []
    in_string = escaped = False
    string_start = 0
    last_string = b""
    item = -1
    field = b""
    for position, char in enumerate(body):
        if in_string:
            if escaped:
                escaped = False
            elif char == 0x5C:
                escaped = True
            elif char == 0x22:
                in_string = False
                last_string = body[string_start:position]
            continue
        if char == 0x22:
            in_string, string_start = True, position + 1
        elif char in (0x7B, 0x5B):
            stack.append(char)
            if len(stack) == 3 and stack[1] == 0x5B:
                item += 1
            if len(stack) > _NESTING_LIMIT:
                break
        elif char in (0x7D, 0x5D):
            if stack:
                stack.pop()
        elif char == 0x3A and len(stack) == 3:
            field = last_string
    if item < 0:
        return "body"
    return f"items[{item}].{field.decode(errors='replace')}" if field else f"items[{item}]"


def parse_event_list(body: bytes) -> list[AuditEvent]:
    """The representable events of an ``EventList`` body (see :func:`parse_batch`)."""
    return parse_batch(body)[0]


def parse_event(line: bytes) -> AuditEvent:
    """One audit event as a JSON line (the audit log file's format)."""
    try:
        event = _decode_event(line)
    except RecursionError:
        raise InvalidAuditBatch("not an audit event: nested too deeply") from None
    except msgspec.DecodeError as exc:
        raise InvalidAuditBatch(f"not an audit event: {exc}") from None
    try:
        problem = _unrepresentable(event)
    except ValueError as exc:
        raise InvalidAuditBatch(f"not an audit event: {exc}") from None
    if problem is not None:
        raise InvalidAuditBatch(f"not a representable audit event: {problem[0]}: {problem[2]}")
    return event


def _explain(body: bytes, exc: msgspec.DecodeError) -> str:
    try:
        header = _decode_header(body)
    except msgspec.DecodeError:
        if isinstance(exc, msgspec.ValidationError) and "$" not in str(exc):
            return "body must be a JSON object (an audit.k8s.io/v1 EventList)"
        return f"body is not valid JSON: {exc}" if not isinstance(exc, msgspec.ValidationError) else str(exc)
    _check_header(header.kind, header.apiVersion)
    return str(exc).replace("$.", "")


def _check_header(kind: str, api_version: str) -> None:
    if kind != "EventList":
        raise InvalidAuditBatch(f"kind must be EventList, not {kind!r}")
    if api_version != "audit.k8s.io/v1":
        raise InvalidAuditBatch(f"apiVersion must be audit.k8s.io/v1, not {api_version!r}")


# Span times are unsigned nanoseconds in OTLP and signed 64-bit integers in the store: 1970 to 2262.
_MAX_TIME_NS = (1 << 63) - 1


def _unrepresentable(event: TracedAuditEvent) -> tuple[str, str, str] | None:
    """(field, reason, message) of the first value no trace can hold, or None."""
    received = event.requestReceivedTimestamp
    status = event.responseStatus
    try:
        # Checked for every event of every batch (a busy apiserver's gets and lists too): the usual event, both
        # times far inside the range and an HTTP status, is cleared in one expression.
        if (
            1970 < _parse_iso(event.stageTimestamp).year < 2262
            and (not received or 1970 < _parse_iso(received).year < 2262)
            and (status is None or 0 <= status.code <= 999)
        ):
            return None
        # Only a year at either end (an offset of a day may cross it) needs the exact instant.
        for field, text in (("stageTimestamp", event.stageTimestamp), ("requestReceivedTimestamp", received)):
            if text and not 0 <= parse_time_ns(text) <= _MAX_TIME_NS:
                return field, "time_out_of_range", f"{text[:64]!r} is outside 1970-01-01..2262-04-11"
    except ValueError:
        raise ValueError("timestamps must be RFC 3339") from None
    if status is not None and not 0 <= status.code <= 999:
        return "responseStatus.code", "bad_status_code", f"{status.code} is not an HTTP status code"
    return None


def _load(raw: msgspec.Raw) -> Any:
    return None if raw is _ABSENT else orjson.loads(memoryview(raw))


def _load_head(raw: msgspec.Raw) -> Any:
    """What :func:`_load` gives, but only the object's apiVersion, kind and metadata (without managedFields): the
    rest is skipped over, never built."""
    if raw is _ABSENT:
        return None
    try:
        return _decode_head(raw)
    except msgspec.ValidationError:  # not an object, or metadata of a shape no apiserver stores: read as before
        return _load(raw)


# What Kubernetes itself allows (apimachinery validation): longer values never come from a real apiserver.
_MAX_NAME = 253
_MAX_LABEL = 63
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


class InvalidField(ValueError):
    """One audit event carries a value Kubernetes would never have accepted; ``field`` names it."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field


# Values already found valid: a cluster has few namespaces and label values, and every event repeats them.
_KNOWN_VALID_LIMIT = 10_000
_valid_namespaces: set[str] = set()
_valid_label_values: set[str] = set()


def _remember(known: set[str], value: str) -> None:
    if len(known) >= _KNOWN_VALID_LIMIT:
        known.clear()
    known.add(value)


def check_object_ref(ref: AuditObjectRef) -> None:
    namespace = ref.namespace
    if (
        len(ref.name) <= _MAX_NAME
        and (not namespace or namespace in _valid_namespaces)
        and len(ref.resource) <= _MAX_LABEL
        and len(ref.subresource) <= _MAX_LABEL
        and len(ref.apiGroup) <= _MAX_NAME
        and len(ref.apiVersion) <= _MAX_LABEL
    ):
        return  # the usual reference, in a namespace already found valid, is cleared in one expression
    if len(ref.name) > _MAX_NAME:
        raise InvalidField("objectRef.name", f"longer than {_MAX_NAME} characters")
    if namespace and namespace not in _valid_namespaces:
        if len(namespace) > _MAX_LABEL or not _DNS_LABEL.fullmatch(namespace):
            raise InvalidField("objectRef.namespace", "not a namespace name (a DNS label of at most 63)")
        _remember(_valid_namespaces, namespace)
    for field, value, limit in (
        ("objectRef.resource", ref.resource, _MAX_LABEL),
        ("objectRef.subresource", ref.subresource, _MAX_LABEL),
        ("objectRef.apiGroup", ref.apiGroup, _MAX_NAME),
        ("objectRef.apiVersion", ref.apiVersion, _MAX_LABEL),
    ):
        if len(value) > limit:
            raise InvalidField(field, f"longer than {limit} characters")


def check_metadata(body: Mapping[str, Any] | None, field: str) -> None:
    metadata = body.get("metadata") if body is not None else None
    if not isinstance(metadata, dict):
        return
    for key in ("name", "generateName"):
        value = metadata.get(key)
        if isinstance(value, str) and len(value) > _MAX_NAME:
            raise InvalidField(f"{field}.metadata.{key}", f"longer than {_MAX_NAME} characters")
    labels = metadata.get("labels")
    if isinstance(labels, dict):
        for key, value in labels.items():
            if len(str(key)) > _MAX_NAME + 1 + _MAX_LABEL:
                raise InvalidField(f"{field}.metadata.labels", "a label key is longer than Kubernetes allows")
            if value is None or (type(value) is str and value in _valid_label_values):  # None: a patch removing it
                continue
            if not isinstance(value, str) or len(value) > _MAX_LABEL or not _LABEL_VALUE.fullmatch(value):
                raise InvalidField(f"{field}.metadata.labels", "a label value is not a valid label value")
            _remember(_valid_label_values, value)


class AuditConverter:
    """Turns audit events into Observations, applying the audit filter and redaction."""

    def __init__(
        self,
        audit: AuditConfig,
        redaction: RedactionConfig,
        metrics: Metrics | None = None,
        *,
        records: bool = False,
        whole_bodies: bool = True,
    ) -> None:
        self._records = records
        # False: nothing downstream reads more of a body than its metadata (Pipeline.reads_whole_bodies).
        self._whole_bodies = whole_bodies
        self._verbs = frozenset(audit.verbs)
        self._stages = frozenset(audit.stages)
        self._excluded = frozenset(audit.exclude_resources)
        self._excluded_users = frozenset(audit.exclude_users)
        self._include_denied = audit.include_denied
        self._redactor = Redactor(redaction)
        self._metrics = metrics

    def parse(self, body: bytes) -> tuple[Sequence[TracedAuditEvent], list[Rejected]]:
        """``body``'s events, decoded as far as this converter reads them: whole when it keeps search records."""
        return parse_batch(body) if self._records else parse_traced_batch(body)

    def convert(self, cluster: str, events: Sequence[TracedAuditEvent]) -> list[Observation]:
        observations, dropped = self.convert_reporting(cluster, events)
        for drop in dropped:
            report_dropped(drop, self._metrics)
        return observations

    def convert_reporting(
        self, cluster: str, events: Sequence[TracedAuditEvent]
    ) -> tuple[list[Observation], list[Dropped]]:
        """The observations, and the events dropped alone, for the caller to count and log (a worker process
        has neither the metrics nor the log)."""
        observations: list[Observation] = []
        dropped: list[Dropped] = []
        for index, event in enumerate(events):
            found: list[Observation] = []
            try:
                if event.objectRef is not None:
                    check_object_ref(event.objectRef)
                if self._wanted(event):
                    assert event.objectRef is not None
                    found = list(self._observations(cluster, event))
            except InvalidField as exc:
                # A bad event must never take the good ones of its batch down: it alone is dropped, and counted.
                dropped.append(Dropped(index, event.auditID, exc.field, str(exc)))
                continue
            except (TypeError, AttributeError, KeyError, ValueError) as exc:
                # Bodies of a shape no apiserver sends (metadata that is not an object, a number for a name...).
                dropped.append(Dropped(index, event.auditID, "object", f"malformed object ({type(exc).__name__})"))
                continue
            if self._records:
                self._attach_record(cluster, event, found)
            observations.extend(found)
        return observations, dropped

    def _attach_record(self, cluster: str, event: TracedAuditEvent, found: list[Observation]) -> None:
        """Every audit event the policy sent is a search record, traced or not: it rides on its one object's
        observation, or on a record-only observation (filtered, nameless, deletecollection, non-resource)."""
        if not isinstance(event, AuditEvent):
            raise TypeError("a search record is the whole audit event: decode with parse_batch")
        record = audit_record(event)
        if self._redactor.config.paths:
            self._redactor.redact_in_place(record, "")
        ref = event.objectRef
        if len(found) == 1 and ref is not None and "targetResource" not in found[0].tags:
            found[0].record = record
            return
        time_ns = parse_time_ns(event.requestReceivedTimestamp or event.stageTimestamp)
        if ref is not None:
            target = ObjectRef(cluster, ref.apiGroup, ref.apiVersion, ref.resource, ref.namespace, ref.name, ref.uid)
        else:
            target = ObjectRef(cluster, "", "", "", "", "")
        found.append(
            Observation(
                ref=target,
                kind=KIND_RECORD,
                title=event.verb,
                start_ns=time_ns,
                end_ns=time_ns,
                dedup_key=f"audit:{event.auditID}:{event.stage}",
                record=record,
            )
        )

    def _wanted(self, event: TracedAuditEvent) -> bool:
        if event.stage not in self._stages:
            return False
        ref = event.objectRef
        if ref is None or not ref.resource:
            return False
        if event.verb not in self._verbs:
            code = event.responseStatus.code if event.responseStatus else 0
            if not (self._include_denied and code in _DENIED):
                return False
        if ref.resource in self._excluded or f"{ref.resource}.{ref.apiGroup}" in self._excluded:
            return False
        return _username(event) not in self._excluded_users

    def _redact(self, raw: msgspec.Raw, resource: str, field: str, *, head_only: bool = False) -> dict[str, Any] | None:
        obj = _load_head(raw) if head_only else _load(raw)
        if not isinstance(obj, dict):
            return None
        if field == "responseObject":  # what was stored; a request may be a patch of it
            check_metadata(obj, field)
        # Parsed from this request alone, so nobody else holds it: redacted in place.
        self._redactor.redact_in_place(obj, resource)
        metadata = obj.get("metadata")
        if isinstance(metadata, dict):
            # Field ownership is bookkeeping no span shows (diffs take it from the watch), and often half the
            # object: dropped before the observation is spooled, linked and decorated.
            metadata.pop("managedFields", None)
        return obj

    def _observations(self, cluster: str, event: TracedAuditEvent) -> Iterator[Observation]:
        ref = event.objectRef
        assert ref is not None
        verb = event.verb
        code = event.responseStatus.code if event.responseStatus else 0
        succeeded = 0 < code < 400
        # Without whole bodies, an object none of whose state is logged is read only as far as its metadata.
        head_only = not self._whole_bodies and not _takes_snapshot(event)
        response = self._redact(event.responseObject, ref.resource, "responseObject", head_only=head_only)
        response_is_object = response is not None and response.get("kind") != "Status" and "metadata" in response

        if (
            verb == "deletecollection"
            and response is not None
            and response_is_object
            and isinstance(response.get("items"), list)
        ):
            # One deletecollection removes many objects: each deleted object's story gets the request.
            for item in response["items"]:
                metadata = item.get("metadata") if isinstance(item, dict) else None
                if isinstance(metadata, dict) and metadata.get("name"):
                    yield self._observation(cluster, event, metadata["name"], metadata.get("uid", ""), item, None)
            return

        name = ref.name
        body: dict[str, Any] | None = response if response_is_object else None
        if not name and body is not None:
            name = body.get("metadata", {}).get("name", "")
        # The request body is parsed only when it tells something the response did not.
        needs_request = verb == "patch" or (verb in ("create", "update") and (not name or body is None))
        request = self._redact(event.requestObject, ref.resource, "requestObject") if needs_request else None
        if not name and request is not None and isinstance(request.get("metadata"), dict):
            name = request["metadata"].get("name") or ""
        if not succeeded:
            body = None  # a refused request changed nothing: no snapshot, no links
        elif body is None and request is not None and "metadata" in request:
            body = request
        uid = ref.uid or (body or {}).get("metadata", {}).get("uid", "")
        if not name:
            if code >= 400:
                yield self._nameless(cluster, event)
            return
        yield self._observation(cluster, event, name, uid, body, request if verb == "patch" else None)

    def _observation(
        self,
        cluster: str,
        event: TracedAuditEvent,
        name: str,
        uid: str,
        body: dict[str, Any] | None,
        patch: dict[str, Any] | None,
    ) -> Observation:
        ref = event.objectRef
        assert ref is not None
        if len(name) > _MAX_NAME or len(uid) > _MAX_NAME:
            raise InvalidField("metadata.name", f"name or uid longer than {_MAX_NAME} characters")
        obj_ref = ObjectRef(cluster, ref.apiGroup, ref.apiVersion, ref.resource, ref.namespace, name, uid or "")
        observation = self._base(event, obj_ref, _title(event))
        if body is not None:
            resource_version = body.get("metadata", {}).get("resourceVersion")
            if resource_version:
                observation.resource_version = resource_version
                observation.tags["resourceVersion"] = resource_version
            if _takes_snapshot(event):
                observation.logs.append(LogEntry(observation.end_ns, "snapshot", {"snapshot": _snapshot_json(body)}))
            observation.body = body if self._whole_bodies else {k: body[k] for k in _HEAD if k in body}
        if patch is not None:
            text = orjson.dumps(patch).decode()
            if len(text) > _PATCH_LOG_LIMIT:
                text = text[:_PATCH_LOG_LIMIT] + "…"
            observation.logs.append(LogEntry(observation.start_ns, "request", {"patch": text}))
        return observation

    def _nameless(self, cluster: str, event: TracedAuditEvent) -> Observation:
        """A failed request that names no object (a denied create): told on its namespace, or its collection."""
        ref = event.objectRef
        assert ref is not None
        if ref.namespace:
            target = ObjectRef(cluster, "", "v1", "namespaces", "", ref.namespace)
        else:
            target = ObjectRef(cluster, ref.apiGroup, ref.apiVersion, ref.resource, "", "")
        observation = self._base(event, target, _title(event, show_resource=True))
        observation.tags["targetResource"] = ref.resource
        return observation

    def _base(self, event: TracedAuditEvent, ref: ObjectRef, title: str) -> Observation:
        end_ns = parse_time_ns(event.stageTimestamp)
        start_ns = parse_time_ns(event.requestReceivedTimestamp) if event.requestReceivedTimestamp else end_ns
        status = event.responseStatus
        tags: Attributes = {
            "auditID": event.auditID,
            "verb": event.verb,
            "username": event.user.username,
            "userAgent": event.userAgent,
            "sourceIPs": ",".join(event.sourceIPs),
        }
        if event.objectRef is not None and event.objectRef.subresource:
            tags["subresource"] = event.objectRef.subresource
        if status is not None and status.code:
            tags["responseCode"] = status.code
        if event.impersonatedUser is not None and event.impersonatedUser.username:
            tags["impersonatedUser"] = event.impersonatedUser.username
        observation = Observation(
            ref=ref,
            kind=SERVICE_AUDIT,
            title=title,
            start_ns=start_ns,
            end_ns=max(end_ns, start_ns),
            tags=tags,
            dedup_key=f"audit:{event.auditID}:{ref.name}",
        )
        if status is not None and status.code >= 400:
            reason = status.reason or _phrase(status.code)
            observation.error = f"{reason}: {status.message}" if status.message else reason
            observation.logs.append(
                LogEntry(end_ns, "error", {"code": status.code, "reason": reason, "message": status.message})
            )
        return observation


def report_dropped(drop: Dropped, metrics: Metrics | None) -> None:
    if metrics is not None:
        metrics.audit_events_invalid.labels(drop.field).inc()
    log_dropped(drop)


def log_dropped(drop: Dropped) -> None:
    log.warning("audit: dropped items[%d] (auditID %.64s): %s", drop.index, drop.audit_id, drop.reason)


def audit_record(event: AuditEvent) -> dict[str, Any]:
    """The audit event as an ``audit.k8s.io/v1`` Event without its request and response objects."""
    record: dict[str, Any] = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": event.level,
        "auditID": event.auditID,
        "stage": event.stage,
        "requestURI": event.requestURI,
        "verb": event.verb,
        "user": msgspec.to_builtins(event.user),
        "sourceIPs": event.sourceIPs,
        "userAgent": event.userAgent,
    }
    if event.impersonatedUser is not None:
        record["impersonatedUser"] = msgspec.to_builtins(event.impersonatedUser)
    if event.objectRef is not None:
        record["objectRef"] = msgspec.to_builtins(event.objectRef)
    if event.responseStatus is not None:
        record["responseStatus"] = {"metadata": {}, **msgspec.to_builtins(event.responseStatus)}
    if event.requestReceivedTimestamp:
        record["requestReceivedTimestamp"] = event.requestReceivedTimestamp
    record["stageTimestamp"] = event.stageTimestamp
    if event.annotations:
        record["annotations"] = event.annotations
    return record


def _takes_snapshot(event: TracedAuditEvent) -> bool:
    """Whether the object's whole state is logged on its span: as it was created, or as it was deleted."""
    ref = event.objectRef
    return ref is not None and not ref.subresource and (event.verb == "create" or event.verb.startswith("delete"))


def _username(event: TracedAuditEvent) -> str:
    if event.impersonatedUser is not None and event.impersonatedUser.username:
        return event.impersonatedUser.username
    return event.user.username


def _title(event: TracedAuditEvent, *, show_resource: bool = False) -> str:
    ref = event.objectRef
    assert ref is not None
    parts = [_username(event) or "unknown", event.verb]
    if show_resource:
        parts.append(ref.resource)
    if ref.subresource:
        parts.append(ref.subresource)
    status = event.responseStatus
    if status is not None and status.code >= 400:
        parts.append(f"({status.reason or _phrase(status.code)})")
    return " ".join(parts)


def _phrase(code: int) -> str:
    try:
        return HTTPStatus(code).phrase.replace(" ", "")
    except ValueError:
        return str(code)


def _snapshot_json(body: Mapping[str, Any]) -> str:
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and "managedFields" in metadata:
        body = {**body, "metadata": {k: v for k, v in metadata.items() if k != "managedFields"}}
    return orjson.dumps(body).decode()
