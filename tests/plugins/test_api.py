"""The plugin API: loading each kind from entry points, decorators in the pipeline, sources beside the app,
frontend transforms on views, and isolation of plugins that fail."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from kelemetry_py.config import Config, PluginsConfig
from kelemetry_py.frontend.modes import mode_by_name
from kelemetry_py.frontend.transforms import apply_transforms
from kelemetry_py.linking.annotation import ParentAnnotationLinker
from kelemetry_py.linking.owners import OwnerReferenceLinker
from kelemetry_py.metrics import Metrics
from kelemetry_py.model import OBJECT_TAGS, Span, object_trace_id, window_of
from kelemetry_py.plugins import (
    DECORATORS_GROUP,
    LINKERS_GROUP,
    SOURCES_GROUP,
    TRANSFORMS_GROUP,
    Decorator,
    FrontendTransform,
    Linker,
    Source,
    ViewInfo,
    load_decorators,
    load_linkers,
    load_sources,
    load_transforms,
)
from kelemetry_py.plugins.sources import SourceRunner
from tests.plugins.sample_plugins import (
    OwnerTeamDecorator,
    RaisingDecorator,
    RaisingLinker,
    RaisingSource,
    TickSource,
    WrongResultDecorator,
)
from tests.plugins.support import (
    BUILTIN_LINKERS,
    ONLY_BUILTINS,
    error_count,
    run_pipeline,
    running_app,
    scenario_observations,
    signatures,
)
from tests.support.writers import CollectingWriter


def test_builtin_linkers_load_through_the_public_api() -> None:
    linkers = load_linkers(ONLY_BUILTINS)
    assert [linker.name for linker in linkers] == BUILTIN_LINKERS
    assert isinstance(linkers[0], OwnerReferenceLinker) and isinstance(linkers[1], ParentAnnotationLinker)
    assert all(isinstance(linker, Linker) for linker in linkers)


def test_each_kind_loads_in_configured_order_with_settings(
    sample_plugins: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = PluginsConfig(
        enabled={
            DECORATORS_GROUP: ["raising-decorator", "owner-team", "not-a-decorator"],
            SOURCES_GROUP: ["ticks"],
            TRANSFORMS_GROUP: ["shout", "raising-transform"],
        },
        settings={"owner-team": {"label": "app"}, "ticks": {"failures": 3}},
    )
    with caplog.at_level(logging.ERROR):
        decorators = load_decorators(config)
    assert [d.name for d in decorators] == ["raising-decorator", "owner-team"]
    assert isinstance(decorators[1], OwnerTeamDecorator) and decorators[1].label == "app"
    assert all(isinstance(d, Decorator) for d in decorators)
    assert any("not-a-plugin" in r.getMessage() or "NotAPlugin" in r.getMessage() for r in caplog.records)

    (source,) = load_sources(config)
    assert isinstance(source, TickSource) and source.failures == 3 and isinstance(source, Source)
    transforms = load_transforms(config)
    assert [t.name for t in transforms] == ["shout", "raising-transform"]
    assert all(isinstance(t, FrontendTransform) for t in transforms)


def test_disabled_plugins_do_not_load(sample_plugins: Path) -> None:
    config = PluginsConfig(disabled=["raising-decorator", "wrong-decorator"])
    assert "raising-decorator" not in [d.name for d in load_decorators(config)]
    assert "owner-team" in [d.name for d in load_decorators(config)]


async def test_decorators_tag_object_and_observation_spans(fixtures_dir: Path) -> None:
    observations = scenario_observations(fixtures_dir, "errors-and-links")
    spans = await run_pipeline(
        observations, linkers=load_linkers(ONLY_BUILTINS), decorators=[OwnerTeamDecorator(label="app")]
    )
    decorated = [s for s in spans if s.service != "link"]
    assert decorated and all("team" in s.attributes for s in decorated)
    assert not any("team" in s.attributes for s in spans if s.service == "link"), "link spans are not decorated"
    web2 = [s for s in spans if s.service == "audit" and s.attributes["resource"] == "deployments"]
    assert web2 and {s.attributes["team"] for s in web2 if s.attributes["name"] == "web2"} >= {"web2"}
    # Identity tags cannot be overwritten: spans stay findable by their object.
    assert all(s.attributes["name"] != "overwritten?" for s in spans)
    roots = [s for s in spans if s.service == "object"]
    assert roots and all([log.name for log in s.logs] == ["decorated"] for s in roots)
    audit_logs = [log.name for s in spans if s.service == "audit" for log in s.logs]
    assert "decorated" not in audit_logs


async def test_failing_plugins_leave_the_output_unchanged(fixtures_dir: Path) -> None:
    baseline = await run_pipeline(
        scenario_observations(fixtures_dir, "errors-and-links"), linkers=load_linkers(ONLY_BUILTINS)
    )
    metrics = Metrics()
    with_failures = await run_pipeline(
        scenario_observations(fixtures_dir, "errors-and-links"),
        linkers=[RaisingLinker(), *load_linkers(ONLY_BUILTINS)],
        decorators=[RaisingDecorator(), WrongResultDecorator()],
        metrics=metrics,
    )
    assert any(s.service == "link" for s in baseline)
    assert signatures(with_failures) == signatures(baseline)
    assert error_count(metrics, "raising-decorator") == len(baseline) - sum(s.service == "link" for s in baseline)
    assert error_count(metrics, "wrong-decorator") == error_count(metrics, "raising-decorator")
    assert error_count(metrics, "raising-linker") > 0


async def test_a_failing_source_is_restarted_and_stops_with_the_runner() -> None:
    from kelemetry_py.pipeline.core import Pipeline
    from kelemetry_py.pipeline.emission.memory import MemoryEmissionSet

    metrics = Metrics()
    writer = CollectingWriter()
    pipeline = Pipeline(writer=writer, emission=MemoryEmissionSet(), metrics=metrics)
    await pipeline.start()
    ticks = TickSource(failures=2)
    runner = SourceRunner([ticks, RaisingSource()], pipeline, Config(), metrics, restart_delay_seconds=0)
    await runner.start()
    await ticks.emitted.wait()
    assert ticks.runs == 3 and runner.failures["ticks"] == 2
    assert error_count(metrics, "ticks") == 2
    assert "ticks" in runner.running
    await runner.stop()
    assert runner.running == [] and runner.failures["raising-source"] >= 1
    await pipeline.drain()
    (tick,) = writer.by_service("ticks")
    assert tick.attributes["name"] == "tick-3" and tick.attributes["cluster"] == "ticks"
    await pipeline.stop()


def _spans() -> list[Span]:
    root = Span(trace_id=1, span_id=1, parent_id=None, service="object", name="pods/a", start_ns=0, end_ns=10)
    child = Span(trace_id=1, span_id=2, parent_id=1, service="audit", name="admin create", start_ns=1, end_ns=2)
    return [root, child]


async def test_transforms_apply_in_order_and_failures_change_nothing(sample_plugins: Path) -> None:
    config = PluginsConfig(enabled={TRANSFORMS_GROUP: ["raising-transform", "drops-root", "shout"]})
    transforms = load_transforms(config)
    metrics = Metrics()
    spans = _spans()
    view = ViewInfo(mode="tracing", object_key="c//pods/ns/a", trace_id=1)
    result = await apply_transforms(transforms, spans, view, metrics)
    assert [s.name for s in result] == ["PODS/A", "ADMIN CREATE"]
    assert all(s.attributes["view.mode"] == "tracing" for s in result)
    assert [s.name for s in spans] == ["pods/a", "admin create"], "the transforms worked on copies"
    assert error_count(metrics, "raising-transform") == 1 and error_count(metrics, "drops-root") == 1


async def test_app_runs_decorators_sources_and_transforms(sample_plugins: Path, tmp_path: Path) -> None:
    plugins = {
        "plugins.enabled": {
            DECORATORS_GROUP: ["owner-team", "raising-decorator"],
            SOURCES_GROUP: ["ticks", "raising-source"],
            TRANSFORMS_GROUP: ["shout"],
            LINKERS_GROUP: [*BUILTIN_LINKERS, "raising-linker"],
        },
        "plugins.settings": {"owner-team": {"default": "platform"}, "ticks": {"cluster": "edge"}},
    }
    async with running_app(tmp_path, **plugins) as app:
        components = app.components
        assert components is not None and components.sources is not None and components.store is not None
        (ticks, _) = components.sources.sources
        assert isinstance(ticks, TickSource)
        await ticks.emitted.wait()
        await app.settle()
        start_ns = 1_795_000_000_000_000_000
        key = "edge//configmaps/default/tick-1"
        spans = await components.store.get_trace(object_trace_id(key, window_of(start_ns, 1800)))
        by_service = {span.service: span for span in spans}
        assert set(by_service) == {"object", "ticks"}
        assert by_service["ticks"].attributes["team"] == "platform"
        assert error_count(components.metrics, "raising-decorator") == 2
        assert {tag: by_service["ticks"].attributes[tag] for tag in OBJECT_TAGS}["name"] == "tick-1"

        assert app.frontend is not None
        view = await app.frontend.best(
            {"cluster": "edge", "name": "tick-1"}, start_ns, mode_by_name("tracing"), 3_600_000_000_000
        )
        assert view is not None and "TICK-1" in view.spans[0].name
        assert all(span.name == span.name.upper() for span in view.spans)
        assert all(span.attributes["view.mode"] == "tracing" for span in view.spans)
        sources = components.sources
    assert sources.running == []
