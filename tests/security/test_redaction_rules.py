"""The redaction rules object by object: what is replaced, what stays, and that clean objects are not copied."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from kelemetry_py.config import RedactionConfig
from kelemetry_py.sources.redaction import LAST_APPLIED, REDACTED, Redactor, redact

ENV = [
    {"name": "DB_PASSWORD", "value": "p1"},
    {"name": "api_key", "value": "p2"},
    {"name": "OAuthClientSecret", "value": "p3"},
    {"name": "AWS_CREDENTIALS", "value": "p4"},
    {"name": "LOG_LEVEL", "value": "debug"},
    {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
]


def containers() -> dict[str, Any]:
    return {
        "containers": [{"name": "a", "env": copy.deepcopy(ENV)}],
        "initContainers": [{"name": "i", "env": copy.deepcopy(ENV)}],
    }


@pytest.mark.parametrize(
    ("kind", "obj"),
    [
        ("Pod", {"spec": containers()}),
        ("Deployment", {"spec": {"template": {"spec": containers()}}}),
        ("ReplicaSet", {"spec": {"template": {"spec": containers()}}}),
        ("StatefulSet", {"spec": {"template": {"spec": containers()}}}),
        ("DaemonSet", {"spec": {"template": {"spec": containers()}}}),
        ("Job", {"spec": {"template": {"spec": containers()}}}),
        ("CronJob", {"spec": {"jobTemplate": {"spec": {"template": {"spec": containers()}}}}}),
        ("PodTemplate", {"template": {"spec": containers()}}),
    ],
)
def test_sensitive_env_values_in_every_pod_spec(kind: str, obj: dict[str, Any]) -> None:
    original = {"kind": kind, "metadata": {"name": "x"}, **obj}
    before = copy.deepcopy(original)
    redacted = redact(original, kind.lower() + "s", RedactionConfig())
    assert original == before, "the original is never touched"
    text = repr(redacted)
    for value in ("p1", "p2", "p3", "p4"):
        assert f"'{value}'" not in text
    assert "'debug'" in text and "secretKeyRef" in text and text.count(REDACTED) == 8


def test_clean_objects_are_not_copied_and_the_pattern_is_configurable() -> None:
    clean = {"kind": "Pod", "spec": {"containers": [{"name": "a", "env": [{"name": "LOG_LEVEL", "value": "x"}]}]}}
    assert redact(clean, "pods", RedactionConfig()) is clean
    only_db = RedactionConfig(env_name_pattern="^DB_")
    pod = {"kind": "Pod", "spec": {"containers": [{"name": "a", "env": copy.deepcopy(ENV)}]}}
    env = redact(pod, "pods", only_db)["spec"]["containers"][0]["env"]
    assert [entry.get("value") for entry in env] == [REDACTED, "p2", "p3", "p4", "debug", None]
    assert redact(pod, "pods", RedactionConfig(env_name_pattern="")) is pod


def test_secrets_by_resource_in_any_case_by_kind_and_in_lists() -> None:
    redactor = Redactor(RedactionConfig())
    body = {"data": {"k": "djE="}, "stringData": {"k": "v1"}, "metadata": {"annotations": {
        "kubectl.kubernetes.io/last-applied-configuration": '{"data":{"k":"djE="}}', "keep": "me"}}}
    for resource in ("secrets", "Secrets", "SECRETS"):
        out = redactor.redact(copy.deepcopy(body), resource)
        assert out["data"] == {"k": REDACTED} and out["stringData"] == {"k": REDACTED}
        assert out["metadata"]["annotations"] == {
            "kubectl.kubernetes.io/last-applied-configuration": REDACTED, "keep": "me"}
    as_kind = redactor.redact({"kind": "Secret", **copy.deepcopy(body)}, "anything")
    assert as_kind["data"] == {"k": REDACTED}
    listed = redactor.redact({"kind": "SecretList", "items": [copy.deepcopy(body)]}, "secrets")
    assert listed["items"][0]["data"] == {"k": REDACTED}
    configmap = {"kind": "ConfigMap", "data": {"k": "v"}}
    assert redactor.redact(configmap, "configmaps") is configmap


def test_token_request_and_token_review_tokens() -> None:
    redactor = Redactor(RedactionConfig())
    status = {"token": "t1", "expirationTimestamp": "x"}
    request = {"kind": "TokenRequest", "spec": {"audiences": ["a"]}, "status": status}
    out = redactor.redact(request, "serviceaccounts")
    assert out["status"] == {"token": REDACTED, "expirationTimestamp": "x"} and out["spec"] == {"audiences": ["a"]}
    review = {"spec": {"token": "t2"}, "status": {"authenticated": True}}  # a request body may carry no kind
    assert redactor.redact(review, "TokenReviews")["spec"] == {"token": REDACTED}


def test_paths_with_globs_still_apply() -> None:
    config = RedactionConfig(paths=["data.*", "spec.containers.*.args"])
    obj = {"kind": "ConfigMap", "data": {"a": "1", "b": "2"}, "spec": {"containers": [{"args": ["--pw=x"]}]}}
    out = redact(obj, "configmaps", config)
    assert out["data"] == {"a": REDACTED, "b": REDACTED}
    assert out["spec"]["containers"][0]["args"] == REDACTED


def applied_deployment(env: list[Any]) -> dict[str, Any]:
    """A Deployment as ``kubectl apply`` leaves it: its spec, and the applied copy as JSON in an annotation."""
    spec = {"template": {"spec": {"containers": [{"name": "a", "env": copy.deepcopy(env)}]}}}
    applied = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}, "spec": copy.deepcopy(spec)}
    text = orjson.dumps(applied).decode() + "\n"
    return {"kind": "Deployment", "metadata": {"name": "x", "annotations": {LAST_APPLIED: text}}, "spec": spec}


def test_env_values_in_the_copy_kubectl_apply_keeps_are_redacted_too() -> None:
    original = applied_deployment(ENV)
    before = copy.deepcopy(original)
    redacted = redact(original, "deployments", RedactionConfig())
    assert original == before, "the original is never touched"
    text = redacted["metadata"]["annotations"][LAST_APPLIED]
    assert text.endswith("\n")
    env = orjson.loads(text)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert [entry.get("value") for entry in env] == [REDACTED, REDACTED, REDACTED, REDACTED, "debug", None]
    # A copy with nothing to redact is kept byte for byte, and the object is not copied for it.
    clean = applied_deployment([{"name": "LOG_LEVEL", "value": "debug"}])
    assert redact(clean, "deployments", RedactionConfig()) is clean


def test_a_secret_only_in_the_applied_copy_still_needs_redaction() -> None:
    redactor = Redactor(RedactionConfig())
    obj = applied_deployment(ENV)
    obj["spec"] = {"template": {"spec": {"containers": [{"name": "a"}]}}}  # changed since it was applied
    # The differ skips the env walk when the specs are those of an already redacted state; not the annotation.
    assert redactor.needs(obj, "deployments", specs_redacted=True)
    assert "p1" not in redactor.redact(obj, "deployments")["metadata"]["annotations"][LAST_APPLIED]


def test_an_applied_copy_that_cannot_be_read_is_replaced_and_paths_apply_inside() -> None:
    broken = {"kind": "Deployment", "metadata": {"annotations": {LAST_APPLIED: '{"env": [{"name": "DB_PASSWORD"'}}}
    out = redact(broken, "deployments", RedactionConfig())
    assert out["metadata"]["annotations"][LAST_APPLIED] == REDACTED
    config = RedactionConfig(paths=["data.*"])
    configmap = {"kind": "ConfigMap", "data": {"a": "1"}}
    configmap["metadata"] = {"annotations": {LAST_APPLIED: orjson.dumps({**configmap, "metadata": {}}).decode()}}
    out = redact(configmap, "configmaps", config)
    assert out["data"] == {"a": REDACTED}
    assert orjson.loads(out["metadata"]["annotations"][LAST_APPLIED])["data"] == {"a": REDACTED}


def test_the_memo_of_applied_copies_is_bounded_by_their_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("kelemetry_py.sources.redaction._APPLIED_MEMO_CHARACTERS", 20_000)
    redactor = Redactor(RedactionConfig())
    for n in range(200):
        obj = applied_deployment([{"name": "DB_PASSWORD", "value": f"p{n}"}, {"name": "LOG_LEVEL", "value": "x" * n}])
        out = redactor.redact(obj, "deployments")
        assert f'"p{n}"' not in out["metadata"]["annotations"][LAST_APPLIED]
        assert redactor._applied_characters <= 20_000
    assert redactor._applied  # it did remember some
