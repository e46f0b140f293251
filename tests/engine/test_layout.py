"""The engine's layout (issue 17): one folder per concept, imports one way, and the flat module
paths of before the sub-packages still import as the moved modules themselves."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import circuit_atlas.engine as engine

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ROOT / "engine"
PACKAGES = ("models", "transcoders", "attribution", "interventions", "training", "formats", "cli")


def test_engine_has_no_flat_modules_left():
    assert sorted(p.name for p in ENGINE.glob("*.py")) == ["__init__.py"]
    assert sorted(p.name for p in ENGINE.iterdir() if p.is_dir() and (p / "__init__.py").exists()) == sorted(PACKAGES)


@pytest.mark.parametrize("old", sorted(engine.MOVED))
def test_an_old_flat_path_is_the_moved_module(old):
    moved = importlib.import_module(f"circuit_atlas.engine.{engine.MOVED[old]}")
    assert importlib.import_module(f"circuit_atlas.engine.{old}") is moved
    assert getattr(importlib.import_module("circuit_atlas.engine"), old) is moved
    assert moved.__name__ == f"circuit_atlas.engine.{engine.MOVED[old]}"  # the alias does not rename it


@pytest.mark.parametrize("pkg,inner", [("models", "loading"), ("transcoders", "transcoder_set"),
                                       ("attribution", "attribute"), ("interventions", "ablation")])
def test_a_package_named_like_an_old_module_keeps_its_names(pkg, inner):
    package = importlib.import_module(f"circuit_atlas.engine.{pkg}")
    module = importlib.import_module(f"circuit_atlas.engine.{pkg}.{inner}")
    public = {n for n, v in vars(module).items() if not n.startswith("_") and getattr(v, "__module__", None) == module.__name__}
    assert public and all(getattr(package, n) is getattr(module, n) for n in public)


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_imports_go_one_way():
    """engine → graph files → ingest → store ← queries ← app: apart from its command-line glue
    (engine/cli reads stored prompts), the engine imports none of the later stages."""
    for path in ENGINE.rglob("*.py"):
        if path.parent.name == "cli":
            continue
        for name in _imports(path):
            assert not name.startswith(("circuit_atlas.ingest", "circuit_atlas.store", "circuit_atlas.queries",
                                        "circuit_atlas.app")), f"{path.relative_to(ROOT)} imports {name}"
