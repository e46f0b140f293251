"""Edge rows spilled to disk under a memory budget: the same entries, the same influence, the
same graph (every edge, bit for bit) as when everything stays in memory; backward passes split
under a budget: the same rows up to float rounding."""

from __future__ import annotations

import gc

import pytest
import torch

from circuit_atlas.engine.attribution import pruning
from circuit_atlas.engine.attribution.attribute import AttributionError, _logit_targets, attribute, compute_graph, graph_from_run

models = pytest.importorskip("circuit_atlas.engine.models.loading", reason="engine.models.loading not in the tree yet")
transcoders = pytest.importorskip("circuit_atlas.engine.transcoders.transcoder_set", reason="engine.transcoders.transcoder_set not in the tree yet")
replacement_run = pytest.importorskip("circuit_atlas.engine.attribution.replacement").replacement_run

PROMPT = "The cat sat on the mat because it was tired of the dog"


def _random_rows(n: int, c: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = torch.randn(n, c, generator=g)
    return rows * (torch.rand(n, c, generator=g) < 0.3)


def _fill(store: pruning.RowBlocks, batches: list[torch.Tensor]) -> None:
    for b in batches:
        store.append(b)


def test_spilled_blocks_hold_the_same_entries_and_influence(tmp_path) -> None:
    c, batches = 300, [_random_rows(7, 300, s) for s in range(12)]
    # a DAG: row r (node 200 + r) reads only nodes below 200 + r
    for i, b in enumerate(batches):
        for j in range(b.shape[0]):
            b[j, 200 + 7 * i + j :] = 0
    memory = pruning.RowBlocks(84, c, block_entries=64)
    spilled = pruning.RowBlocks(84, c, block_entries=64, max_bytes=4096, spill_dir=tmp_path)
    _fill(memory, batches)
    _fill(spilled, batches)
    parts = spilled.parts()
    assert any(isinstance(p, pruning.SpilledRows) for p in parts)
    assert spilled.spilled_bytes > 0 and any(tmp_path.iterdir())
    in_memory = sum(p.val.numel() * 8 for p in parts if isinstance(p, pruning.SparseRows))
    assert in_memory <= 4096 + 8 * max(int((b != 0).sum()) for b in batches) + 8 * 64

    row_nodes = torch.arange(200, 284)
    weights = torch.zeros(c)
    weights[250:284] = torch.rand(34, generator=torch.Generator().manual_seed(9))
    expected = pruning.node_influence(memory.parts(), row_nodes, weights)
    got = pruning.node_influence(parts, row_nodes, weights)
    assert torch.equal(got, expected) and bool(expected[:200].any())

    a, b = pruning.SparseRows.cat(memory.finish()), pruning.SparseRows.cat(spilled.finish())
    assert torch.equal(a.ptr, b.ptr) and torch.equal(a.col, b.col) and torch.equal(a.val, b.val)
    assert torch.equal(b.to_dense(), torch.cat(batches))
    del parts, spilled, b
    gc.collect()
    assert not any(tmp_path.iterdir())  # the spill folder goes with the last block referring to it


@pytest.fixture(scope="module")
def tiny():
    lm = models.tiny_model("llama", n_layers=2, d_model=32, vocab_size=97, seed=0)
    tc = transcoders.random_transcoders(lm.n_layers, lm.d_model, 48, kind="clt", activation="relu", skip=True, seed=1)
    return lm, tc


@pytest.mark.parametrize("max_feature_nodes", [None, 40])
def test_a_tiny_budget_gives_the_same_graph(tiny, tmp_path, monkeypatch, max_feature_nodes) -> None:
    lm, tc = tiny
    made: list[pruning.RowBlocks] = []

    class Recorded(pruning.RowBlocks):  # the real builder, remembered to see that it spilled
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(pruning, "RowBlocks", Recorded)
    # all features: a short prompt, fewer passes; greedy: many small passes, many updates
    prompt = PROMPT if max_feature_nodes else PROMPT[:20]
    settings = dict(max_feature_nodes=max_feature_nodes, batch_size=8 if max_feature_nodes else 32)
    # graph_from_run: the spill alone (compute_graph would also split the passes under so
    # small a budget, which changes float rounding; see the test below)
    ids = lm.tokenize(prompt)
    run = replacement_run(lm, tc, torch.tensor(ids), batch_size=1)
    targets = _logit_targets(lm, run.logits[0, -1].detach(), None, 10, 0.95)
    ref = graph_from_run(run, tc, targets, ids, **settings)
    low = graph_from_run(run, tc, targets, ids, max_memory=16 * 1024, spill_dir=str(tmp_path), **settings)
    assert made[0].spilled_bytes == 0 and made[1].spilled_bytes > 2 * 16 * 1024
    assert torch.equal(ref.edges.ptr, low.edges.ptr)
    assert torch.equal(ref.edges.col, low.edges.col)
    assert torch.equal(ref.edges.val, low.edges.val)
    assert torch.equal(ref.row_nodes, low.row_nodes) and torch.equal(ref.feat_index, low.feat_index)
    gc.collect()
    assert not any(tmp_path.iterdir())

    if not max_feature_nodes:
        return
    # the files through attribute(): spilled and split passes, the same nodes and edges
    g_ref = attribute(lm, tc, prompt, **settings)
    g_low = attribute(lm, tc, prompt, max_memory="20K", **settings)
    assert g_ref.nodes["node_id"].tolist() == g_low.nodes["node_id"].tolist() and len(g_ref.edges) > 100
    assert g_ref.edges[["source", "target"]].equals(g_low.edges[["source", "target"]])
    assert torch.allclose(torch.tensor(g_ref.edges["weight"].to_numpy()), torch.tensor(g_low.edges["weight"].to_numpy()),
                          rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("bad", ["lots", "-5M", 0])
def test_a_bad_budget_is_refused(tiny, bad) -> None:
    lm, tc = tiny
    with pytest.raises(AttributionError, match="memory budget"):
        compute_graph(lm, tc, lm.tokenize(PROMPT), max_memory=bad)


def test_passes_split_under_a_budget_give_the_same_rows(tiny) -> None:
    from circuit_atlas.engine.attribution.attribute import _targets_per_pass

    lm, tc = tiny
    ids = lm.tokenize(PROMPT)
    ref = compute_graph(lm, tc, ids, batch_size=16, max_feature_nodes=30)
    budget = 4 * (lm.n_layers + 5) * len(ids) * lm.d_model * 4 * 3  # room for three targets per pass
    assert _targets_per_pass(lm, len(ids), budget, 16) == 3
    assert _targets_per_pass(lm, len(ids), None, 16) is None and _targets_per_pass(lm, len(ids), "1G", 16) is None
    split = compute_graph(lm, tc, ids, batch_size=16, max_feature_nodes=30, max_memory=budget)
    assert torch.equal(ref.row_nodes, split.row_nodes) and torch.equal(ref.feat_index, split.feat_index)
    assert torch.equal(ref.edges.ptr, split.edges.ptr) and torch.equal(ref.edges.col, split.edges.col)
    assert torch.allclose(ref.edges.val, split.edges.val, rtol=1e-5, atol=1e-7)
