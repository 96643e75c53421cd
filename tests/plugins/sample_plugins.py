"""Plugins a fake distribution registers in the plugin API tests (entry points point here)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from kelemetry_py.plugins import (
    Decoration,
    Link,
    LogEntry,
    ObjectRef,
    Observation,
    ObservationSink,
    SourceContext,
    Span,
    SpanInfo,
    ViewInfo,
)


class OwnerTeamDecorator:
    """Tags every span with the team named by the object's ``team`` label, and notes object spans in a log."""

    name = "owner-team"

    def __init__(self, label: str = "team", default: str = "unknown") -> None:
        self.label = label
        self.default = default

    async def decorate(self, span: SpanInfo) -> Decoration | None:
        labels = (span.body or {}).get("metadata", {}).get("labels", {})
        team = labels.get(self.label, self.default) if isinstance(labels, dict) else self.default
        decoration = Decoration(tags={"team": team, "name": "overwritten?"})
        if span.service == "object":
            decoration.logs.append(LogEntry(span.start_ns, "decorated", {"by": self.name}))
        return decoration


class RaisingDecorator:
    name = "raising-decorator"

    async def decorate(self, span: SpanInfo) -> Decoration | None:
        raise RuntimeError(f"cannot decorate {span.name}")


class WrongResultDecorator:
    name = "wrong-decorator"

    async def decorate(self, span: SpanInfo) -> Decoration | None:
        return {"tags": {"x": 1}}  # type: ignore[return-value]


class RaisingLinker:
    name = "raising-linker"

    async def links(self, ref: ObjectRef, body: Mapping[str, Any]) -> Sequence[Link]:
        raise RuntimeError(f"cannot link {ref.name}")


class TickSource:
    """Emits one observation per run, then waits for the app to stop; fails its first ``failures`` runs."""

    name = "ticks"

    def __init__(self, failures: int = 0, cluster: str = "ticks") -> None:
        self.failures = failures
        self.cluster = cluster
        self.runs = 0
        self.emitted = asyncio.Event()

    async def run(self, sink: ObservationSink, context: SourceContext) -> None:
        self.runs += 1
        if self.runs <= self.failures:
            raise RuntimeError(f"run {self.runs} fails")
        ref = ObjectRef(self.cluster, "", "v1", "configmaps", "default", f"tick-{self.runs}")
        await sink.submit(
            [
                Observation(
                    ref=ref,
                    kind=self.name,
                    title="tick",
                    start_ns=1_795_000_000_000_000_000,
                    end_ns=1_795_000_000_000_000_001,
                    dedup_key=f"tick:{self.runs}",
                )
            ],
            wait=True,
        )
        self.emitted.set()
        await context.stopping.wait()


class RaisingSource:
    name = "raising-source"

    async def run(self, sink: ObservationSink, context: SourceContext) -> None:
        raise RuntimeError("no source today")


class ShoutTransform:
    """Upper-cases span names (a stand-in for any renaming a site wants)."""

    name = "shout"

    async def transform(self, spans: list[Span], view: ViewInfo) -> list[Span]:
        for span in spans:
            span.name = span.name.upper()
            span.attributes["view.mode"] = view.mode
        return spans


class RaisingTransform:
    name = "raising-transform"

    async def transform(self, spans: list[Span], view: ViewInfo) -> list[Span]:
        for span in spans:
            span.name = "half-done"  # changed in place before failing: must not leak
        raise RuntimeError("transform failed")


class DroppingRootTransform:
    name = "drops-root"

    async def transform(self, spans: list[Span], view: ViewInfo) -> list[Span]:
        return spans[1:]


class NotAPlugin:
    name = "not-a-plugin"
