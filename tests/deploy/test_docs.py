"""The README and docs/ name only files that exist, and list every metric the app exposes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kelemetry_py.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_repository_paths_named_in_the_docs_exist(document: Path) -> None:
    text = document.read_text()
    # Paths in backticks or after a flag's "=", e.g. `deploy/overlays/ha` or --audit-policy-file=deploy/...
    named = set(re.findall(r"(?<=[`=])((?:deploy|docs|plugins|quickstart|bench|tests/fixtures)/[\w./-]*\w)", text))
    named |= {(document.parent / link).resolve().relative_to(ROOT).as_posix()
              for link in re.findall(r"\]\((?!https?:)([^)#]+)\)", text)}
    for path in named:
        assert (ROOT / path).exists(), f"{document.name} names {path}, which does not exist"


def test_the_operations_guide_lists_every_metric() -> None:
    guide = (ROOT / "docs" / "operations.md").read_text()
    for family in Metrics().registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        assert f"`{name}" in guide, f"docs/operations.md does not describe {name}"
