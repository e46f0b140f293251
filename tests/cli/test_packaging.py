"""Every dependency in pyproject.toml has an upper bound, and what is installed satisfies it.

Unbounded ranges let a fresh install pick up a major the suite never ran on (typer 0.16+
replaced click with a vendored copy, and every usage error became a traceback)."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _requirements() -> list[tuple[str, Requirement]]:
    data = tomllib.loads(PYPROJECT.read_text())
    found = [("build-system", Requirement(r)) for r in data["build-system"]["requires"]]
    found += [("dependencies", Requirement(r)) for r in data["project"]["dependencies"]]
    for extra, reqs in data["project"].get("optional-dependencies", {}).items():
        found += [(f"extra {extra}", Requirement(r)) for r in reqs]
    return found


REQUIREMENTS = _requirements()


def _has_upper_bound(req: Requirement) -> bool:
    return any(spec.operator in {"<", "<=", "==", "===", "~="} for spec in req.specifier)


def test_pyproject_lists_dependencies():
    names = {req.name.lower() for _, req in REQUIREMENTS}
    assert {"typer", "ladybug", "pytest"} <= names


@pytest.mark.parametrize("where,req", REQUIREMENTS, ids=[f"{w}:{r.name}" for w, r in REQUIREMENTS])
def test_every_dependency_has_an_upper_bound(where, req):
    assert _has_upper_bound(req), f"{where}: {req} has no upper bound (add <NEXT_MAJOR, or <0.NEXT_MINOR for 0.x)"


def test_ladybug_is_pinned():
    (ladybug,) = [req for _, req in REQUIREMENTS if req.name.lower() == "ladybug"]
    assert [spec.operator for spec in ladybug.specifier] == ["=="]


@pytest.mark.parametrize("where,req", REQUIREMENTS, ids=[f"{w}:{r.name}" for w, r in REQUIREMENTS])
def test_installed_version_is_inside_the_bounds(where, req):
    """The versions this suite runs on must be allowed: a bound below them would be a lie."""
    try:
        installed = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        pytest.skip(f"{req.name} is not installed here ({where}); its bound is untested")
    assert req.specifier.contains(installed, prereleases=True), f"installed {req.name} {installed} is outside {req.specifier}"
