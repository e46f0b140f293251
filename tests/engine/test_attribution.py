"""Attribution graphs on tiny random models: every edge exact, batching/greedy invariants,
graph files round-trip, bad input errors."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from circuit_atlas.engine.attribution import pruning
from circuit_atlas.engine.attribution.attribute import AttributionError, attribute, compute_graph
from circuit_atlas.engine.formats.graph_files import GraphFile
models = pytest.importorskip("circuit_atlas.engine.models.loading", reason="engine.models.loading not in the tree yet")
replacement = pytest.importorskip("circuit_atlas.engine.attribution.replacement", reason="engine.attribution.replacement not in the tree yet")
transcoders = pytest.importorskip("circuit_atlas.engine.transcoders.transcoder_set", reason="engine.transcoders.transcoder_set not in the tree yet")
PromptError, tiny_model = models.PromptError, models.tiny_model
replacement_run = replacement.replacement_run
TranscoderMismatchError, random_transcoders = transcoders.TranscoderMismatchError, transcoders.random_transcoders

PROMPT = "The cat sat on the mat because it"
CASES = [  # (arch, transcoder kind, skip)
    ("llama", "plt", False),
    ("llama", "clt", True),
    ("gemma2", "plt", True),
    ("gemma2", "clt", False),
    ("gpt2", "plt", True),
    ("gpt2", "clt", False),
]
_CACHE: dict = {}


def setup(arch: str, kind: str, skip: bool, d_tc: int = 48):
    key = (arch, kind, skip, d_tc)
    if key not in _CACHE:
        lm = tiny_model(arch, n_layers=2, d_model=32, vocab_size=97, seed=0)
        tc = random_transcoders(lm.n_layers, lm.d_model, d_tc, kind=kind, activation="relu", skip=skip, seed=1)
        _CACHE[key] = (lm, tc)
    return _CACHE[key]


def _target_value(lm, tc, run, kind: str, layer: int, pos: int, index: int) -> torch.Tensor:
    """A target as a scalar of the frozen run (copy 0): a feature's pre-activation, or a
    de-meaned logit (pre-softcap, where the logits are linear in the residual stream)."""
    if kind == "feature":
        return tc.pre_activations(layer, run.mlp_in[layer][0, pos])[index]
    logits = run.logits[0, -1].float()
    cap = getattr(lm.model.config, "final_logit_softcapping", None)
    if cap:
        logits = cap * torch.atanh(logits / cap)
    return logits[index] - logits.mean()


def _source_effects(lm, tc, raw, target_scalar, run) -> torch.Tensor:
    """d target / d (scale of each source) with everything else frozen, one source at a time
    is what the edge promises; here all sources at once from one scalar backward pass, read
    with plain loops (independent of the engine's batched, vectorised reader)."""
    n_layers, n_pos = raw.n_layers, raw.n_pos
    grads = torch.autograd.grad(target_scalar, [run.embeddings, *run.mlp_out], retain_graph=True, allow_unused=True)
    g_emb = grads[0] if grads[0] is not None else torch.zeros_like(run.embeddings)
    g_out = [g if g is not None else torch.zeros_like(run.mlp_out[0]) for g in grads[1:]]
    out = []
    for i in range(raw.feat_layer.shape[0]):
        l, p, f = int(raw.feat_layer[i]), int(raw.feat_pos[i]), int(raw.feat_index[i])
        act = float(run.activations[l][p, f])
        total = 0.0
        for t in range(l, n_layers if tc.kind == "clt" else l + 1):
            dec = tc.decoder_vectors(l, t, torch.tensor([f]))[0]
            total += act * float(dec.double() @ g_out[t][0, p].double())
        out.append(total)
    for l in range(n_layers):
        for p in range(1, n_pos):
            out.append(float(run.errors[l][p].double() @ g_out[l][0, p].double()))
    for p in range(n_pos):
        out.append(float(run.embeddings[0, p].double() @ g_emb[0, p].double()))
    return torch.tensor(out)


@pytest.mark.parametrize("arch,kind,skip", CASES)
def test_every_edge_is_the_frozen_direct_effect(arch: str, kind: str, skip: bool) -> None:
    lm, tc = setup(arch, kind, skip)
    ids = lm.tokenize(PROMPT)
    raw = compute_graph(lm, tc, ids, batch_size=5)
    assert raw.feat_layer.numel() > 0, "no active features: the test would prove nothing"
    run = replacement_run(lm, tc, torch.tensor(ids), batch_size=1)
    n_feat = raw.feat_layer.shape[0]
    n_src = raw.rows.shape[1] - raw.logits.token_ids.shape[0]
    # every logit row and an even spread of feature rows (test_replacement checks every row of
    # smaller graphs by perturbation); each checked row is checked in every column
    n_rows = raw.rows.shape[0]
    feature_rows = [r for r in range(n_rows) if int(raw.row_nodes[r]) < n_feat]
    chosen = set(r for r in range(n_rows) if int(raw.row_nodes[r]) >= n_feat) | set(feature_rows[:: max(1, len(feature_rows) // 24)])
    checked = 0
    for r in sorted(chosen):
        node = int(raw.row_nodes[r])
        if raw.kinds[node] == pruning.FEATURE:
            args = ("feature", int(raw.feat_layer[node]), int(raw.feat_pos[node]), int(raw.feat_index[node]))
        else:
            args = ("logit", 0, 0, int(raw.logits.token_ids[node - (raw.kinds.shape[0] - raw.logits.token_ids.shape[0])]))
        expected = _source_effects(lm, tc, raw, _target_value(lm, tc, run, *args), run)
        got = raw.rows[r, :n_src].double()
        scale = expected.abs().max().item() + 1e-12
        assert torch.allclose(got, expected.double(), rtol=1e-4, atol=1e-4 * scale), (arch, kind, args)
        checked += 1
    assert checked == len(chosen) >= min(24, n_feat) + raw.logits.token_ids.shape[0]


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])
def test_logit_rows_at_the_unembedding_input_equal_rows_at_the_logits(arch: str) -> None:
    """compute_graph injects logit targets as d_model vectors at the head's input (one
    position); the rows equal those of the vocabulary-wide gradient injected at the logits
    (through Gemma 2's soft-cap too), and the run's last-position logits equal the full run's."""
    from circuit_atlas.engine.attribution.attribute import _logit_targets, _pre_logits, _unembedding_side, graph_from_run

    lm, tc = setup(arch, "plt", True)
    ids = lm.tokenize(PROMPT)
    kept: list = []
    with _pre_logits(lm, kept):
        run = replacement_run(lm, tc, torch.tensor(ids), batch_size=1)
    short = replacement_run(lm, tc, torch.tensor(ids), batch_size=1, last_logits_only=True)
    # (the same products summed by a (1, d) x (d, V) matmul instead of (T, d) x (d, V): rounding apart)
    assert short.logits.shape[1] == 1
    assert torch.allclose(short.logits[0, -1], run.logits[0, -1], rtol=1e-6, atol=1e-6)
    targets = _logit_targets(lm, run.logits[0, -1].detach(), None, 10, 0.95)
    vectors = _unembedding_side(lm, targets)
    assert vectors is not None and vectors.shape == (targets.grads.shape[0], lm.d_model)
    at_logits = graph_from_run(run, tc, targets, ids, batch_size=4)
    at_head = graph_from_run(run, tc, targets, ids, batch_size=4, pre_logits=kept[-1][:, -1], logit_vectors=vectors)
    assert torch.equal(at_logits.row_nodes, at_head.row_nodes)
    a, b = at_logits.rows, at_head.rows
    assert bool(a.abs().max() > 0)
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6 * float(a.abs().max()))


def test_batched_equals_unbatched() -> None:
    lm, tc = setup("llama", "clt", True)
    ids = lm.tokenize(PROMPT)
    one = compute_graph(lm, tc, ids, batch_size=1)
    many = compute_graph(lm, tc, ids, batch_size=64)
    assert torch.equal(one.row_nodes, many.row_nodes)
    assert torch.allclose(one.rows, many.rows, rtol=1e-5, atol=1e-6)


def test_max_feature_nodes_rows_equal_full_graph_rows() -> None:
    lm, tc = setup("gemma2", "plt", True)
    ids = lm.tokenize(PROMPT)
    full = compute_graph(lm, tc, ids, batch_size=8)
    n_feat = full.feat_layer.shape[0]
    k = max(1, n_feat // 3)
    part = compute_graph(lm, tc, ids, batch_size=4, max_feature_nodes=k)
    assert part.feat_layer.shape[0] == k
    key = lambda g: list(zip(g.feat_layer.tolist(), g.feat_pos.tolist(), g.feat_index.tolist()))  # noqa: E731
    full_index = {f: i for i, f in enumerate(key(full))}
    chosen = torch.tensor([full_index[f] for f in key(part)])
    n_rest = full.rows.shape[1] - n_feat
    cols = torch.cat([chosen, torch.arange(n_feat, n_feat + n_rest)])
    full_rows = {int(n): full.rows[i] for i, n in enumerate(full.row_nodes)}
    for i, node in enumerate(part.row_nodes.tolist()):
        if node < k:  # feature row: same feature's row in the full graph, same source columns
            expected = full_rows[int(chosen[node])][cols]
        else:  # logit rows
            expected = full_rows[node - k + n_feat][cols]
        assert torch.allclose(part.rows[i], expected, rtol=1e-5, atol=1e-6)
    # greedy: the chosen features are the most influential ones on the full graph's logits
    # at least as a set overlapping the top-k by more than chance
    infl = pruning.node_influence(full.rows, full.row_nodes, full.logit_weights)[:n_feat]
    top = set(torch.argsort(infl, descending=True)[:k].tolist())
    assert len(top & set(chosen.tolist())) >= max(1, k // 2)


def test_greedy_passes_run_in_layer_order() -> None:
    """Each greedy update's features go through the backward in (layer, position) order, so a
    pass reaches only as deep as its targets (influence order mixed all layers in every pass)."""
    lm = tiny_model("llama", n_layers=4, d_model=32, vocab_size=97, seed=0)
    tc = random_transcoders(lm.n_layers, lm.d_model, 48, kind="plt", activation="relu", seed=1)
    ids = lm.tokenize(PROMPT)
    batch, interval = 4, 2
    part = compute_graph(lm, tc, ids, batch_size=batch, update_interval=interval, max_feature_nodes=40)
    n_logit = int(part.logits.token_ids.shape[0])
    rows = part.row_nodes[n_logit:]
    assert rows.shape[0] == 40
    blocks = [rows[i : i + batch * interval] for i in range(0, 40, batch * interval)]
    spans = 0
    for block in blocks:
        key = part.feat_layer[block] * part.n_pos + part.feat_pos[block]
        assert torch.equal(key, key.sort().values), key.tolist()
        spans += int(part.feat_layer[block].unique().numel() > 1)
    assert spans > 0  # some update mixes layers, so the order is really imposed


def test_attribute_graph_file_round_trip(tmp_path) -> None:
    lm, tc = setup("llama", "plt", False)
    graph = attribute(lm, tc, PROMPT, batch_size=16, prompt_props={"group": "test", "tags": ["a"]})
    path = graph.save(tmp_path / graph.graph_id)
    back = GraphFile.load(path)
    for key, value in graph.meta.items():
        assert back.meta[key] == value, key
    pd.testing.assert_frame_equal(back.nodes, graph.nodes_table().to_pandas())
    pd.testing.assert_frame_equal(back.edges, graph.edges_table().to_pandas())
    meta = back.meta
    assert meta["token_ids"] == lm.tokenize(PROMPT)
    assert meta["model"] == lm.model_id and meta["scan"] == tc.scan and meta["n_layers"] == lm.n_layers
    assert meta["prompt_props"] == {"group": "test", "tags": ["a"]}
    assert 0.0 <= meta["scores"]["replacement_score"] <= 1.0
    assert 0.0 <= meta["scores"]["completeness_score"] <= 1.0
    # logit nodes: top tokens, probabilities descending, cumulative >= .95 or 10 of them
    logits = back.nodes[back.nodes["type"] == "logit"]
    probs = logits["prob"].tolist()
    assert probs == sorted(probs, reverse=True) and 1 <= len(probs) <= 10
    assert sum(probs) >= 0.95 or len(probs) == 10
    assert set(back.nodes["type"]) <= {"embedding", "feature", "error", "logit"}
    assert (back.nodes[back.nodes["type"] == "embedding"]["pos"].tolist()) == list(range(len(meta["token_ids"])))


def test_unpruned_graph_keeps_every_computed_edge_and_pruning_is_a_subset() -> None:
    lm, tc = setup("gpt2", "plt", True)
    ids = lm.tokenize(PROMPT)
    raw = compute_graph(lm, tc, ids, batch_size=16)
    full = attribute(lm, tc, ids, batch_size=16, prune=False)
    assert len(full.edges) == int((raw.rows != 0).sum())
    n_feat = raw.feat_layer.shape[0]
    assert (full.nodes["type"] == "feature").sum() == n_feat
    assert (full.nodes["type"] == "error").sum() == lm.n_layers * (len(ids) - 1)
    pruned = attribute(lm, tc, ids, batch_size=16, node_threshold=0.5, edge_threshold=0.8)
    assert len(pruned.edges) < len(full.edges)
    merged = pruned.edges.merge(full.edges, on=["source", "target"], suffixes=("", "_full"))
    assert len(merged) == len(pruned.edges)
    assert (merged["weight"] == merged["weight_full"]).all()
    assert pruned.graph_id != full.graph_id
    assert full.meta["scores"] == pruned.meta["scores"]  # scores are of the unpruned graph


def test_custom_logit_targets() -> None:
    lm, tc = setup("llama", "plt", False)
    graph = attribute(lm, tc, PROMPT, logit_targets=[5, "7"], batch_size=8)
    logits = graph.nodes[graph.nodes["type"] == "logit"]
    assert sorted(logits["token_id"].tolist()) == [5, 7]
    assert graph.meta["settings"]["logit_targets"] == [5, 7]
    with pytest.raises(AttributionError, match="outside the vocabulary"):
        attribute(lm, tc, PROMPT, logit_targets=[10**6])


def test_bfloat16_close_to_float32() -> None:
    lm32, tc32 = setup("llama", "plt", False)
    lm = tiny_model("llama", n_layers=2, d_model=32, vocab_size=97, seed=0)
    lm.model.to(torch.bfloat16)
    lm.dtype = torch.bfloat16
    tc = random_transcoders(lm.n_layers, lm.d_model, 48, kind="plt", activation="relu", seed=1).to(torch.bfloat16)
    ids = lm.tokenize(PROMPT)
    a = compute_graph(lm32, tc32, ids, batch_size=16)
    b = compute_graph(lm, tc, ids, batch_size=16)
    assert b.rows.dtype == torch.float32
    # activations may flip on/off near zero in bf16: compare logit rows on shared columns loosely
    n32, n16 = a.feat_layer.shape[0], b.feat_layer.shape[0]
    la = a.rows[a.row_nodes >= n32 + lm.n_layers * (len(ids) - 1) + len(ids)]
    lb = b.rows[b.row_nodes >= n16 + lm.n_layers * (len(ids) - 1) + len(ids)]
    emb_a, emb_b = la[:, n32:], lb[:, n16:]
    assert emb_a.shape == emb_b.shape
    assert torch.allclose(emb_a, emb_b, rtol=0.1, atol=0.05 * emb_a.abs().max().item())


def test_bad_inputs() -> None:
    lm, tc = setup("llama", "plt", False)
    with pytest.raises(PromptError):
        attribute(lm, tc, "")
    with pytest.raises(PromptError):
        attribute(lm, tc, [])
    with pytest.raises(PromptError):
        attribute(lm, tc, [1] * (lm.max_context + 1))
    wrong = random_transcoders(lm.n_layers + 1, lm.d_model, 16, seed=0)
    with pytest.raises(TranscoderMismatchError):
        attribute(lm, wrong, PROMPT)
    wrong = random_transcoders(lm.n_layers, lm.d_model + 2, 16, seed=0)
    with pytest.raises(TranscoderMismatchError):
        attribute(lm, wrong, PROMPT)
    with pytest.raises(AttributionError):
        attribute(lm, tc, PROMPT, node_threshold=1.5)


@pytest.mark.parametrize("arch,kind", [("llama", "plt"), ("gemma2", "clt"), ("gpt2", "plt")])
def test_passes_through_a_prefix_run_give_the_same_edges(arch, kind, monkeypatch) -> None:
    """Targets early in the prompt go through a forward pass of its first tokens only (the model
    is causal): the edges equal those of passes through the whole prompt."""
    import importlib

    attr = importlib.import_module("circuit_atlas.engine.attribution.attribute")
    lm = tiny_model(arch, n_layers=3, d_model=32, vocab_size=97, seed=0)
    tc = random_transcoders(lm.n_layers, lm.d_model, 48, kind=kind, activation="relu", skip=True, seed=1)
    ids = lm.tokenize("The cat sat on the mat because it was very tired and")
    monkeypatch.setattr(attr, "PREFIX_FORWARD_TARGETS", 0)  # a free prefix forward: always split
    used: list[int] = []
    plan = attr._plan_passes
    monkeypatch.setattr(attr, "_plan_passes", lambda *a, **k: [used.append(p) or (g, p) for g, p in plan(*a, **k)])
    split = compute_graph(lm, tc, ids, batch_size=8)
    assert any(p < len(ids) for p in used) and len(ids) in used
    monkeypatch.setattr(attr, "_plan_passes", plan)
    used.clear()
    whole = compute_graph(lm, tc, ids, batch_size=8, max_memory="64G")  # a budget turns prefix runs off
    assert not used or all(p == len(ids) for p in used)

    def by_node(g):
        order = torch.argsort(g.row_nodes)
        return g.row_nodes[order], g.rows[order]

    (n1, r1), (n0, r0) = by_node(split), by_node(whole)
    assert torch.equal(n1, n0)
    assert torch.allclose(r1, r0, rtol=1e-5, atol=1e-6)


def test_the_pass_plan_splits_only_when_it_saves_work() -> None:
    import importlib

    attr = importlib.import_module("circuit_atlas.engine.attribution.attribute")
    n_pos, n_layers = 100, 4
    layers = [3] * 512
    early = sorted(list(range(1, 65)) * 4) + [99] * 256  # half the targets in the first 65 positions
    plan = attr._plan_passes(layers, early, n_pos, n_layers, 64, set(), True)
    assert sorted(i for g, _ in plan for i in g) == list(range(512))  # every target once
    assert all(len(g) <= 64 for g, _ in plan)
    lengths = {p for _, p in plan}
    assert len(lengths) == 2 and 100 in lengths and all(max(early[i] for i in g) < p for g, p in plan)
    few = [50] * 4 + [99] * 60  # too few early targets to pay for a forward pass
    assert {p for _, p in attr._plan_passes(layers[:64], few, n_pos, n_layers, 64, set(), True)} == {100}
    late = [99] * 512  # nothing to save: one length
    assert {p for _, p in attr._plan_passes(layers, late, n_pos, n_layers, 64, set(), True)} == {100}
    assert {p for _, p in attr._plan_passes(layers, early, n_pos, n_layers, 64, set(), False)} == {100}
