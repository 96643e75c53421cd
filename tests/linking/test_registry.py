from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from kelemetry_py.config import PluginsConfig
from kelemetry_py.kube import ClusterCatalogs, ResourceCatalog
from kelemetry_py.linking import Linker
from kelemetry_py.linking.annotation import ParentAnnotationLinker
from kelemetry_py.linking.owners import OwnerReferenceLinker
from kelemetry_py.linking.run import run_linkers
from kelemetry_py.metrics import Metrics
from kelemetry_py.model import Link, ObjectRef
from kelemetry_py.plugins import LINKERS_GROUP
from kelemetry_py.plugins.loading import load_linkers, load_plugins
from tests.linking.fixture_objects import first, watched_objects
from tests.linking.sample_plugins import HangingLinker, RaisingLinker, WrongResultLinker

SAMPLE = "tests.linking.sample_plugins"
BUILTINS = ["owner-references", "parent-annotation"]
# Linker plugins installed beside the built-ins (the example packages in plugins/): left out of these tests.
OTHERS = sorted({ep.name for ep in entry_points(group=LINKERS_GROUP)} - set(BUILTINS))


@pytest.fixture
def sample_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real installed distribution (dist-info on sys.path) registering sample plugins."""
    dist_info = tmp_path / "kelemetry_sample_plugins-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: kelemetry-sample-plugins\nVersion: 1.0\n"
    )
    (dist_info / "entry_points.txt").write_text(
        f"[{LINKERS_GROUP}]\n"
        f"labels = {SAMPLE}:LabelLinker\n"
        f"raising = {SAMPLE}:RaisingLinker\n"
        f"not-a-linker = {SAMPLE}:NotALinker\n"
        "broken = tests.linking.no_such_module:Linker\n"
        "\n[kelemetry_py.decorators]\n"
        f"decorate = {SAMPLE}:Decorator\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _counter(metrics: Metrics, plugin: str) -> float:
    value = metrics.registry.get_sample_value("kelemetry_plugin_errors_total", {"plugin": plugin})
    return value or 0.0


def test_entry_points_find_both_builtins() -> None:
    linkers = load_linkers(PluginsConfig(disabled=OTHERS))
    assert [linker.name for linker in linkers] == BUILTINS
    assert isinstance(linkers[0], OwnerReferenceLinker)
    assert isinstance(linkers[1], ParentAnnotationLinker)


def test_enabled_list_selects_and_orders() -> None:
    config = PluginsConfig(enabled={LINKERS_GROUP: ["parent-annotation", "owner-references"]})
    assert [linker.name for linker in load_linkers(config)] == ["parent-annotation", "owner-references"]
    config = PluginsConfig(enabled={LINKERS_GROUP: ["parent-annotation"]})
    assert [linker.name for linker in load_linkers(config)] == ["parent-annotation"]
    # Another group's list does not restrict linkers.
    config = PluginsConfig(enabled={"kelemetry_py.sources": ["something"]}, disabled=OTHERS)
    assert [linker.name for linker in load_linkers(config)] == BUILTINS


def test_disabled_wins_and_unknown_names_are_reported(caplog: pytest.LogCaptureFixture) -> None:
    assert [linker.name for linker in load_linkers(PluginsConfig(disabled=["owner-references", *OTHERS]))] == [
        "parent-annotation"
    ]
    config = PluginsConfig(
        enabled={LINKERS_GROUP: ["owner-references", "nope"]}, disabled=["owner-references"]
    )
    with caplog.at_level(logging.ERROR):
        assert load_linkers(config) == []
    assert any("nope" in r.getMessage() and "not installed" in r.getMessage() for r in caplog.records)


async def test_settings_are_passed_to_the_constructor(fixtures_dir: Path) -> None:
    ref, body = first(
        watched_objects(fixtures_dir / "errors-and-links", "core_v1_configmaps"), "owned-by-viewer-extra"
    )
    default = load_linkers(PluginsConfig(enabled={LINKERS_GROUP: ["owner-references"]}))
    strict = load_linkers(
        PluginsConfig(
            enabled={LINKERS_GROUP: ["owner-references"]},
            settings={"owner-references": {"controller_only": True}},
        )
    )
    assert len(await default[0].links(ref, body)) == 1  # the ClusterRole, controller: false
    assert await strict[0].links(ref, body) == []


async def test_shared_services_reach_constructors_that_take_them(sample_distribution: Path) -> None:
    catalogs = ClusterCatalogs()
    widgets = {
        "groupVersion": "example.com/v1",
        "resources": [{"name": "widgets", "namespaced": False, "kind": "Widget", "verbs": []}],
    }
    catalogs.set("east", ResourceCatalog.from_discovery({"groupVersion": "v1", "resources": []}, [widgets]))
    config = PluginsConfig(enabled={LINKERS_GROUP: ["owner-references", "labels"]})
    # LabelLinker takes no catalog: it is built without it rather than failing.
    linkers = load_linkers(config, catalog=catalogs)
    assert [linker.name for linker in linkers] == ["owner-references", "labels"]
    body = {
        "metadata": {"ownerReferences": [{"apiVersion": "example.com/v1", "kind": "Widget", "name": "w"}]}
    }
    (link,) = await linkers[0].links(ObjectRef("east", "", "v1", "configmaps", "ns", "c"), body)
    assert link.target.namespace == ""


async def test_broken_plugins_are_logged_and_skipped(
    sample_distribution: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = PluginsConfig(settings={"labels": {"label": "owner", "resource": "secrets"}}, disabled=OTHERS)
    with caplog.at_level(logging.ERROR, logger="kelemetry_py.plugins.loading"):
        linkers = load_linkers(config)
    # Sorted by name: broken (import fails), labels, not-a-linker (skipped), owner-references, ...
    assert [linker.name for linker in linkers] == [
        "labels",
        "owner-references",
        "parent-annotation",
        "raising",
    ]
    messages = [r.getMessage() for r in caplog.records]
    assert any("broken" in m and "failed to import" in m for m in messages)
    assert any("not a linker" in m for m in messages)
    labels = linkers[0]
    ref = ObjectRef("c", "", "v1", "configmaps", "ns", "x")
    (link,) = await labels.links(ref, {"metadata": {"labels": {"owner": "boss"}}})
    assert link.target.key == "c//secrets/ns/boss"


def test_bad_settings_skip_only_that_plugin(
    sample_distribution: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = PluginsConfig(
        enabled={LINKERS_GROUP: ["labels", "parent-annotation"]}, settings={"labels": {"no_such_option": 1}}
    )
    with caplog.at_level(logging.ERROR, logger="kelemetry_py.plugins.loading"):
        linkers = load_linkers(config)
    assert [linker.name for linker in linkers] == ["parent-annotation"]
    assert any("labels" in r.getMessage() and "failed to start" in r.getMessage() for r in caplog.records)


def test_settings_that_are_not_a_mapping_skip_the_plugin(caplog: pytest.LogCaptureFixture) -> None:
    config = PluginsConfig(
        settings={"owner-references": ["controller_only"]},  # type: ignore[dict-item]
        disabled=OTHERS,
    )
    with caplog.at_level(logging.ERROR, logger="kelemetry_py.plugins.loading"):
        assert [linker.name for linker in load_linkers(config)] == ["parent-annotation"]
    assert any("must be a mapping" in r.getMessage() for r in caplog.records)


def test_load_plugins_serves_other_groups(sample_distribution: Path) -> None:
    config = PluginsConfig(settings={"decorate": {"colour": "blue"}})
    (plugin,) = load_plugins("kelemetry_py.decorators", config, catalog="shared")
    assert type(plugin).__name__ == "Decorator"
    assert plugin.options == {"colour": "blue", "catalog": "shared"}  # type: ignore[attr-defined]
    assert plugin.name == "decorate"  # type: ignore[attr-defined]
    assert load_plugins("kelemetry_py.decorators", PluginsConfig(disabled=["decorate"])) == []


async def test_a_raising_linker_is_isolated(fixtures_dir: Path) -> None:
    ref, body = first(
        watched_objects(fixtures_dir / "errors-and-links", "core_v1_configmaps"), "child-of-web"
    )
    metrics = Metrics()
    linkers: list[Linker] = [
        RaisingLinker(),
        ParentAnnotationLinker(),
        WrongResultLinker(),
        OwnerReferenceLinker(),
    ]
    results = await run_linkers(linkers, ref, body, metrics)
    assert [(link.link_class, link.target.key) for link in results] == [
        ("annotation", "fixture/apps/deployments/shop/web2")
    ]
    assert _counter(metrics, "raising") == 1
    assert _counter(metrics, "wrong-result") == 1
    assert _counter(metrics, "parent-annotation") == 0
    await run_linkers(linkers, ref, body, metrics)
    assert _counter(metrics, "raising") == 2


async def test_a_hanging_linker_times_out(fixtures_dir: Path) -> None:
    ref, body = first(
        watched_objects(fixtures_dir / "errors-and-links", "core_v1_configmaps"), "child-of-web"
    )
    metrics = Metrics()
    hanging = HangingLinker()
    results = await run_linkers([hanging, ParentAnnotationLinker()], ref, body, metrics, timeout_seconds=0.01)
    assert [link.link_class for link in results] == ["annotation"]
    assert _counter(metrics, "hanging") == 1
    assert not hanging.release.is_set()


async def test_cancellation_is_not_swallowed() -> None:
    hanging = HangingLinker()
    task = asyncio.create_task(run_linkers([hanging], ObjectRef("c", "", "v1", "pods", "n", "p"), {}))
    await asyncio.wait_for(hanging.entered.wait(), timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_no_linkers_no_links() -> None:
    assert await run_linkers([], ObjectRef("c", "", "v1", "pods", "n", "p"), {}, None) == []


async def test_a_linker_that_waits_and_answers_in_time_keeps_its_links() -> None:
    target = ObjectRef("c", "", "v1", "configmaps", "n", "parent")

    class WaitingLinker:
        name = "waiting"

        async def links(self, ref: ObjectRef, body: Mapping[str, Any]) -> Sequence[Link]:
            await asyncio.sleep(0)  # a bare yield, then a real wait on a future
            answered = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(answered.set_result, [Link(target, "parent", "waited")])
            found: list[Link] = await answered
            return found

    metrics = Metrics()
    results = await run_linkers([WaitingLinker()], ObjectRef("c", "", "v1", "pods", "n", "p"), {}, metrics)
    assert [(link.link_class, link.target.key) for link in results] == [("waited", target.key)]
    assert _counter(metrics, "waiting") == 0
