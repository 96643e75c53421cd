"""The alert rules file (docs/alerting.md): rules matching audit records or Events with the search API's
filters, counted over a window per grouping key."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kelemetry_py.config import ConfigError
from kelemetry_py.search.filters import GROUP_COLUMNS, RecordFilter, SearchError, Table, build_filter

_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
SOURCES: dict[str, Table] = {"audit": "audit", "events": "events"}


@dataclass(frozen=True)
class Rule:
    name: str
    table: Table
    match: RecordFilter
    group_by: tuple[str, ...]
    window_ms: int
    threshold: int  # fires when the window holds more than this many records of one group
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)


def parse_window(text: str, key: str) -> int:
    match = re.fullmatch(r"(\d{1,6})([smhd])", str(text).strip())
    if not match or int(match.group(1)) == 0:
        raise ConfigError(f"{key}: {text!r} is not a duration such as 30s, 10m, 1h or 7d")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds > 366 * 86400:
        raise ConfigError(f"{key}: at most 366d")
    return seconds * 1000


def load_rules(path: str | Path, workspaces: dict[str, list[str]] | None = None) -> list[Rule]:
    try:
        document = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"alerts.rules_file: {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"alerts.rules_file: {path}: not valid YAML: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("rules"), list):
        raise ConfigError("rules: the rules file must be a mapping with a list of rules under 'rules'")
    rules = [_rule(raw, f"rules[{i}]", workspaces or {}) for i, raw in enumerate(document["rules"])]
    names = [rule.name for rule in rules]
    if len(set(names)) != len(names):
        raise ConfigError("rules: rule names must be unique")
    return rules


def _rule(raw: Any, key: str, workspaces: dict[str, list[str]]) -> Rule:
    if not isinstance(raw, dict):
        raise ConfigError(f"{key}: must be a mapping")
    known = {"name", "source", "match", "group_by", "window", "threshold", "labels", "annotations"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
    name = str(raw.get("name") or "")
    if not _LABEL.fullmatch(name):
        raise ConfigError(f"{key}.name: {name!r} must be a label value like PodBackOffBurst")
    source = raw.get("source")
    if source not in SOURCES:
        raise ConfigError(f"{key}.source: must be audit or events, not {source!r}")
    table = SOURCES[source]
    match = raw.get("match") or {}
    if not isinstance(match, dict):
        raise ConfigError(f"{key}.match: must be a mapping of search parameters")
    try:
        record_filter = build_filter(table, match, workspaces)
    except SearchError as exc:
        raise ConfigError(f"{key}.match.{exc}") from None
    if record_filter.start_ms is not None or record_filter.end_ms is not None:
        raise ConfigError(f"{key}.match: start_time and end_time have no meaning in a rule")
    group_by = tuple(raw.get("group_by") or ("cluster", "namespace", "name"))
    for column in group_by:
        if column not in GROUP_COLUMNS[table]:
            raise ConfigError(f"{key}.group_by: {column!r} is not one of {', '.join(GROUP_COLUMNS[table])}")
    threshold = raw.get("threshold", 0)
    if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 0:
        raise ConfigError(f"{key}.threshold: must be a whole number ≥ 0 (fires when the count exceeds it)")
    labels = _strings(raw.get("labels"), f"{key}.labels")
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise ConfigError(f"{key}.labels.{label}: not a valid label name")
    return Rule(
        name=name,
        table=table,
        match=record_filter,
        group_by=group_by,
        window_ms=parse_window(raw.get("window", "10m"), f"{key}.window"),
        threshold=threshold,
        labels=labels,
        annotations=_templates(_strings(raw.get("annotations"), f"{key}.annotations"), f"{key}.annotations"),
    )


def _templates(annotations: dict[str, str], key: str) -> dict[str, str]:
    """Annotations are ``str.format`` templates over the record's columns: only plain names may be filled in."""
    for name, text in annotations.items():
        try:
            columns = [column for _, column, _, _ in string.Formatter().parse(text) if column is not None]
        except ValueError as exc:
            raise ConfigError(f"{key}.{name}: not a valid template ({exc}); write {{{{ and }}}} for braces") from None
        for column in columns:
            if not column.isidentifier():
                raise ConfigError(f"{key}.{name}: {{{column}}} is not a column name such as {{namespace}}")
    return annotations


def _strings(raw: Any, key: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{key}: must be a mapping of strings")
    return {str(k): str(v) for k, v in raw.items()}
