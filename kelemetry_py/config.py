"""Configuration: one YAML file, every key overridable by environment variable and by flag.

Precedence: defaults < YAML file < ``KELEMETRY_SECTION__KEY`` environment variables < command-line flags.
Every problem is reported as ``ConfigError("section.key: reason")`` before anything starts.
"""

from __future__ import annotations

import dataclasses
import os
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
    host: str = "0.0.0.0"
    port: int = 8080
    # A separate port for the query frontend; 0 serves it on the webhook's port.
    frontend_port: int = 0
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # Client certificates for the webhook (the apiserver's --audit-webhook-config-file kubeconfig).
    client_ca_file: str = ""
    # Bearer tokens accepted on the webhook; empty accepts any caller.
    webhook_tokens: list[str] = field(default_factory=list)


@dataclass
class AuditConfig:
    max_body_bytes: int = 32 * 1024 * 1024
    verbs: list[str] = field(default_factory=lambda: list(MUTATING_VERBS))
    stages: list[str] = field(default_factory=lambda: ["ResponseComplete"])
    # Event objects are traced by the event watcher; lease renewals every 10 s per node are noise.
    exclude_resources: list[str] = field(default_factory=lambda: ["events", "leases"])
    exclude_users: list[str] = field(default_factory=list)
    # Requests denied by authorization (401/403) are kept whatever their verb: someone tried something.
    include_denied: bool = True


@dataclass
class RedactionConfig:
    # Dotted paths stripped from every object before a span or log is made, in addition to Secret data.
    # A path segment may be "*" (any key or list item); e.g. "spec.template.spec.containers.*.env".
    paths: list[str] = field(default_factory=list)
    # Resources whose objects lose data/stringData and their last-applied-configuration annotation.
    secret_resources: list[str] = field(default_factory=lambda: ["secrets"])


@dataclass
class PipelineConfig:
    partitions: int = 8
    # Observations accepted but not yet turned into spans, across all partitions. Past it the webhook answers 429.
    queue_capacity: int = 50_000
    window_seconds: int = 1800


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
    queue_size: int = 20_000
    flush_interval_seconds: float = 1.0
    max_retries: int = 5


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
    exclude_resources: list[str] = field(default_factory=lambda: ["events", "events.events.k8s.io", "leases"])
    discovery_interval_seconds: float = 300.0
    event_max_age_seconds: float = 3600.0
    # How long an audit span waits for the differ's diff of its resourceVersion.
    diff_wait_seconds: float = 3.0
    diff_cache_ttl_seconds: float = 3600.0
    leader_election: bool = False
    lease_namespace: str = "default"
    lease_duration_seconds: float = 15.0
    identity: str = ""


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
        _set_dotted(raw, key, yaml.safe_load(value) if value else value)
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
    if config.http.client_ca_file and not config.http.tls_cert_file:
        raise ConfigError("http.client_ca_file: client certificates need tls_cert_file and tls_key_file")
    if not config.cluster or "/" in config.cluster:
        raise ConfigError(f"cluster: {config.cluster!r} is not a usable cluster name")
    positive("audit.max_body_bytes", config.audit.max_body_bytes)
    positive("pipeline.partitions", config.pipeline.partitions)
    positive("pipeline.queue_capacity", config.pipeline.queue_capacity)
    positive("pipeline.window_seconds", config.pipeline.window_seconds)
    positive("otlp.batch_size", config.otlp.batch_size)
    positive("otlp.queue_size", config.otlp.queue_size)
    positive("otlp.timeout_seconds", config.otlp.timeout_seconds)
    if config.otlp.endpoint:
        parse_otlp_endpoint(config.otlp.endpoint)
    if config.otlp.compression not in ("gzip", "none", ""):
        raise ConfigError(f"otlp.compression: {config.otlp.compression!r} is not gzip or none")
    if config.redis.url and urlsplit(config.redis.url).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"redis.url: {config.redis.url!r} is not a redis://, rediss:// or unix:// URL")
    if config.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log_level: {config.log_level!r} is not debug, info, warning or error")
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
    names = [cluster.name for cluster in config.kube.clusters]
    for i, cluster in enumerate(config.kube.clusters):
        if not cluster.name:
            raise ConfigError(f"kube.clusters[{i}].name: every watched cluster needs a name")
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
