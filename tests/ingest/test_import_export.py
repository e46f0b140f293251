"""Export a stored prompt and import it back (graph directory and Neuronpedia JSON), the
hand-written Neuronpedia fixture, circuit-tracer .pt files, labels and supernodes kept."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from ingest_helpers import run_cli, snapshot

from circuit_atlas.engine.formats import graph_files as gf
from circuit_atlas.engine.formats.circuit_tracer import read_circuit_tracer_pt
from circuit_atlas.engine.formats.neuronpedia import read_neuronpedia, write_neuronpedia
from circuit_atlas.ingest.exporters import ExportError, export_prompt, read_stored_graph
from circuit_atlas.ingest.importers import GraphImportError, discover, import_path
from circuit_atlas.store import open_store
from circuit_atlas.store.synthetic import synthetic_graph

FIXTURE = Path(__file__).resolve().parents[1] / "engine" / "fixtures" / "neuronpedia_handwritten.json"
SCAN = "synthetic-scan"


def _graphs(tmp_path: Path, n: int = 3) -> list[Path]:
    """Synthetic graphs with logit token texts, so every stored column has a value."""
    out = []
    for i in range(n):
        g = synthetic_graph(i, n_nodes=60, n_edges=300)
        logits = g.nodes[g.nodes["type"] == "logit"]
        g.meta["logit_tokens"] = {str(int(t)): f" out{int(t)}" for t in logits["token_id"]}
        out.append(g.save(tmp_path / "src" / g.graph_id))
    return out


@pytest.fixture
def source_store(tmp_path):
    """A store with 3 prompts, a user label and a user supernode on the first prompt."""
    dirs = _graphs(tmp_path)
    url = f"embedded:{tmp_path / 'src-store'}"
    with open_store(url) as s:
        s.write_graphs(dirs)
        pid = gf.GraphFile.load(dirs[0]).graph_id
        feats = s.read("MATCH (n:Active) WHERE n.prompt_id = $id RETURN n.node_id AS nid, n.feature_key AS k "
                       "ORDER BY n.node_id LIMIT 3", {"id": pid})
        s.set_feature_labels({feats.k[0]: "a user label"})
        s.write_supernodes([{"key": f"{SCAN}:user:one", "scan": SCAN, "label": "my group", "method": "user",
                             "prompt_id": pid, "node_ids": list(feats.nid[:2]), "members": sorted(set(feats.k[:2]))}])
    return url, pid


@pytest.mark.parametrize("fmt", ["graph", "neuronpedia"])
def test_export_then_import_gives_an_identical_stored_graph(tmp_path, source_store, fmt):
    url, pid = source_store
    out = tmp_path / ("exported" if fmt == "graph" else "exported.json")
    with open_store(url, read_only=True) as s:
        before = snapshot(s, pid, supernode_keys=(fmt == "graph"))
        path = export_prompt(s, pid, fmt, out)
    assert path.exists()
    assert before["Active"] and before["edges"] and before["supernodes"]
    assert any(f["label"] == "a user label" for f in before["features"])
    assert all(r["token"] is not None for r in before["Logit"])
    with open_store(f"embedded:{tmp_path / 'dst'}") as dst:
        rep = import_path(path, dst, progress=False)
        assert rep.written == [pid] and not rep.failed
        after = snapshot(dst, pid, supernode_keys=(fmt == "graph"))
        assert dst.prompt_ids() == {pid}
    assert after == before


def test_export_graph_matches_the_graph_that_was_loaded(tmp_path, source_store):
    url, pid = source_store
    original = gf.GraphFile.load(tmp_path / "src" / pid)
    with open_store(url, read_only=True) as s:
        g = read_stored_graph(s, pid)
    assert g.graph_id == pid
    for key in ("prompt", "tokens", "token_ids", "model", "scan", "n_layers", "settings", "scores", "logit_tokens"):
        assert g.meta[key] == original.meta[key], key
    props = {k: v for k, v in original.meta["prompt_props"].items()}
    assert g.meta["prompt_props"] == props
    cols = ["node_id", "type", "layer", "pos", "feature", "token_id", "activation", "prob"]
    a = g.nodes[cols].sort_values("node_id").reset_index(drop=True)
    b = original.nodes_table().to_pandas()[cols].sort_values("node_id").reset_index(drop=True)
    assert a.equals(b)
    e1 = g.edges.sort_values(["source", "target"]).reset_index(drop=True)
    e2 = original.edges_table().to_pandas().sort_values(["source", "target"]).reset_index(drop=True)
    assert e1.equals(e2)
    assert g.meta["supernodes"] == [["my group", *g.meta["supernode_records"][0]["node_ids"]]]


def test_import_twice_adds_nothing(tmp_path, source_store):
    url, pid = source_store
    with open_store(url) as s:
        before = s.stats()
        rep = import_path(tmp_path / "src", s, progress=False)
        assert rep.found == 3 and rep.written == [] and len(rep.skipped) == 3
        assert s.stats() == {**before, "url": before["url"]}


def test_unknown_prompt_and_format_are_clear_errors(tmp_path, source_store):
    url, pid = source_store
    with open_store(url, read_only=True) as s:
        with pytest.raises(ExportError, match="no prompt 'nope'"):
            export_prompt(s, "nope", "graph", tmp_path / "x")
        with pytest.raises(ExportError, match="unknown export format"):
            export_prompt(s, pid, "svg", tmp_path / "x")


def test_handwritten_neuronpedia_fixture_with_clerps_and_supernodes(tmp_path, store_url):
    with open_store(store_url) as s:
        rep = import_path(FIXTURE, s, progress=False)
        assert len(rep.written) == 1 and rep.supernodes == 2
        pid = rep.written[0]
        st = s.stats()
        assert (st["Prompt"], st["Active"], st["Error"], st["Embedding"], st["Logit"], st["EDGE"]) == (1, 4, 2, 3, 2, 9)
        labels = dict(s.read("MATCH (f:Feature) RETURN f.key AS k, f.label AS l").itertuples(index=False))
        assert labels["gemma-2-2b:3:1234"] == "France"
        assert labels["gemma-2-2b:0:41"] == "France (token)"
        assert labels["gemma-2-2b:10:77"] == "capital cities"
        assert pd.isna(labels["gemma-2-2b:20:9"])  # an empty clerp is no label
        snap = snapshot(s, pid)
    sn = {r["label"]: r for r in snap["supernodes"]}
    assert set(sn) == {"France", "capital"} and {r["method"] for r in sn.values()} == {"import"}
    assert sn["France"]["node_ids"] == ["3_1234_4", "3_-1_4"]  # the old error id 0_3_4, rewritten
    members = {(m["label"], m["member"]) for m in snap["members"]}
    assert members == {("France", "gemma-2-2b:3:1234"), ("capital", "gemma-2-2b:10:77")}
    logit_text = {r["node_id"]: r["token"] for r in snap["Logit"]}
    assert logit_text == {"27_6342_5": " Paris", "27_573_5": " a"}  # from the clerps


def test_neuronpedia_directory_from_our_exporter_and_the_fixture(tmp_path, store_url):
    """A folder with graph-metadata.json, written by the project's exporter, plus the fixture."""
    folder = tmp_path / "np"
    graphs = [synthetic_graph(i, n_nodes=40, n_edges=150) for i in range(3)]
    for g in graphs:
        write_neuronpedia(g, folder)
    shutil.copy(FIXTURE, folder / "capital-fr-old.json")
    index = json.loads((folder / "graph-metadata.json").read_text())
    index["graphs"].append({"slug": "capital-fr-old"})
    (folder / "graph-metadata.json").write_text(json.dumps(index))
    assert [s.kind for s in discover(folder)] == ["neuronpedia"] * 4
    with open_store(store_url) as s:
        rep = import_path(folder, s, progress=False)
        assert len(rep.written) == 4 and not rep.failed
        for g in graphs:
            stored = read_stored_graph(s, g.graph_id)
            assert len(stored.nodes) == len(g.nodes) and len(stored.edges) == len(g.edges)
            assert stored.meta["prompt"] == g.meta["prompt"]


def test_overwrite_labels(tmp_path, store_url):
    with open_store(store_url) as s:
        s.write_feature_info(pd.DataFrame([{
            "key": "gemma-2-2b:3:1234", "scan": "gemma-2-2b", "layer": 3, "index": 1234, "frequency": 0.1,
            "max_activation": 1.0, "contexts": "[]", "logit_effects": "{}"}]))
        s.set_feature_labels({"gemma-2-2b:3:1234": "kept"})
        import_path(FIXTURE, s, progress=False)
        label = lambda: s.read("MATCH (f:Feature {key: 'gemma-2-2b:3:1234'}) RETURN f.label AS l").l[0]  # noqa: E731
        assert label() == "kept"  # default: only empty labels are filled
        import_path(FIXTURE, s, progress=False, overwrite_labels=True)
        assert label() == "France"
        source = s.read("MATCH (f:Feature {key: 'gemma-2-2b:3:1234'}) RETURN f.label_source AS s").s[0]
        assert source == "import"  # a clerp is an imported label, not the user's


def test_neuronpedia_export_carries_user_labels_as_clerps_but_not_automatic_ones(tmp_path, source_store):
    """An automatic label exported as a clerp would come back as an imported label, which a
    recompute of the evidence could no longer replace: only people's and imported labels go out."""
    url, pid = source_store
    with open_store(url) as s:
        feats = s.read("MATCH (n:Active) WHERE n.prompt_id = $id RETURN n.feature_key AS k ORDER BY n.node_id", {"id": pid})
        user_key, auto_key = feats.k[0], next(k for k in feats.k if k != feats.k[0])
        layer, index = int(auto_key.split(":")[-2]), int(auto_key.split(":")[-1])
        s.write_feature_info(pd.DataFrame([{"key": auto_key, "scan": SCAN, "layer": layer, "index": index,
                                            "frequency": 0.1, "max_activation": 1.0, "contexts": "[]",
                                            "logit_effects": "{}", "auto_label": "Texas → Austin"}]))
        assert s.read("MATCH (f:Feature {key: $k}) RETURN f.label_source AS s", {"k": auto_key}).s[0] == "auto"
        path = export_prompt(s, pid, "neuronpedia", tmp_path / "out.json")
    clerps = {n.get("clerp") for n in json.loads(path.read_text())["nodes"]}
    assert "a user label" in clerps and "Texas → Austin" not in clerps


def _ct_dict(n_layers: int = 2, n_pos: int = 4, seed: int = 0) -> dict:
    """A graph in the layout circuit-tracer's Graph.to_pt saves (older plain-dict variant)."""
    g = torch.Generator().manual_seed(seed)
    active = torch.tensor([[0, 1, 5], [0, 2, 7], [1, 2, 3], [1, 3, 11]])
    selected = torch.arange(4)
    nf, ne, nl = 4, n_layers * n_pos, 2
    n = nf + ne + n_pos + nl
    level = torch.cat([active[:, 0] + 1, torch.arange(n_layers).repeat_interleave(n_pos) + 1, torch.zeros(n_pos),
                       torch.full((nl,), n_layers + 1.0)])
    is_target = torch.cat([torch.ones(nf), torch.zeros(ne + n_pos), torch.ones(nl)]).bool()
    a = torch.randn(n, n, generator=g) * ((level[None, :] < level[:, None]) & is_target[:, None])
    return {"input_string": "a b c", "adjacency_matrix": a, "active_features": active, "selected_features": selected,
            "activation_values": torch.rand(4, generator=g) + 0.5, "logit_probabilities": torch.tensor([0.7, 0.2]),
            "input_tokens": torch.tensor([1, 40, 41, 42]), "logit_targets": torch.tensor([7, 9]),
            "cfg": {"n_layers": n_layers, "model_name": "tiny-llama"}, "scan": "tiny-plt", "vocab_size": 97}


def test_circuit_tracer_pt_files_and_a_bad_file(tmp_path, store_url):
    folder = tmp_path / "pts"
    folder.mkdir()
    torch.save(_ct_dict(seed=0), folder / "a.pt")
    torch.save(_ct_dict(seed=1), folder / "b.pt")
    (folder / "broken.json").write_text("{not json")
    expected = {read_circuit_tracer_pt(folder / f).graph_id: read_circuit_tracer_pt(folder / f) for f in ("a.pt", "b.pt")}
    with open_store(store_url) as s:
        rep = import_path(folder, s, progress=False, graphs_dir=tmp_path / "kept")
        assert sorted(rep.written) == sorted(expected)
        assert [Path(p).name for p, _ in rep.failed] == ["broken.json"]
        assert "not valid JSON" in rep.failed[0][1]
        for gid, g in expected.items():
            assert gf.is_graph_dir(tmp_path / "kept" / gid)
            stored = read_stored_graph(s, gid)
            assert len(stored.nodes) == len(g.nodes) and len(stored.edges) == len(g.edges)


def test_discover_errors(tmp_path):
    with pytest.raises(GraphImportError, match="no such file"):
        discover(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GraphImportError, match="no graphs here"):
        discover(tmp_path / "empty")
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(GraphImportError, match="unknown graph format"):
        discover(tmp_path / "x.csv")


def test_cli_export_import_and_errors(tmp_path, source_store):
    url, pid = source_store
    out = tmp_path / "cli.json"
    r = run_cli("export", pid, "--format", "neuronpedia", "--out", str(out), "--store", url)
    assert r.returncode == 0, r.stderr
    assert read_neuronpedia(out).graph_id == pid
    dst = f"embedded:{tmp_path / 'cli-dst'}"
    r = run_cli("import", str(out), "--store", dst)
    assert r.returncode == 0, r.stderr
    assert pid in r.stdout and "written 1" in r.stdout
    r = run_cli("export", "no-such-id", "--out", str(tmp_path / "y"), "--store", url)
    assert r.returncode == 2 and "no prompt 'no-such-id'" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    r = run_cli("import", str(bad), "--store", dst)
    assert r.returncode == 2 and "bad.json" in r.stderr and "Traceback" not in r.stderr
