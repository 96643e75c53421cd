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

        # Kubernetes watchers (kelemetry_py.sources.watchers, pipeline.diffs).
        self.leader = Gauge(
            "kelemetry_leader",
            "Watchers of the cluster (objects, events) whose Lease this replica holds",
            ["cluster"],
            registry=r,
        )
        self.leader_handovers = Counter(
            "kelemetry_leader_handovers",
            "Times this replica took over a watcher's Lease from another holder",
            ["cluster"],
            registry=r,
        )
        self.watchers_up = Gauge(
            "kelemetry_watchers_up",
            "1 while every watch engine of the cluster is connected, else 0",
            ["cluster"],
            registry=r,
        )
        self.watch_held_bytes = Gauge(
            "kelemetry_watch_held_bytes",
            "Changes (objects) and Events (events, on a standby) held until claimed, emitted or handled by the leader",
            ["watcher"],
            registry=r,
        )
        self.watch_held_dropped = Counter(
            "kelemetry_watch_held_dropped",
            "Held changes and Events a standby let go past kube.diff_pending_max_bytes",
            ["watcher"],
            registry=r,
        )
        self.diff_attach = Counter(
            "kelemetry_diff_attach",
            "Audit spans that looked for their change's diff: hit (attached) or miss",
            ["result"],
            registry=r,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
