"""Listeners: loopback by default, a refusal to start open on a network, and the ingest listener as the apiserver's
own trust domain (its client certificates and tokens never apply to browsers, probes or the query APIs)."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest
import yaml
from aiohttp import ClientSession

from kelemetry_py.config import ConfigError, load_config
from kelemetry_py.model import ObjectRef, object_trace_id
from tests.e2e.conftest import AppFactory
from tests.e2e.test_frontend_backends import free_port

CLI = str(Path(sys.executable).parent / "kelemetry-py")
EMPTY = orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": []})
JSON = {"Content-Type": "application/json"}


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", **(env or {})}
    )


def test_serve_on_a_network_address_without_authentication_exits_naming_the_keys(tmp_path: Path) -> None:
    result = run_cli("serve", "--http-host", "0.0.0.0", "--http-port", "0", "--store-path", str(tmp_path / "t.db"))
    assert result.returncode != 0
    for key in ("http.host", "ingest.tokens", "auth.mode", "security.allow_unauthenticated"):
        assert key in result.stderr, (key, result.stderr)
    assert not (tmp_path / "t.db").exists(), "it stopped before opening anything"
    # Query authentication alone is not enough: the webhook would still take anyone's history.
    tokens = [{"token": "t" * 20, "user": "admin", "cluster_scoped": True}]
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"auth": {"mode": "token", "tokens": tokens}}))
    half = run_cli("serve", "-c", str(config), "--http-host", "0.0.0.0", "--store-path", str(tmp_path / "t.db"))
    assert half.returncode != 0 and "ingest.tokens" in half.stderr and "auth.mode" not in half.stderr


def test_default_listener_is_loopback_and_env_values_keep_their_type() -> None:
    result = run_cli("config", env={"KELEMETRY_CLUSTER": "on", "KELEMETRY_HTTP__PORT": "0755"})
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["http"]["host"] == "127.0.0.1"
    assert printed["cluster"] == "on" and printed["http"]["port"] == 755  # not True, not octal 493
    config = load_config(
        env={"KELEMETRY_REDACTION__PATHS": "a.b, c.*", "KELEMETRY_STORE__ENABLED": "false"},
        overrides={"otlp.endpoint": "grpc://127.0.0.1:4317", "frontend.enabled": False},
    )
    assert config.redaction.paths == ["a.b", "c.*"] and config.store.enabled is False
    assert load_config(env={"KELEMETRY_HTTP__HOST": "0.0.0.0", "KELEMETRY_SECURITY__ALLOW_UNAUTHENTICATED": "true"})
    with pytest.raises(ConfigError, match=r"^http\.host"):
        load_config(env={"KELEMETRY_HTTP__HOST": "0.0.0.0"})


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"http.client_ca_file": "/ca.pem"}, "http.client_ca_file: .* set ingest.client_ca_file"),
        ({"ingest.tls_cert_file": "/c.pem", "ingest.tls_key_file": "/k.pem"}, "http.ingest_port"),
        (
            {"ingest.process": True, "http.tls_cert_file": "/c.pem", "http.tls_key_file": "/k.pem"},
            "ingest.process: a TLS connection .*http.ingest_port",
        ),
        ({"ingest.process": True, "http.ingest_port": 8081, "audit.decode_processes": -1}, "ingest.process: .* 0"),
        ({"auth.mode": "token"}, "auth.tokens"),
        ({"auth.mode": "token", "auth.tokens": [{"token": "short", "user": "a"}]}, r"auth.tokens\[0\].token"),
        ({"auth.mode": "kubernetes"}, "auth.kubernetes.cluster"),
        ({"auth.mode": "kubernetes", "auth.kubernetes.cluster": "c"}, "auth.kubernetes.cluster"),
        ({"auth.mode": "ldap"}, "auth.mode"),
        ({"cluster": "Not_A_Name"}, "cluster"),
        ({"clusters": ["ok", "a/b"]}, r"clusters\[1\]"),
        ({"redaction.env_name_pattern": "("}, "redaction.env_name_pattern"),
    ],
)
def test_security_settings_are_checked_at_start(settings: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=f"^{key}"):
        load_config(env={}, overrides=settings)


def test_object_keys_of_different_objects_never_collide() -> None:
    one = ObjectRef("c", "", "v1", "pods", "x/y", "z")
    two = ObjectRef("c", "", "v1", "pods", "x", "y/z")
    three = ObjectRef("c", "", "v1", "pods", "x%2Fy", "z")
    keys = {one.key, two.key, three.key}
    assert len(keys) == 3
    assert len({object_trace_id(key, 1) for key in keys}) == 3
    for ref in (one, two, three):
        assert ObjectRef.from_key(ref.key, version="v1") == ref
    # Real Kubernetes names hold neither character, so their keys (and span ids) read as before.
    assert ObjectRef("fixture", "apps", "v1", "deployments", "shop", "web").key == "fixture/apps/deployments/shop/web"


def make_certificates(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (the apiserver's), with openssl."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    names = ("ca", "ca-key", "server", "server-key", "client", "client-key")
    paths = {name: directory / f"{name}.pem" for name in names}
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", str(paths["ca-key"]), "-out", str(paths["ca"]),
    )
    extensions = directory / "san.cnf"
    extensions.write_text("subjectAltName=IP:127.0.0.1\n")
    for name, subject in (("server", "/CN=127.0.0.1"), ("client", "/CN=kube-apiserver")):
        request = directory / f"{name}.csr"
        openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", subject,
            "-keyout", str(paths[f"{name}-key"]), "-out", str(request),
        )
        openssl(
            "x509", "-req", "-in", str(request), "-CA", str(paths["ca"]), "-CAkey", str(paths["ca-key"]),
            "-CAcreateserial", "-days", "2", "-extfile", str(extensions), "-out", str(paths[name]),
        )
    return paths


@pytest.mark.parametrize("process", [False, True], ids=["in-process", "ingest-process"])
async def test_ingest_listener_has_its_own_mtls_and_tokens(make_app: AppFactory, tmp_path: Path, process: bool) -> None:
    certs = make_certificates(tmp_path)
    ingest_port = free_port()
    app = await make_app(
        **{
            "ingest.process": process,
            "http.ingest_port": ingest_port,
            "ingest.tls_cert_file": str(certs["server"]),
            "ingest.tls_key_file": str(certs["server-key"]),
            "ingest.client_ca_file": str(certs["ca"]),
            "ingest.tokens": ["ingest-token-0123456789"],
            "clusters": ["fixture"],
        }
    )
    assert app.ingest_url == f"https://127.0.0.1:{ingest_port}"
    apiserver = ssl.create_default_context(cafile=str(certs["ca"]))
    apiserver.load_cert_chain(str(certs["client"]), str(certs["client-key"]))
    browser = ssl.create_default_context(cafile=str(certs["ca"]))  # trusts the server, has no client certificate
    token = {"Authorization": "Bearer ingest-token-0123456789", **JSON}
    async with ClientSession() as session:
        # The main listener: plain HTTP for browsers and probes; the webhook is not there.
        async with session.get(app.base_url + "/healthz") as response:
            assert response.status == 200
        async with session.get(app.base_url + "/api/services") as response:
            assert response.status == 200
        async with session.post(app.base_url + "/audit/fixture", data=EMPTY, headers=token) as response:
            assert response.status == 404
        # The ingest listener: no client certificate, no connection.
        with pytest.raises(aiohttp.ClientError):
            async with session.post(app.ingest_url + "/audit/fixture", data=EMPTY, headers=token, ssl=browser):
                pass
        async with session.post(app.ingest_url + "/audit/fixture", data=EMPTY, headers=JSON, ssl=apiserver) as r:
            assert r.status == 401  # a certificate and no token
        async with session.post(app.ingest_url + "/audit/fixture", data=EMPTY, headers=token, ssl=apiserver) as r:
            assert r.status == 200
        async with session.post(app.ingest_url + "/audit/elsewhere", data=EMPTY, headers=token, ssl=apiserver) as r:
            assert r.status == 404  # not a configured cluster
        async with session.get(app.ingest_url + "/readyz", ssl=apiserver) as response:
            assert response.status == 200
        async with session.get(app.ingest_url + "/api/services", ssl=apiserver) as response:
            assert response.status == 404  # the query APIs are not on the ingest listener


async def test_webhook_tokens_remain_an_alias_of_ingest_tokens(make_app: AppFactory) -> None:
    app = await make_app(**{"http.webhook_tokens": ["old-name-token-0123"]})
    async with ClientSession() as session:
        async with session.post(app.base_url + "/audit/fixture", data=EMPTY, headers=JSON) as response:
            assert response.status == 401
        headers = {"Authorization": "Bearer old-name-token-0123", **JSON}
        async with session.post(app.base_url + "/audit/fixture", data=EMPTY, headers=headers) as response:
            assert response.status == 200


def audit_level(policy: dict[str, object], group: str, resource: str, verb: str) -> str:
    """The level the apiserver would pick: the first rule whose resources and verbs match."""
    for rule in policy["rules"]:  # type: ignore[attr-defined]
        if rule.get("verbs") and verb not in rule["verbs"]:
            continue
        if rule.get("resources") and not any(
            entry["group"] == group and resource in entry["resources"] for entry in rule["resources"]
        ):
            continue
        return str(rule["level"])
    return "None"


def test_shipped_audit_policy_keeps_secrets_and_tokens_at_metadata() -> None:
    policy = yaml.safe_load((Path(__file__).parents[2] / "quickstart" / "audit-policy.yaml").read_text())
    for group, resource in (("", "secrets"), ("", "serviceaccounts/token"), ("authentication.k8s.io", "tokenreviews")):
        for verb in ("create", "update", "patch", "delete", "get"):
            assert audit_level(policy, group, resource, verb) == "Metadata", (resource, verb)
    assert audit_level(policy, "apps", "deployments", "patch") == "RequestResponse"
    assert audit_level(policy, "", "configmaps", "create") == "RequestResponse"


async def test_metrics_need_the_admin_scope_unless_public(make_app: AppFactory) -> None:
    tokens = [
        {"token": "admin-token-0123456789", "user": "admin", "cluster_scoped": True},
        {"token": "tenant-token-0123456789", "user": "t", "namespaces": ["shop"]},
    ]
    closed = await make_app(**{"auth.mode": "token", "auth.tokens": tokens})
    public = await make_app(**{"auth.mode": "token", "auth.tokens": tokens, "metrics.public": True})
    async with ClientSession() as session:
        for token, status in (("", 401), ("tenant-token-0123456789", 403), ("admin-token-0123456789", 200)):
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with session.get(closed.base_url + "/metrics", headers=headers) as response:
                assert response.status == status
        async with session.get(public.base_url + "/metrics") as response:
            assert response.status == 200 and "kelemetry_" in await response.text()
        async with session.get(public.base_url + "/api/services") as response:
            assert response.status == 401  # only /metrics is public
