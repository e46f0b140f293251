"""Neuronpedia graph JSON: export->import is lossless; the hand-written fixture imports right."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from circuit_atlas.engine import graph_files as gf
from circuit_atlas.engine import neuronpedia as npd

FIXTURE = Path(__file__).parent / "fixtures" / "neuronpedia_handwritten.json"


def small_graph(seed: int = 0, n_layers: int = 3) -> gf.GraphFile:
    """A graph with every node type, labels, NaNs and awkward float32 weights."""
    rng = np.random.default_rng(seed)
    tokens, token_ids = ["<s>", "Hi", " there", " you"], [1, 57, 8, 93]
    rows = []
    for p, t in enumerate(token_ids):
        rows.append(dict(node_id=gf.embedding_node_id(t, p), type="embedding", layer=-1, pos=p, feature=-1, token_id=t,
                         activation=np.nan, influence=float(rng.random()), prob=np.nan, label=None))
    for layer, feat, pos in [(0, 5, 1), (0, 17, 2), (1, 5, 3), (2, 400, 3)]:
        rows.append(dict(node_id=gf.feature_node_id(layer, feat, pos), type="feature", layer=layer, pos=pos, feature=feat,
                         token_id=-1, activation=float(rng.random() * 3), influence=float(rng.random()), prob=np.nan,
                         label="greeting" if feat == 5 else None))
    for layer, pos in [(0, 3), (2, 3)]:
        rows.append(dict(node_id=gf.error_node_id(layer, pos), type="error", layer=layer, pos=pos, feature=-1, token_id=-1,
                         activation=np.nan, influence=float(rng.random()), prob=np.nan, label=None))
    for tok, prob in [(11, 0.6), (12, 0.3)]:
        rows.append(dict(node_id=gf.logit_node_id(n_layers, tok, 3), type="logit", layer=n_layers, pos=3, feature=-1,
                         token_id=tok, activation=np.nan, influence=np.nan, prob=prob, label=f'Output "{tok}"' if tok == 11 else None))
    nodes = pd.DataFrame(rows)
    ids = nodes["node_id"].tolist()
    pairs = [(ids[i], ids[j]) for i in range(len(ids)) for j in range(len(ids)) if i != j][:: 3]
    edges = pd.DataFrame({"source": [a for a, _ in pairs], "target": [b for _, b in pairs],
                          "weight": rng.standard_normal(len(pairs)).astype(np.float32) * np.float32(1e-3) ** rng.integers(0, 3, len(pairs))})
    settings = {"node_threshold": 0.8, "edge_threshold": 0.98, "max_feature_nodes": None, "pruned": True, "logit_targets": None}
    meta = {
        "graph_id": gf.graph_id("tiny", "scan-x", token_ids, settings), "prompt": "Hi there you", "tokens": tokens,
        "token_ids": token_ids, "model": "tiny", "scan": "scan-x", "n_layers": n_layers, "settings": settings,
        "scores": {"replacement_score": 0.625, "completeness_score": 0.875},
        "prompt_props": {"corpus": "c1", "tags": ["a", "b"], "group": "g"},
        "supernodes": [["greet", ids[4], ids[6]]], "created_at": "2026-01-01T00:00:00+00:00",
    }
    g = gf.GraphFile(meta=meta, nodes=nodes, edges=edges)
    g.validate()
    return g


def _sorted(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    return df.sort_values(by).reset_index(drop=True)


def assert_same_graph(a: gf.GraphFile, b: gf.GraphFile) -> None:
    na, nb = _sorted(a.nodes_table().to_pandas(), ["node_id"]), _sorted(b.nodes_table().to_pandas(), ["node_id"])
    pd.testing.assert_frame_equal(na, nb, check_exact=True)
    ea, eb = _sorted(a.edges_table().to_pandas(), ["source", "target"]), _sorted(b.edges_table().to_pandas(), ["source", "target"])
    assert len(ea) > 0
    pd.testing.assert_frame_equal(ea, eb, check_exact=True)
    for key in ("graph_id", "prompt", "tokens", "token_ids", "model", "scan", "n_layers", "settings", "scores",
                "prompt_props", "supernodes", "created_at"):
        assert a.meta.get(key) == b.meta.get(key), key


def test_export_import_round_trip_is_lossless(tmp_path):
    g = small_graph()
    path = npd.write_neuronpedia(g, tmp_path / "out")
    back = npd.read_neuronpedia(path)
    assert_same_graph(g, back)
    # and through our own graph directory format, and a second export
    back.save(tmp_path / "gdir")
    again = npd.read_neuronpedia(npd.write_neuronpedia(gf.GraphFile.load(tmp_path / "gdir"), tmp_path / "second.json"))
    assert_same_graph(g, again)
    assert json.loads(path.read_text())["metadata"]["slug"] == json.loads((tmp_path / "second.json").read_text())["metadata"]["slug"]


def test_exported_fields_follow_the_documented_layout():
    g = small_graph()
    doc = npd.to_neuronpedia(g, slug="s1")
    assert set(doc) == {"metadata", "qParams", "nodes", "links"}
    md = doc["metadata"]
    assert md["slug"] == "s1" and md["scan"] == "scan-x" and md["prompt_tokens"] == g.meta["tokens"]
    assert md["prompt"] == "Hi there you" and md["node_threshold"] == 0.8 and md["schema_version"] == 1
    assert doc["qParams"]["supernodes"] == g.meta["supernodes"]
    by_id = {n["node_id"]: n for n in doc["nodes"]}
    for n in doc["nodes"]:
        assert set(n) >= {"node_id", "feature", "layer", "ctx_idx", "feature_type", "token_prob", "is_target_logit",
                          "run_idx", "reverse_ctx_idx", "jsNodeId", "clerp", "influence", "activation"}
        assert isinstance(n["layer"], str)
    f = by_id["2_400_3"]
    assert f["feature"] == npd.cantor_pair(2, 400) and f["feature_type"] == "cross layer transcoder" and f["layer"] == "2"
    assert by_id["0_-1_3"]["feature_type"] == "mlp reconstruction error"
    e = by_id["E_57_1"]
    assert e["layer"] == "E" and e["feature_type"] == "embedding" and e["ctx_idx"] == 1
    top = by_id["4_11_3"]
    assert top["layer"] == "4" and top["feature"] == 11 and top["is_target_logit"] and math.isclose(top["token_prob"], 0.6, rel_tol=1e-6)
    assert not by_id["4_12_3"]["is_target_logit"]
    assert by_id["0_5_1"]["clerp"] == "greeting"
    assert len(doc["links"]) == len(g.edges)


def test_handwritten_fixture_imports():
    g = npd.read_neuronpedia(FIXTURE)
    nodes = g.nodes.set_index("node_id")
    assert len(nodes) == 11
    # feature index from node_id, not from the Cantor-paired `feature` field
    assert nodes.loc["3_1234_4", "feature"] == 1234 and nodes.loc["3_1234_4", "layer"] == 3
    assert nodes.loc["3_1234_4", "label"] == "France" and nodes.loc["3_1234_4", "activation"] == np.float32(3.25)
    # old-style error id 0_3_4 becomes 3_-1_4 (layer 3, pos 4); links and supernodes follow it
    assert "0_3_4" not in nodes.index and nodes.loc["3_-1_4", "type"] == "error" and nodes.loc["3_-1_4", "layer"] == 3
    assert nodes.loc["12_-1_5", "layer"] == 12 and nodes.loc["12_-1_5", "pos"] == 5
    assert ((g.edges["source"] == "3_-1_4") & (g.edges["target"] == "3_1234_4")).sum() == 1
    assert g.meta["supernodes"] == [["France", "3_1234_4", "3_-1_4"], ["capital", "10_77_2"]]
    # embeddings: layer E, token ids from node ids
    assert nodes.loc["E_6081_4", "type"] == "embedding" and nodes.loc["E_6081_4", "token_id"] == 6081
    # logits: layer 27 = n_layers + 1, token id from the id, prob and clerp kept
    assert g.meta["n_layers"] == 26
    assert nodes.loc["27_6342_5", "type"] == "logit" and nodes.loc["27_6342_5", "token_id"] == 6342
    assert nodes.loc["27_6342_5", "prob"] == np.float32(0.771) and nodes.loc["27_6342_5", "label"].startswith("Output")
    assert g.meta["tokens"][4] == " France" and g.meta["prompt"] == "The capital of France is"
    assert g.meta["token_ids"] == [2, -1, 6077, -1, 6081, -1]  # positions without an embedding node stay unknown
    assert g.meta["scan"] == "gemma-2-2b" and g.meta["settings"]["node_threshold"] == 0.8
    assert len(g.edges) == 9 and g.edges["weight"].dtype == np.float32
    assert float(g.edges.loc[g.edges["source"] == "12_-1_5", "weight"].iloc[0]) == np.float32(-0.3)
    assert g.meta["neuronpedia"]["qParams"]["pinnedIds"] == ["27_6342_5"]


def test_fixture_reexport_keeps_viewer_fields(tmp_path):
    g = npd.read_neuronpedia(FIXTURE)
    doc = npd.to_neuronpedia(g)
    assert doc["metadata"]["slug"] == "capital-fr-old" and doc["metadata"]["info"]["creator_name"] == "hand-written fixture"
    assert doc["qParams"]["clickedId"] == "27_6342_5"
    back = npd.from_neuronpedia(json.loads(json.dumps(doc)))
    assert_same_graph(g, back)


def test_directory_with_index(tmp_path):
    graphs = [small_graph(seed=s) for s in range(3)]
    for i, g in enumerate(graphs):
        g.meta["prompt"] = f"prompt {i}"
        npd.write_neuronpedia(g, tmp_path, slug=f"g{i}")
    index = json.loads((tmp_path / npd.INDEX_NAME).read_text())
    assert [e["slug"] for e in index["graphs"]] == ["g0", "g1", "g2"]
    got = list(npd.iter_neuronpedia_dir(tmp_path))
    assert [g.meta["prompt"] for g in got] == ["prompt 0", "prompt 1", "prompt 2"]
    (tmp_path / "g1.json").unlink()
    with pytest.raises(npd.NeuronpediaFormatError, match="g1.json is missing"):
        npd.neuronpedia_files(tmp_path)
    (tmp_path / npd.INDEX_NAME).unlink()
    assert [f.name for f in npd.neuronpedia_files(tmp_path)] == ["g0.json", "g2.json"]


def test_bad_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(npd.NeuronpediaFormatError, match="bad.json: not valid JSON"):
        npd.read_neuronpedia(bad)
    bad.write_text(json.dumps({"metadata": {}, "nodes": []}))
    with pytest.raises(npd.NeuronpediaFormatError, match="lacks 'links'"):
        npd.read_neuronpedia(bad)
    doc = json.loads(FIXTURE.read_text())
    doc["nodes"][3]["node_id"] = "zero_41_4"
    with pytest.raises(npd.NeuronpediaFormatError, match=r"nodes\[3\].*'zero_41_4'"):
        npd.from_neuronpedia(doc, source="x.json")
    doc = json.loads(FIXTURE.read_text())
    doc["links"].append({"source": "9_9_9", "target": "20_9_5", "weight": 1.0})
    with pytest.raises(npd.NeuronpediaFormatError, match="unknown nodes"):
        npd.from_neuronpedia(doc, source="x.json")
