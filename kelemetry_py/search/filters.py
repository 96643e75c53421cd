"""The KubeSphere search parameters (`*_filter`: exact values, `*_search`: case-insensitive substrings, OR within
a parameter, AND across them) as one :class:`RecordFilter` that both SQL (the index) and Python (alert rules)
evaluate the same way."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Table = Literal["audit", "events"]

MAX_VALUES = 100
MAX_VALUE_CHARS = 512
MAX_TIME_SECONDS = 2**40


class SearchError(ValueError):
    """A parameter is wrong; the message starts with its name."""


# parameter -> (column, fuzzy)
_COMMON: dict[str, tuple[str, bool]] = {"cluster": ("cluster", False)}
AUDIT_PARAMETERS: dict[str, tuple[str, bool]] = {
    **_COMMON,
    "objectref_namespace_filter": ("namespace", False),
    "objectref_namespace_search": ("namespace", True),
    "objectref_name_filter": ("name", False),
    "objectref_name_search": ("name", True),
    "level_filter": ("level", False),
    "verb_filter": ("verb", False),
    "user_filter": ("user", False),
    "user_search": ("user", True),
    "group_search": ("user_groups", True),
    "source_ip_search": ("source_ips", True),
    "objectref_resource_filter": ("resource", False),
    "objectref_subresource_filter": ("subresource", False),
    "response_code_filter": ("code", False),
    "response_status_filter": ("status", False),
}
EVENT_PARAMETERS: dict[str, tuple[str, bool]] = {
    **_COMMON,
    "involved_object_namespace_filter": ("namespace", False),
    "involved_object_namespace_search": ("namespace", True),
    "involved_object_name_filter": ("name", False),
    "involved_object_name_search": ("name", True),
    "involved_object_kind_filter": ("kind", False),
    "reason_filter": ("reason", False),
    "reason_search": ("reason", True),
    "message_search": ("message", True),
    "type_filter": ("type", False),
}
PARAMETERS: dict[Table, dict[str, tuple[str, bool]]] = {"audit": AUDIT_PARAMETERS, "events": EVENT_PARAMETERS}
WORKSPACE_PARAMETERS = ("workspace_filter", "workspace_search")
# Columns a rule may group by, per table.
GROUP_COLUMNS: dict[Table, tuple[str, ...]] = {
    "audit": ("cluster", "api_group", "resource", "namespace", "name", "verb", "user", "code", "subresource"),
    "events": ("cluster", "api_group", "resource", "namespace", "name", "kind", "reason", "type"),
}


@dataclass(frozen=True, slots=True)
class Condition:
    column: str
    values: tuple[Any, ...]
    fuzzy: bool = False

    def sql(self) -> tuple[str, list[Any]]:
        if not self.fuzzy:
            if len(self.values) == 1:
                return f"{self.column} = ?", list(self.values)
            return f"{self.column} IN ({','.join('?' * len(self.values))})", list(self.values)
        # LIKE is case-insensitive for ASCII in SQLite; the escape keeps % and _ literal.
        clause = " OR ".join(f"{self.column} LIKE ? ESCAPE '\\'" for _ in self.values)
        return f"({clause})", [f"%{_escape_like(str(value))}%" for value in self.values]

    def matches(self, row: Mapping[str, Any]) -> bool:
        value = row.get(self.column)
        if not self.fuzzy:
            return value in self.values
        text = str(value or "").lower()
        return any(str(keyword).lower() in text for keyword in self.values)


@dataclass(frozen=True, slots=True)
class RecordFilter:
    table: Table
    conditions: tuple[Condition, ...] = ()
    start_ms: int | None = None
    end_ms: int | None = None

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if self.start_ms is not None:
            clauses.append("time_ms >= ?")
            params.append(self.start_ms)
        if self.end_ms is not None:
            clauses.append("time_ms <= ?")
            params.append(self.end_ms)
        for condition in self.conditions:
            clause, values = condition.sql()
            clauses.append(clause)
            params.extend(values)
        return " AND ".join(clauses) or "1", params

    def matches(self, row: Mapping[str, Any]) -> bool:
        time_ms = int(row.get("time_ms", 0))
        if self.start_ms is not None and time_ms < self.start_ms:
            return False
        if self.end_ms is not None and time_ms > self.end_ms:
            return False
        return all(condition.matches(row) for condition in self.conditions)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def split_values(name: str, raw: str | list[Any]) -> list[str]:
    items = raw if isinstance(raw, list) else str(raw).split(",")
    values = [str(item).strip() for item in items if str(item).strip()]
    if not values:
        raise SearchError(f"{name}: needs at least one value")
    if len(values) > MAX_VALUES:
        raise SearchError(f"{name}: at most {MAX_VALUES} values, not {len(values)}")
    for value in values:
        if len(value) > MAX_VALUE_CHARS:
            raise SearchError(f"{name}: a value is longer than {MAX_VALUE_CHARS} characters")
    return values


def build_filter(
    table: Table,
    params: Mapping[str, Any],
    workspaces: Mapping[str, list[str]],
    *,
    ignore: tuple[str, ...] = (),
) -> RecordFilter:
    """The filter the parameters describe; ``ignore`` names parameters the caller handles itself."""
    known = PARAMETERS[table]
    conditions: list[Condition] = []
    for name, raw in params.items():
        if name in ignore or name in ("start_time", "end_time"):
            continue
        if name in WORKSPACE_PARAMETERS:
            conditions.append(_workspace_condition(name, raw, workspaces))
            continue
        if name not in known:
            raise SearchError(f"{name}: unknown parameter")
        column, fuzzy = known[name]
        values: list[Any] = split_values(name, raw)
        if column == "code":
            values = [_code(name, value) for value in values]
        conditions.append(Condition(column, tuple(values), fuzzy))
    start = _seconds(params, "start_time")
    end = _seconds(params, "end_time")
    if start is not None and end is not None and end < start:
        raise SearchError("end_time: is before start_time")
    return RecordFilter(
        table,
        tuple(conditions),
        start * 1000 if start is not None else None,
        end * 1000 + 999 if end is not None else None,
    )


def _code(name: str, value: str) -> int:
    if not re.fullmatch(r"\d{3}", value) or not 100 <= int(value) <= 599:
        raise SearchError(f"{name}: {value!r} is not an HTTP status code")
    return int(value)


def _seconds(params: Mapping[str, Any], name: str) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    text = str(raw).strip()
    if not re.fullmatch(r"\d{1,13}", text) or int(text) > MAX_TIME_SECONDS:
        raise SearchError(f"{name}: {text!r} is not unix seconds")
    return int(text)


def _workspace_condition(name: str, raw: Any, workspaces: Mapping[str, list[str]]) -> Condition:
    if not workspaces:
        raise SearchError(f"{name}: no workspaces are configured (search.workspaces maps them to namespaces)")
    wanted = split_values(name, raw)
    if name == "workspace_filter":
        chosen = [workspace for workspace in wanted if workspace in workspaces]
    else:
        chosen = [w for w in workspaces if any(keyword.lower() in w.lower() for keyword in wanted)]
    namespaces = sorted({namespace for workspace in chosen for namespace in workspaces[workspace]})
    # No namespace at all matches nothing; "\x00" is a namespace no object can have.
    return Condition("namespace", tuple(namespaces) or ("\x00",))
