"""The pipeline: observations in, spans out (per-object ordered partitions, windows, linkers, decorators)."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Protocol, runtime_checkable

from kelemetry_py.model import Observation


class Overloaded(Exception):
    """The pipeline has no room for a batch; the caller should push back (HTTP 429) and retry later."""

    def __init__(self, retry_after_seconds: float) -> None:
        super().__init__(f"pipeline queue full, retry after {retry_after_seconds:g}s")
        self.retry_after_seconds = retry_after_seconds


class TooLarge(Exception):
    """A batch larger than the sink could ever hold; retrying cannot help (HTTP 413)."""


@runtime_checkable
class ObservationSink(Protocol):
    async def submit(self, observations: Sequence[Observation], *, wait: bool = False) -> None:
        """Accept all of ``observations`` or none. With ``wait=False`` a full pipeline raises :class:`Overloaded`;
        with ``wait=True`` (watchers, file tailers) the call waits for room instead, and a batch too large to be
        kept whole may be kept in parts (a failure partway leaves some kept: offering it again is harmless)."""


class EncodedSink(ObservationSink, Protocol):
    async def submit_encoded(
        self, payloads: Sequence[bytes], observations: Sequence[Sequence[Observation]] | None = None
    ) -> None:
        """Accept all or none of a batch already encoded for the observation log, a record per payload
        (``spool.codec.encode_observations``), with each record's observations when the caller has them decoded
        too; a full sink raises :class:`Overloaded`."""


@runtime_checkable
class ObservationHook(Protocol):
    """Runs in the pipeline before an observation becomes spans (e.g. to attach the differ's diff).

    Return None when done at once, or an awaitable to finish later: the pipeline then parks that observation
    without holding up the other objects of its partition.
    """

    name: str

    def prepare(self, observation: Observation) -> Awaitable[None] | None: ...
