"""Observations carrying a record → the flat rows the index stores and alert rules match."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from kelemetry_py.model import Observation
from kelemetry_py.search.filters import Table

AUDIT_API_VERSION = "audit.k8s.io/v1"


def stable_id(text: str) -> int:
    """A signed 63-bit id (an SQLite rowid) that every replica derives the same way."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


def table_of(record: dict[str, Any]) -> Table:
    return "audit" if record.get("apiVersion") == AUDIT_API_VERSION else "events"


def record_row(observation: Observation) -> tuple[Table, dict[str, Any]] | None:
    """The table and row of the observation's record, or None when it carries none."""
    record = observation.record
    if record is None:
        return None
    ref = observation.ref
    row: dict[str, Any] = {
        "time_ms": observation.start_ns // 1_000_000,
        "cluster": ref.cluster,
        "api_group": ref.group,
        "resource": ref.resource,
        "namespace": ref.namespace,
        "name": ref.name,
        "obj": stable_id(ref.key),
    }
    table = table_of(record)
    if table == "audit":
        user = record.get("impersonatedUser") or record.get("user") or {}
        status = record.get("responseStatus") or {}
        code = int(status.get("code") or 0)
        object_ref = record.get("objectRef") or {}
        row.update(
            id=stable_id(f"{ref.cluster}\x00audit\x00{record.get('auditID', '')}\x00{record.get('stage', '')}"),
            subresource=object_ref.get("subresource", ""),
            verb=record.get("verb", ""),
            level=record.get("level", ""),
            stage=record.get("stage", ""),
            user=user.get("username", ""),
            user_groups=",".join(user.get("groups") or ()),
            source_ips=",".join(record.get("sourceIPs") or ()),
            code=code,
            status=status.get("status") or ("Success" if 0 < code < 400 else "Failure" if code else ""),
        )
    else:
        metadata = record.get("metadata") or {}
        involved = record.get("involvedObject") or {}
        row.update(
            id=stable_id(f"{ref.cluster}\x00event\x00{metadata.get('uid', '')}\x00{observation.tags.get('count', 1)}"),
            kind=involved.get("kind", ""),
            reason=record.get("reason", ""),
            type=record.get("type", ""),
            message=record.get("message", ""),
        )
    row["body"] = orjson.dumps(record)
    return table, row
