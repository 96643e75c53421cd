"""Decoding on the event loop: for one CPU, and for the first batches while the worker processes start."""

from __future__ import annotations

from kelemetry_py.config import AuditConfig, RedactionConfig
from kelemetry_py.model import KIND_RECORD
from kelemetry_py.sources.audit import AuditConverter
from kelemetry_py.sources.auditdecode import DecodedBatch
from kelemetry_py.spool.codec import encode_observations

_PER_RECORD = 64  # observations


def decode_batch(
    converter: AuditConverter, cluster: str, body: bytes, *, keep_observations: bool = True
) -> DecodedBatch:
    events, rejected = converter.parse(body)
    observations, dropped = converter.convert_reporting(cluster, events)
    records = [observations[start : start + _PER_RECORD] for start in range(0, len(observations), _PER_RECORD)]
    return DecodedBatch(
        accepted=len(events),
        traced=sum(1 for observation in observations if observation.kind != KIND_RECORD),
        rejected=rejected,
        dropped=dropped,
        payloads=[encode_observations(record) for record in records],
        observations=records if keep_observations else None,
    )


class InlineDecoder:
    def __init__(
        self,
        audit: AuditConfig,
        redaction: RedactionConfig,
        *,
        records: bool,
        whole_bodies: bool = True,
        keep_observations: bool = True,
    ) -> None:
        self._converter = AuditConverter(audit, redaction, records=records, whole_bodies=whole_bodies)
        # False where only the encoded records leave (an ingest process): a batch waiting for its answer then holds
        # its records, not its decoded observations as well.
        self._keep_observations = keep_observations

    async def start(self) -> None:
        return None

    async def started(self) -> bool:
        return False

    @property
    def worker_pids(self) -> list[int]:
        return []

    async def decode(self, cluster: str, body: bytes) -> DecodedBatch:
        return decode_batch(self._converter, cluster, body, keep_observations=self._keep_observations)

    async def close(self) -> None:
        return None
