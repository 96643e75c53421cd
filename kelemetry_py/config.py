"""Configuration: one YAML file, every key overridable by environment variable and by flag.

Precedence: defaults < YAML file < ``KELEMETRY_SECTION__KEY`` environment variables < command-line flags.
Every problem is reported as ``ConfigError("section.key: reason")`` before anything starts.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

ENV_PREFIX = "KELEMETRY_"

MUTATING_VERBS = ["create", "update", "patch", "delete", "deletecollection"]


class ConfigError(ValueError):
    """A configuration key is wrong; the message starts with the key."""


@dataclass
class HttpConfig:
    # Loopback by default: anything wider is said explicitly (the image and deploy manifests say 0.0.0.0).
    host: str = "127.0.0.1"
    port: int = 8080
    # A separate port for the query frontend; 0 serves it on the webhook's port.
    frontend_port: int = 0
    # A separate listener for the audit webhook (with the ingest.* TLS, client CA and tokens); 0 serves the
    # webhook on the main port, where only ingest.tokens can protect it.
    ingest_port: int = 0
    # TLS of the main (query) listener. Client certificates belong to the ingest listener (ingest.client_ca_file).
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # Moved to ingest.client_ca_file (client certificates on the main port break browsers and probes).
    client_ca_file: str = ""
    # Bearer tokens accepted on the webhook, an alias of ingest.tokens (both lists are accepted).
    webhook_tokens: list[str] = field(default_factory=list)


@dataclass
class IngestConfig:
    """How the kube-apiserver authenticates to /audit: its own trust domain, apart from people and tools."""

    # Server certificate of the ingest listener (http.ingest_port).
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # Client certificates the apiserver presents (its --audit-webhook-config-file kubeconfig); needs TLS.
    client_ca_file: str = ""
    # Bearer tokens accepted on /audit; empty (and no client CA) accepts any caller.
    tokens: list[str] = field(default_factory=list)
    # Serve the audit webhook from a process of its own, which reads, decodes and redacts the batches on a second
    # CPU; the serving process still keeps each batch before it is answered. On http.ingest_port, or on the main
    # port, which passes it each webhook connection (plain HTTP only: a TLS session cannot move to another
    # process). "auto" (true where this process may use two CPUs or more, and audit.decode_processes is 0, unless
    # the webhook is on a TLS main port), true or false.
    process: str = "auto"


@dataclass
class AuthToken:
    token: str = ""
    user: str = ""
    # "*" means every cluster / every namespace.
    clusters: list[str] = field(default_factory=lambda: ["*"])
    namespaces: list[str] = field(default_factory=lambda: ["*"])
    # Cluster-scoped objects (Nodes, ClusterRoles, Namespaces...).
    cluster_scoped: bool = False


@dataclass
class KubernetesAuthConfig:
    # The cluster whose TokenReview / SubjectAccessReview decide: a kube.clusters name, or a cluster of its own
    # given by kubeconfig/context/in_cluster below (then this is the name its objects are recorded under).
    cluster: str = ""
    kubeconfig: str = ""
    context: str = ""
    in_cluster: bool = False
    # Audiences the caller's token must be valid for; empty means the apiserver's own.
    audiences: list[str] = field(default_factory=list)
    # How long TokenReview and SubjectAccessReview decisions are reused.
    cache_ttl_seconds: float = 60.0
    cache_max_entries: int = 100_000


AUTH_MODES = ("none", "token", "kubernetes")


@dataclass
class AuthConfig:
    """Who may read (every read surface: Jaeger APIs, /redirect, /api/analysis, gRPC, /metrics)."""

    mode: str = "none"
    tokens: list[AuthToken] = field(default_factory=list)
    kubernetes: KubernetesAuthConfig = field(default_factory=KubernetesAuthConfig)


@dataclass
class SecurityConfig:
    # Allow a non-loopback listener without ingest or query authentication (only on a trusted network).
    allow_unauthenticated: bool = False


@dataclass
class MetricsConfig:
    # /metrics without the admin scope (for a Prometheus that cannot send a token).
    public: bool = False


@dataclass
class AuditConfig:
    max_body_bytes: int = 32 * 1024 * 1024
    # Bytes of batch bodies being received and decoded at once: past it a batch is answered 429 before it is read
    # (the apiserver resends it), so that a flood waits in the apiserver's buffer, not in this process's memory.
    # A batch alone is taken whatever its size.
    max_in_flight_bytes: int = 32 * 1024 * 1024
    verbs: list[str] = field(default_factory=lambda: list(MUTATING_VERBS))
    stages: list[str] = field(default_factory=lambda: ["ResponseComplete"])
    # Event objects are traced by the event watcher; lease renewals every 10 s per node are noise.
    exclude_resources: list[str] = field(default_factory=lambda: ["events", "leases"])
    exclude_users: list[str] = field(default_factory=list)
    # Requests denied by authorization (401/403) are kept whatever their verb: someone tried something.
    include_denied: bool = True
    # Worker processes that parse, check and redact batches beside the event loop. 0: on the event loop; -1: one
    # per CPU this process may use (its CPU limit rounded up), at most 4, and none on one CPU. Off by default: they
    # cost 7-60 % more CPU per event and pay off only while a CPU is spare (docs/operations.md).
    decode_processes: int = 0


@dataclass
class RedactionConfig:
    # Dotted paths stripped from every object before a span or log is made, in addition to Secret data.
    # A path segment may be "*" (any key or list item); e.g. "spec.template.spec.containers.*.env".
    paths: list[str] = field(default_factory=list)
    # Resources whose objects lose data/stringData and their last-applied-configuration annotation
    # (matched case-insensitively).
    secret_resources: list[str] = field(default_factory=lambda: ["secrets"])
    # Container env values whose variable name matches are replaced in every pod spec and pod template.
    env_name_pattern: str = "(?i)(pass|secret|token|key|credential|auth)"


@dataclass
class PipelineConfig:
    partitions: int = 8
    # Observations accepted but not yet turned into spans, across all partitions. Past it the webhook answers 429.
    queue_capacity: int = 50_000
    window_seconds: int = 1800
    # Objects the object graph (the linkers' memory) keeps; past it the least recently seen are forgotten.
    graph_max_nodes: int = 200_000
    # While audit batches wait for their answer, the most of the event loop's time the pipeline may take (the rest
    # of its backlog waits in the spool); with none waiting it takes all it needs. 1: no limit (see operations.md).
    background_share: float = 1.0


@dataclass
class RedisConfig:
    url: str = ""
    key_prefix: str = "kelemetry:"


@dataclass
class OtlpConfig:
    # grpc://HOST:PORT, grpcs://HOST:PORT, http://HOST:PORT/v1/traces or https://...; empty disables OTLP.
    endpoint: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    ca_file: str = ""
    client_cert_file: str = ""
    client_key_file: str = ""
    compression: str = "gzip"
    timeout_seconds: float = 10.0
    batch_size: int = 512
    # The largest request the receiver takes, decompressed (4 MiB in Tempo's and the OpenTelemetry Collector's OTLP
    # receivers by default; they refuse a larger one for good). Batches are cut to stay under it; a span larger
    # than it alone is dropped and counted.
    max_request_bytes: int = 4 << 20


SPOOL_BACKENDS = ("local", "redis")
FSYNC_POLICIES = ("always", "interval", "never")


@dataclass
class SpoolConfig:
    """Durable acceptance: what a source accepted is on disk before it answers 200 or advances its cursor."""

    # Empty: a "spool" directory beside store.path.
    dir: str = ""
    # "local" (segment files) or "redis" (Redis Streams with consumer groups, so another replica finishes
    # the work of one that died; needs redis.url).
    backend: str = "local"
    # Bound of each log (accepted observations, and spans waiting for their writers). Full: the webhook answers 429.
    max_bytes: int = 2 << 30
    # "always": fsync before answering (a 200 survives power loss); "interval": fsync every
    # fsync_interval_seconds (a process crash loses nothing, a power loss up to the interval); "never".
    fsync: str = "always"
    fsync_interval_seconds: float = 0.2
    # Size of each log's files, at most a quarter of max_bytes: only whole files are deleted, once consumed.
    segment_bytes: int = 64 << 20
    # The newest records of each log kept decoded in memory, so consumers that keep up never read the disk.
    memory_bytes: int = 8 << 20
    # Redis backend: work a replica took but did not finish is claimed by another after this long.
    claim_idle_seconds: float = 30.0
    # Redis backend: this replica's consumer name (default: host name and process id).
    replica_id: str = ""
    # Redis backend: at most this many accepted observation batches wait in the stream...
    max_stream_records: int = 200_000
    # ...and at most this much of Redis's memory (MEMORY USAGE of the stream); keep it well under Redis's maxmemory.
    max_stream_bytes: int = 512 << 20


@dataclass
class StoreConfig:
    enabled: bool = True
    path: str = "./kelemetry-data/traces.db"
    # Spans older than this are deleted; 0 keeps everything.
    retention_hours: float = 72.0


@dataclass
class ClusterConfig:
    name: str = ""
    # Empty kubeconfig with in_cluster false: ~/.kube/config (or $KUBECONFIG).
    kubeconfig: str = ""
    context: str = ""
    in_cluster: bool = False


@dataclass
class KubeConfig:
    clusters: list[ClusterConfig] = field(default_factory=list)
    watch_events: bool = True
    watch_objects: bool = True
    # Resources as "resource" or "resource.group"; empty include means every list+watch resource.
    include_resources: list[str] = field(default_factory=list)
    # Secrets are not watched: reading them needs the most dangerous permission there is (see watch_secret_metadata).
    exclude_resources: list[str] = field(
        default_factory=lambda: ["events", "events.events.k8s.io", "leases", "secrets"]
    )
    # Opt-in: watch Secrets as metadata only (PartialObjectMetadata), never their data.
    watch_secret_metadata: bool = False
    discovery_interval_seconds: float = 300.0
    event_max_age_seconds: float = 3600.0
    # How long an audit span waits for the differ's diff of its resourceVersion.
    diff_wait_seconds: float = 3.0
    diff_cache_ttl_seconds: float = 3600.0
    leader_election: bool = False
    lease_namespace: str = "default"
    # client-go's timings: a lease unrenewed for lease_duration is free; the leader gives up when it cannot
    # renew within renew_deadline; candidates retry (and the leader renews) every retry_period.
    # 0 derives them from lease_duration as client-go's defaults do (15 s: 10 s and 2 s).
    lease_duration_seconds: float = 15.0
    renew_deadline_seconds: float = 0.0
    retry_period_seconds: float = 0.0
    identity: str = ""
    # How long an unclaimed change waits for its audit span before it becomes its own diff span. The
    # apiserver batches audit events for up to 30 s (--audit-webhook-batch-max-wait) and retries, so the
    # default covers a 60 s lag with a margin.
    diff_hold_seconds: float = 90.0
    # Bound on the changes held for a claim (and on a standby's changes not yet emitted by the leader).
    diff_pending_max_bytes: int = 64 * 1024 * 1024
    # Bound on the differ's states of recently changed objects kept uncompressed (0: compress every state).
    diff_hot_state_max_bytes: int = 16 * 1024 * 1024

    def renew_deadline(self) -> float:
        return self.renew_deadline_seconds or self.lease_duration_seconds * 2 / 3

    def retry_period(self) -> float:
        return self.retry_period_seconds or self.lease_duration_seconds / 7.5


@dataclass
class BackendConfig:
    """A tracing back end's HTTP API (Tempo's, or jaeger-query's api_v3)."""

    endpoint: str = ""
    # Sent on every request, e.g. {"X-Scope-OrgID": "tenant", "Authorization": "Bearer ..."}.
    headers: dict[str, str] = field(default_factory=dict)
    ca_file: str = ""
    client_cert_file: str = ""
    client_key_file: str = ""
    insecure_skip_verify: bool = False
    timeout_seconds: float = 10.0


READERS = ("embedded", "tempo", "jaeger")


@dataclass
class FrontendConfig:
    enabled: bool = True
    # Where raw traces are read from: "embedded" (the store), "tempo" or "jaeger".
    reader: str = "embedded"
    # Tempo's HTTP API (e.g. http://tempo:3200) when reader is "tempo".
    tempo: BackendConfig = field(default_factory=BackendConfig)
    # jaeger-query's HTTP API (e.g. http://jaeger:16686) when reader is "jaeger".
    jaeger: BackendConfig = field(default_factory=BackendConfig)
    # Jaeger v2 remote-storage gRPC API (jaeger.storage.v2.TraceReader); 0 leaves it off.
    grpc_port: int = 0
    default_mode: str = "tracing"
    # Bounds of every search: traces per answer and bytes per answer (larger answers are refused with 400).
    max_traces: int = 1000
    max_response_bytes: int = 64 * 1024 * 1024
    ui_dir: str = ""
    trace_cache_ttl_seconds: float = 3600.0
    max_ancestor_depth: int = 3
    max_descendant_depth: int = 3


@dataclass
class PluginsConfig:
    # Entry-point names to enable per group; empty means every installed plugin of that group.
    enabled: dict[str, list[str]] = field(default_factory=dict)
    disabled: list[str] = field(default_factory=list)
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class LogConfig:
    # "text" (human-readable lines) or "json" (one object per line, with request_id on webhook and API lines).
    format: str = "text"


@dataclass
class SearchConfig:
    """The audit and Event search index (KubeSphere-compatible API under /kapis)."""

    enabled: bool = False
    # Empty: search.db beside store.path.
    path: str = ""
    # The index's size bound: past it the oldest records are deleted. Retention follows store.retention_hours.
    max_bytes: int = 2 * 1024**3
    # workspace -> namespaces, for the workspace_filter and workspace_search parameters.
    workspaces: dict[str, list[str]] = field(default_factory=dict)
    max_page_size: int = 1000
    # Without a static tenant scope, each distinct object a query matches is checked; past this it answers 400.
    max_scope_objects: int = 5000
    max_concurrent_exports: int = 4


@dataclass
class AlertsConfig:
    """Alert rules over audit records and Events, sent to Alertmanager (docs/alerting.md)."""

    rules_file: str = ""
    # Alertmanager's base URL, e.g. http://alertmanager:9093.
    alertmanager_url: str = ""
    # This server's URL as users reach it, for the trace and UI links in alerts.
    external_url: str = "http://127.0.0.1:8080"
    evaluation_interval_seconds: float = 30.0
    # Rule state when no Redis is configured; empty: alerts.db beside store.path.
    state_path: str = ""
    send_retries: int = 5
    timeout_seconds: float = 10.0


@dataclass
class Config:
    # The cluster name used when a webhook path names none (POST /audit).
    cluster: str = "default"
    # Cluster names the webhook accepts besides `cluster` and kube.clusters; when this or kube.clusters is
    # set, any other name in /audit/{cluster} answers 404.
    clusters: list[str] = field(default_factory=list)
    log_level: str = "info"
    http: HttpConfig = field(default_factory=HttpConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    redaction: RedactionConfig = field(default_factory=RedactionConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    otlp: OtlpConfig = field(default_factory=OtlpConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    kube: KubeConfig = field(default_factory=KubeConfig)
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    plugins: PluginsConfig = field(default_factory=PluginsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    # On SIGTERM: stop accepting, then drain the pipeline and writers for at most this long (under Kubernetes'
    # default 30 s termination grace); what did not drain stays in the spool for the next start.
    shutdown_grace_seconds: float = 25.0

    def spool_dir(self) -> Path:
        return Path(self.spool.dir) if self.spool.dir else Path(self.store.path).expanduser().parent / "spool"
    search: SearchConfig = field(default_factory=SearchConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the effective configuration. ``overrides`` maps dotted keys (``http.port``) to flag values."""
    raw: dict[str, Any] = {}
    if path:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path}: not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: must be a mapping of sections")
        raw = loaded or {}
    for key, value in _env_overrides(os.environ if env is None else env).items():
        _set_dotted(raw, key, _env_value(key, value))
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(raw, key, value)
    config: Config = _build(Config, raw, "")
    validate(config)
    return config


def _env_overrides(env: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for name, value in env.items():
        if name.startswith(ENV_PREFIX) and name not in ("KELEMETRY_CONFIG",):
            out[name[len(ENV_PREFIX) :].lower().replace("__", ".")] = value
    return out


def _env_value(dotted: str, text: str) -> Any:
    """An environment value stays a string unless the key's type is structured (a mapping, a list of sections):
    ``on`` is not True and ``0755`` is not 493. Scalars are converted by the key's own type afterwards."""
    hint: Any = Config
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(hint):
            return text
        hint = typing.get_type_hints(hint).get(part)
        if hint is None:
            return text
    origin = typing.get_origin(hint)
    structured = origin is dict or (
        origin is list and any(dataclasses.is_dataclass(arg) for arg in typing.get_args(hint))
    )
    if structured and text:
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{dotted}: not valid YAML: {exc}") from None
    return text


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: {part} is not a section")
        node = child
    node[last] = value


def _build(cls: type[Any], raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: must be a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (known: {', '.join(sorted(fields))})")
    kwargs = {name: _coerce(hints[name], value, f"{prefix}{name}") for name, value in raw.items()}
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(typing.cast(type[Any], hint), value, key + ".")
    if origin is list:
        if isinstance(value, str):
            value = [item.strip() for item in value.split(",") if item.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: must be a list")
        (item_hint,) = typing.get_args(hint)
        return [_coerce(item_hint, item, f"{key}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: must be a mapping")
        _, value_hint = typing.get_args(hint)
        return {str(k): _coerce(value_hint, v, f"{key}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType) or hint is Any:
        return value
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: must be true or false, not {value!r}")
        return value
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key}: must be a number, not {value!r}")
        try:
            number = hint(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: must be a number, not {value!r}") from None
        if hint is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{key}: must be a whole number, not {value!r}")
        return number
    if hint is str:
        if value is None:
            return ""
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: must be a string")
        return str(value)
    return value


def validate(config: Config) -> None:
    def positive(key: str, value: float) -> None:
        if value <= 0:
            raise ConfigError(f"{key}: must be greater than 0, not {value}")

    if not 0 <= config.http.port <= 65535:
        raise ConfigError(f"http.port: {config.http.port} is not a TCP port")
    if not 0 <= config.http.frontend_port <= 65535:
        raise ConfigError(f"http.frontend_port: {config.http.frontend_port} is not a TCP port")
    if bool(config.http.tls_cert_file) != bool(config.http.tls_key_file):
        raise ConfigError("http.tls_cert_file: TLS needs both tls_cert_file and tls_key_file")
    validate_security(config)
    if not is_cluster_name(config.cluster):
        raise ConfigError(f"cluster: {config.cluster!r} is not a cluster name ({CLUSTER_NAME_RULE})")
    for i, name in enumerate(config.clusters):
        if not is_cluster_name(name):
            raise ConfigError(f"clusters[{i}]: {name!r} is not a cluster name ({CLUSTER_NAME_RULE})")
    try:
        re.compile(config.redaction.env_name_pattern)
    except re.error as exc:
        raise ConfigError(f"redaction.env_name_pattern: not a regular expression: {exc}") from None
    positive("frontend.max_traces", config.frontend.max_traces)
    positive("frontend.max_response_bytes", config.frontend.max_response_bytes)
    positive("audit.max_body_bytes", config.audit.max_body_bytes)
    positive("audit.max_in_flight_bytes", config.audit.max_in_flight_bytes)
    positive("pipeline.partitions", config.pipeline.partitions)
    positive("pipeline.queue_capacity", config.pipeline.queue_capacity)
    positive("pipeline.window_seconds", config.pipeline.window_seconds)
    if config.audit.decode_processes < -1:
        raise ConfigError("audit.decode_processes: must be -1 (one per CPU), 0 (none) or a number of processes")
    if not 0 < config.pipeline.background_share <= 1:
        raise ConfigError("pipeline.background_share: must be more than 0 and at most 1")
    if config.pipeline.graph_max_nodes < 2:
        raise ConfigError("pipeline.graph_max_nodes: must be at least 2 (a link has two ends)")
    positive("otlp.batch_size", config.otlp.batch_size)
    positive("otlp.max_request_bytes", config.otlp.max_request_bytes)
    positive("spool.max_bytes", config.spool.max_bytes)
    positive("spool.segment_bytes", config.spool.segment_bytes)
    positive("spool.claim_idle_seconds", config.spool.claim_idle_seconds)
    positive("spool.max_stream_records", config.spool.max_stream_records)
    positive("spool.max_stream_bytes", config.spool.max_stream_bytes)
    if config.shutdown_grace_seconds < 0:
        raise ConfigError(f"shutdown_grace_seconds: must be 0 or more, not {config.shutdown_grace_seconds}")
    if config.spool.fsync not in FSYNC_POLICIES:
        raise ConfigError(f"spool.fsync: {config.spool.fsync!r} is not one of {', '.join(FSYNC_POLICIES)}")
    if config.spool.backend not in SPOOL_BACKENDS:
        raise ConfigError(f"spool.backend: {config.spool.backend!r} is not one of {', '.join(SPOOL_BACKENDS)}")
    if config.spool.backend == "redis" and not config.redis.url:
        raise ConfigError("spool.backend: redis needs redis.url")
    positive("otlp.timeout_seconds", config.otlp.timeout_seconds)
    if config.otlp.endpoint:
        parse_otlp_endpoint(config.otlp.endpoint)
    if config.otlp.compression not in ("gzip", "none", ""):
        raise ConfigError(f"otlp.compression: {config.otlp.compression!r} is not gzip or none")
    if config.redis.url and urlsplit(config.redis.url).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"redis.url: {config.redis.url!r} is not a redis://, rediss:// or unix:// URL")
    if config.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log_level: {config.log_level!r} is not debug, info, warning or error")
    if config.log.format not in ("text", "json"):
        raise ConfigError(f"log.format: {config.log.format!r} is not text or json")
    if not config.store.enabled and not config.otlp.endpoint:
        raise ConfigError(
            "store.enabled: with no otlp.endpoint the embedded store is the only place spans go"
        )
    if config.frontend.enabled and config.frontend.reader == "embedded" and not config.store.enabled:
        raise ConfigError("frontend.reader: the embedded reader needs store.enabled (or choose tempo or jaeger)")
    if config.frontend.reader not in READERS:
        raise ConfigError(f"frontend.reader: {config.frontend.reader!r} is not one of {', '.join(READERS)}")
    for backend in ("tempo", "jaeger"):
        backend_config: BackendConfig = getattr(config.frontend, backend)
        if config.frontend.reader == backend and not backend_config.endpoint:
            raise ConfigError(f"frontend.{backend}.endpoint: reader {backend} needs an endpoint")
        if backend_config.endpoint and urlsplit(backend_config.endpoint).scheme not in ("http", "https"):
            raise ConfigError(
                f"frontend.{backend}.endpoint: {backend_config.endpoint!r} is not an http(s):// URL"
            )
        if bool(backend_config.client_cert_file) != bool(backend_config.client_key_file):
            raise ConfigError(
                f"frontend.{backend}.client_cert_file: needs both client_cert_file and client_key_file"
            )
        positive(f"frontend.{backend}.timeout_seconds", backend_config.timeout_seconds)
    if not 0 <= config.frontend.grpc_port <= 65535:
        raise ConfigError(f"frontend.grpc_port: {config.frontend.grpc_port} is not a TCP port")
    kube = config.kube
    positive("kube.diff_hold_seconds", kube.diff_hold_seconds)
    positive("kube.diff_pending_max_bytes", kube.diff_pending_max_bytes)
    if kube.diff_hot_state_max_bytes < 0:
        raise ConfigError("kube.diff_hot_state_max_bytes: must not be negative")
    if not 0 < kube.retry_period() < kube.renew_deadline() < kube.lease_duration_seconds:
        raise ConfigError(
            "kube.renew_deadline_seconds: leader election needs 0 < retry_period_seconds < "
            "renew_deadline_seconds < lease_duration_seconds"
        )
    names = [cluster.name for cluster in config.kube.clusters]
    for i, cluster in enumerate(config.kube.clusters):
        if not cluster.name:
            raise ConfigError(f"kube.clusters[{i}].name: every watched cluster needs a name")
        if not is_cluster_name(cluster.name):
            raise ConfigError(f"kube.clusters[{i}].name: {cluster.name!r} is not a cluster name ({CLUSTER_NAME_RULE})")
    if len(set(names)) != len(names):
        raise ConfigError("kube.clusters: cluster names must be unique")
    positive("search.max_bytes", config.search.max_bytes)
    positive("search.max_page_size", config.search.max_page_size)
    positive("search.max_scope_objects", config.search.max_scope_objects)
    positive("search.max_concurrent_exports", config.search.max_concurrent_exports)
    positive("alerts.evaluation_interval_seconds", config.alerts.evaluation_interval_seconds)
    positive("alerts.timeout_seconds", config.alerts.timeout_seconds)
    if config.alerts.rules_file and not config.alerts.alertmanager_url:
        raise ConfigError("alerts.alertmanager_url: alert rules need an Alertmanager to send to")
    if config.alerts.alertmanager_url and urlsplit(config.alerts.alertmanager_url).scheme not in ("http", "https"):
        raise ConfigError(f"alerts.alertmanager_url: {config.alerts.alertmanager_url!r} is not an http(s):// URL")


def records_wanted(config: Config) -> bool:
    """Sources attach search records to observations only when something reads them."""
    return config.search.enabled or bool(config.alerts.rules_file)


CLUSTER_NAME_RULE = "lower-case letters, digits, '-' and '.', starting and ending alphanumeric, at most 63"
_CLUSTER_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")


def is_cluster_name(name: str) -> bool:
    return len(name) <= 63 and _CLUSTER_NAME.fullmatch(name) is not None


def allowed_clusters(config: Config) -> frozenset[str] | None:
    """Cluster names the webhook accepts, or None when none are configured (any valid name then)."""
    named = [*config.clusters, *(cluster.name for cluster in config.kube.clusters)]
    if not named:
        return None
    return frozenset([config.cluster, *named])


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def ingest_process_setting(ingest: IngestConfig) -> bool | None:
    """``ingest.process``: True or False, None for "auto"."""
    value = ingest.process.strip().lower()
    if value == "auto":
        return None
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise ConfigError(f"ingest.process: must be auto, true or false, not {ingest.process!r}")


def ingest_authenticated(config: Config) -> bool:
    return bool(config.ingest.tokens or config.http.webhook_tokens or config.ingest.client_ca_file)


def validate_security(config: Config) -> None:
    """Listeners, ingest and query authentication: a non-loopback server must authenticate both trust domains."""
    http, ingest, auth = config.http, config.ingest, config.auth
    if not 0 <= http.ingest_port <= 65535:
        raise ConfigError(f"http.ingest_port: {http.ingest_port} is not a TCP port")
    if http.client_ca_file:
        raise ConfigError(
            "http.client_ca_file: client certificates now apply to the ingest listener only; "
            "set ingest.client_ca_file (with http.ingest_port and ingest.tls_cert_file/tls_key_file)"
        )
    if bool(ingest.tls_cert_file) != bool(ingest.tls_key_file):
        raise ConfigError("ingest.tls_cert_file: TLS needs both ingest.tls_cert_file and ingest.tls_key_file")
    if (ingest.tls_cert_file or ingest.client_ca_file) and not http.ingest_port:
        raise ConfigError(
            "http.ingest_port: ingest.tls_cert_file and ingest.client_ca_file need a separate ingest listener"
        )
    process = ingest_process_setting(ingest)
    if process and config.audit.decode_processes:
        raise ConfigError("ingest.process: the ingest process decodes the batches itself; set audit.decode_processes 0")
    if process and http.tls_cert_file and not http.ingest_port:
        raise ConfigError(
            "ingest.process: a TLS connection on the main port cannot be passed to the ingest process; "
            "give the webhook its own listener (http.ingest_port)"
        )
    if ingest.client_ca_file and not ingest.tls_cert_file:
        raise ConfigError("ingest.client_ca_file: client certificates need ingest.tls_cert_file and tls_key_file")
    if auth.mode not in AUTH_MODES:
        raise ConfigError(f"auth.mode: {auth.mode!r} is not one of {', '.join(AUTH_MODES)}")
    if auth.mode == "token":
        if not auth.tokens:
            raise ConfigError("auth.tokens: auth.mode token needs at least one token")
        seen: set[str] = set()
        for i, token in enumerate(auth.tokens):
            if len(token.token) < 16:
                raise ConfigError(f"auth.tokens[{i}].token: must be at least 16 characters")
            if token.token in seen:
                raise ConfigError(f"auth.tokens[{i}].token: tokens must be unique")
            seen.add(token.token)
            if not token.user:
                raise ConfigError(f"auth.tokens[{i}].user: every token needs a user name")
            if not token.clusters or not token.namespaces:
                raise ConfigError(f"auth.tokens[{i}]: clusters and namespaces must not be empty (\"*\" means all)")
    if auth.mode == "kubernetes":
        kube = auth.kubernetes
        own = bool(kube.kubeconfig or kube.in_cluster or kube.context)
        watched = {cluster.name for cluster in config.kube.clusters}
        if not kube.cluster:
            raise ConfigError("auth.kubernetes.cluster: name the cluster whose RBAC decides")
        if not own and kube.cluster not in watched:
            raise ConfigError(
                f"auth.kubernetes.cluster: {kube.cluster!r} is not in kube.clusters; "
                "give auth.kubernetes.kubeconfig or in_cluster for a cluster of its own"
            )
        if kube.cache_ttl_seconds < 0:
            raise ConfigError("auth.kubernetes.cache_ttl_seconds: must not be negative")
        if kube.cache_max_entries <= 0:
            raise ConfigError("auth.kubernetes.cache_max_entries: must be greater than 0")
    if is_loopback(http.host) or config.security.allow_unauthenticated:
        return
    missing = []
    if not ingest_authenticated(config):
        missing.append("ingest.tokens (or ingest.client_ca_file with http.ingest_port)")
    if auth.mode == "none":
        missing.append("auth.mode (token or kubernetes)")
    if missing:
        raise ConfigError(
            f"http.host: {http.host} is not loopback and nothing authenticates callers; set "
            + " and ".join(missing)
            + ", or security.allow_unauthenticated: true if this network is trusted"
        )


_SECRET_KEY = re.compile(r"(?i)(pass|secret|token|credential|auth)")
_MASK = "<masked>"


def masked(value: Any, key: str = "") -> Any:
    """``value`` (from :meth:`Config.to_dict`) with every secret-bearing value masked: tokens, passwords,
    headers, and passwords inside URLs (``redis://:pw@host``). Paths (``*_file``) stay readable."""
    if isinstance(value, dict):
        if key == "headers":
            return {name: _MASK for name in value}
        return {name: masked(item, str(name)) for name, item in value.items()}
    if isinstance(value, list):
        return [masked(item, key) for item in value]
    if isinstance(value, str):
        if value and _SECRET_KEY.search(key) and not key.endswith(("_file", "_files", "_pattern", "_resources")):
            return _MASK
        return _mask_url_password(value)
    return value


def _mask_url_password(text: str) -> str:
    if "@" not in text or "://" not in text:
        return text
    try:
        parts = urlsplit(text)
    except ValueError:
        return text
    if parts.password is None:
        return text
    host = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:{_MASK}@{host}").geturl()


@dataclass(frozen=True)
class OtlpEndpoint:
    protocol: str  # "grpc" or "http"
    url: str  # what the exporter takes: HOST:PORT for gRPC, the full URL for HTTP
    secure: bool


def parse_otlp_endpoint(endpoint: str) -> OtlpEndpoint:
    parts = urlsplit(endpoint)
    if parts.scheme in ("grpc", "grpcs"):
        if not parts.hostname or not parts.port or parts.path not in ("", "/"):
            raise ConfigError(f"otlp.endpoint: {endpoint!r} must look like grpc://HOST:PORT")
        return OtlpEndpoint("grpc", f"{parts.hostname}:{parts.port}", parts.scheme == "grpcs")
    if parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise ConfigError(f"otlp.endpoint: {endpoint!r} has no host")
        url = endpoint if parts.path not in ("", "/") else endpoint.rstrip("/") + "/v1/traces"
        return OtlpEndpoint("http", url, parts.scheme == "https")
    raise ConfigError(
        f"otlp.endpoint: {endpoint!r} must be grpc://HOST:PORT, grpcs://HOST:PORT or http(s)://HOST:PORT/v1/traces"
    )
