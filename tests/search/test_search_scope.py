"""The tenant scope pushed down into the index's SQL, with hand-built Scope objects (static and per-object)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from kelemetry_py.auth import Scope, StaticScope
from kelemetry_py.config import AuditConfig, RedactionConfig
from kelemetry_py.model import ObjectRef
from kelemetry_py.search.filters import build_filter
from kelemetry_py.search.http import parse_interval
from kelemetry_py.search.index import SearchIndex
from kelemetry_py.search.scope import scope_clause
from kelemetry_py.sources.audit import AuditConverter, parse_event_list
from tests.conftest import SCENARIOS
from tests.search.conftest import recorded_audit


class HandBuiltScope:
    def __init__(self, static: StaticScope | None, allowed_names: set[str] | None = None) -> None:
        self.user = "tenant"
        self._static = static
        self._allowed = allowed_names or set()
        self.asked: list[ObjectRef] = []

    @property
    def sees_everything(self) -> bool:
        return False

    def static(self) -> StaticScope | None:
        return self._static

    async def allows(self, ref: ObjectRef) -> bool:
        self.asked.append(ref)
        return ref.name in self._allowed

    async def visible(self, refs: Iterable[ObjectRef]) -> set[ObjectRef]:
        return {ref for ref in refs if await self.allows(ref)}

    def allows_cluster(self, cluster: str) -> bool:
        static = self._static
        return static is None or static.clusters is None or cluster in static.clusters


async def filled_index(fixtures_dir: Path, tmp_path: Path) -> SearchIndex:
    index = await SearchIndex(tmp_path / "search.db").open()
    converter = AuditConverter(AuditConfig(), RedactionConfig(), records=True)
    for scenario in SCENARIOS:
        for line in (fixtures_dir / scenario / "audit.jsonl").open("rb"):
            await index.index(converter.convert("fixture", parse_event_list(line)))
    return index


async def test_static_and_per_object_scopes(fixtures_dir: Path, tmp_path: Path) -> None:
    index = await filled_index(fixtures_dir, tmp_path)
    try:
        audit = recorded_audit(fixtures_dir)
        everything = build_filter("audit", {}, {})
        shop_only = HandBuiltScope(StaticScope(frozenset({"fixture"}), frozenset({"shop"}), cluster_scoped=False))
        assert isinstance(shop_only, Scope)
        clause = await scope_clause(shop_only, index, everything, 100)
        in_shop = [i for i in audit if (i.get("objectRef") or {}).get("namespace") == "shop"]
        total, bodies = await index.query(everything, clause, ascending=True, offset=0, size=1000)
        assert total == len(in_shop) and len(bodies) == min(1000, total)
        events, resources = await index.statistics(everything, clause)
        assert events == len(in_shop) and resources > 0
        buckets = await index.histogram(everything, clause, parse_interval("1m"))
        assert sum(count for _, count in buckets) == len(in_shop)
        exported = [body async for chunk in index.export(everything, clause, ascending=False) for body in chunk]
        assert len(exported) == len(in_shop) and not any(b'"namespace":"jobs"' in body for body in exported)

        # Cluster-scoped records (no namespace) need cluster_scoped; another cluster sees nothing.
        with_cluster = HandBuiltScope(StaticScope(None, frozenset({"shop"}), cluster_scoped=True))
        clause = await scope_clause(with_cluster, index, everything, 100)
        unnamespaced = [i for i in audit if not (i.get("objectRef") or {}).get("namespace")]
        total, _ = await index.query(everything, clause, ascending=True, offset=0, size=0)
        assert total == len(in_shop) + len(unnamespaced)
        elsewhere = HandBuiltScope(StaticScope(frozenset({"other"}), None, cluster_scoped=True))
        total, _ = await index.query(
            everything, await scope_clause(elsewhere, index, everything, 100), ascending=True, offset=0, size=0
        )
        assert total == 0

        # Per-object checks: only the objects the scope allows, counted in totals and statistics.
        settings = build_filter("audit", {"objectref_namespace_filter": "shop"}, {})
        per_object = HandBuiltScope(None, allowed_names={"settings"})
        clause = await scope_clause(per_object, index, settings, 500)
        expected = [i for i in in_shop if i["objectRef"].get("name") == "settings"]
        total, bodies = await index.query(settings, clause, ascending=True, offset=0, size=1000)
        assert total == len(expected) > 0 and len(bodies) == total
        assert {ref.namespace for ref in per_object.asked} == {"shop"}
        assert await index.statistics(settings, clause) == (len(expected), 1)
        # Too many distinct objects to check is refused rather than answered slowly.
        try:
            await scope_clause(HandBuiltScope(None), index, everything, 3)
        except ValueError as exc:
            assert str(exc).startswith("start_time:")
        else:
            raise AssertionError("expected a refusal")
    finally:
        await index.close()


async def test_retention_and_size_bound_delete_the_oldest(fixtures_dir: Path, tmp_path: Path) -> None:
    from kelemetry_py.metrics import Metrics

    metrics = Metrics()
    index = await SearchIndex(tmp_path / "bounded.db", metrics=metrics, max_bytes=400_000, retention_hours=1).open()
    try:
        converter = AuditConverter(AuditConfig(), RedactionConfig(), records=True)
        times: list[int] = []
        for scenario in SCENARIOS:
            for line in (fixtures_dir / scenario / "audit.jsonl").open("rb"):
                observations = converter.convert("fixture", parse_event_list(line))
                times.extend(o.start_ns // 1_000_000 for o in observations if o.record is not None)
                await index.index(observations)
        kept = index.counts()["audit"]
        assert index.bytes_used <= 400_000 and 0 < kept < len(recorded_audit(fixtures_dir))
        everything = build_filter("audit", {}, {})
        total, _ = await index.query(everything, None, ascending=True, offset=0, size=1)
        assert total == kept
        evicted = metrics.registry.get_sample_value("kelemetry_search_records_evicted_total", {"reason": "size"})
        assert evicted is not None and evicted > 0
        # Retention: one hour after the newest record only nothing older than an hour remains.
        newest = max(times)
        await index.purge_expired(now_ms=newest + 3_600_000 - 1000)
        total, _ = await index.query(everything, None, ascending=True, offset=0, size=0)
        assert 0 < total < kept
        assert metrics.registry.get_sample_value("kelemetry_search_records", {"kind": "audit"}) == total
        await index.purge_expired(now_ms=newest + 3_600_001)
        total, _ = await index.query(everything, None, ascending=True, offset=0, size=0)
        assert total == 0 == index.counts()["audit"]
    finally:
        await index.close()
