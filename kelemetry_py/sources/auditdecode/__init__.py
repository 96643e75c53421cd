"""Turning an audit batch's body into what the observation log keeps: parse, check, filter, redact, encode.

Two implementations side by side, chosen by ``audit.decode_processes``: :mod:`.inline` does the work on the event
loop; :mod:`.processes` hands it to worker processes, so the CPU a batch costs before its answer runs beside the
loop (and beside each other) instead of taking turns with the pipeline on it. Either way what comes out is
redacted and encoded; with workers only that crosses back to the serving process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from kelemetry_py.config import AuditConfig, RedactionConfig
from kelemetry_py.metrics import Metrics
from kelemetry_py.model import Observation
from kelemetry_py.process import usable_cpus
from kelemetry_py.sources.audit import Dropped, Rejected


class DecoderUnavailable(Exception):
    """The batch was not decoded for a reason of ours, not the batch's (a worker died): the sender should retry."""


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    accepted: int  # events of the batch that were representable
    traced: int  # observations that become spans (search records alone are not)
    rejected: list[Rejected]  # events dropped alone as unrepresentable
    dropped: list[Dropped]  # events dropped alone for a value Kubernetes never accepts
    # The observations encoded for the observation log, a record each few dozen: the pipeline decodes one record in
    # one slice of the loop's time, which a request arriving meanwhile waits for. Empty when there are none.
    payloads: list[bytes]
    observations: list[list[Observation]] | None = None  # the same, decoded, when the work was done in this process


class BatchDecoder(Protocol):
    async def start(self) -> None: ...

    async def started(self) -> bool:
        """Wait until any worker processes are up; whether batches are now decoded by them."""

    @property
    def worker_pids(self) -> list[int]:
        """The worker processes' ids (none while they start, or when decoding on the loop)."""

    async def decode(self, cluster: str, body: bytes) -> DecodedBatch:
        """Raises :class:`~kelemetry_py.sources.audit.InvalidAuditBatch` for a body no apiserver sends, and
        :class:`DecoderUnavailable` when it could not be decoded for a reason of ours."""

    async def close(self) -> None: ...


def decoder_processes(audit: AuditConfig) -> int:
    """How many worker processes ``audit.decode_processes`` asks for on this machine (-1: one per CPU the process
    may use, its CPU limit included, at most 4; none on a single CPU where they could only take turns with the
    loop)."""
    if audit.decode_processes >= 0:
        return audit.decode_processes
    cpus = usable_cpus()
    return 0 if cpus < 2 else min(cpus, 4)


def create_decoder(
    audit: AuditConfig, redaction: RedactionConfig, metrics: Metrics, *, records: bool, whole_bodies: bool = True
) -> BatchDecoder:
    processes = decoder_processes(audit)
    if processes == 0:
        from kelemetry_py.sources.auditdecode.inline import InlineDecoder

        return InlineDecoder(audit, redaction, records=records, whole_bodies=whole_bodies)
    from kelemetry_py.sources.auditdecode.processes import ProcessDecoder

    return ProcessDecoder(processes, audit, redaction, metrics, records=records, whole_bodies=whole_bodies)
