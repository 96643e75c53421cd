"""Rule evaluation: each record a rule matches is counted once (across replicas) in its group's window; a group
crossing the threshold fires once, is re-sent while it fires, and is resolved once its window no longer holds
enough records."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from kelemetry_py.alerts.alertmanager import AlertmanagerClient
from kelemetry_py.alerts.rules import Rule
from kelemetry_py.alerts.state import AlertState
from kelemetry_py.model import Observation
from kelemetry_py.search.rows import record_row

log = logging.getLogger(__name__)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _window_text(ms: int) -> str:
    seconds = ms // 1000
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


class _Defaults(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _render(template: str, values: Mapping[str, Any]) -> str:
    try:
        return template.format_map(values)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError):
        # A format that does not fit this record's value ({count:x} on text): the alert goes out with the template
        # as written. Raising here would stop the alert rules, and with them the acknowledgement of every record.
        return template


class AlertEvaluator:
    def __init__(
        self,
        rules: Sequence[Rule],
        state: AlertState,
        sender: AlertmanagerClient,
        *,
        external_url: str,
        interval_seconds: float,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self._rules = {rule.name: rule for rule in rules}
        self._state = state
        self._sender = sender
        self._external_url = external_url.rstrip("/")
        self._interval = interval_seconds
        self._clock_ms = clock_ms
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._sender.start()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="alert-evaluation")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._sender.close()
        await self._state.close()

    async def flush(self) -> None:
        """Wait until every queued alert state has been delivered (or given up on)."""
        await self._sender.flush()

    async def evaluate(self, observations: Sequence[Observation]) -> None:
        for observation in observations:
            found = record_row(observation)
            if found is None:
                continue
            table, row = found
            for rule in self._rules.values():
                if rule.table == table and rule.match.matches(row):
                    await self._count(rule, row, observation)

    async def _count(self, rule: Rule, row: dict[str, Any], observation: Observation) -> None:
        group = "\x1f".join(str(row.get(column, "")) for column in rule.group_by)
        count = await self._state.count(rule.name, group, row["id"], row["time_ms"], rule.window_ms)
        if count is None or count <= rule.threshold:
            return
        alert = self._alert(rule, row, count, observation)
        if await self._state.start_firing(rule.name, group, alert):
            self._sender.send("firing", alert)

    def _alert(self, rule: Rule, row: dict[str, Any], count: int, observation: Observation) -> dict[str, Any]:
        ref = observation.ref
        labels = {"alertname": rule.name, **rule.labels}
        labels.update({column: str(row.get(column, "")) for column in rule.group_by})
        values = _Defaults(row, count=count, window=_window_text(rule.window_ms), rule=rule.name)
        values.pop("body", None)
        trace_url = f"{self._external_url}/redirect?" + urlencode(
            {
                "cluster": ref.cluster,
                "group": ref.group,
                "resource": ref.resource,
                "namespace": ref.namespace,
                "name": ref.name,
                "ts": f"{row['time_ms'] / 1000:.3f}",
            }
        )
        # The built-in UI's object page: /objects/<cluster>/<resource>/<namespace or _>/<name>.
        resource = f"{ref.resource}.{ref.group}" if ref.group and ref.resource == "events" else ref.resource
        parts = (ref.cluster, resource, ref.namespace or "_", ref.name)
        ui_url = f"{self._external_url}/objects/" + "/".join(quote(part, safe="") for part in parts)
        annotations = {key: _render(text, values) for key, text in rule.annotations.items()}
        annotations.update(trace_url=trace_url, ui_url=ui_url, count=str(count))
        return {
            "labels": labels,
            "annotations": annotations,
            "startsAt": _iso(row["time_ms"]),
            "endsAt": _iso(self._clock_ms() + int(4 * self._interval * 1000)),
            "generatorURL": trace_url,
        }

    async def tick(self) -> None:
        """Re-send what fires (so Alertmanager keeps it), resolve what no longer does."""
        now = self._clock_ms()
        interval_ms = int(self._interval * 1000)
        if not await self._state.claim_tick(now // interval_ms, interval_ms):
            return
        for rule_name, group, alert in await self._state.firing():
            rule = self._rules.get(rule_name)
            count = await self._state.count_since(rule_name, group, now - rule.window_ms) if rule else 0
            if rule is not None and count > rule.threshold:
                alert["endsAt"] = _iso(now + 4 * interval_ms)
                self._sender.send("refresh", alert)
                continue
            resolved = await self._state.resolve(rule_name, group)
            if resolved is not None:
                resolved["endsAt"] = _iso(now)
                self._sender.send("resolved", resolved)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.tick()
            except Exception:
                log.exception("alert evaluation tick failed")
