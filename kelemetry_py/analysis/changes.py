"""Changes: who changed which fields, from the diffs' structured changes or the request's patch."""

from __future__ import annotations

from typing import Any

from kelemetry_py.analysis.evidence import Fact, actor_json, evidence
from kelemetry_py.analysis.facts import actor_of, diff_changes, diff_logs, patch_changes, patch_text, succeeded, tag


def summarize_changes(facts: list[Fact]) -> dict[str, Any]:
    entries: list[dict[str, Any]] = []
    for fact in facts:
        span = fact.span
        logs = diff_logs(span)
        actor = actor_of(span)
        base = {
            **evidence(fact),
            **actor_json(actor),
            "fieldManager": tag(span, "fieldManager"),
            "userAgent": tag(span, "userAgent"),
        }
        if logs:
            found = [change for log in logs for change in diff_changes(log)]
            entries.append(
                {
                    **base,
                    "source": "diff",
                    "paths": [change.path for change in found],
                    "lines": [change.line for change in found],
                }
            )
            continue
        text = patch_text(span) if succeeded(span) else ""
        if text:
            patched = patch_changes(text)
            entries.append(
                {
                    **base,
                    "source": "patch",
                    "paths": [change.path for change in patched or []],
                    "lines": [change.line for change in patched]
                    if patched is not None
                    else ["(patch too long to show)"],
                }
            )
    by_actor: dict[str, dict[str, Any]] = {}
    for entry in entries:
        summary = by_actor.setdefault(
            entry["actor"],
            {
                "actor": entry["actor"],
                "actorKind": entry["actorKind"],
                "fieldManagers": [],
                "objects": [],
                "paths": [],
                "changes": 0,
            },
        )
        summary["changes"] += 1
        for list_key, value in (("fieldManagers", entry["fieldManager"]), ("objects", entry["object"])):
            if value and value not in summary[list_key]:
                summary[list_key].append(value)
        for path in entry["paths"]:
            if path not in summary["paths"]:
                summary["paths"].append(path)
    people_first = sorted(by_actor.values(), key=lambda item: (item["actorKind"] != "user", item["actor"]))
    return {"entries": entries, "byActor": people_first}
