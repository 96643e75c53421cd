from __future__ import annotations

from pathlib import Path

import pytest

from kelemetry_py.plugins import DECORATORS_GROUP, LINKERS_GROUP, SOURCES_GROUP, TRANSFORMS_GROUP

SAMPLE = "tests.plugins.sample_plugins"


@pytest.fixture
def sample_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real installed distribution (dist-info on sys.path) registering the sample plugins."""
    root = tmp_path / "site"
    dist_info = root / "kelemetry_plugin_api_samples-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: kelemetry-plugin-api-samples\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        f"[{DECORATORS_GROUP}]\n"
        f"owner-team = {SAMPLE}:OwnerTeamDecorator\n"
        f"raising-decorator = {SAMPLE}:RaisingDecorator\n"
        f"wrong-decorator = {SAMPLE}:WrongResultDecorator\n"
        f"not-a-decorator = {SAMPLE}:NotAPlugin\n"
        f"\n[{LINKERS_GROUP}]\n"
        f"raising-linker = {SAMPLE}:RaisingLinker\n"
        f"\n[{SOURCES_GROUP}]\n"
        f"ticks = {SAMPLE}:TickSource\n"
        f"raising-source = {SAMPLE}:RaisingSource\n"
        f"\n[{TRANSFORMS_GROUP}]\n"
        f"shout = {SAMPLE}:ShoutTransform\n"
        f"raising-transform = {SAMPLE}:RaisingTransform\n"
        f"drops-root = {SAMPLE}:DroppingRootTransform\n"
    )
    monkeypatch.syspath_prepend(str(root))
    return root
