"""The Kubernetes API double answers TokenReview and SubjectAccessReview as the recorded apiserver did."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiohttp import ClientSession

from tests.support.kube_double import VIEW_RULES, Binding, KubeApiDouble, ReviewUser

VIEWER_TOKEN = "<service-account token of shop/viewer>"  # the placeholder the recording carries


def viewer_double() -> KubeApiDouble:
    """The recorded setup: ServiceAccount shop/viewer bound to ClusterRole view by RoleBinding viewer-view."""
    double = KubeApiDouble()
    viewer = ReviewUser.service_account("shop", "viewer", "5944e9a3-9154-4879-b8da-47db24698ad1")
    double.review_tokens[VIEWER_TOKEN] = viewer
    double.bindings.append(Binding("viewer-view", "shop", "ClusterRole", "view", viewer.username, VIEW_RULES))
    return double


async def test_reviews_match_the_recorded_exchanges(fixtures_dir: Path) -> None:
    exchanges: list[dict[str, Any]] = json.loads((fixtures_dir / "auth" / "auth-exchanges.json").read_bytes())
    reviews = [e for e in exchanges if e["method"] == "POST"]
    assert len(reviews) == 9
    async with viewer_double() as double, ClientSession() as session:
        for exchange in reviews:
            async with session.post(double.url + exchange["path"], json=exchange["request"]) as response:
                body = await response.json()
            recorded = exchange["response"]
            assert response.status == exchange["status"] == 201, exchange["label"]
            assert body["kind"] == recorded["kind"] and body["apiVersion"] == recorded["apiVersion"]
            assert body["spec"] == recorded["spec"], exchange["label"]
            assert body["status"] == recorded["status"], exchange["label"]
            recorded_fields = recorded["metadata"]["managedFields"][0]
            fields = body["metadata"]["managedFields"][0]
            assert fields["fieldsV1"] == recorded_fields["fieldsV1"], exchange["label"]
            assert body["metadata"]["creationTimestamp"] is None
