"""Secrets a cluster writes (a pod's DB_PASSWORD, a Secret sent as resource ``Secrets``, a TokenRequest's and a
TokenReview's tokens, an env value in the copy of a Deployment that ``kubectl apply`` keeps in its annotation) reach
no OTLP byte, store file, Redis value or log line, and ``kelemetry-py config`` prints no secret it was given."""

from __future__ import annotations

import base64
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiohttp import ClientSession

from tests.e2e.conftest import AppFactory
from tests.e2e.test_core_pipeline import exported
from tests.e2e.test_watchers_resilience import _redis_values
from tests.support.otlp_receiver import GrpcOtlpReceiver

DB_PASSWORD = "pw-Zq8v1Lk3x9-db"
TEMPLATE_TOKEN = "tmpl-Yy7c2Hh4u1-token"
SECRET_VALUE = "sv-Mm3n5Bb7q2-secret"
LAST_APPLIED_VALUE = "la-Rr9t1Ee2w3-applied"
REQUESTED_TOKEN = "eyJhbGciOiJSUzI1NiJ9.tr-Ww4s6Dd8f0-token"
REVIEWED_TOKEN = "eyJhbGciOiJSUzI1NiJ9.rv-Pp1o3Ii5u7-token"
APPLIED_ENV_VALUE = "ae-Kk2j4Gg6h8-applied"  # in the copy kubectl apply keeps in a Deployment's annotation
SECRETS = [
    DB_PASSWORD,
    TEMPLATE_TOKEN,
    SECRET_VALUE,
    LAST_APPLIED_VALUE,
    REQUESTED_TOKEN,
    REVIEWED_TOKEN,
    APPLIED_ENV_VALUE,
]


def encoded(value: str) -> list[bytes]:
    """The value as it could be written anywhere: plain, base64, JSON-escaped."""
    return [value.encode(), base64.b64encode(value.encode()), orjson.dumps(value)[1:-1]]


def audit(n: int, verb: str, ref: dict[str, Any], response: dict[str, Any] | None, request: Any = None) -> Any:
    event = {
        "level": "RequestResponse",
        "auditID": f"5ec0{n:04d}-0000-4000-8000-000000000000",
        "stage": "ResponseComplete",
        "requestURI": "/",
        "verb": verb,
        "user": {"username": "admin"},
        "sourceIPs": ["127.0.0.1"],
        "objectRef": {"apiVersion": "v1", **ref},
        "responseStatus": {"metadata": {}, "code": 201 if verb == "create" else 200},
        "requestReceivedTimestamp": f"2026-12-02T02:00:0{n}.000000Z",
        "stageTimestamp": f"2026-12-02T02:00:0{n}.100000Z",
    }
    if response is not None:
        event["responseObject"] = response
    if request is not None:
        event["requestObject"] = request
    return event


def pod(name: str) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {"name": name, "namespace": "shop", "uid": f"uid-{name}", "resourceVersion": "101"},
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "app:1",
                    "env": [
                        {"name": "DB_PASSWORD", "value": DB_PASSWORD},
                        {"name": "LOG_LEVEL", "value": "debug"},
                        {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
                    ],
                }
            ]
        },
    }


def batch() -> bytes:
    applied = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"annotations": {}, "name": "api", "namespace": "shop"},
        "spec": {"template": {"spec": {"containers": [{"env": [{"name": "API_KEY", "value": APPLIED_ENV_VALUE}]}]}}},
    }
    deployment = {
        "kind": "Deployment",
        "apiVersion": "apps/v1",
        "metadata": {
            "name": "api",
            "namespace": "shop",
            "uid": "uid-api",
            "resourceVersion": "102",
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": orjson.dumps(applied).decode() + "\n"},
        },
        "spec": {
            "template": {
                "spec": {"initContainers": [{"name": "init", "env": [{"name": "API_TOKEN", "value": TEMPLATE_TOKEN}]}]}
            }
        },
    }
    secret = {
        "kind": "Secret",
        "apiVersion": "v1",
        "metadata": {
            "name": "db",
            "namespace": "shop",
            "uid": "uid-db",
            "resourceVersion": "103",
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": LAST_APPLIED_VALUE},
        },
        "data": {"password": base64.b64encode(SECRET_VALUE.encode()).decode()},
    }
    token_request = {
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": "default", "namespace": "shop", "creationTimestamp": None},
        "spec": {"audiences": ["https://kubernetes.default.svc.cluster.local"], "expirationSeconds": 3600},
        "status": {"token": REQUESTED_TOKEN, "expirationTimestamp": "2026-12-02T03:00:00Z"},
    }
    review = {
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": "review", "creationTimestamp": None},
        "spec": {"token": REVIEWED_TOKEN},
        "status": {"authenticated": True, "user": {"username": "system:serviceaccount:shop:default"}},
    }
    items = [
        audit(1, "create", {"resource": "pods", "namespace": "shop", "name": "web-1"}, pod("web-1")),
        audit(2, "patch", {"resource": "pods", "namespace": "shop", "name": "web-1"}, pod("web-1"), pod("web-1")),
        audit(
            3, "create", {"resource": "deployments", "apiGroup": "apps", "namespace": "shop", "name": "api"}, deployment
        ),
        audit(4, "create", {"resource": "Secrets", "namespace": "shop", "name": "db"}, secret),
        audit(
            5,
            "create",
            {"resource": "serviceaccounts", "subresource": "token", "namespace": "shop", "name": "default"},
            token_request,
        ),
        audit(
            6,
            "create",
            {"resource": "tokenreviews", "apiGroup": "authentication.k8s.io", "name": "review"},
            review,
            review,
        ),
    ]
    return orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": items})


@pytest.mark.parametrize(
    "decoding",
    [{"ingest.process": False}, {"audit.decode_processes": 2}, {"ingest.process": True}],
    ids=["decoded-on-the-loop", "decoded-by-workers", "decoded-by-the-ingest-process"],
)
async def test_secret_values_reach_no_output(
    make_app: AppFactory,
    otlp_receiver: GrpcOtlpReceiver,
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
    decoding: dict[str, object],
) -> None:
    caplog.set_level(logging.DEBUG)
    app = await make_app(
        **{"otlp.endpoint": otlp_receiver.endpoint, "redis.url": redis_url, "log_level": "debug", **decoding}
    )
    # The batch below is decoded where the id says.
    assert (app.ingest_process is not None) == ("ingest.process" in decoding and bool(decoding["ingest.process"]))
    assert app.decoder is not None  # with the ingest process, for the connections it does not take
    assert await app.decoder.started() == ("audit.decode_processes" in decoding)
    async with ClientSession() as session:
        async with session.post(
            app.base_url + "/audit/fixture", data=batch(), headers={"Content-Type": "application/json"}
        ) as response:
            assert response.status == 200
            assert (await response.json())["observations"] == 6
        assert app.components is not None
        await app.settle()
        spans = await exported(otlp_receiver, app)
        # Every story is told (the objects and who changed them), with the values replaced.
        names = {(s.attributes.get("resource"), s.attributes.get("name")) for s in spans if s.service == "audit"}
        assert {("pods", "web-1"), ("deployments", "api"), ("Secrets", "db"), ("serviceaccounts", "default")} <= names
        snapshots = b"".join(orjson.dumps(log.fields) for s in spans for log in s.logs)
        assert b"<redacted>" in snapshots and b"LOG_LEVEL" in snapshots and b"debug" in snapshots
        # Views through the frontend go through the Redis trace cache too.
        async with session.get(
            app.base_url + "/api/traces",
            params={
                "service": "tree",
                "tags": '{"name": "web-1"}',
                "start": "1796176000000000",
                "end": "1796177000000000",
            },
        ) as response:
            assert response.status == 200
            views = await response.read()
            assert b"web-1" in views and b"<redacted>" in views
    store_dir = Path(app.config.store.path).parent
    redis = await _redis_values(redis_url)
    assert redis
    await app.stop()
    files = b"".join(path.read_bytes() for path in store_dir.iterdir() if path.is_file())
    logs = "\n".join(record.getMessage() for record in caplog.records).encode()
    for secret in SECRETS:
        for form in encoded(secret):
            assert form not in otlp_receiver.raw_bytes, secret
            assert form not in files, secret
            assert form not in redis, secret
            assert form not in logs, secret
            assert form not in views, secret


def test_config_masks_every_secret_bearing_value(tmp_path: Path) -> None:
    config = {
        "http": {"webhook_tokens": ["webhook-token-value-1"]},
        "ingest": {"tokens": ["ingest-token-value-2"]},
        "auth": {
            "mode": "token",
            "tokens": [{"token": "auth-token-value-3-long", "user": "alice", "namespaces": ["shop"]}],
        },
        "redis": {"url": "redis://:redis-password-4@127.0.0.1:6379/0"},
        "otlp": {"endpoint": "grpc://127.0.0.1:4317", "headers": {"Authorization": "Bearer otlp-header-5"}},
        "frontend": {
            "tempo": {"endpoint": "https://user:tempo-password-6@tempo:3200", "headers": {"X-Scope-OrgID": "tenant-7"}}
        },
        "plugins": {
            "settings": {"webhook-sink": {"password": "plugin-password-8", "url": "http://u:plugin-url-9@h/"}}
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [str(Path(sys.executable).parent / "kelemetry-py"), "config", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "KELEMETRY_FRONTEND__JAEGER__HEADERS": '{"X-Api-Key": "env-header-10"}'},
    )
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    for n, value in enumerate(
        [
            "webhook-token-value-1",
            "ingest-token-value-2",
            "auth-token-value-3-long",
            "redis-password-4",
            "otlp-header-5",
            "tempo-password-6",
            "tenant-7",
            "plugin-password-8",
            "plugin-url-9",
            "env-header-10",
        ],
        start=1,
    ):
        assert value not in result.stdout, (n, value)
    # What is not secret stays readable.
    assert printed["auth"]["tokens"][0]["user"] == "alice"
    assert printed["auth"]["tokens"][0]["namespaces"] == ["shop"]
    assert printed["redis"]["url"].endswith("@127.0.0.1:6379/0")
    assert printed["otlp"]["headers"] == {"Authorization": "<masked>"}
    assert printed["frontend"]["jaeger"]["headers"] == {"X-Api-Key": "<masked>"}
