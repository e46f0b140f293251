"""Import and export over Bolt (a real ArcadeDB server started here): a graph moved
embedded -> Bolt -> embedded through export/import is stored identically on all three."""

from __future__ import annotations

import pytest
from ingest_helpers import snapshot

from circuit_atlas.ingest.exporters import export_prompt
from circuit_atlas.ingest.importers import import_path
from circuit_atlas.store import open_store
from circuit_atlas.store.synthetic import synthetic_graph

pytestmark = pytest.mark.bolt
FIXTURE_NAME = "neuronpedia_handwritten.json"


@pytest.fixture(scope="module")
def bolt_url():
    pytest.importorskip("arcadedb_embedded", reason="arcadedb-embedded is not installed")
    from circuit_atlas.store.arcadedb_server import arcadedb_server

    with arcadedb_server() as server, pytest.MonkeyPatch.context() as mp:
        mp.setenv("NEO4J_USER", server.user)
        mp.setenv("NEO4J_PASSWORD", server.password)
        mp.setenv("NEO4J_DATABASE", server.default_database)
        yield server.url


@pytest.mark.parametrize("fmt", ["graph", "neuronpedia"])
def test_round_trip_through_bolt(tmp_path, bolt_url, fmt):
    g = synthetic_graph(0, n_nodes=50, n_edges=200)
    g.meta["logit_tokens"] = {str(int(t)): f" t{int(t)}" for t in g.nodes.loc[g.nodes["type"] == "logit", "token_id"]}
    src = f"embedded:{tmp_path / 'src'}"
    with open_store(src) as s:
        s.write_graphs([g.save(tmp_path / "g" / g.graph_id)])
        before = snapshot(s, g.graph_id, supernode_keys=False)
        first = export_prompt(s, g.graph_id, fmt, tmp_path / ("a.json" if fmt == "neuronpedia" else "a"))
    with open_store(bolt_url) as b:
        b.delete_prompt(g.graph_id)  # the server is shared by this module's tests
        rep = import_path(first, b, progress=False)
        assert rep.written == [g.graph_id]
        on_bolt = snapshot(b, g.graph_id, supernode_keys=False)
        second = export_prompt(b, g.graph_id, fmt, tmp_path / ("b.json" if fmt == "neuronpedia" else "b"))
    with open_store(f"embedded:{tmp_path / 'dst'}") as d:
        import_path(second, d, progress=False)
        after = snapshot(d, g.graph_id, supernode_keys=False)
    assert on_bolt == before
    assert after == before
