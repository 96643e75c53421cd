"""Search over audit records and Kubernetes Events: a SQLite index fed with the records observations carry,
served through the KubeSphere-compatible API (``/kapis/...``)."""

from __future__ import annotations

from pathlib import Path

from kelemetry_py.config import Config
from kelemetry_py.metrics import Metrics
from kelemetry_py.search.index import SearchIndex


def search_path(config: Config) -> Path:
    return Path(config.search.path) if config.search.path else Path(config.store.path).parent / "search.db"


async def open_search_index(config: Config, metrics: Metrics) -> SearchIndex:
    return await SearchIndex(
        search_path(config),
        metrics=metrics,
        retention_hours=config.store.retention_hours,
        max_bytes=config.search.max_bytes,
    ).open()


__all__ = ["SearchIndex", "open_search_index", "search_path"]
