"""Strip secrets from objects before anything is made of them. Nothing downstream ever sees the originals."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from kelemetry_py.config import RedactionConfig

REDACTED = "<redacted>"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
_SECRET_FIELDS = ("data", "stringData", "binaryData")


def redact_object(obj: Mapping[str, Any], resource: str, config: RedactionConfig) -> dict[str, Any]:
    """A deep copy of ``obj`` (an object, or a list of them) with secret material replaced by ``<redacted>``.

    ``resource`` is the plural the object was read or written as; objects inside a list (a ``SecretList`` from a
    deletecollection) are judged by their own ``kind`` when they carry one.
    """
    result = copy.deepcopy(dict(obj))
    _redact_in_place(result, resource in config.secret_resources, config)
    return result


def _redact_in_place(obj: dict[str, Any], is_secret: bool, config: RedactionConfig) -> None:
    kind = obj.get("kind")
    if isinstance(kind, str):
        if kind.endswith("List") and isinstance(obj.get("items"), list):
            item_is_secret = kind == "SecretList" or (is_secret and kind == "List")
            for item in obj["items"]:
                if isinstance(item, dict):
                    _redact_in_place(item, item_is_secret, config)
            return
        is_secret = is_secret if kind in ("", "Status", "DeleteOptions") else kind == "Secret" or is_secret
    elif isinstance(obj.get("items"), list) and "metadata" in obj:
        for item in obj["items"]:
            if isinstance(item, dict):
                _redact_in_place(item, is_secret, config)
        return
    if is_secret:
        _strip_secret(obj)
    for path in config.paths:
        _strip_path(obj, path.split("."))


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
