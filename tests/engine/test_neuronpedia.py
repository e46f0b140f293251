"""Neuronpedia graph JSON: export->import is lossless; the hand-written fixture imports right."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from circuit_atlas.engine.formats import graph_files as gf
from circuit_atlas.engine.formats import neuronpedia as npd

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


# ---------------------------------------------------------------- forms found in the wild
def _node(nid: str, ft: str, layer: str, pos: int, **extra) -> dict:
    return {"node_id": nid, "feature": 0, "layer": layer, "ctx_idx": pos, "feature_type": ft, "clerp": "", **extra}


def clash_doc() -> dict:
    """circuit-tracer's old error ids colliding with layer-0 features: 0_1_1 (error at layer 1)
    and 0_0_1 (error at layer 0), each also a layer-0 feature; links in circuit-tracer's order."""
    F, E = "cross layer transcoder", "mlp reconstruction error"
    nodes = [
        _node("0_1_1", F, "0", 1, activation=1.0), _node("0_0_1", F, "0", 1, activation=2.0),
        _node("1_7_1", F, "1", 1, activation=1.5), _node("1_8_1", F, "1", 1, activation=0.5),
        _node("1_9_1", F, "1", 1, activation=0.25),
        _node("0_1_1", E, "1", 1), _node("0_0_1", E, "0", 1),
        _node("E_5_0", "embedding", "E", 0), _node("E_6_1", "embedding", "E", 1),
        _node("3_9_1", "logit", "3", 1, token_prob=0.5),
    ]
    links = [
        ("E_6_1", "0_1_1", 1.0),  # into the id: the feature (errors have no incoming links)
        ("0_1_1", "1_7_1", 2.0),  # target at layer 1 <= the error's layer 1: the feature
        ("0_1_1", "3_9_1", 0.5), ("0_1_1", "3_9_1", 0.25),  # the pair twice: feature first, then the error
        ("0_0_1", "1_8_1", 3.0),  # nothing tells: ambiguous, given to the error and reported
        ("E_5_0", "1_9_1", 4.0), ("0_0_1", "1_9_1", 5.0),  # after an embedding in the target's links: the error
    ]
    return {"metadata": {"slug": "clash", "scan": "s", "prompt_tokens": ["a", "b"], "prompt": "ab"},
            "qParams": {"supernodes": []}, "nodes": nodes,
            "links": [{"source": s, "target": t, "weight": w} for s, t, w in links]}


def test_clashing_ids_are_resolved_from_the_graph_and_the_rest_reported():
    g = npd.from_neuronpedia(clash_doc(), source="clash.json")
    got = sorted(zip(g.edges["source"], g.edges["target"], g.edges["weight"].astype(float)))
    assert got == sorted([("E_6_1", "0_1_1", 1.0), ("0_1_1", "1_7_1", 2.0), ("0_1_1", "3_9_1", 0.5),
                          ("1_-1_1", "3_9_1", 0.25), ("0_-1_1", "1_8_1", 3.0), ("E_5_0", "1_9_1", 4.0),
                          ("0_-1_1", "1_9_1", 5.0)])
    types = dict(zip(g.nodes["node_id"], g.nodes["type"]))
    assert types["0_1_1"] == types["0_0_1"] == "feature" and types["1_-1_1"] == types["0_-1_1"] == "error"
    (w,) = [x for x in g.meta["import_warnings"] if "name both" in x]
    assert "of 6 links naming them, 1 are the feature's as targets" in w
    assert "1 by the target's layer, 2 by a repeated pair" in w and "1 by link order" in w
    assert "1 still ambiguous (given to the error): 0_0_1->1_8_1" in w
    assert g.meta["settings"]["import_warnings"] == g.meta["import_warnings"]


def test_other_repeated_ids_and_non_finite_numbers_are_refused():
    doc = clash_doc()
    doc["nodes"].append(dict(doc["nodes"][2]))
    with pytest.raises(npd.NeuronpediaFormatError, match=r"x.json: node id '1_7_1' appears 2 times \(as feature, feature\)"):
        npd.from_neuronpedia(doc, source="x.json")
    for bad in (float("nan"), float("inf"), 1e300):
        doc = clash_doc()
        doc["links"][1]["weight"] = bad
        with pytest.raises(npd.NeuronpediaFormatError, match=r"x.json: 1 links have non-finite weights .* 0_1_1 -> 1_7_1"):
            npd.from_neuronpedia(doc, source="x.json")
    doc = clash_doc()
    doc["nodes"][2]["activation"] = float("inf")
    with pytest.raises(npd.NeuronpediaFormatError, match=r"non-finite node values .* 1_7_1.activation"):
        npd.from_neuronpedia(doc, source="x.json")


def test_nan_in_a_file_is_refused_with_one_line(tmp_path):
    doc = clash_doc()
    doc["links"][0]["weight"] = float("nan")
    f = tmp_path / "nan.json"
    f.write_text(json.dumps(doc))  # Python writes the invalid token NaN
    with pytest.raises(npd.NeuronpediaFormatError, match=r"nan.json: 1 links have non-finite weights") as e:
        npd.read_neuronpedia(f)
    assert "\n" not in str(e.value)


def test_the_id_covers_the_content_and_the_request_key_does_not():
    a = npd.from_neuronpedia(clash_doc())
    assert npd.from_neuronpedia(clash_doc()).graph_id == a.graph_id
    doc = clash_doc()
    doc["links"][0]["weight"] = 1.5
    b = npd.from_neuronpedia(doc)
    assert b.graph_id != a.graph_id
    key = [gf.request_key(g.meta["model"], g.meta["scan"], g.meta["token_ids"], g.meta["settings"]) for g in (a, b)]
    assert key[0] == key[1]


def test_export_refuses_non_finite_weights_and_writes_null_for_non_finite_values(tmp_path):
    g = small_graph()
    g.nodes.loc[0, "influence"] = np.inf
    doc = npd.to_neuronpedia(g)
    assert doc["nodes"][0]["influence"] is None
    g.edges.loc[0, "weight"] = np.nan
    with pytest.raises(npd.NeuronpediaFormatError, match="1 edges have non-finite weights"):
        npd.write_neuronpedia(g, tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()
