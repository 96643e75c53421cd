"""The fault tests' input: the recorded audit batches, re-batched and copied with unique audit IDs.

Every copy of the recordings gets its own audit-ID prefix, so any number of copies is new work for the webhook
(distinct spans) rather than a re-delivery. Which audit IDs must become spans is decided by the product's own
``AuditConverter`` on the template batches; a copy differs from its template only in the prefix, so its expected
IDs are the template's with that prefix.
"""

from __future__ import annotations

import copy as copying
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from kelemetry_py.config import AuditConfig, RedactionConfig
from kelemetry_py.sources.audit import AuditConverter, parse_event_list

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SCENARIOS = ("deployment-lifecycle", "errors-and-links", "batch-and-stateful")
CLUSTER = "fixture"
_AUDIT_ID = b'"auditID":"'


@dataclass(frozen=True, order=True)
class BatchRef:
    """Batch ``index`` of the templates, in copy ``copy``."""

    copy: int
    index: int


def event_list(items: list[Any]) -> bytes:
    return orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": items})


class Workload:
    """Template batches cut from the recordings; ``body(ref)`` is one copy of one of them."""

    def __init__(self, templates: list[list[Any]], audit: AuditConfig | None = None) -> None:
        converter = AuditConverter(audit or AuditConfig(), RedactionConfig())
        self.templates = [event_list(items) for items in templates]
        self.template_items = templates
        self.events_per_batch = [len(items) for items in templates]
        self.expected_per_batch: list[frozenset[str]] = [
            frozenset(str(obs.tags["auditID"]) for obs in converter.convert(CLUSTER, parse_event_list(body)))
            for body in self.templates
        ]

    @classmethod
    def from_fixtures(cls, batch_size: int = 200, fixtures: Path = FIXTURES) -> Workload:
        """All recorded events, in recording order, cut into batches of ``batch_size`` (the apiserver's
        ``--audit-webhook-batch-max-size`` default is 400)."""
        items: list[Any] = []
        for scenario in SCENARIOS:
            for line in (fixtures / scenario / "audit.jsonl").read_bytes().splitlines():
                if line.strip():
                    items.extend(orjson.loads(line)["items"])
        return cls([items[start : start + batch_size] for start in range(0, len(items), batch_size)])

    @property
    def events_per_copy(self) -> int:
        return sum(self.events_per_batch)

    @staticmethod
    def prefix(copy: int) -> str:
        return f"c{copy}-"

    def body(self, ref: BatchRef) -> bytes:
        return self.templates[ref.index].replace(_AUDIT_ID, _AUDIT_ID + self.prefix(ref.copy).encode())

    def batches(self, copies: Iterable[int]) -> Iterator[BatchRef]:
        """Every template batch of each copy, copy after copy (``itertools.count()`` never ends)."""
        for copy in copies:
            for index in range(len(self.templates)):
                yield BatchRef(copy, index)

    def copies_for(self, events: int) -> int:
        """How many copies make at least ``events`` audit events."""
        return max(1, -(-events // self.events_per_copy))

    def expected_ids(self, refs: Iterable[BatchRef]) -> set[str]:
        """Audit IDs that become spans when these batches are accepted."""
        out: set[str] = set()
        for ref in refs:
            prefix = self.prefix(ref.copy)
            out.update(prefix + audit_id for audit_id in self.expected_per_batch[ref.index])
        return out

    def events_in(self, refs: Iterable[BatchRef]) -> int:
        return sum(self.events_per_batch[ref.index] for ref in refs)

    def kept_event(self, verb: str) -> dict[str, Any]:
        """A recorded event of ``verb`` that becomes a span (a template for poison events)."""
        for items, expected in zip(self.template_items, self.expected_per_batch, strict=True):
            for item in items:
                if item["verb"] == verb and item["auditID"] in expected and item.get("requestObject") is not None:
                    return copying.deepcopy(item)
        raise LookupError(f"no recorded {verb} event becomes a span")


# -- poison ----------------------------------------------------------------------------------------------------

DEEP_NESTING = 100_000
_U63 = 1 << 63


@dataclass(frozen=True)
class Poison:
    """One event no writer can represent as recorded: where it goes wrong and what a 400 must name."""

    name: str
    fields: tuple[str, ...]  # a 400 must name one of these


POISONS = (
    Poison("year-1", ("stageTimestamp", "requestReceivedTimestamp")),
    Poison("year-2300", ("stageTimestamp", "requestReceivedTimestamp")),
    Poison("year-9999", ("stageTimestamp", "requestReceivedTimestamp")),
    Poison("code-2^63", ("responseStatus", "code")),
    Poison("nesting-100k", ("requestObject",)),
    Poison("wrong-type-code", ("responseStatus", "code")),
    Poison("wrong-type-objectRef", ("objectRef",)),
)


def poison_event(workload: Workload, poison: Poison, audit_id: str) -> bytes:
    """The poison event as JSON: a recorded event that becomes a span, with one field made unrepresentable."""
    if poison.name == "nesting-100k":
        # The patch document is what the audit span logs, so it is parsed: 100k nested lists inside it.
        event = workload.kept_event("patch")
        event["auditID"] = audit_id
        event["requestObject"] = None
        encoded = orjson.dumps(event)
        nested = b"[" * DEEP_NESTING + b"]" * DEEP_NESTING
        return encoded.replace(b'"requestObject":null', b'"requestObject":' + nested)
    event = workload.kept_event("update")
    event["auditID"] = audit_id
    if poison.name.startswith("year-"):
        year = int(poison.name.removeprefix("year-"))
        stamp = "9999-12-31T23:59:59.999999Z" if year == 9999 else f"{year:04d}-01-01T00:00:00.000000Z"
        event["requestReceivedTimestamp"] = stamp
        event["stageTimestamp"] = stamp
    elif poison.name == "code-2^63":
        event["responseStatus"] = {"metadata": {}, "code": _U63}
    elif poison.name == "wrong-type-code":
        event["responseStatus"] = {"metadata": {}, "code": "200"}
    elif poison.name == "wrong-type-objectRef":
        event["objectRef"] = ["deployments", "web"]
    else:
        raise ValueError(f"unknown poison {poison.name}")
    return orjson.dumps(event)


def with_poison(clean_body: bytes, poison_events: list[bytes], at: int) -> bytes:
    """``clean_body`` (an EventList) with the poison events inserted from item ``at`` on, bytes spliced so that
    the nesting poison never goes through a JSON encoder with a depth limit."""
    document = orjson.loads(clean_body)
    items = [orjson.dumps(item) for item in document["items"]]
    items[at:at] = poison_events
    head = b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":['
    return head + b",".join(items) + b"]}"
