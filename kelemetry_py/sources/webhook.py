"""The audit webhook: kube-apiserver POSTs audit EventList batches here.

Answers 200 only once a batch is kept (appended to the durable spool); 4xx with a reason for what the apiserver
should not resend; 429 with Retry-After when the spool is full, so the apiserver's webhook backend retries the
batch; 413 for a batch that could never fit. An event that cannot be represented (a time outside what a trace can
hold, a status code out of range) is dropped alone, counted and named in the answer: it never takes the other
events of its batch down with it.
"""

from __future__ import annotations

import hmac
import logging
import time
import zlib
from typing import Protocol

from aiohttp import web

from kelemetry_py.config import AuditConfig, HttpConfig, IngestConfig, is_cluster_name
from kelemetry_py.metrics import Metrics
from kelemetry_py.pipeline import EncodedSink, Overloaded, TooLarge
from kelemetry_py.pipeline.priority import Priority
from kelemetry_py.sources.audit import InvalidAuditBatch, log_dropped
from kelemetry_py.sources.auditdecode import BatchDecoder, DecoderUnavailable

log = logging.getLogger(__name__)


class WebhookMetrics(Protocol):
    """What the webhook counts. In the serving process, :class:`CountedWebhook` counts it in the Prometheus
    metrics; an ingest process forwards each call to the serving process, which counts it there."""

    def answered(self, code: int, seconds: float) -> None: ...

    def batch_rejected(self, reason: str) -> None: ...

    def events_accepted(self, cluster: str, count: int) -> None: ...

    def event_rejected(self, reason: str) -> None: ...

    def event_invalid(self, field: str) -> None: ...


class CountedWebhook:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def answered(self, code: int, seconds: float) -> None:
        self._metrics.webhook_latency.labels(str(code)).observe(seconds)

    def batch_rejected(self, reason: str) -> None:
        self._metrics.audit_batches_rejected.labels(reason).inc()

    def events_accepted(self, cluster: str, count: int) -> None:
        self._metrics.audit_events_accepted.labels(cluster).inc(count)

    def event_rejected(self, reason: str) -> None:
        self._metrics.audit_events_rejected.labels(reason).inc()

    def event_invalid(self, field: str) -> None:
        self._metrics.audit_events_invalid.labels(field).inc()


class AuditWebhook:
    """Serve it from an AppRunner with ``auto_decompress=False``: the webhook inflates gzip bodies itself."""

    def __init__(
        self,
        *,
        sink: EncodedSink,
        decoder: BatchDecoder,
        metrics: WebhookMetrics,
        default_cluster: str,
        audit: AuditConfig,
        http: HttpConfig,
        ingest: IngestConfig | None = None,
        clusters: frozenset[str] | None = None,
        priority: Priority | None = None,
    ) -> None:
        self._priority = priority or Priority()  # shared with the pipeline, so that a batch's answer goes first
        self._sink = sink
        self._decoder = decoder
        self._metrics = metrics
        self._default_cluster = default_cluster
        self._max_body = audit.max_body_bytes
        self._max_in_flight = audit.max_in_flight_bytes
        self.in_flight_bytes = 0  # of the bodies being received and decoded now
        # http.webhook_tokens is the older name of ingest.tokens; both are accepted.
        tokens = [*(ingest.tokens if ingest is not None else []), *http.webhook_tokens]
        self._tokens = [token.encode() for token in tokens]
        self._clusters = clusters  # None: any well-formed name

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/audit", self.handle)
        app.router.add_post("/audit/{cluster}", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        code = 500  # unless an answer comes back
        try:
            with self._priority.serving():
                response = await self._handle(request)
            code = response.status
            return response
        finally:
            self._metrics.answered(code, time.perf_counter() - started)

    async def _handle(self, request: web.Request) -> web.Response:
        cluster = request.match_info.get("cluster") or self._default_cluster
        if self._tokens and not self._authorized(request):
            return self._reject(401, "unauthorized", "missing or unknown bearer token")
        if not is_cluster_name(cluster) or (self._clusters is not None and cluster not in self._clusters):
            # No per-cluster metric series exists for a name that is not configured.
            return self._reject(404, "unknown_cluster", "no such cluster: not a configured cluster name")
        if "Content-Type" in request.headers and request.content_type != "application/json":
            return self._reject(
                415, "content_type", f"Content-Type must be application/json, not {request.content_type}"
            )
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("identity", "gzip", ""):
            return self._reject(415, "content_encoding", f"Content-Encoding {encoding!r} is not supported (gzip is)")
        if request.content_length is not None and request.content_length > self._max_body:
            return self._reject(413, "too_large", f"body of {request.content_length} bytes exceeds {self._max_body}")
        reserved = _Reserved(self, self._max_in_flight)
        try:
            return await self._receive(request, cluster, encoding == "gzip", reserved)
        finally:
            reserved.release()

    async def _receive(self, request: web.Request, cluster: str, gzip: bool, reserved: _Reserved) -> web.Response:
        try:
            # What a body will take is known from its length unless it is compressed or chunked: then it is
            # counted as it is read (inflated).
            known = not gzip and request.content_length is not None
            if known:
                reserved.grow(request.content_length or 0)
            # The body is dropped once decoded: a batch waiting for its answer holds only its records.
            batch = await self._decoder.decode(
                cluster, await self._read_body(request, gzip=gzip, reserved=None if known else reserved)
            )
        except _Busy:
            self._metrics.batch_rejected("in_flight")
            return web.json_response(
                {"error": f"more than {self._max_in_flight} bytes of batches in flight; retry later"},
                status=429,
                headers={"Retry-After": "1"},
            )
        except _TooLarge as exc:
            return self._reject(413, "too_large", str(exc))
        except (zlib.error, InvalidAuditBatch) as exc:
            reason = "bad_encoding" if isinstance(exc, zlib.error) else "malformed"
            text = f"gzip body could not be decoded: {exc}" if isinstance(exc, zlib.error) else str(exc)
            return self._reject(400, reason, text)
        except DecoderUnavailable:
            self._metrics.batch_rejected("decoder_restarting")
            return web.json_response(
                {"error": "the batch could not be decoded now; retry later"}, status=503, headers={"Retry-After": "1"}
            )
        for drop in batch.dropped:
            self._metrics.event_invalid(drop.field)
            log_dropped(drop)
        try:
            await self._sink.submit_encoded(batch.payloads, batch.observations)
        except Overloaded as exc:
            self._metrics.batch_rejected("overloaded")
            return web.json_response(
                {"error": str(exc)},
                status=429,
                headers={"Retry-After": f"{max(1, round(exc.retry_after_seconds))}"},
            )
        except TooLarge as exc:
            return self._reject(413, "too_large", f"batch can never fit the spool: {exc}")
        except Exception:
            # The disk refused the append: nothing was kept, so the apiserver must retry. No detail leaves.
            log.exception("audit webhook: could not keep a batch")
            self._metrics.batch_rejected("unavailable")
            return web.json_response(
                {"error": "the batch could not be stored; retry later"}, status=503, headers={"Retry-After": "5"}
            )
        self._metrics.events_accepted(cluster, batch.accepted)
        answer: dict[str, object] = {"accepted": batch.accepted, "observations": batch.traced}
        if poison := batch.rejected:
            for item in poison:
                self._metrics.event_rejected(item.reason)
                log.warning("audit webhook: dropped items[%d]: %s", item.index, item.message)
            answer["rejected"] = [{"index": p.index, "reason": p.reason, "message": p.message} for p in poison]
        return web.json_response(answer)

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return False
        presented = header[len("Bearer ") :].strip().encode()
        return any(hmac.compare_digest(presented, token) for token in self._tokens)

    async def _read_body(self, request: web.Request, *, gzip: bool, reserved: _Reserved | None) -> bytes:
        chunks: list[bytes] = []
        size = 0
        decompressor = zlib.decompressobj(wbits=31) if gzip else None
        async for chunk in request.content.iter_any():  # whole chunks as they came: none cut up and copied
            if decompressor is not None:
                # Bounded inflation: a small gzip bomb must not balloon past the limit.
                chunk = decompressor.decompress(chunk, self._max_body + 1 - size)
                if decompressor.unconsumed_tail:
                    raise _TooLarge(f"decompressed body exceeds {self._max_body} bytes")
            size += len(chunk)
            if size > self._max_body:
                raise _TooLarge(f"body exceeds {self._max_body} bytes")
            if reserved is not None:
                reserved.grow(len(chunk))
            chunks.append(chunk)
        if decompressor is not None:
            if not decompressor.eof:
                raise zlib.error("truncated gzip stream")
            if decompressor.unused_data:
                raise zlib.error("trailing data after the gzip stream")
        return b"".join(chunks)

    def _reject(self, status: int, reason: str, message: str) -> web.Response:
        self._metrics.batch_rejected(reason)
        log.warning("audit webhook: rejected a batch with %d: %s", status, message)
        return web.json_response({"error": message}, status=status)


class _TooLarge(Exception):
    pass


class _Busy(Exception):
    """More bytes of batches are in flight than ``audit.max_in_flight_bytes``: 429, the apiserver resends."""


class _Reserved:
    """A request's share of the webhook's bytes in flight, given back when its answer is ready."""

    def __init__(self, webhook: AuditWebhook, limit: int) -> None:
        self._webhook = webhook
        self._limit = limit
        self.size = 0

    def grow(self, size: int) -> None:
        webhook = self._webhook
        others = webhook.in_flight_bytes - self.size
        # One batch is taken whatever its size when it is alone: the bound holds back a crowd, not a batch.
        if others and others + self.size + size > self._limit:
            raise _Busy
        webhook.in_flight_bytes += size
        self.size += size

    def release(self) -> None:
        self._webhook.in_flight_bytes -= self.size
        self.size = 0
