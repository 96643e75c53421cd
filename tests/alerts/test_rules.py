"""The rules file: what loads, and errors that name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kelemetry_py.alerts.rules import load_rules
from kelemetry_py.config import ConfigError

GOOD = {
    "name": "PodBackOffBurst",
    "source": "events",
    "match": {"reason_filter": "BackOff", "involved_object_kind_filter": ["Pod"]},
    "window": "10m",
    "threshold": 5,
}


def write(tmp_path: Path, rules: Any) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"rules": rules}))
    return path


def test_a_rule_loads_with_its_filter_and_defaults(tmp_path: Path) -> None:
    (rule,) = load_rules(write(tmp_path, [GOOD]))
    assert rule.window_ms == 600_000 and rule.threshold == 5 and rule.group_by == ("cluster", "namespace", "name")
    row = {"time_ms": 1, "reason": "BackOff", "kind": "Pod"}
    assert rule.match.matches(row) and not rule.match.matches({**row, "kind": "Node"})
    (fuzzy,) = load_rules(write(tmp_path, [{**GOOD, "match": {"message_search": "BACK-OFF"}}]))
    assert fuzzy.match.matches({"message": "Back-off restarting failed container"})


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"window": "10 minutes"}, "rules[0].window"),
        ({"window": "400d"}, "rules[0].window"),
        ({"source": "logs"}, "rules[0].source"),
        ({"threshold": -1}, "rules[0].threshold"),
        ({"group_by": ["verb"]}, "rules[0].group_by"),
        ({"match": {"verb_filter": "get"}}, "rules[0].match.verb_filter"),
        ({"match": {"start_time": "1"}}, "rules[0].match"),
        ({"name": "has space"}, "rules[0].name"),
        ({"labels": {"bad-label": "x"}}, "rules[0].labels.bad-label"),
        ({"severity": "page"}, "rules[0].severity"),
        ({"annotations": {"summary": "{involvedObject.name}"}}, "rules[0].annotations.summary"),
        ({"annotations": {"summary": "{0} events"}}, "rules[0].annotations.summary"),
        ({"annotations": {"summary": "count {"}}, "rules[0].annotations.summary"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, change: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_rules(write(tmp_path, [{**GOOD, **change}]))
    assert str(caught.value).startswith(f"{key}:") or str(caught.value).startswith(f"{key} "), caught.value


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^rules: rule names must be unique"):
        load_rules(write(tmp_path, [GOOD, GOOD]))
