"""Prometheus metrics. One :class:`Metrics` per running app, so several apps can share a test process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.audit_events_accepted = Counter(
            "kelemetry_audit_events_accepted",
            "Audit events in accepted webhook batches",
            ["cluster"],
            registry=r,
        )
        self.audit_batches_rejected = Counter(
            "kelemetry_audit_batches_rejected",
            "Webhook requests answered with an error",
            ["reason"],
            registry=r,
        )
        self.audit_events_invalid = Counter(
            "kelemetry_audit_events_invalid",
            "Audit events dropped alone at ingest because a field is longer or stranger than Kubernetes allows",
            ["field"],
            registry=r,
        )
        self.auth_requests_denied = Counter(
            "kelemetry_auth_requests_denied",
            "Read requests refused by authentication or authorization",
            ["reason"],
            registry=r,
        )
        self.http_errors = Counter(
            "kelemetry_http_internal_errors",
            "Requests answered 500 (the log line carries the request id)",
            registry=r,
        )
        self.observations_submitted = Counter(
            "kelemetry_observations_submitted", "Observations handed to the pipeline", ["kind"], registry=r
        )
        self.observations_failed = Counter(
            "kelemetry_observations_failed",
            "Observations dropped because they could not become spans (counted, never silent)",
            ["kind"],
            registry=r,
        )
        self.spool_backlog_records = Gauge(
            "kelemetry_spool_backlog_records",
            "Records accepted into a durable log but not yet handled by this consumer",
            ["consumer"],
            registry=r,
        )
        self.spool_backlog_bytes = Gauge(
            "kelemetry_spool_backlog_bytes",
            "Bytes accepted into a durable log but not yet handled by this consumer",
            ["consumer"],
            registry=r,
        )
        self.spool_used_bytes = Gauge(
            "kelemetry_spool_used_bytes", "Bytes a durable log holds on disk", ["log"], registry=r
        )
        self.spool_capacity_bytes = Gauge(
            "kelemetry_spool_capacity_bytes", "The byte bound of a durable log", ["log"], registry=r
        )
        self.writer_failing = Gauge(
            "kelemetry_writer_failing",
            "1 while a span writer's last attempt failed (its backlog waits in the spool)",
            ["writer"],
            registry=r,
        )
        self.audit_events_rejected = Counter(
            "kelemetry_audit_events_rejected",
            "Audit events dropped alone at parse because they cannot be represented",
            ["reason"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "kelemetry_pipeline_queue_depth",
            "Observations accepted but not yet turned into spans",
            registry=r,
        )
        self.spans_written = Counter(
            "kelemetry_spans_written", "Spans handed to a span writer", ["writer", "service"], registry=r
        )
        self.spans_exported = Counter(
            "kelemetry_spans_exported", "Spans a writer delivered to its destination", ["writer"], registry=r
        )
        self.export_errors = Counter(
            "kelemetry_export_errors", "Failed export attempts (each retry counts)", ["writer"], registry=r
        )
        self.spans_dropped = Counter(
            "kelemetry_spans_dropped", "Spans given up on after every retry failed", ["writer"], registry=r
        )
        self.plugin_errors = Counter(
            "kelemetry_plugin_errors",
            "Exceptions raised by plugins (isolated and skipped)",
            ["plugin"],
            registry=r,
        )
        self.webhook_latency = Histogram(
            "kelemetry_webhook_seconds",
            "Webhook request handling time",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
