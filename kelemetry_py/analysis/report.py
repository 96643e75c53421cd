"""The analysis document as a terminal report: the object tree, rollouts, failures, changes and the timeline."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kelemetry_py.analysis.text import clock, duration, table


def _short(key: str) -> str:
    """``cluster/group/resource/namespace/name`` → ``resource namespace/name``."""
    _, _, resource, namespace, name = key.split("/", 4)
    return f"{resource} {namespace}/{name}" if namespace else f"{resource} {name}"


def _name(key: str) -> str:
    return key.rsplit("/", 1)[-1] or key


def render_report(doc: Mapping[str, Any], *, timeline_limit: int = 200) -> str:
    lines: list[str] = []
    obj = doc["object"]
    summary = doc["summary"]
    cluster = f" in cluster {obj['cluster']}" if obj["cluster"] else ""
    lines.append(f"Analysis of {_short(obj['key'])}{cluster}")
    lines.append(f"  range {doc['range']['start']} .. {doc['range']['end']}")
    lines.append(
        f"  {summary['objects']} objects, {summary['spans']} spans, {summary['rollouts']} rollouts, "
        f"{summary['failedRequests']} failed requests ({summary['routineFailedRequests']} routine), "
        f"{summary['warningEvents']} warnings, {summary['changes']} changes"
    )
    _objects(doc, lines)
    _rollouts(doc, lines)
    _failures(doc, lines)
    _changes(doc, lines)
    _timeline(doc, lines, timeline_limit)
    return "\n".join(lines) + "\n"


def _objects(doc: Mapping[str, Any], lines: list[str]) -> None:
    lines += ["", "OBJECTS"]
    objects = doc["objects"]  # preorder, each with its depth
    open_levels: list[bool] = []  # per ancestor level: does that ancestor have siblings still to come?
    for index, item in enumerate(objects):
        depth = item["depth"]
        has_next_sibling = any(other["depth"] == depth for other in _until_shallower(objects[index + 1 :], depth))
        del open_levels[max(depth - 1, 0) :]
        prefix = ""
        if depth > 0:
            prefix = "".join("│  " if more else "   " for more in open_levels) + ("├─ " if has_next_sibling else "└─ ")
            open_levels.append(has_next_sibling)
        via = f" ({item['linkClass']})" if item["linkClass"] and item["linkClass"] != "owner" else ""
        lines.append(
            f"  {prefix}{_short(item['key'])}{via}  {item['spans']} spans, "
            f"{clock(item['firstSeen'])} .. {clock(item['lastSeen'])}"
        )


def _until_shallower(items: list[dict[str, Any]], depth: int) -> list[dict[str, Any]]:
    out = []
    for item in items:
        if item["depth"] < depth:
            break
        out.append(item)
    return out


def _rollouts(doc: Mapping[str, Any], lines: list[str]) -> None:
    rollouts = doc["latency"]["rollouts"]
    lines += ["", "ROLLOUTS"]
    if not rollouts:
        lines.append("  no requested change of a workload in this range")
        return
    for number, rollout in enumerate(rollouts, 1):
        trigger = rollout["trigger"]
        state = "converged" if rollout["converged"] else "NOT CONVERGED"
        lines.append(
            f"  #{number} {rollout['kind']} of {_short(rollout['workload'])} by {trigger['actor']} "
            f"at {clock(trigger['time'])}: {duration(rollout['durationMs'])}, {state}"
        )
        slowest = rollout["slowestStep"]["name"]
        rows = [
            [
                step["name"],
                _name(step["object"]),
                step["actor"].removeprefix("system:serviceaccount:kube-system:"),
                clock(step["time"]),
                duration(step["durationMs"]) + ("  <- slowest" if step["name"] == slowest else ""),
            ]
            for step in rollout["steps"]
        ]
        lines += table(["STEP (critical path)", "OBJECT", "ACTOR", "AT", "DURATION"], rows, indent="     ")
        stages = ", ".join(f"{stage['name']} x{stage['count']}" for stage in rollout["stages"])
        if stages:
            lines.append(f"     stages: {stages}")
        for pending in rollout["pending"]:
            lines.append(f"     pending: {_name(pending['pod'])} (last step: {pending['lastStep']})")
    slowest = doc["latency"]["slowestStep"]
    if slowest:
        lines.append(
            f"  slowest step overall: {slowest['name']} on {_name(slowest['object'])} "
            f"({duration(slowest['durationMs'])}, span {slowest['spanId']})"
        )


def _failures(doc: Mapping[str, Any], lines: list[str]) -> None:
    failures = doc["failures"]
    lines += ["", "FAILURES"]
    requests = [item for item in failures["requests"] if not item["routine"]]
    routine = len(failures["requests"]) - len(requests)
    if requests:
        rows = [
            [
                clock(item["time"]),
                _short(item["object"]),
                item["actor"] + (f" (as {item['user']})" if item["user"] != item["actor"] else ""),
                " ".join(part for part in (item["verb"], item["targetResource"], item["subresource"]) if part),
                item["code"],
                item["reason"],
                item["message"],
            ]
            for item in requests
        ]
        lines += table(["TIME", "OBJECT", "USER", "VERB", "CODE", "REASON", "MESSAGE"], rows)
    if routine:
        lines.append(f"  ({routine} routine conflicts/not-found answers to controllers, retried by them)")
    for item in failures["warningEvents"]:
        lines.append(
            f"  warning {clock(item['time'])} {_short(item['object'])}: {item['reason']} "
            f"x{item['count']}: {item['message']}"
        )
    for item in failures["backOffs"]:
        repeated = "repeated " if item["repeated"] else ""
        lines.append(
            f"  {repeated}back-off {item['reason']} on {_short(item['object'])}: {item['occurrences']} times "
            f"({clock(item['first'])} .. {clock(item['last'])})"
        )
    for item in failures["stuckRollouts"]:
        lines.append(f"  stuck rollout of {_short(item['workload'])}: {item['reason']}: {item['detail']}")
    for item in failures["unscheduledPods"]:
        fate = "deleted before being scheduled" if item["deleted"] else "never scheduled"
        lines.append(f"  pod {_name(item['pod'])} {fate} (waited {duration(item['waitedMs'])})")
    if len(lines) and lines[-1] == "FAILURES":
        lines.append("  none")


def _changes(doc: Mapping[str, Any], lines: list[str]) -> None:
    lines += ["", "CHANGES"]
    by_actor = doc["changes"]["byActor"]
    if not by_actor:
        lines.append("  no recorded changes")
        return
    rows = [
        [
            item["actor"].removeprefix("system:serviceaccount:kube-system:"),
            ", ".join(item["fieldManagers"]) or "-",
            item["changes"],
            ", ".join(item["paths"][:6]) + (f" (+{len(item['paths']) - 6})" if len(item["paths"]) > 6 else ""),
        ]
        for item in by_actor
    ]
    lines += table(["ACTOR", "FIELD MANAGERS", "WRITES", "PATHS"], rows)
    for entry in doc["changes"]["entries"]:
        if entry["actorKind"] == "user":
            for line in entry["lines"][:10]:
                lines.append(f"  {clock(entry['time'])} {entry['actor']} {_short(entry['object'])}: {line}")


def _timeline(doc: Mapping[str, Any], lines: list[str], limit: int) -> None:
    entries = doc["timeline"]
    lines += ["", f"TIMELINE ({len(entries)} entries; consecutive repeats folded)"]
    rows: list[list[Any]] = []
    previous: tuple[str, str, str] | None = None
    for entry in entries:
        actor = entry["actor"].removeprefix("system:serviceaccount:kube-system:")
        current = (entry["object"], actor, entry["action"])
        if current == previous and rows:
            rows[-1][-1] = _bump(rows[-1][-1])
            continue
        previous = current
        code = str(entry["code"]) if entry["code"] else ""
        rows.append([clock(entry["time"]), _short(entry["object"]), actor, entry["action"], code, entry["summary"], ""])
    shown = rows[:limit]
    lines += table(["TIME", "OBJECT", "ACTOR", "ACTION", "CODE", "SUMMARY", ""], shown)
    if len(rows) > limit:
        lines.append(f"  ... {len(rows) - limit} more (use -o json for everything)")


def _bump(marker: str) -> str:
    count = int(marker[1:]) if marker.startswith("x") else 1
    return f"x{count + 1}"
