"""circuit-tracer .pt graphs: built here in the layout Graph.to_pt writes, then imported."""

from __future__ import annotations

import importlib
import sys
import textwrap

import numpy as np
import pytest
import torch

from circuit_atlas.engine.formats import graph_files as gf
from circuit_atlas.engine.attribution import pruning
from circuit_atlas.engine.formats.circuit_tracer import CircuitTracerFormatError, read_circuit_tracer_pt

# Stand-ins for circuit-tracer's own pickled classes, in a throwaway module that is gone again
# before the file is loaded (as on a machine without circuit-tracer).
STANDIN = textwrap.dedent(
    """
    from dataclasses import dataclass
    from typing import NamedTuple

    class LogitTarget(NamedTuple):
        token_str: str
        vocab_idx: int

    @dataclass
    class UnifiedConfig:
        n_layers: int
        d_vocab: int
        model_name: str
        tokenizer_name: str
    """
)


def _graph_dict(seed=0, n_layers=2, n_pos=4, modern=None):
    g = torch.Generator().manual_seed(seed)
    d_tc = 50
    n_active = 9
    layers = torch.randint(0, n_layers, (n_active,), generator=g)
    pos = torch.randint(1, n_pos, (n_active,), generator=g)
    feat = torch.randperm(d_tc, generator=g)[:n_active]
    active = torch.stack([layers, pos, feat], 1)
    selected = torch.tensor([0, 2, 3, 5, 6, 8])
    nf, ne, nl = len(selected), n_layers * n_pos, 2
    N = nf + ne + n_pos + nl
    # level/pos of every node so the adjacency is a DAG with causal positions
    lev = torch.cat([active[selected, 0] + 1, torch.arange(n_layers).repeat_interleave(n_pos) + 1, torch.zeros(n_pos), torch.full((nl,), n_layers + 1.0)])
    ps = torch.cat([active[selected, 1], torch.arange(n_pos).repeat(n_layers), torch.arange(n_pos), torch.full((nl,), n_pos - 1.0)])
    is_target = torch.cat([torch.ones(nf), torch.zeros(ne + n_pos), torch.ones(nl)]).bool()
    allowed = (lev[None, :] < lev[:, None]) & (ps[None, :] <= ps[:, None]) & is_target[:, None]
    A = torch.randn(N, N, generator=g) * allowed * (torch.rand(N, N, generator=g) < 0.7)
    d = {
        "input_string": "a b c",
        "adjacency_matrix": A,
        "active_features": active,
        "logit_probabilities": torch.tensor([0.7, 0.2]),
        "vocab_size": 97,
        "input_tokens": torch.tensor([1, 40, 41, 42]),
        "selected_features": selected,
        "activation_values": torch.rand(n_active, generator=g) + 0.5,
    }
    if modern is not None:
        d["cfg"] = modern.UnifiedConfig(n_layers, 97, "tiny-llama", "tiny-tok")
        d["logit_targets"] = [modern.LogitTarget(" x", 7), modern.LogitTarget(" y", 9)]
        d["scan_name"] = "tiny-plt"
    else:  # an older file: plain dict, tensor of logit ids, "scan"
        d["cfg"] = {"n_layers": n_layers, "model_name": "tiny-llama"}
        d["logit_targets"] = torch.tensor([7, 9])
        d["scan"] = "tiny-plt"
    return d


@pytest.fixture
def modern_pt(tmp_path, monkeypatch):
    mod_dir = tmp_path / "mods"
    mod_dir.mkdir()
    (mod_dir / "ct_standin_graph.py").write_text(STANDIN)
    monkeypatch.syspath_prepend(str(mod_dir))
    mod = importlib.import_module("ct_standin_graph")
    d = _graph_dict(modern=mod)
    torch.save(d, tmp_path / "graph.pt")
    del sys.modules["ct_standin_graph"]
    monkeypatch.undo()
    (mod_dir / "ct_standin_graph.py").unlink()
    return tmp_path / "graph.pt", d


def test_unpruned_import_keeps_every_node_and_edge(modern_pt):
    path, d = modern_pt
    g = read_circuit_tracer_pt(path, prune=False)
    A, active, sel = d["adjacency_matrix"], d["active_features"], d["selected_features"]
    nf, n_pos, L = len(sel), 4, 2
    assert len(g.nodes) == A.shape[0]
    ids = g.nodes["node_id"].tolist()
    # node order and ids: features, errors (layer-major), tokens, logits
    for i, s in enumerate(sel.tolist()):
        layer, pos, feat = active[s].tolist()
        assert ids[i] == f"{layer}_{feat}_{pos}"
        assert g.nodes["activation"][i] == np.float32(d["activation_values"][s])
    assert ids[nf + 1 * n_pos + 2] == "1_-1_2"
    assert ids[nf + L * n_pos : nf + L * n_pos + n_pos] == ["E_1_0", "E_40_1", "E_41_2", "E_42_3"]
    assert ids[-2:] == ["3_7_3", "3_9_3"]
    assert g.nodes["prob"].iloc[-2] == np.float32(0.7) and g.nodes["label"].iloc[-2] == 'Output " x" (p=0.700)'
    # every nonzero entry is an edge with its float32 weight, direction source(col) -> target(row)
    t, s = torch.nonzero(A, as_tuple=True)
    assert len(g.edges) == len(t) > 0
    got = {(a, b): w for a, b, w in zip(g.edges["source"], g.edges["target"], g.edges["weight"])}
    for ti, si in zip(t.tolist(), s.tolist()):
        assert got[(ids[si], ids[ti])] == np.float32(A[ti, si])
    m = g.meta
    assert (m["prompt"], m["model"], m["scan"], m["n_layers"], m["token_ids"]) == ("a b c", "tiny-llama", "tiny-plt", 2, [1, 40, 41, 42])
    assert 0.0 <= m["scores"]["replacement_score"] <= 1.0 and 0.0 <= m["scores"]["completeness_score"] <= 1.0


def test_pruned_import_matches_pruning(modern_pt, tmp_path):
    path, d = modern_pt
    g = read_circuit_tracer_pt(path, node_threshold=0.6, edge_threshold=0.9)
    full = read_circuit_tracer_pt(path, prune=False)
    kinds = torch.tensor([{"feature": pruning.FEATURE, "error": pruning.ERROR, "embedding": pruning.EMBEDDING, "logit": pruning.LOGIT}[k] for k in full.nodes["type"]])
    N = len(kinds)
    w = torch.zeros(N)
    w[-2:] = torch.tensor([0.7, 0.2])
    res = pruning.prune(d["adjacency_matrix"], torch.arange(N), kinds, w, 0.6, 0.9)
    assert g.nodes["node_id"].tolist() == [i for i, k in zip(full.nodes["node_id"], res.node_mask.tolist()) if k]
    assert len(g.edges) == int(res.edge_mask.sum()) < len(full.edges)
    assert set(g.nodes.loc[g.nodes["type"].isin(["embedding", "logit"]), "node_id"]) == set(
        full.nodes.loc[full.nodes["type"].isin(["embedding", "logit"]), "node_id"])
    g.save(tmp_path / "gdir")
    assert gf.GraphFile.load(tmp_path / "gdir").meta["graph_id"] == g.graph_id


def test_older_plain_dict_layout(tmp_path):
    d = _graph_dict(seed=1)
    torch.save(d, tmp_path / "old.pt")

    class Tok:
        def decode(self, ids):
            return f"<{ids[0]}>"

    g = read_circuit_tracer_pt(tmp_path / "old.pt", prune=False, tokenizer=Tok())
    assert g.meta["scan"] == "tiny-plt" and g.meta["tokens"] == ["<1>", "<40>", "<41>", "<42>"]
    assert g.nodes["node_id"].tolist()[-2:] == ["3_7_3", "3_9_3"]


def test_bad_pt_files(tmp_path):
    with pytest.raises(CircuitTracerFormatError, match="no such file"):
        read_circuit_tracer_pt(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CircuitTracerFormatError, match="junk.pt"):
        read_circuit_tracer_pt(tmp_path / "junk.pt")
    d = _graph_dict()
    del d["adjacency_matrix"]
    torch.save(d, tmp_path / "noadj.pt")
    with pytest.raises(CircuitTracerFormatError, match="lacks 'adjacency_matrix'"):
        read_circuit_tracer_pt(tmp_path / "noadj.pt")
    d = _graph_dict()
    d["adjacency_matrix"] = d["adjacency_matrix"][:-1, :-1]
    torch.save(d, tmp_path / "short.pt")
    with pytest.raises(CircuitTracerFormatError, match="adjacency_matrix is"):
        read_circuit_tracer_pt(tmp_path / "short.pt")


def test_code_in_the_file_does_not_run(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("open(%r, 'w').write('ran')" % str(tmp_path / "pwned"),))

    d = _graph_dict()
    d["cfg"] = Evil()
    torch.save(d, tmp_path / "evil.pt")
    try:  # either refused or read with an inert stand-in for exec: never executed
        g = read_circuit_tracer_pt(tmp_path / "evil.pt", prune=False)
        assert g.meta["n_layers"] == 2
    except CircuitTracerFormatError:
        pass
    assert not (tmp_path / "pwned").exists()
