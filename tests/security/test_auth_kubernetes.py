"""``auth.mode: kubernetes``: the cluster's RBAC decides, through TokenReview and SubjectAccessReview against the
Kubernetes API double, for a service-account token bound to namespace shop by a RoleBinding to ClusterRole view."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from aiohttp import ClientSession

from kelemetry_py.auth.kubernetes import TtlCache
from tests.conftest import SCENARIOS
from tests.e2e.conftest import AppFactory, replay_scenario
from tests.e2e.test_frontend_backends import free_port
from tests.frontend.scenario import scenario_facts
from tests.kube.helpers import write_kubeconfig
from tests.security.tenant import Reader, check_tenant_view, recorded, replay_all
from tests.support.kube_double import VIEW_RULES, Binding, KubeApiDouble, ReviewUser

KELEMETRY_TOKEN = "kelemetry-own-credentials"  # what kelemetry-py itself uses to ask for reviews
VIEWER_TOKEN = "viewer-service-account-token-of-shop"
ADMIN_TOKEN = "admin-user-token-0123456789"


def rbac_double() -> tuple[KubeApiDouble, ReviewUser]:
    double = KubeApiDouble(tokens=[KELEMETRY_TOKEN])
    viewer = ReviewUser.service_account("shop", "viewer", "5944e9a3-9154-4879-b8da-47db24698ad1")
    double.review_tokens[VIEWER_TOKEN] = viewer
    double.review_tokens[ADMIN_TOKEN] = ReviewUser("admin", "", ("system:masters", "system:authenticated"))
    double.bindings.append(Binding("viewer-view", "shop", "ClusterRole", "view", viewer.username, VIEW_RULES))
    everything = ((("*",), ("*",), ("*",)),)
    double.bindings.append(
        Binding("cluster-admin", None, "ClusterRole", "cluster-admin", "system:masters", everything, ("*",))
    )
    return double, viewer


async def test_service_account_sees_what_its_rolebinding_allows(
    fixtures_dir: Path, make_app: AppFactory, tmp_path: Path
) -> None:
    facts = recorded(fixtures_dir, {s: scenario_facts(fixtures_dir, s) for s in SCENARIOS})
    double, viewer = rbac_double()
    async with double:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", double.url, token=KELEMETRY_TOKEN)
        port = free_port()
        app = await make_app(
            **{
                "auth.mode": "kubernetes",
                "auth.kubernetes.cluster": "fixture",
                "auth.kubernetes.kubeconfig": str(kubeconfig),
                "frontend.grpc_port": port,
            }
        )
        await replay_all(app, fixtures_dir)
        async with ClientSession() as session:
            tenant = Reader(session, app.base_url, VIEWER_TOKEN)
            admin = Reader(session, app.base_url, ADMIN_TOKEN)
            await check_tenant_view(tenant, admin, facts, port)

            # RBAC decides, not a parallel list: ClusterRole view has no Secrets, so the Secret in shop is absent.
            secret = {"resource": "secrets", "namespace": "shop", "name": "db-creds"}
            assert await tenant.search("tree", secret, facts) == []
            assert len(await admin.search("tree", secret, facts)) == 1

    # Each decision was asked once and then cached: one TokenReview per token, one review per object.
    token_reviews = Counter(spec["token"] for kind, spec in double.reviews if kind == "TokenReview")
    assert token_reviews[VIEWER_TOKEN] == 1 and token_reviews[ADMIN_TOKEN] == 1
    asked = Counter(
        json.dumps(spec.get("resourceAttributes") or spec.get("nonResourceAttributes"), sort_keys=True)
        for kind, spec in double.reviews
        if kind == "SubjectAccessReview" and spec["user"] == viewer.username
    )
    assert asked and max(asked.values()) == 1
    viewer_reviews = [
        spec for kind, spec in double.reviews if kind == "SubjectAccessReview" and spec["user"] == viewer.username
    ]
    assert all(spec["groups"] == list(viewer.groups) and spec["uid"] == viewer.uid for spec in viewer_reviews)
    assert {spec["resourceAttributes"]["verb"] for spec in viewer_reviews if "resourceAttributes" in spec} == {"get"}


async def test_reviews_that_cannot_be_asked_fail_closed(
    fixtures_dir: Path, make_app: AppFactory, tmp_path: Path
) -> None:
    facts = recorded(fixtures_dir, {s: scenario_facts(fixtures_dir, s) for s in SCENARIOS})
    double, _ = rbac_double()
    async with double:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", double.url, token=KELEMETRY_TOKEN)
        app = await make_app(
            **{
                "auth.mode": "kubernetes",
                "auth.kubernetes.cluster": "fixture",
                "auth.kubernetes.kubeconfig": str(kubeconfig),
            }
        )
        await replay_scenario(app, fixtures_dir, "deployment-lifecycle")
        web = {"resource": "deployments", "namespace": "shop", "name": "web"}
        async with ClientSession() as session:
            tenant = Reader(session, app.base_url, VIEWER_TOKEN)
            # The TokenReview fails: 503 with a request id, never the apiserver's words, never let through.
            double.fail_next("/apis/authentication.k8s.io/", 500)
            body = await tenant.get("/api/services", status=503)
            assert b"request id" in body and b"injected" not in body
            # Every SubjectAccessReview fails: nothing is shown, and nothing of it is remembered.
            double.fail_next("/apis/authorization.k8s.io/", 500, times=10_000)
            assert await tenant.search("tracing", web, facts) == []
            double.clear_failures()
            (found,) = await tenant.search("tracing", web, facts)
            assert found.root["operationName"] == "shop web"


def test_decisions_expire_after_their_ttl() -> None:
    now = [0.0]
    cache: TtlCache[str, bool] = TtlCache(ttl=60.0, max_entries=2, clock=lambda: now[0])
    cache.put("a", True)
    now[0] = 59.0
    assert cache.get("a") is True
    now[0] = 60.0
    assert cache.get("a") is None
    for key in ("x", "y", "z"):
        cache.put(key, False)
    assert cache.get("x") is None and cache.get("z") is False  # bounded: the oldest went first
    never: TtlCache[str, bool] = TtlCache(ttl=0.0, max_entries=10)
    never.put("a", True)
    assert never.get("a") is None
