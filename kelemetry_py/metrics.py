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
        self.observations_submitted = Counter(
            "kelemetry_observations_submitted", "Observations handed to the pipeline", ["kind"], registry=r
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

        self.search_records = Gauge(
            "kelemetry_search_records", "Records in the search index", ["kind"], registry=r
        )
        self.search_bytes = Gauge("kelemetry_search_bytes", "Bytes the search index uses", registry=r)
        self.search_records_evicted = Counter(
            "kelemetry_search_records_evicted",
            "Search records deleted for retention or the size bound",
            ["reason"],
            registry=r,
        )
        self.alerts_sent = Counter(
            "kelemetry_alerts_sent",
            "Alerts delivered to Alertmanager (state: firing, refresh, resolved)",
            ["state"],
            registry=r,
        )
        self.alert_send_errors = Counter(
            "kelemetry_alert_send_errors", "Failed Alertmanager posts (each retry counts)", registry=r
        )
        self.alerts_dropped = Counter(
            "kelemetry_alerts_dropped", "Alert states given up on after every retry failed", registry=r
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
