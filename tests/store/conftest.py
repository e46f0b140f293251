"""Store fixtures: every test runs on real backends (embedded LadybugDB in a tmp dir; Bolt
against a real ArcadeDB server started here, or a real Neo4j when NEO4J_URI is set)."""

from __future__ import annotations

import os

import pytest

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
        _wipe(server.url, server.user, server.password, server.default_database)
        yield server.url
        return
    url = os.environ["NEO4J_URI"]
    _wipe(url, os.environ.get("NEO4J_USER", "neo4j"), os.environ.get("NEO4J_PASSWORD", ""), os.environ.get("NEO4J_DATABASE"))
    yield url


def _wipe(url, user, password, database):
    """Empty the one test database with the raw driver (even a store our code refuses to open)."""
    import neo4j

    with neo4j.GraphDatabase.driver(url, auth=(user, password)) as d, d.session(database=database) as s:
        s.run("MATCH (n) DETACH DELETE n").consume()


def pytest_configure(config):
    config.addinivalue_line("markers", "bolt: runs against a real Bolt server (ArcadeDB started by the tests)")
    config.addinivalue_line("markers", "neo4j: runs against a real Neo4j named by NEO4J_URI")
