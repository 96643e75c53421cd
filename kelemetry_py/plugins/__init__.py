"""The plugin API: everything a plugin author imports, in one place.

Four kinds of plugin, each a :class:`typing.Protocol` and an entry-point group:

========================  ===================================  =====================================================
group                     protocol                             what it does
========================  ===================================  =====================================================
``kelemetry_py.sources``  :class:`Source`                      emits :class:`Observation` into the pipeline
``kelemetry_py.linkers``  :class:`Linker`                      object → related objects (role, class, any cluster)
``kelemetry_py.decorators``  :class:`Decorator`                adds tags and logs to object, audit and event spans
``kelemetry_py.frontend_transforms``  :class:`FrontendTransform`  reshapes a rendered view before it is served
========================  ===================================  =====================================================

A plugin is a class (or factory) named by an entry point. The ``plugins`` section of the YAML file enables,
orders and configures them: ``plugins.enabled[<group>]`` lists names in order (empty: every installed one, by
name), ``plugins.disabled`` lists names never to load, ``plugins.settings[<name>]`` is passed to the constructor
as keyword arguments. A plugin that fails to load, raises or times out is logged, counted in the
``kelemetry_plugin_errors_total{plugin=…}`` metric and skipped; the rest of the pipeline carries on.
See ``docs/plugins.md`` for a worked example.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from kelemetry_py.config import Config
from kelemetry_py.frontend.transforms import FrontendTransform, ViewInfo
from kelemetry_py.linking import METADATA_ONLY, Linker
from kelemetry_py.metrics import Metrics
from kelemetry_py.model import (
    Attributes,
    AttrValue,
    Link,
    LinkRole,
    LogEntry,
    ObjectRef,
    Observation,
    Span,
)
from kelemetry_py.pipeline import ObservationSink, Overloaded
from kelemetry_py.pipeline.decorators import Decoration, Decorator, SpanInfo

SOURCES_GROUP = "kelemetry_py.sources"
LINKERS_GROUP = "kelemetry_py.linkers"
DECORATORS_GROUP = "kelemetry_py.decorators"
TRANSFORMS_GROUP = "kelemetry_py.frontend_transforms"


@dataclass(frozen=True, slots=True)
class SourceContext:
    """What a running source may use. ``stopping`` is set when the app shuts down: finish the current batch
    and return (a source that does not return within the grace period is cancelled)."""

    config: Config
    metrics: Metrics
    stopping: asyncio.Event

    @property
    def default_cluster(self) -> str:
        return self.config.cluster


@runtime_checkable
class Source(Protocol):
    """Emits observations until ``context.stopping`` is set. Use ``sink.submit(batch, wait=True)``: it waits
    for room instead of refusing. Raising restarts the source after a back-off; returning ends it."""

    name: str

    async def run(self, sink: ObservationSink, context: SourceContext) -> None: ...


# Imported last: the helpers use the protocols above.
from kelemetry_py.plugins.loading import (  # noqa: E402
    load_decorators,
    load_linkers,
    load_sources,
    load_transforms,
)

__all__ = [
    "DECORATORS_GROUP",
    "LINKERS_GROUP",
    "METADATA_ONLY",
    "SOURCES_GROUP",
    "TRANSFORMS_GROUP",
    "AttrValue",
    "Attributes",
    "Decoration",
    "Decorator",
    "FrontendTransform",
    "Link",
    "LinkRole",
    "Linker",
    "LogEntry",
    "ObjectRef",
    "Observation",
    "ObservationSink",
    "Overloaded",
    "Source",
    "SourceContext",
    "Span",
    "SpanInfo",
    "ViewInfo",
    "load_decorators",
    "load_linkers",
    "load_sources",
    "load_transforms",
]
