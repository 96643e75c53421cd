"""Audit events (audit.k8s.io/v1) → Observations, as DESIGN §3 describes audit spans."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

import orjson

from kelemetry_py.config import AuditConfig, RedactionConfig
from kelemetry_py.model import SERVICE_AUDIT, Attributes, LogEntry, ObjectRef, Observation
from kelemetry_py.sources.redaction import redact_object

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DENIED = (401, 403)
_PATCH_LOG_LIMIT = 4096


class InvalidAuditBatch(ValueError):
    """The body is not an audit EventList the apiserver would send; the message says why."""


def parse_event_list(body: bytes) -> list[dict[str, Any]]:
    """Decode and check an ``EventList`` body; returns its items."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidAuditBatch(f"body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidAuditBatch("body must be a JSON object (an audit.k8s.io/v1 EventList)")
    if document.get("kind") != "EventList":
        raise InvalidAuditBatch(f"kind must be EventList, not {document.get('kind')!r}")
    if document.get("apiVersion") != "audit.k8s.io/v1":
        raise InvalidAuditBatch(f"apiVersion must be audit.k8s.io/v1, not {document.get('apiVersion')!r}")
    items = document.get("items")
    if items is None:
        return []
    if not isinstance(items, list):
        raise InvalidAuditBatch("items must be a list of audit events")
    for index, item in enumerate(items):
        problem = _check_event(item)
        if problem:
            raise InvalidAuditBatch(f"items[{index}]: {problem}")
    return items


def _check_event(item: Any) -> str | None:
    if not isinstance(item, dict):
        return "must be an audit Event object"
    for field in ("auditID", "stage", "verb", "stageTimestamp"):
        if not isinstance(item.get(field), str):
            return f"{field} is missing or not a string"
    ref = item.get("objectRef")
    if ref is not None and not isinstance(ref, dict):
        return "objectRef must be an object"
    try:
        parse_time_ns(item["stageTimestamp"])
        if "requestReceivedTimestamp" in item:
            parse_time_ns(item["requestReceivedTimestamp"])
    except (TypeError, ValueError):
        return "timestamps must be RFC 3339"
    return None


def parse_time_ns(text: str) -> int:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


class AuditConverter:
    """Turns audit events into Observations, applying the audit filter and redaction."""

    def __init__(self, audit: AuditConfig, redaction: RedactionConfig) -> None:
        self._verbs = frozenset(audit.verbs)
        self._stages = frozenset(audit.stages)
        self._excluded = frozenset(audit.exclude_resources)
        self._excluded_users = frozenset(audit.exclude_users)
        self._include_denied = audit.include_denied
        self._redaction = redaction
        self._secret_resources = frozenset(redaction.secret_resources)

    def convert(self, cluster: str, events: list[dict[str, Any]]) -> list[Observation]:
        observations: list[Observation] = []
        for event in events:
            if self._wanted(event):
                observations.extend(self._observations(cluster, event))
        return observations

    def _wanted(self, event: Mapping[str, Any]) -> bool:
        if event["stage"] not in self._stages:
            return False
        ref = event.get("objectRef")
        if not ref or not ref.get("resource"):
            return False
        if event["verb"] not in self._verbs:
            code = (event.get("responseStatus") or {}).get("code")
            if not (self._include_denied and code in _DENIED):
                return False
        resource = ref["resource"]
        if resource in self._excluded or f"{resource}.{ref.get('apiGroup') or ''}" in self._excluded:
            return False
        return _username(event) not in self._excluded_users

    def _redact(self, obj: Any, resource: str) -> dict[str, Any] | None:
        if not isinstance(obj, dict):
            return None
        if resource in self._secret_resources or self._redaction.paths:
            return redact_object(obj, resource, self._redaction)
        return obj  # parsed from this request alone, so nobody else holds it

    def _observations(self, cluster: str, event: dict[str, Any]) -> Iterator[Observation]:
        ref = event["objectRef"]
        resource: str = ref["resource"]
        verb: str = event["verb"]
        status = event.get("responseStatus") or {}
        code = status.get("code")
        response = self._redact(event.get("responseObject"), resource)
        request = self._redact(event.get("requestObject"), resource)
        response_is_object = response is not None and response.get("kind") != "Status" and "metadata" in response

        if verb == "deletecollection" and response_is_object and isinstance(response.get("items"), list):
            # One deletecollection removes many objects: each deleted object's story gets the request.
            for item in response["items"]:
                metadata = item.get("metadata") if isinstance(item, dict) else None
                if isinstance(metadata, dict) and metadata.get("name"):
                    yield self._observation(cluster, event, metadata["name"], metadata.get("uid", ""), item, None)
            return

        name = ref.get("name") or ""
        body: dict[str, Any] | None = response if response_is_object else None
        if not name and body is not None:
            name = body.get("metadata", {}).get("name", "")
        if not name and isinstance(request, dict) and isinstance(request.get("metadata"), dict):
            name = request["metadata"].get("name") or ""
        succeeded = isinstance(code, int) and code < 400
        if not succeeded:
            body = None  # a refused request changed nothing: no snapshot, no links
        elif body is None and verb in ("create", "update") and request is not None and "metadata" in request:
            body = request
        uid = ref.get("uid") or (body or {}).get("metadata", {}).get("uid", "")
        if not name and code is not None and code >= 400:
            yield self._nameless(cluster, event)
            return
        if not name:
            return
        yield self._observation(cluster, event, name, uid, body, request if verb == "patch" else None)

    def _observation(
        self,
        cluster: str,
        event: dict[str, Any],
        name: str,
        uid: str,
        body: dict[str, Any] | None,
        patch: dict[str, Any] | None,
    ) -> Observation:
        ref = event["objectRef"]
        obj_ref = ObjectRef(
            cluster=cluster,
            group=ref.get("apiGroup") or "",
            version=ref.get("apiVersion") or "",
            resource=ref["resource"],
            namespace=ref.get("namespace") or "",
            name=name,
            uid=uid or "",
        )
        observation = self._base(event, obj_ref, _title(event))
        if body is not None:
            resource_version = body.get("metadata", {}).get("resourceVersion")
            if resource_version:
                observation.resource_version = resource_version
                observation.tags["resourceVersion"] = resource_version
            observation.body = body
            verb = event["verb"]
            if not ref.get("subresource") and (verb == "create" or verb.startswith("delete")):
                observation.logs.append(
                    LogEntry(observation.end_ns, "snapshot", {"snapshot": _snapshot_json(body)})
                )
        if patch is not None:
            text = orjson.dumps(patch).decode()
            if len(text) > _PATCH_LOG_LIMIT:
                text = text[:_PATCH_LOG_LIMIT] + "…"
            observation.logs.append(LogEntry(observation.start_ns, "request", {"patch": text}))
        return observation

    def _nameless(self, cluster: str, event: dict[str, Any]) -> Observation:
        """A failed request that names no object (a denied create): told on its namespace, or its collection."""
        ref = event["objectRef"]
        namespace = ref.get("namespace") or ""
        if namespace:
            target = ObjectRef(cluster, "", "v1", "namespaces", "", namespace)
        else:
            target = ObjectRef(cluster, ref.get("apiGroup") or "", ref.get("apiVersion") or "", ref["resource"], "", "")
        observation = self._base(event, target, _title(event, show_resource=True))
        observation.tags["targetResource"] = ref["resource"]
        return observation

    def _base(self, event: dict[str, Any], ref: ObjectRef, title: str) -> Observation:
        end_ns = parse_time_ns(event["stageTimestamp"])
        received = event.get("requestReceivedTimestamp")
        start_ns = parse_time_ns(received) if received else end_ns
        status = event.get("responseStatus") or {}
        code = status.get("code")
        objref = event["objectRef"]
        tags: Attributes = {
            "auditID": event["auditID"],
            "verb": event["verb"],
            "username": (event.get("user") or {}).get("username", ""),
            "userAgent": event.get("userAgent", ""),
            "sourceIPs": ",".join(event.get("sourceIPs") or ()),
        }
        if objref.get("subresource"):
            tags["subresource"] = objref["subresource"]
        if isinstance(code, int):
            tags["responseCode"] = code
        impersonated = (event.get("impersonatedUser") or {}).get("username")
        if impersonated:
            tags["impersonatedUser"] = impersonated
        observation = Observation(
            ref=ref,
            kind=SERVICE_AUDIT,
            title=title,
            start_ns=start_ns,
            end_ns=max(end_ns, start_ns),
            tags=tags,
            dedup_key=f"audit:{event['auditID']}:{ref.name}",
        )
        if isinstance(code, int) and code >= 400:
            reason = status.get("reason") or _phrase(code)
            message = status.get("message") or ""
            observation.error = f"{reason}: {message}" if message else reason
            observation.logs.append(
                LogEntry(end_ns, "error", {"code": code, "reason": reason, "message": message})
            )
        return observation


def _username(event: Mapping[str, Any]) -> str:
    impersonated = (event.get("impersonatedUser") or {}).get("username")
    return impersonated or (event.get("user") or {}).get("username", "")


def _title(event: Mapping[str, Any], *, show_resource: bool = False) -> str:
    ref = event["objectRef"]
    parts = [_username(event) or "unknown", event["verb"]]
    if show_resource:
        parts.append(ref["resource"])
    if ref.get("subresource"):
        parts.append(ref["subresource"])
    code = (event.get("responseStatus") or {}).get("code")
    if isinstance(code, int) and code >= 400:
        parts.append(f"({(event.get('responseStatus') or {}).get('reason') or _phrase(code)})")
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
