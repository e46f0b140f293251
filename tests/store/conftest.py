"""Store fixtures: every test runs on real backends (embedded LadybugDB in a tmp dir; Bolt
against a real ArcadeDB server started here, or a real Neo4j when NEO4J_URI is set)."""

from __future__ import annotations

import os

import pytest

from circuit_atlas.store import open_store
from circuit_atlas.store.synthetic import write_synthetic_corpus

BACKENDS = [
    pytest.param("embedded", id="embedded"),
    pytest.param("bolt", id="bolt", marks=pytest.mark.bolt),
]
if os.environ.get("NEO4J_URI"):
    BACKENDS.append(pytest.param("neo4j", id="neo4j", marks=pytest.mark.neo4j))


@pytest.fixture(scope="session")
def arcadedb():
    from circuit_atlas.store.arcadedb_server import arcadedb_server

    with arcadedb_server() as server:
        yield server


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    return write_synthetic_corpus(tmp_path_factory.mktemp("corpus"), 6, n_nodes=120, n_edges=800)


@pytest.fixture(params=BACKENDS)
def store_url(request, tmp_path, monkeypatch):
    """A URL of an empty store on each backend."""
    kind = request.param
    if kind == "embedded":
        yield f"embedded:{tmp_path / 'store'}"
        return
    if kind == "bolt":
        server = request.getfixturevalue("arcadedb")
        monkeypatch.setenv("NEO4J_USER", server.user)
        monkeypatch.setenv("NEO4J_PASSWORD", server.password)
        monkeypatch.setenv("NEO4J_DATABASE", server.default_database)
        with open_store(server.url) as s:  # one database, emptied before each test
            s._wipe()
        yield server.url
        return
    url = os.environ["NEO4J_URI"]
    with open_store(url) as s:  # a real Neo4j: one database, emptied before each test
        s._wipe()
    yield url


def pytest_configure(config):
    config.addinivalue_line("markers", "bolt: runs against a real Bolt server (ArcadeDB started by the tests)")
    config.addinivalue_line("markers", "neo4j: runs against a real Neo4j named by NEO4J_URI")
