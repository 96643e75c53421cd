"""The image is reproducible by construction: a base pinned by digest, exact Python versions from constraints.txt."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def constraints() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def test_the_base_is_pinned_by_digest_and_every_install_uses_the_constraints() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    (base,) = re.findall(r"^ARG BASE=(\S+)$", dockerfile, re.MULTILINE)
    assert re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", base)
    assert set(base.rpartition(":")[2]) != {"0"}, "a placeholder digest builds nothing"
    assert re.findall(r"^FROM (\S+)", dockerfile, re.MULTILINE) == ["${BASE}", "${BASE}"]
    installs = re.findall(r"pip (?:wheel|install) [^\n]*", dockerfile)
    assert installs and all("constraints.txt" in line or "--no-deps" in line for line in installs)
    assert "--no-index" in dockerfile  # the final stage installs only the wheels built from the constraints
    assert re.search(r"^ARG INSTALL_EXAMPLE_PLUGINS=false$", dockerfile, re.MULTILINE)
    assert re.search(r"^USER 10001:10001$", dockerfile, re.MULTILINE)
    assert "-c constraints.txt" in (ROOT / ".ci" / "run").read_text()


def test_constraints_pin_every_runtime_dependency_within_its_range() -> None:
    pins = constraints()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for text in project["dependencies"]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not pinned in constraints.txt"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside {requirement}"
    assert all(re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", version) for version in pins.values())
