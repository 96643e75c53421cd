"""Strip secrets from objects before anything is made of them. Nothing downstream ever sees the originals.

What is stripped: Secret ``data``/``stringData``/``binaryData`` and their last-applied annotation (resource names
matched case-insensitively, and any object of kind Secret); TokenRequest and TokenReview tokens; container env
values whose variable name matches ``redaction.env_name_pattern`` in every pod spec and pod template (Pods,
Deployments, ReplicaSets, StatefulSets, DaemonSets, Jobs, CronJobs, PodTemplates, and any object shaped like them);
and the ``redaction.paths`` globs. ``kubectl apply`` keeps a copy of the object it applied, as JSON, in the
last-applied annotation of every other object: the same rules apply inside that copy.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from kelemetry_py.config import RedactionConfig

REDACTED = "<redacted>"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
_SECRET_FIELDS = ("data", "stringData", "binaryData")
_CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")
_TOKEN_KINDS = {"TokenRequest": (("status", "token"),), "TokenReview": (("spec", "token"), ("status", "token"))}
_TOKEN_RESOURCES = {"tokenreviews": "TokenReview"}
# Last-applied annotations already judged, by text: a Deployment's status changes far more often than what was
# applied. Bounded by the texts' size (one can be hundreds of KiB), and cleared when full.
_APPLIED_MEMO_CHARACTERS = 4 * 1024 * 1024
_CLEAN = ""  # in the memo: nothing to redact in that text


class Redactor:
    """The redaction rules of one configuration, compiled once."""

    def __init__(self, config: RedactionConfig) -> None:
        self.config = config
        self._secret_resources = frozenset(resource.lower() for resource in config.secret_resources)
        self._paths = [path.split(".") for path in config.paths if path]
        self._env_name = re.compile(config.env_name_pattern) if config.env_name_pattern else None
        self._applied: dict[tuple[str, str], str] = {}
        self._applied_characters = 0

    def is_secret_resource(self, resource: str) -> bool:
        return resource.lower() in self._secret_resources

    def redact(self, obj: Mapping[str, Any], resource: str) -> Mapping[str, Any]:
        """``obj`` itself when nothing in it is secret, else a redacted deep copy (the original is not touched)."""
        if not self.needs(obj, resource):
            return obj
        result = copy.deepcopy(dict(obj))
        self.redact_in_place(result, resource)
        return result

    def needs(self, obj: Mapping[str, Any], resource: str, *, specs_redacted: bool = False) -> bool:
        """``specs_redacted``: ``obj``'s ``spec`` and ``template`` equal those of an object already redacted by these
        rules, so no env value in them is left to redact (the differ knows it by their JSON)."""
        if self._paths or self.is_secret_resource(resource) or resource.lower() in _TOKEN_RESOURCES:
            return True
        kind = obj.get("kind")
        if isinstance(kind, str) and (kind in ("Secret", "SecretList") or kind in _TOKEN_KINDS):
            return True
        items = obj.get("items")
        if isinstance(items, list):
            return any(isinstance(item, Mapping) and self.needs(item, resource) for item in items)
        applied = _last_applied(obj)
        if applied is not None and self._redacted_applied(applied, "") is not None:
            return True
        return not specs_redacted and self._env_name is not None and next(self._secret_env(obj), None) is not None

    def redact_in_place(self, obj: dict[str, Any], resource: str) -> None:
        """Redact ``obj`` (an object, or a list of them) in place; ``resource`` is the plural it was read or written
        as. Objects inside a list (a ``SecretList`` from a deletecollection) are judged by their own ``kind``."""
        lowered = resource.lower()
        self._redact(obj, self.is_secret_resource(lowered), _TOKEN_RESOURCES.get(lowered, ""))

    def _redact(self, obj: dict[str, Any], is_secret: bool, token_kind: str) -> None:
        kind = obj.get("kind")
        if isinstance(kind, str):
            if kind.endswith("List") and isinstance(obj.get("items"), list):
                item_is_secret = kind == "SecretList" or (is_secret and kind == "List")
                for item in obj["items"]:
                    if isinstance(item, dict):
                        self._redact(item, item_is_secret, token_kind)
                return
            is_secret = is_secret if kind in ("", "Status", "DeleteOptions") else kind == "Secret" or is_secret
            token_kind = kind if kind in _TOKEN_KINDS else token_kind
        elif isinstance(obj.get("items"), list) and "metadata" in obj:
            for item in obj["items"]:
                if isinstance(item, dict):
                    self._redact(item, is_secret, token_kind)
            return
        if is_secret:
            _strip_secret(obj)  # the last-applied annotation with the rest
        else:
            applied = _last_applied(obj)
            if applied is not None and (redacted := self._redacted_applied(applied, token_kind)) is not None:
                obj["metadata"]["annotations"][LAST_APPLIED] = redacted
        for path in _TOKEN_KINDS.get(token_kind, ()):
            _strip_path(obj, list(path))
        for entry in list(self._secret_env(obj)):
            entry["value"] = REDACTED
        for parts in self._paths:
            _strip_path(obj, parts)

    def _redacted_applied(self, text: str, token_kind: str) -> str | None:
        """The last-applied annotation ``text`` with these rules applied to the object it holds; None when there is
        nothing in it to redact."""
        if not (self._paths or token_kind or (self._env_name is not None and '"env"' in text)):
            return None  # no rule could find anything in it
        key = (text, token_kind)
        found = self._applied.get(key)
        if found is None:
            try:
                applied = orjson.loads(text)
            except orjson.JSONDecodeError:
                applied = None
            if not isinstance(applied, dict):
                found = REDACTED  # not what kubectl writes: nothing in it can be vouched for
            else:
                before = orjson.dumps(applied)
                self._redact(applied, False, token_kind)
                after = orjson.dumps(applied)
                found = _CLEAN if after == before else after.decode() + ("\n" if text.endswith("\n") else "")
            size = len(text) + len(found)
            if self._applied_characters + size > _APPLIED_MEMO_CHARACTERS:
                self._applied.clear()
                self._applied_characters = 0
            self._applied[key] = found
            self._applied_characters += size
        return None if found == _CLEAN else found

    def _secret_env(self, obj: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        """Env entries (``{"name", "value"}``) of every container of every pod spec in ``obj`` whose name matches."""
        if self._env_name is None:
            return
        for spec in _pod_specs(obj):
            for list_name in _CONTAINER_LISTS:
                containers = spec.get(list_name)
                if not isinstance(containers, list):
                    continue
                for container in containers:
                    env = container.get("env") if type(container) is dict or isinstance(container, Mapping) else None
                    if not isinstance(env, list):
                        continue
                    for entry in env:
                        if (
                            isinstance(entry, dict)
                            and isinstance(entry.get("name"), str)
                            and entry.get("value") not in (None, "", REDACTED)
                            and self._env_name.search(entry["name"])
                        ):
                            yield entry


_REDACTORS: dict[int, Redactor] = {}


def redactor_for(config: RedactionConfig) -> Redactor:
    """The compiled rules of ``config`` (kept per configuration object)."""
    redactor = _REDACTORS.get(id(config))
    if redactor is None or redactor.config is not config:
        if len(_REDACTORS) > 64:
            _REDACTORS.clear()
        redactor = _REDACTORS[id(config)] = Redactor(config)
    return redactor


def redact(obj: Mapping[str, Any], resource: str, config: RedactionConfig) -> Mapping[str, Any]:
    """``obj`` when it holds nothing secret, else a redacted deep copy."""
    return redactor_for(config).redact(obj, resource)


def redact_object(obj: Mapping[str, Any], resource: str, config: RedactionConfig) -> dict[str, Any]:
    """A deep copy of ``obj`` (an object, or a list of them) with secret material replaced by ``<redacted>``."""
    result = copy.deepcopy(dict(obj))
    redactor_for(config).redact_in_place(result, resource)
    return result


def _pod_specs(obj: Any) -> list[Mapping[str, Any]]:
    """Where a pod spec sits in the objects that carry one: ``spec`` (the Pod itself), ``spec.template.spec`` and
    ``template.spec`` (templates), ``spec.jobTemplate.spec.template.spec`` (a CronJob's job template), in that order.
    Spelled out rather than walked part by part, as most objects have none of the deeper ones. Objects come from
    JSON, so they are dicts: checked with the cheap ``type(...) is dict`` first (this runs on every audit body and
    watched object; the Mapping ABC check costs several times more), then as a Mapping for callers' own."""
    specs: list[Mapping[str, Any]] = []
    if not (type(obj) is dict or isinstance(obj, Mapping)):
        return specs
    spec: Any = obj.get("spec")
    is_spec = type(spec) is dict or (spec is not None and isinstance(spec, Mapping))
    if is_spec:
        specs.append(spec)
        template_spec = _inner_spec(spec.get("template"))
        if template_spec is not None:
            specs.append(template_spec)
    template_spec = _inner_spec(obj.get("template"))
    if template_spec is not None:
        specs.append(template_spec)
    if is_spec:
        job_spec = _inner_spec(spec.get("jobTemplate"))
        template_spec = None if job_spec is None else _inner_spec(job_spec.get("template"))
        if template_spec is not None:
            specs.append(template_spec)
    return specs


def _inner_spec(node: Any) -> Mapping[str, Any] | None:
    """``node.spec`` if both are mappings."""
    if node is None or not (type(node) is dict or isinstance(node, Mapping)):
        return None
    spec: Mapping[str, Any] | None = node.get("spec")
    if spec is None or not (type(spec) is dict or isinstance(spec, Mapping)):
        return None
    return spec


def _last_applied(obj: Mapping[str, Any]) -> str | None:
    metadata = obj.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    text = annotations.get(LAST_APPLIED) if isinstance(annotations, dict) else None
    return text if isinstance(text, str) else None


def _strip_secret(obj: dict[str, Any]) -> None:
    for field in _SECRET_FIELDS:
        value = obj.get(field)
        if isinstance(value, dict):
            obj[field] = dict.fromkeys(value, REDACTED)
        elif value is not None:
            obj[field] = REDACTED
    metadata = obj.get("metadata")
    if isinstance(metadata, dict):
        annotations = metadata.get("annotations")
        if isinstance(annotations, dict) and LAST_APPLIED in annotations:
            annotations[LAST_APPLIED] = REDACTED


def _strip_path(node: Any, parts: list[str]) -> None:
    if not parts:
        return
    head, rest = parts[0], parts[1:]
    if isinstance(node, list):
        targets = node if head == "*" else []
        for item in targets:
            _strip_path(item, rest)
        return
    if not isinstance(node, dict):
        return
    keys = list(node) if head == "*" else [head] if head in node else []
    for key in keys:
        if rest:
            _strip_path(node[key], rest)
        else:
            node[key] = REDACTED
