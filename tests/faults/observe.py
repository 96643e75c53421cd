"""What arrived where: audit IDs in the embedded store after the process exited, and at the OTLP receiver."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from kelemetry_py.model import SERVICE_AUDIT, SERVICE_OBJECT, Span
from kelemetry_py.storage.sqlite import SqliteStore
from tests.support.otlp_receiver import OtlpReceiver

_KEY_TAGS = ("cluster", "group", "resource", "namespace", "name")  # an object key's parts (ObjectRef.key)


async def stored_audit_ids(store_path: str | Path) -> set[str]:
    """Audit IDs of the audit spans in a store file, read through the store's own API. Call it only once the
    process that wrote the file has exited."""
    if not await asyncio.to_thread(Path(store_path).exists):
        return set()
    async with SqliteStore(str(store_path)) as store:
        return set(await store.tag_values("auditID"))


@dataclass
class Received:
    """An index of the spans an OTLP receiver got, re-deliveries included; it takes them from the receiver."""

    receiver: OtlpReceiver
    audit_ids: set[str] = field(default_factory=set)
    deliveries: Counter[tuple[int, int]] = field(default_factory=Counter)  # (trace id, span id) → times received
    # (object key, window start) → the (trace id, span id) pairs its root span arrived with
    roots: defaultdict[tuple[str, int], set[tuple[int, int]]] = field(default_factory=lambda: defaultdict(set))
    traces: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.receiver.take_spans()  # whatever arrived before belongs to an earlier run

    def update(self) -> Received:
        for span in self.receiver.take_spans():
            self._index(span)
        return self

    def _index(self, span: Span) -> None:
        self.deliveries[(span.trace_id, span.span_id)] += 1
        self.traces.add(span.trace_id)
        if span.service == SERVICE_AUDIT and "auditID" in span.attributes:
            self.audit_ids.add(str(span.attributes["auditID"]))
        if span.service == SERVICE_OBJECT and span.parent_id is None:
            key = "/".join(str(span.attributes.get(tag, "")) for tag in _KEY_TAGS)
            self.roots[(key, span.start_ns)].add((span.trace_id, span.span_id))

    async def wait_for(self, audit_ids: set[str], within: float) -> bool:
        """Wait until every one of ``audit_ids`` arrived; False if some had not within ``within`` seconds."""
        return await self.receiver.wait_until(lambda: audit_ids <= self.update().audit_ids, within)

    @property
    def duplicate_deliveries(self) -> int:
        """Spans received more than once (each extra delivery counts)."""
        return sum(count - 1 for count in self.update().deliveries.values())

    @property
    def split_roots(self) -> dict[tuple[str, int], set[tuple[int, int]]]:
        """Object windows whose root span arrived with more than one id."""
        return {key: ids for key, ids in self.update().roots.items() if len(ids) > 1}

    @property
    def orphan_traces(self) -> set[int]:
        """Traces that got spans but never their object span."""
        self.update()
        rooted = {trace_id for ids in self.roots.values() for trace_id, _ in ids}
        return self.traces - rooted
