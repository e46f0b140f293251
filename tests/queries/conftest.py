"""Fixtures: the planted corpus, loaded once per session into each backend."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import planted as planted_mod  # noqa: E402


@pytest.fixture(scope="session")
def planted(tmp_path_factory):
    return planted_mod.build_corpus(tmp_path_factory.mktemp("planted") / "graphs")


def _load(store, planted) -> None:
    store.init_schema()
    store.write_graphs(planted.graph_dirs)
    store.rebuild_links()


@pytest.fixture(scope="session")
def embedded_store(planted, tmp_path_factory):
    path = tmp_path_factory.mktemp("embedded") / "db"
    from circuit_atlas.store import open_store

    store = open_store(f"embedded:{path}")
    _load(store, planted)
    yield store
    store.close()


@pytest.fixture(scope="session")
def bolt_store(planted, tmp_path_factory):
    yield from _bolt_loaded(planted)


def _bolt_loaded(corpus):
    """A store on a fresh ArcadeDB test server over Bolt with ``corpus`` loaded, closed after."""
    from circuit_atlas.store import arcadedb_server, open_store

    with arcadedb_server.arcadedb_server() as server:
        mp = pytest.MonkeyPatch()
        mp.setenv("NEO4J_USER", server.user)
        mp.setenv("NEO4J_PASSWORD", server.password)
        mp.setenv("NEO4J_DATABASE", server.default_database)
        store = open_store(server.url)
        _load(store, corpus)
        yield store
        store.close()
        mp.undo()


@pytest.fixture(params=["embedded", pytest.param("bolt", marks=pytest.mark.bolt)])
def store(request):
    return request.getfixturevalue(f"{request.param}_store")


@pytest.fixture(scope="session")
def hub_corpus(tmp_path_factory):
    return planted_mod.build_hub_corpus(tmp_path_factory.mktemp("hubs") / "graphs")


@pytest.fixture(scope="session")
def hub_embedded_store(hub_corpus, tmp_path_factory):
    from circuit_atlas.store import open_store

    store = open_store(f"embedded:{tmp_path_factory.mktemp('hub-embedded') / 'db'}")
    _load(store, hub_corpus)
    yield store
    store.close()


@pytest.fixture(scope="session")
def hub_bolt_store(hub_corpus):
    yield from _bolt_loaded(hub_corpus)


@pytest.fixture(params=["embedded", pytest.param("bolt", marks=pytest.mark.bolt)])
def hub_store(request):
    return request.getfixturevalue(f"hub_{request.param}_store")
