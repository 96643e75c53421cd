"""Frontend transforms (the plugin kind that reshapes a rendered view) and running them; a failing transform
leaves the view as it was. Re-exported by :mod:`kelemetry_py.plugins`."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from kelemetry_py.metrics import Metrics
from kelemetry_py.model import Span


@dataclass(frozen=True, slots=True)
class ViewInfo:
    """Which view a frontend transform is shaping: the display mode's name and the object it was asked for."""

    mode: str
    object_key: str
    trace_id: int


@runtime_checkable
class FrontendTransform(Protocol):
    """Reshapes the spans of a rendered view (rename, add tags, drop noise). The first span is the root and
    must stay first. Return a new list; the spans given are copies, so changing them in place is fine too."""

    name: str

    async def transform(self, spans: list[Span], view: ViewInfo) -> list[Span]: ...


logger = logging.getLogger(__name__)

TRANSFORM_TIMEOUT_SECONDS = 5.0


async def apply_transforms(
    transforms: Sequence[FrontendTransform],
    spans: list[Span],
    view: ViewInfo,
    metrics: Metrics | None = None,
    *,
    timeout_seconds: float = TRANSFORM_TIMEOUT_SECONDS,
) -> list[Span]:
    """The view's spans after every transform, in order. Each transform works on copies, so one that raises,
    times out or returns something unusable (not spans, no spans, a different root) is simply left out."""
    for transform in transforms:
        name = getattr(transform, "name", type(transform).__name__)
        try:
            async with asyncio.timeout(timeout_seconds):
                result = await transform.transform(_copies(spans), view)
            _check(result, spans)
        except Exception as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else f"failed: {exc!r}"
            logger.warning("frontend transform %s %s on %s", name, reason, view.object_key, exc_info=True)
            if metrics is not None:
                metrics.plugin_errors.labels(plugin=name).inc()
            continue
        spans = result
    return spans


def _copies(spans: list[Span]) -> list[Span]:
    return [dataclasses.replace(span, attributes=dict(span.attributes), logs=list(span.logs)) for span in spans]


def _check(result: object, before: list[Span]) -> None:
    if not isinstance(result, list) or not result:
        raise TypeError(f"returned {type(result).__name__} {result!r:.80}, not a non-empty list of spans")
    bad = [item for item in result if not isinstance(item, Span)]
    if bad:
        raise TypeError(f"returned {len(bad)} item(s) that are not Spans, e.g. {bad[0]!r:.80}")
    if (result[0].trace_id, result[0].span_id) != (before[0].trace_id, before[0].span_id):
        raise ValueError("the root span must stay first")
