"""Automatic supernodes recover planted feature families from a real embedded store.

The planted corpus is built so that no single signal suffices: families 1 and 2 always
co-occur but push different tokens; families 3 and 4 co-occur and push the *same* token with
opposite signs. Noise features occur at random and push random tokens.
"""

from __future__ import annotations

import random

import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from circuit_atlas.engine.formats.graph_files import GraphFile, embedding_node_id, feature_node_id, graph_id, logit_node_id
from circuit_atlas.queries.supernodes import SupernodeError, SupernodeSettings, propose_supernodes, supernode_graph, write_auto_supernodes

SCAN = "planted"
N_LAYERS = 4
FAMILIES = {  # family -> (member (layer, index) list, token id pushed, sign)
    "f1": ([(0, 10), (1, 11), (1, 12), (2, 13)], 501, 1.0),
    "f2": ([(0, 20), (1, 21), (2, 22), (2, 23)], 502, 1.0),
    "f3": ([(0, 30), (1, 31), (2, 32), (3, 33)], 503, 1.0),
    "f4": ([(0, 40), (1, 41), (2, 42), (3, 43)], 503, -1.0),
}
NOISE = [(layer, 100 + i) for i, layer in enumerate([0, 1, 2, 3] * 6)]
NOISE_TOKENS = list(range(600, 612))


def _planted_graph(i: int, rng: random.Random) -> GraphFile:
    families = ["f1", "f2"] if i % 2 == 0 else ["f3", "f4"]
    n_pos = 6
    token_ids = [1] + [rng.randrange(2, 50) for _ in range(n_pos - 1)]
    nodes, edges = [], []
    for pos, tok in enumerate(token_ids):
        nodes.append(dict(node_id=embedding_node_id(tok, pos), type="embedding", layer=-1, pos=pos, feature=-1, token_id=tok))
    logit_tokens = sorted({FAMILIES[f][1] for f in families} | set(rng.sample(NOISE_TOKENS, 3)))
    last = n_pos - 1
    for tok in logit_tokens:
        nodes.append(dict(node_id=logit_node_id(N_LAYERS, tok, last), type="logit", layer=N_LAYERS, pos=last, feature=-1, token_id=tok, prob=1 / len(logit_tokens)))
    present = []
    for fam in families:
        members, tok, sign = FAMILIES[fam]
        for layer, idx in members:
            present.append((layer, idx, tok, sign))
    for layer, idx in rng.sample(NOISE, 5):
        present.append((layer, idx, rng.choice(logit_tokens), rng.choice([-1.0, 1.0])))
    for layer, idx, tok, sign in present:
        pos = rng.randrange(1, n_pos)
        nid = feature_node_id(layer, idx, pos)
        nodes.append(dict(node_id=nid, type="feature", layer=layer, pos=pos, feature=idx, token_id=-1, activation=rng.uniform(1, 3), influence=0.1))
        edges.append(dict(source=embedding_node_id(token_ids[pos], pos), target=nid, weight=rng.uniform(0.5, 1.0)))
        if tok in logit_tokens:
            edges.append(dict(source=nid, target=logit_node_id(N_LAYERS, tok, last), weight=sign * rng.uniform(0.8, 1.2)))
    nodes_df = pd.DataFrame(nodes)
    for col, default in (("activation", None), ("influence", None), ("prob", None), ("label", None)):
        if col not in nodes_df:
            nodes_df[col] = default
    settings = {"node_threshold": 0.8, "edge_threshold": 0.98, "max_feature_nodes": None, "pruned": True, "logit_targets": None}
    meta = {
        "graph_id": graph_id("planted-model", SCAN, token_ids + [i], settings),
        "prompt": f"planted prompt {i}",
        "tokens": [f"t{t}" for t in token_ids],
        "token_ids": token_ids,
        "model": "planted-model",
        "scan": SCAN,
        "n_layers": N_LAYERS,
        "settings": settings,
        "scores": {"replacement_score": 0.9, "completeness_score": 0.9},
        "prompt_props": {"group": "A" if i % 2 == 0 else "B", "corpus": "planted"},
    }
    return GraphFile(meta=meta, nodes=nodes_df, edges=pd.DataFrame(edges))


@pytest.fixture(scope="module")
def planted_store(tmp_path_factory):
    from circuit_atlas.store import open_store

    root = tmp_path_factory.mktemp("planted")
    rng = random.Random(7)
    dirs = [_planted_graph(i, rng).save(root / "graphs" / f"g{i:03d}") for i in range(40)]
    store = open_store(f"embedded:{root / 'db'}")
    store.init_schema()
    store.write_graphs(dirs)
    store.rebuild_links()
    yield store
    store.close()


def _truth_and_prediction(groups: list[dict]) -> tuple[list[str], list[str]]:
    truth, pred = [], []
    assigned = {m: g["key"] for g in groups for m in g["members"]}
    for fam, (members, _, _) in FAMILIES.items():
        for layer, idx in members:
            key = f"{SCAN}:{layer}:{idx}"
            truth.append(fam)
            pred.append(assigned.get(key, "single:" + key))
    for layer, idx in NOISE:
        key = f"{SCAN}:{layer}:{idx}"
        truth.append("noise:" + key)
        pred.append(assigned.get(key, "single:" + key))
    return truth, pred


def test_planted_families_are_recovered(planted_store):
    groups = propose_supernodes(planted_store, SCAN, SupernodeSettings(min_prompts=2))
    truth, pred = _truth_and_prediction(groups)
    assert adjusted_rand_score(truth, pred) >= 0.9
    # Families that co-occur but push other tokens (f1/f2) or the same token with the opposite
    # sign (f3/f4) are never merged.
    for g in groups:
        fams = {fam for fam, (members, _, _) in FAMILIES.items() for layer, idx in members if f"{SCAN}:{layer}:{idx}" in g["members"]}
        assert len(fams) <= 1, g


def test_write_replaces_previous_auto_groups_and_is_readable(planted_store):
    first = write_auto_supernodes(planted_store, SCAN)
    second = write_auto_supernodes(planted_store, SCAN)
    assert [g["key"] for g in first] == [g["key"] for g in second]
    stored = planted_store.read(
        "MATCH (s:Supernode)-[:CONTAINS]->(f:Feature) WHERE s.method = $m AND s.scan = $scan RETURN s.key AS key, count(f) AS n",
        {"m": "auto", "scan": SCAN},
    )
    assert sorted(stored.key) == sorted(g["key"] for g in second)
    assert dict(zip(stored.key, stored.n)) == {g["key"]: len(g["members"]) for g in second}


def test_bad_settings_and_unknown_scan_are_clear(planted_store):
    with pytest.raises(SupernodeError, match="resolution"):
        propose_supernodes(planted_store, SCAN, SupernodeSettings(resolution=0))
    with pytest.raises(SupernodeError, match="no active features"):
        propose_supernodes(planted_store, "no-such-scan")


def test_supernode_graph_collapses_members_and_sums_edges():
    nodes = pd.DataFrame(
        {
            "node_id": ["E_1_0", "0_10_1", "1_11_2", "5_501_3"],
            "feature_key": [None, "s:0:10", "s:1:11", None],
            "type": ["embedding", "feature", "feature", "logit"],
            "layer": [-1, 0, 1, 4],
            "pos": [0, 1, 2, 3],
            "influence": [0.0, 0.2, 0.3, 0.0],
        }
    )
    edges = pd.DataFrame(
        {
            "source": ["E_1_0", "E_1_0", "0_10_1", "0_10_1", "1_11_2"],
            "target": ["0_10_1", "1_11_2", "1_11_2", "5_501_3", "5_501_3"],
            "weight": [0.5, 0.25, 2.0, 1.0, -0.5],
        }
    )
    sn = [{"key": "s:auto:x", "label": "say Paris", "members": ["s:0:10", "s:1:11"]}]
    new_nodes, new_edges = supernode_graph(nodes, edges, sn)
    assert set(new_nodes.node_id) == {"E_1_0", "5_501_3", "s:auto:x"}
    row = new_nodes.set_index("node_id").loc["s:auto:x"]
    assert row.members == 2 and row.label == "say Paris" and row.influence == pytest.approx(0.5)
    got = {(s, t): w for s, t, w in new_edges.itertuples(index=False)}
    assert got == {("E_1_0", "s:auto:x"): pytest.approx(0.75), ("s:auto:x", "5_501_3"): pytest.approx(0.5)}
