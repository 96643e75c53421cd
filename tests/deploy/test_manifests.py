"""deploy/: both overlays render, every object is valid Kubernetes (1.24 and the newest schema kubernetes-validate
ships), and the properties the issue asks for hold on the rendered objects, not on the source files.

Rendering uses tests/deploy/kustomize.py (the subset of Kustomize deploy/ uses; it refuses any other field), checked
object for object against ``kubectl kustomize`` v5.5 when written. The apiserver snippets are not API objects (an
audit Policy, a kubeconfig, a kubeadm ClusterConfiguration have no OpenAPI schema to validate against), so they are
checked by what the apiserver does with them: the policy is evaluated first-match, the files reference each other.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kelemetry_py.config import Config, load_config
from kelemetry_py.metrics import Metrics
from tests.deploy.kustomize import render

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
OVERLAYS = ("single", "ha")
COMPONENTS = ("monitoring", "auth-kubernetes")
KUBERNETES_VERSIONS = ("1.24.0", kubernetes_validate.latest_version())
CRD_GROUPS = ("monitoring.coreos.com/",)
WORKLOADS = ("StatefulSet", "Deployment", "DaemonSet")


def rendered(overlay: str, tmp_path: Path | None = None, components: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The overlay as kustomize builds it, optionally with components switched on (in a copy of deploy/)."""
    if not components:
        return render(DEPLOY / "overlays" / overlay)
    assert tmp_path is not None
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy)
    kustomization = copy / "overlays" / overlay / "kustomization.yaml"
    spec = yaml.safe_load(kustomization.read_text())
    spec["components"] = [f"../../components/{name}" for name in components]
    kustomization.write_text(yaml.safe_dump(spec))
    return render(kustomization.parent)


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [obj for obj in of_kind(objects, kind) if obj["metadata"]["name"] == name]
    return found


def server_config(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(one(objects, "ConfigMap", "kelemetry-py-config")["data"]["config.yaml"])  # type: ignore[no-any-return]


def server_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = one(objects, "StatefulSet", "kelemetry-py")["spec"]["template"]["spec"]["containers"]
    return container  # type: ignore[no-any-return]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_of_each_overlay_is_valid_kubernetes(overlay: str, version: str, tmp_path: Path) -> None:
    objects = rendered(overlay, tmp_path, COMPONENTS)
    assert {"StatefulSet", "Service", "ConfigMap", "ClusterRole", "Role", "NetworkPolicy"} <= {
        obj["kind"] for obj in objects
    }
    for obj in objects:
        if obj["apiVersion"].startswith(CRD_GROUPS):
            continue  # Prometheus Operator CRDs: checked below and by promtool
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_validator_rejects_what_kubernetes_would() -> None:
    statefulset = one(render(DEPLOY / "overlays" / "single"), "StatefulSet", "kelemetry-py")
    statefulset["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonRot"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, "1.24.0", strict=True)


def test_single_keeps_the_embedded_store_on_a_claim_of_one_replica() -> None:
    objects = rendered("single")
    statefulset = one(objects, "StatefulSet", "kelemetry-py")
    assert statefulset["spec"]["replicas"] == 1
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    mount = next(m for m in server_container(objects)["volumeMounts"] if m["name"] == claim["metadata"]["name"])
    config = effective_config(objects)
    assert config.store.enabled and Path(config.store.path).is_relative_to(mount["mountPath"])
    assert not config.redis.url and not config.kube.leader_election


def test_ha_runs_three_replicas_on_redis_and_tempo_with_leader_election() -> None:
    objects = rendered("ha")
    assert one(objects, "StatefulSet", "kelemetry-py")["spec"]["replicas"] == 3
    config = effective_config(objects)
    assert config.redis.url.startswith("redis://") and config.redis.url.endswith("@kelemetry-py-redis:6379/0")
    assert config.otlp.endpoint.startswith("grpc://") and not config.store.enabled
    assert config.frontend.reader == "tempo" and config.kube.leader_election
    assert one(objects, "Service", "kelemetry-py-redis")
    assert one(objects, "PodDisruptionBudget", "kelemetry-py")["spec"] == {
        "minAvailable": 2,
        "selector": one(objects, "StatefulSet", "kelemetry-py")["spec"]["selector"],
    }
    env = [variable["name"] for variable in server_container(objects)["env"]]
    assert env.index("REDIS_PASSWORD") < env.index("KELEMETRY_REDIS__URL"), "$(REDIS_PASSWORD) expands in order"


def effective_config(objects: list[dict[str, Any]]) -> Config:
    """The configuration a server pod starts with: the ConfigMap's file plus the container's literal env."""
    env = {
        variable["name"]: variable["value"].replace("$(REDIS_PASSWORD)", "placeholder")
        if "value" in variable
        else "value-from-a-secret"
        for variable in server_container(objects)["env"]
        if variable["name"].startswith("KELEMETRY_")
    }
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.yaml"
        path.write_text(yaml.safe_dump(server_config(objects)))
        return load_config(path, env=env)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_is_least_privilege(overlay: str, tmp_path: Path) -> None:
    objects = rendered(overlay, tmp_path, COMPONENTS)
    rules = [(obj, rule) for obj in of_kind(objects, "ClusterRole") + of_kind(objects, "Role") for rule in obj["rules"]]
    assert rules
    for obj, rule in rules:
        assert "secrets" not in rule.get("resources", []), f"{obj['metadata']['name']} grants {rule}"
        assert "*" not in rule.get("resources", []) + rule.get("verbs", []) + rule.get("apiGroups", [])
        if obj["kind"] == "ClusterRole":
            assert "leases" not in rule["resources"], "Leases only in the pods' own namespace"
        if "tokenreviews" in rule["resources"] or "subjectaccessreviews" in rule["resources"]:
            assert rule["verbs"] == ["create"] and obj["metadata"]["name"] == "kelemetry-py-auth"
        elif obj["kind"] == "ClusterRole":
            assert set(rule["verbs"]) == {"get", "list", "watch"}, f"{obj['metadata']['name']}: {rule}"
    (leases,) = of_kind(objects, "Role")
    assert leases["metadata"]["namespace"] == one(objects, "StatefulSet", "kelemetry-py")["metadata"]["namespace"]
    for binding in of_kind(objects, "ClusterRoleBinding") + of_kind(objects, "RoleBinding"):
        (subject,) = binding["subjects"]
        assert subject == {"kind": "ServiceAccount", "name": "kelemetry-py", "namespace": "kelemetry"}
    shipped = rendered(overlay)
    creates = [rule for role in of_kind(shipped, "ClusterRole") for rule in role["rules"] if "create" in rule["verbs"]]
    # The overlays ship auth.mode: kubernetes (secure by default), and with it the right to ask the apiserver.
    assert effective_config(shipped).auth.mode == "kubernetes"
    assert sorted(r for rule in creates for r in rule["resources"]) == ["subjectaccessreviews", "tokenreviews"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_watchers_watch_only_what_rbac_grants(overlay: str) -> None:
    objects = rendered(overlay)
    granted = {
        f"{resource}.{group}" if group else resource
        for rule in one(objects, "ClusterRole", "kelemetry-py-watch")["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    config = effective_config(objects)
    assert config.kube.include_resources, "an empty include list would watch Secrets too"
    assert set(config.kube.include_resources) <= granted
    assert {"events", "events.events.k8s.io"} <= granted  # the event tracker


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_locked_down_with_resources(overlay: str, tmp_path: Path) -> None:
    objects = rendered(overlay, tmp_path, COMPONENTS)
    workloads = [obj for obj in objects if obj["kind"] in WORKLOADS]
    assert len(workloads) == (1 if overlay == "single" else 2)
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["terminationGracePeriodSeconds"] == 30
        for container in pod["containers"] + pod.get("initContainers", []):
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True and context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}
            resources = container["resources"]
            assert resources["requests"]["cpu"] and resources["requests"]["memory"] and resources["limits"]["memory"]
            assert container["livenessProbe"] and container["readinessProbe"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_server_probes_listeners_and_secrets(overlay: str, tmp_path: Path) -> None:
    objects = rendered(overlay, tmp_path, COMPONENTS)
    container = server_container(objects)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["readinessProbe"]["httpGet"]["port"] in ports
    config = effective_config(rendered(overlay))  # auth.mode (the auth component) is the security work's key
    assert config.http.host == "0.0.0.0"  # reachable in the pod; the NetworkPolicy narrows who may connect
    assert {"webhook": config.http.ingest_port, "query": config.http.frontend_port} == ports
    assert config.http.tls_cert_file and config.http.tls_key_file
    # The webhook on a listener of its own, with TLS and a token: served by the ingest process where the pod may
    # use a second CPU (ingest.process auto), and its probes answer for both processes.
    assert config.ingest.process == "auto" and config.ingest.tokens
    assert config.ingest.tls_cert_file == config.http.tls_cert_file and config.ingest.tls_key_file
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] == "webhook"
    assert config.http.port not in ports.values()  # the serving process's own listener: exposed nowhere
    policy = one(objects, "NetworkPolicy", "kelemetry-py")
    assert config.http.port not in {rule["ports"][0]["port"] for rule in policy["spec"]["ingress"]}
    volumes = one(objects, "StatefulSet", "kelemetry-py")["spec"]["template"]["spec"]["volumes"]
    tls = next(volume for volume in volumes if volume["name"] == "tls")
    mount = next(m for m in container["volumeMounts"] if m["name"] == "tls")
    assert tls["secret"]["secretName"] and Path(config.http.tls_cert_file).parent == Path(mount["mountPath"])
    # Never a literal secret: no Secret objects, every token and password comes from a secretKeyRef.
    assert not of_kind(objects, "Secret")
    for workload in (obj for obj in objects if obj["kind"] in WORKLOADS):
        for each in workload["spec"]["template"]["spec"]["containers"]:
            for variable in each.get("env", []):
                if re.search(r"TOKEN|PASSWORD|SECRET", variable["name"]):
                    assert "secretKeyRef" in variable["valueFrom"], variable
    assert one(objects, "Service", "kelemetry-py-ingest")["spec"]["ports"][0]["targetPort"] == "webhook"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_reach_the_server_pods(overlay: str, tmp_path: Path) -> None:
    objects = rendered(overlay, tmp_path, COMPONENTS)
    labels = one(objects, "StatefulSet", "kelemetry-py")["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict[str, str]) -> bool:
        return bool(selector) and all(labels.get(key) == value for key, value in selector.items())

    for name in ("kelemetry-py", "kelemetry-py-ingest", "kelemetry-py-headless"):
        assert selects(one(objects, "Service", name)["spec"]["selector"])
    assert selects(one(objects, "PodDisruptionBudget", "kelemetry-py")["spec"]["selector"]["matchLabels"])
    policy = one(objects, "NetworkPolicy", "kelemetry-py")
    assert selects(policy["spec"]["podSelector"]["matchLabels"])
    by_port = {rule["ports"][0]["port"]: rule["from"] for rule in policy["spec"]["ingress"]}
    config = effective_config(rendered(overlay))
    assert [list(peer) for peer in by_port[config.http.ingest_port]] == [["ipBlock"]]  # the control plane only
    assert [list(peer) for peer in by_port[config.http.frontend_port]] == [["namespaceSelector"]]
    monitor = one(objects, "ServiceMonitor", "kelemetry-py")
    query = one(objects, "Service", "kelemetry-py")
    assert all(query["metadata"]["labels"].get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    assert monitor["spec"]["endpoints"][0]["port"] in {port["name"] for port in query["spec"]["ports"]}


def prometheus_rules(tmp_path: Path) -> dict[str, Any]:
    rule = one(rendered("single", tmp_path, COMPONENTS), "PrometheusRule", "kelemetry-py")
    return {"groups": rule["spec"]["groups"]}


def test_prometheus_rules_pass_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is installed by .ci/run"
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(prometheus_rules(tmp_path)))
    checked = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 11 rules found" in checked.stdout

    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [{"alert": "A", "expr": "rate(x[5m]"}]}]}))
    assert subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True).returncode != 0


def test_the_spool_alert_fires_for_any_log_near_its_bound(tmp_path: Path) -> None:
    """The observation log on Redis has no byte backlog: the alert must read what each log holds."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is installed by .ci/run"
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(prometheus_rules(tmp_path)))
    pod = 'namespace="kelemetry",pod="kelemetry-py-0"'
    series = {
        f'kelemetry_spool_used_bytes{{{pod},log="observations"}}': "900x10",
        f'kelemetry_spool_capacity_bytes{{{pod},log="observations"}}': "1000x10",
        f'kelemetry_spool_used_bytes{{{pod},log="spans"}}': "100x10",
        f'kelemetry_spool_capacity_bytes{{{pod},log="spans"}}': "10000x10",
        f'kelemetry_spool_backlog_bytes{{{pod},consumer="pipeline"}}': "0x10",
    }
    test = {
        "rule_files": [str(rules_file)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": name, "values": values} for name, values in series.items()],
                "alert_rule_test": [
                    {
                        "eval_time": "8m",
                        "alertname": "KelemetrySpoolNearFull",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "critical",
                                    "namespace": "kelemetry",
                                    "pod": "kelemetry-py-0",
                                    "log": "observations",
                                },
                                "exp_annotations": {
                                    "summary": "kelemetry-py kelemetry-py-0: spool log observations 90% full",
                                    "description": "When the spool is full the webhook answers 429 and the apiserver"
                                    " starts dropping audit events.",
                                },
                            }
                        ],
                    }
                ],
            }
        ],
    }
    test_file = tmp_path / "test.yaml"
    test_file.write_text(yaml.safe_dump(test))
    tested = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_alerts_name_only_metrics_that_exist(tmp_path: Path) -> None:
    exposed: set[str] = set()
    for family in Metrics().registry.collect():
        exposed.update(sample.name for sample in family.samples)
        exposed.add(family.name + ("_total" if family.type == "counter" else ""))
        if family.type == "histogram":
            exposed.update(family.name + suffix for suffix in ("_count", "_sum", "_bucket"))
    alerts = {rule["alert"]: rule["expr"] for group in prometheus_rules(tmp_path)["groups"] for rule in group["rules"]}
    asked = {"KelemetryAuditBacklog", "KelemetryExportErrors", "KelemetryWatcherDown", "KelemetrySpoolNearFull"}
    assert asked <= set(alerts)
    for name, expr in alerts.items():
        for metric in re.findall(r"\b(kelemetry_[a-z_]+)", expr):
            assert metric in exposed, f"{name} uses {metric}, which kelemetry-py does not expose"
    assert "apiserver_audit_error_total" in alerts["KubeApiserverAuditWebhookErrors"]


# ------------------------------------------------------------------------------------------------ apiserver


def apiserver(name: str) -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "apiserver" / name).read_text())  # type: ignore[no-any-return]


def audit_level(policy: dict[str, Any], verb: str, group: str, resource: str) -> str:
    """The level the apiserver records a request at: the first rule that matches it (audit.k8s.io/v1)."""
    for rule in policy["rules"]:
        if "verbs" in rule and verb not in rule["verbs"]:
            continue
        if "resources" in rule and not any(
            entry.get("group", "") == group and resource in entry.get("resources", [resource])
            for entry in rule["resources"]
        ):
            continue
        return str(rule["level"])
    return "None"


def test_audit_policy_keeps_credentials_at_metadata() -> None:
    policy = apiserver("audit-policy.yaml")
    assert policy["apiVersion"] == "audit.k8s.io/v1" and policy["kind"] == "Policy"
    for verb in ("create", "update", "patch", "delete", "get"):
        assert audit_level(policy, verb, "", "secrets") == "Metadata"
    assert audit_level(policy, "create", "", "serviceaccounts/token") == "Metadata"
    assert audit_level(policy, "create", "authentication.k8s.io", "tokenreviews") == "Metadata"
    # Everything else that changes keeps its bodies: they become diffs, snapshots and names.
    assert audit_level(policy, "patch", "apps", "deployments") == "RequestResponse"
    assert audit_level(policy, "create", "", "pods") == "RequestResponse"
    assert audit_level(policy, "get", "", "configmaps") == "Metadata"
    assert "RequestReceived" in policy["omitStages"]


def test_webhook_kubeconfig_is_https_with_a_ca_and_a_token_file_the_apiserver_mounts() -> None:
    kubeconfig = apiserver("audit-webhook-kubeconfig.yaml")
    kubeadm = apiserver("kubeadm-cluster-configuration.yaml")
    assert kubeadm["kind"] == "ClusterConfiguration" and kubeadm["apiVersion"] == "kubeadm.k8s.io/v1beta3"
    (cluster,) = kubeconfig["clusters"]
    (user,) = kubeconfig["users"]
    assert kubeconfig["current-context"] == kubeconfig["contexts"][0]["name"]
    server = cluster["cluster"]["server"]
    match = re.fullmatch(r"https://127\.0\.0\.1:(\d+)/audit/([a-z0-9-]+)", server)
    assert match, server
    ingest = one(render(DEPLOY / "overlays" / "single"), "Service", "kelemetry-py-ingest")
    assert int(match.group(1)) == ingest["spec"]["ports"][0]["nodePort"] and ingest["spec"]["type"] == "NodePort"
    assert match.group(2) == effective_config(render(DEPLOY / "overlays" / "single")).kube.clusters[0].name
    assert set(user["user"]) == {"tokenFile"}, "a token file, never a literal token"

    (volume,) = kubeadm["apiServer"]["extraVolumes"]
    mounted = Path(volume["mountPath"])
    assert volume["hostPath"] == volume["mountPath"] and volume["readOnly"] is True
    args = kubeadm["apiServer"]["extraArgs"]
    for path in (cluster["cluster"]["certificate-authority"], user["user"]["tokenFile"], args["audit-policy-file"],
                 args["audit-webhook-config-file"]):
        assert Path(path).parent == mounted, path
    assert Path(args["audit-policy-file"]).name == "audit-policy.yaml"
    assert Path(args["audit-webhook-config-file"]).name == "audit-webhook-kubeconfig.yaml"
    assert all(isinstance(value, str) for value in args.values()), "kubeadm extraArgs are strings"
