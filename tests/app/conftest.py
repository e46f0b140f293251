"""A small real embedded store for the app tests: the planted corpus of tests/queries
(groups capitals/opposites/misc with recurring circuits), loaded and LINKS rebuilt."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "queries"))

import planted as planted_mod  # noqa: E402



@pytest.fixture(scope="session")
def planted(tmp_path_factory):
    return planted_mod.build_corpus(tmp_path_factory.mktemp("app-planted") / "graphs")


@pytest.fixture(scope="session")
def store_path(planted, tmp_path_factory) -> Path:
    """The loaded store directory (closed, so the app opens it read-only)."""
    from circuit_atlas.store import open_store

    path = tmp_path_factory.mktemp("app-store") / "db"
    with open_store(f"embedded:{path}") as store:
        store.write_graphs(planted.graph_dirs)
        store.rebuild_links()
        store.write_supernodes([{
            "key": f"{planted_mod.SCAN}:user:capital-chain", "scan": planted_mod.SCAN, "label": "capital chain",
            "method": "user", "members": [planted_mod.key("A"), planted_mod.key("B")],
        }])
    return path


@pytest.fixture
def store_url(store_path, monkeypatch) -> str:
    """The shared store, read-only in spirit: tests that write use `writable_store_url`."""
    url = f"embedded:{store_path}"
    monkeypatch.setenv("CIRCUIT_ATLAS_STORE", url)
    return url


@pytest.fixture
def writable_store_url(store_path, tmp_path, monkeypatch) -> str:
    """A private copy of the store for tests that save labels or supernodes."""
    path = tmp_path / "db"
    shutil.copytree(store_path, path)
    url = f"embedded:{path}"
    monkeypatch.setenv("CIRCUIT_ATLAS_STORE", url)
    return url


@pytest.fixture
def empty_store_url(tmp_path, monkeypatch) -> str:
    """A store URL where nothing has been ingested yet."""
    url = f"embedded:{tmp_path / 'nothing-here'}"
    monkeypatch.setenv("CIRCUIT_ATLAS_STORE", url)
    return url
