"""Prometheus metrics. One :class:`Metrics` per running app, so several apps can share a test process.

Names follow Prometheus conventions: counters are exposed with ``_total`` (prometheus_client appends it), durations
end in ``_seconds`` and sizes in ``_bytes``. ``docs/operations.md`` lists them with the alerts built on them.
"""

from __future__ import annotations

import os
import platform

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from kelemetry_py import __version__


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
        self.audit_decode_workers = Gauge(
            "kelemetry_audit_decode_workers",
            "Worker processes decoding webhook batches (0 while they start or restart, or with none configured)",
            registry=r,
        )
        self.audit_decode_workers_memory = Gauge(
            "kelemetry_audit_decode_workers_resident_bytes",
            "Resident memory of the webhook's decoding worker processes, summed (process_resident_memory_bytes is "
            "the serving process's alone)",
            registry=r,
        )
        self.ingest_process_up = Gauge(
            "kelemetry_ingest_process_up",
            "1 while the ingest process (ingest.process) serves the audit webhook",
            registry=r,
        )
        self.ingest_process_restarts = Counter(
            "kelemetry_ingest_process_restarts",
            "Times the ingest process exited unasked, or failed to start, and another was started",
            registry=r,
        )
        self.ingest_process_connections = Counter(
            "kelemetry_ingest_process_connections",
            "Webhook connections accepted on the main listener with ingest.process, by the process that served them "
            "(serving_process: no ingest process took them, so each was closed after its first answer)",
            ["served_by"],
            registry=r,
        )
        self.ingest_process_memory = Gauge(
            "kelemetry_ingest_process_resident_bytes",
            "Resident memory of the ingest process (process_resident_memory_bytes is the serving process's alone)",
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
        self.spool_used_bytes = Gauge(
            "kelemetry_spool_used_bytes", "Bytes a durable log holds on disk", ["log"], registry=r
        )
        # A batch's 200 waits for this, so the webhook's latency splits into it and the rest (decoding, turns of
        # the loop): at full speed on two CPUs it was a third to a half of it, the disk's part 2-3 ms.
        self.spool_append_seconds = Histogram(
            "kelemetry_spool_append_duration_seconds",
            "Time from an append to a durable log until it is kept (written, and fsynced with spool.fsync always), "
            "the wait for the group commit before it included",
            ["log"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
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
            "kelemetry_webhook_request_duration_seconds",
            "Audit webhook request handling time, by HTTP status code",
            ["code"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.build_info = Gauge(
            "kelemetry_build_info",
            "Always 1; the labels say which kelemetry-py and Python run",
            ["version", "python_version"],
            registry=r,
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self.store_size = Gauge(
            "kelemetry_store_size_bytes",
            "Size on disk of the embedded store (database, WAL and shared-memory files)",
            registry=r,
        )
        # Fed by the durable spool: what each consumer (a span writer, the pipeline) has yet to read.
        self.spool_backlog_bytes = Gauge(
            "kelemetry_spool_backlog_bytes",
            "Bytes in the spool not yet consumed, per consumer",
            ["consumer"],
            registry=r,
        )
        self.spool_backlog_records = Gauge(
            "kelemetry_spool_backlog_records",
            "Records in the spool not yet consumed, per consumer",
            ["consumer"],
            registry=r,
        )
        self.spool_capacity_bytes = Gauge(
            "kelemetry_spool_capacity_bytes",
            "A durable log's configured bound in bytes (the near-full alert divides its used bytes by it)",
            ["log"],
            registry=r,
        )
        self.spool_dropped = Counter(
            "kelemetry_spool_dropped",
            "Records a consumer skipped, per consumer and reason (undecodable: damaged on disk, or unreadable)",
            ["consumer", "reason"],
            registry=r,
        )
        # Fed by the watchers.
        self.watch_lag = Gauge(
            "kelemetry_watch_lag_seconds",
            "Age of the newest watch event or bookmark handled, per cluster",
            ["cluster"],
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


def files_size_bytes(path: str) -> int:
    """Bytes of a SQLite database with its ``-wal`` and ``-shm`` files (absent ones count 0). Blocking: run it
    in a thread."""
    total = 0
    for name in (path, f"{path}-wal", f"{path}-shm"):
        try:
            total += os.stat(name).st_size
        except OSError:
            continue
    return total
