"""The differ does not watch Secrets by default: reading them cluster-wide is the most dangerous permission there
is. The opt-in (kube.watch_secret_metadata) reads them as PartialObjectMetadata only."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.conftest import AppFactory
from tests.kube.helpers import DOUBLE_TOKEN, all_watching, cluster_watchers, watcher_settings
from tests.support.kube_double import KubeApiDouble


async def test_secrets_are_not_watched_by_default(fixtures_dir: Path, make_app: AppFactory, tmp_path: Path) -> None:
    async with KubeApiDouble(fixtures_dir / "errors-and-links", tokens=[DOUBLE_TOKEN]) as double:
        app = await make_app(**watcher_settings(tmp_path, double.url))
        await all_watching(app)
        watched = {rtype.resource for rtype in cluster_watchers(app).engines["objects"]}
        assert {"configmaps", "pods", "deployments"} <= watched
        assert "secrets" not in watched
        assert not [r for r in double.requests if "/secrets" in r.path]


async def test_opted_in_secrets_are_read_as_metadata_only(
    fixtures_dir: Path, make_app: AppFactory, tmp_path: Path
) -> None:
    async with KubeApiDouble(fixtures_dir / "errors-and-links", tokens=[DOUBLE_TOKEN]) as double:
        app = await make_app(**watcher_settings(tmp_path, double.url, **{"kube.watch_secret_metadata": True}))
        await all_watching(app)
        engines = cluster_watchers(app).engines["objects"]
        (secrets,) = [engine for rtype, engine in engines.items() if rtype.resource == "secrets"]
        assert secrets.metadata_only
        assert not any(engine.metadata_only for rtype, engine in engines.items() if rtype.resource != "secrets")
        reads = [r for r in double.requests if r.path == "/api/v1/secrets"]
        assert {r.query.get("watch") for r in reads} == {None, "true"}  # the LIST and the WATCH
        for read in reads:
            assert read.headers["Accept"].startswith("application/json;as=PartialObjectMetadata")
            assert "g=meta.k8s.io;v=v1" in read.headers["Accept"]
