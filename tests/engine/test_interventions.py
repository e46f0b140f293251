"""Interventions on tiny random models: exact no-ops, the constrained frozen model is the local
replacement model (a change is what the graph's direct edges predict), the iterative frozen
model follows the graph's total effects to first order, and the options really differ."""

from __future__ import annotations

import pytest
import torch

from circuit_atlas.engine.attribution.attribute import compute_graph
from circuit_atlas.engine.interventions.ablation import (
    Intervention,
    InterventionError,
    clean_run,
    intervene,
    intervened_logits,
    parse_feature_key,
    parse_intervention,
    validate_circuit,
)
from circuit_atlas.engine.models.loading import TINY_ARCHS, PromptError, tiny_model
from circuit_atlas.engine.attribution.replacement import frozen_forward, frozen_state
from circuit_atlas.engine.transcoders.transcoder_set import random_transcoders
from circuit_atlas.errors import CircuitAtlasError

PROMPT = "The cat sat on"


@pytest.fixture(scope="module")
def llama():
    lm = tiny_model("llama", n_layers=3, d_model=32, vocab_size=97, seed=0)
    tc = random_transcoders(3, 32, 24, kind="clt", activation="relu", skip=True, seed=1, scan="t")
    return lm, tc


def _active(clean, layer: int) -> list[tuple[int, int]]:
    """(pos, feature) of the active features of ``layer``."""
    return [tuple(x) for x in torch.nonzero(clean.acts[layer]).tolist()]


# ---- exactness -----------------------------------------------------------------------------
@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_no_intervention_and_own_values_are_exact_no_ops(arch: str) -> None:
    lm = tiny_model(arch, n_layers=2, d_model=32, vocab_size=97, seed=0)
    tc = random_transcoders(2, 32, 24, kind="plt" if arch in ("gemma2", "qwen3") else "clt", skip=arch != "gpt2", seed=1)
    ids = lm.tokenize(PROMPT)
    real = lm.logits(ids)[0]
    for freeze in (True, False):
        clean = clean_run(lm, tc, ids, freeze_attention=freeze)
        own = [Intervention(l, p, f, "clamp", float(clean.acts[l][p, f])) for l in range(2) for p, f in _active(clean, l)]
        assert own, "no active features: the check would prove little"
        own.append(Intervention(0, None, 3, "scale", 1.0))
        own.append(Intervention(1, 2, -1, "scale", 1.0))  # the error node, unchanged
        for layer_range in (None, (0, 2), (1, 2)):
            assert torch.equal(intervened_logits(lm, tc, clean, [], layer_range=layer_range), real)
            assert torch.equal(intervened_logits(lm, tc, clean, own, layer_range=layer_range), real)
        res = intervene(lm, tc, ids, [], freeze_attention=freeze)
        assert torch.equal(res.logits_before, real[-1]) and torch.equal(res.logits_after, real[-1])
        assert res.kl == 0.0 and list(res.before["token_id"]) == list(res.after["token_id"])
        assert (res.after["change"] == 0).all()


def test_result_tables(llama) -> None:
    lm, tc = llama
    clean = clean_run(lm, tc, lm.tokenize(PROMPT))
    l, p, f = 2, -1, int(torch.argmax(clean.acts[2][-1]))
    res = intervene(lm, tc, PROMPT, [Intervention(l, p, f, "clamp", 40.0)], top_k=5)
    assert list(res.before.columns)[:4] == ["token", "token_id", "prob", "logit"]
    assert list(res.after.columns) == ["token", "token_id", "prob", "logit", "prob_before", "change"]
    assert len(res.before) == 5 and res.before["prob"].is_monotonic_decreasing
    # after: the before tokens plus any new top ones, by the new probability
    assert set(res.before["token_id"]) <= set(res.after["token_id"]) and 5 <= len(res.after) <= 10
    assert res.after["prob"].is_monotonic_decreasing
    assert list(res.after["token_id"][:5]) == torch.softmax(res.logits_after, -1).topk(5).indices.tolist()
    assert res.kl > 1e-3
    p_b = torch.softmax(res.logits_before.double(), -1)
    p_a = torch.softmax(res.logits_after.double(), -1)
    assert res.kl == pytest.approx(float((p_b * (p_b.log() - p_a.log())).sum()), rel=1e-9)
    assert res.to_dict()["interventions"][0] == {"layer": 2, "pos": -1, "feature": f, "mode": "clamp", "value": 40.0}


# ---- the constrained frozen model is the replacement model ---------------------------------
def test_constrained_frozen_scaling_is_the_direct_edge(llama) -> None:
    lm, tc = llama
    ids = lm.tokenize(PROMPT)
    raw = compute_graph(lm, tc, ids, batch_size=16)
    n_feat, n_nodes = raw.feat_layer.shape[0], raw.kinds.shape[0]
    k = raw.logits.token_ids.shape[0]
    logit_rows = [int(r) for r in torch.nonzero(raw.row_nodes >= n_nodes - k).flatten()]
    tokens = raw.logits.token_ids[[int(raw.row_nodes[r]) - (n_nodes - k) for r in logit_rows]]
    clean = clean_run(lm, tc, ids)
    state = frozen_state(lm, tc, torch.tensor(ids))
    base = clean.logits[-1].double()
    s = 11.0
    strongest = raw.rows[logit_rows][:, :n_feat].abs().max(0).values.topk(6).indices.tolist()
    checked = 0
    for j in strongest + torch.randperm(n_feat, generator=torch.Generator().manual_seed(0))[:3].tolist():
        l, p, f = int(raw.feat_layer[j]), int(raw.feat_pos[j]), int(raw.feat_index[j])
        after = intervened_logits(lm, tc, clean, [Intervention(l, p, f, "scale", s)], layer_range=(0, lm.n_layers))
        change = after[-1].double() - base
        change = change - change.mean()  # the logit nodes are de-meaned logits
        predicted = (s - 1) * raw.rows[logit_rows, j].double()
        assert torch.allclose(change[tokens], predicted, rtol=1e-3, atol=2e-5)
        # and the whole output equals the replacement model evaluated at the scaled activation
        acts = [a.clone() for a in state.activations]
        acts[l][p, f] *= s
        ref, _ = frozen_forward(lm, tc, state, activations=acts)
        assert torch.allclose(after, ref, atol=1e-4, rtol=1e-4)
        checked += int(predicted.abs().max() > 0.1)
    assert checked >= 3, "the sampled features barely touch the logits: the check would prove little"


def test_zeroing_every_feature_and_error_leaves_the_embedding_paths(llama) -> None:
    lm, tc = llama
    ids = lm.tokenize(PROMPT)
    clean = clean_run(lm, tc, ids)
    everything = [Intervention(l, None, f, "zero") for l in range(lm.n_layers) for f in range(tc.d_transcoder)]
    everything += [Intervention(l, None, -1, "zero") for l in range(lm.n_layers)]
    after = intervened_logits(lm, tc, clean, everything, layer_range=(0, lm.n_layers))
    state = frozen_state(lm, tc, torch.tensor(ids))
    zeros = [torch.zeros_like(a) for a in state.activations]
    ref, _ = frozen_forward(lm, tc, state, activations=zeros, errors=[torch.zeros_like(e) for e in state.errors])
    assert torch.allclose(after, ref, atol=1e-4, rtol=1e-4)
    assert (after[-1] - clean.logits[-1]).abs().max() > 0.1


def test_iterative_frozen_follows_the_total_effect_to_first_order(llama) -> None:
    """Scale one early feature by 1 + eps: in the iterative frozen model every active (ReLU)
    feature responds linearly, so the logits move by eps times the graph's total effect,
    (I - M)^-1 along feature->feature edges (M = edges over target activations)."""
    lm, tc = llama
    ids = lm.tokenize(PROMPT)
    raw = compute_graph(lm, tc, ids, batch_size=16)
    n_feat, n_nodes = raw.feat_layer.shape[0], raw.kinds.shape[0]
    k = raw.logits.token_ids.shape[0]
    feat_rows = torch.full((n_feat,), -1, dtype=torch.long)
    for r, node in enumerate(raw.row_nodes.tolist()):
        if node < n_feat:
            feat_rows[node] = r
    assert (feat_rows >= 0).all()
    M = raw.rows[feat_rows][:, :n_feat].double() / raw.feat_act.double()[:, None]
    logit_rows = [int(r) for r in torch.nonzero(raw.row_nodes >= n_nodes - k).flatten()]
    tokens = raw.logits.token_ids[[int(raw.row_nodes[r]) - (n_nodes - k) for r in logit_rows]]
    A_logit = raw.rows[logit_rows][:, :n_feat].double()
    clean = clean_run(lm, tc, ids)
    eye = torch.eye(n_feat, dtype=torch.float64)
    total = A_logit @ torch.linalg.inv(eye - M)  # (K, F): eps * total[:, j] is the first-order change
    j = int((total - A_logit).abs().max(0).values.argmax())  # the feature with the largest indirect effect
    l, p, f = int(raw.feat_layer[j]), int(raw.feat_pos[j]), int(raw.feat_index[j])
    eps = 0.1  # piecewise linear (ReLU, frozen patterns/scales): exact while no feature crosses zero
    iv = [Intervention(l, p, f, "scale", 1 + eps)]
    for layer_range, expect in ((None, eps * total[:, j]), ((0, lm.n_layers), eps * A_logit[:, j])):
        change = intervened_logits(lm, tc, clean, iv, layer_range=layer_range)[-1].double() - clean.logits[-1].double()
        change = (change - change.mean())[tokens]
        assert torch.allclose(change, expect, rtol=1e-3, atol=1e-5)
    indirect = eps * (total[:, j] - A_logit[:, j]).abs().max()
    assert indirect > 1e-3, "no indirect paths: the check would prove little"


def test_iterative_differs_from_constrained_and_frozen_from_live(llama) -> None:
    lm, tc = llama
    ids = lm.tokenize(PROMPT)
    clean = clean_run(lm, tc, ids)
    l, p = 0, 2
    f = int(torch.argmax(clean.acts[l][p]))
    iv = [Intervention(l, p, f, "clamp", 25.0)]
    it = intervene(lm, tc, ids, iv)
    con = intervene(lm, tc, ids, iv, layer_range=(0, lm.n_layers))
    part = intervene(lm, tc, ids, iv, layer_range=(1, 2))
    live = intervene(lm, tc, ids, iv, freeze_attention=False)
    live_con = intervene(lm, tc, ids, iv, freeze_attention=False, layer_range=(0, lm.n_layers))
    for a, b in ((it, con), (it, part), (part, con), (it, live), (con, live_con)):
        assert (a.logits_after - b.logits_after).abs().max() > 1e-3
    # constraining only layers before the intervened one is the iterative model
    last = [Intervention(2, p, int(torch.argmax(clean.acts[2][p])), "clamp", 25.0)]
    a = intervene(lm, tc, ids, last)
    b = intervene(lm, tc, ids, last, layer_range=(0, 2))
    assert torch.equal(a.logits_after, b.logits_after)
    # downstream features really react in the iterative pass
    zero = [Intervention(0, None, g, "zero") for g in range(tc.d_transcoder)]
    assert not torch.equal(intervened_logits(lm, tc, clean, zero), intervened_logits(lm, tc, clean, zero, layer_range=(0, 3)))


def test_modes_and_positions(llama) -> None:
    lm, tc = llama
    ids = lm.tokenize(PROMPT)
    clean = clean_run(lm, tc, ids)
    state = frozen_state(lm, tc, torch.tensor(ids))
    full = (0, lm.n_layers)
    l = 1
    f = int(torch.argmax(clean.acts[l].sum(0)))
    # zero == clamp 0 == scale 0; pos None == every position (after BOS); negative positions count from the end
    z = intervened_logits(lm, tc, clean, [Intervention(l, None, f, "zero")], layer_range=full)
    assert torch.equal(z, intervened_logits(lm, tc, clean, [Intervention(l, None, f, "clamp", 0.0)], layer_range=full))
    assert torch.equal(z, intervened_logits(lm, tc, clean, [Intervention(l, None, f, "scale", 0.0)], layer_range=full))
    each = [Intervention(l, p, f, "zero") for p in range(1, len(ids))]
    assert torch.allclose(z, intervened_logits(lm, tc, clean, each, layer_range=full), atol=1e-6)
    last = len(ids) - 1
    assert torch.equal(intervened_logits(lm, tc, clean, [Intervention(l, -1, f, "clamp", 5.0)], layer_range=full),
                       intervened_logits(lm, tc, clean, [Intervention(l, last, f, "clamp", 5.0)], layer_range=full))
    acts = [a.clone() for a in state.activations]
    acts[l][1:, f] = 0
    ref, _ = frozen_forward(lm, tc, state, activations=acts)
    assert torch.allclose(z, ref, atol=1e-4, rtol=1e-4)
    # later interventions on the same feature act on the result of earlier ones
    two = [Intervention(l, 2, f, "clamp", 3.0), Intervention(l, 2, f, "scale", 2.0)]
    assert torch.allclose(intervened_logits(lm, tc, clean, two, layer_range=full),
                          intervened_logits(lm, tc, clean, [Intervention(l, 2, f, "clamp", 6.0)], layer_range=full))
    # a position with BOS prepended: the app passes stored token ids (with BOS)
    res_text = intervene(lm, tc, PROMPT, [Intervention(l, 2, f, "zero")])
    res_ids = intervene(lm, tc, ids, [Intervention(l, 2, f, "zero")])
    assert torch.equal(res_text.logits_after, res_ids.logits_after)


def test_generation(llama) -> None:
    lm, tc = llama
    ids = lm.tokenize(PROMPT)
    none = intervene(lm, tc, ids, [], generate=4)
    assert isinstance(none.generated, str) and none.generated == none.generated_before
    assert 1 <= len(none.generated_ids) <= 4 and none.generated == lm.tokenizer.decode(none.generated_ids)
    assert none.generated_ids == none.generated_before_ids
    clean = clean_run(lm, tc, ids)
    strong = [Intervention(2, None, g, "clamp", 30.0) for g in range(4)]
    res = intervene(lm, tc, ids, strong, generate=4)
    assert res.generated_ids != res.generated_before_ids
    assert intervene(lm, tc, ids, strong).generated is None
    fixed = intervene(lm, tc, ids, [Intervention(2, 1, int(torch.argmax(clean.acts[2][1])), "zero")], generate=2,
                      freeze_attention=False, layer_range=(0, 3))
    assert isinstance(fixed.generated, str)


def test_bad_requests_raise_clear_errors(llama) -> None:
    lm, tc = llama
    ids = lm.tokenize(PROMPT)
    T = len(ids)
    cases = [
        (Intervention(3, 1, 0, "zero"), "layer 3 is outside 0..2"),
        (Intervention(-1, 1, 0, "zero"), "layer -1"),
        (Intervention(0, 1, 24, "zero"), "feature 24 is outside 0..23"),
        (Intervention(0, 1, -2, "zero"), "feature -2"),
        (Intervention(0, T, 0, "zero"), "beyond the prompt"),
        (Intervention(0, -T - 1, 0, "zero"), "beyond the prompt"),
        (Intervention(0, 0, 0, "zero"), "BOS"),
        (Intervention(0, 1, 0, "double", 2.0), "unknown mode 'double'"),
        (Intervention(0, 1, -1, "clamp", 2.0), "error node"),
        (Intervention(0, 1, 0, "clamp", float("nan")), "finite"),
    ]
    for iv, msg in cases:
        with pytest.raises(InterventionError, match=msg):
            intervene(lm, tc, ids, [iv])
    ok = [Intervention(0, 1, 0, "zero")]
    for bad in ((0, 4), (2, 2), (-1, 2), (3, 1)):
        with pytest.raises(InterventionError, match="layer_range"):
            intervene(lm, tc, ids, ok, layer_range=bad)
    with pytest.raises(InterventionError, match="top_k"):
        intervene(lm, tc, ids, ok, top_k=0)
    with pytest.raises(InterventionError, match="generate"):
        intervene(lm, tc, ids, ok, generate=-1)
    with pytest.raises(PromptError):
        intervene(lm, tc, "", ok)
    with pytest.raises(PromptError):
        intervene(lm, tc, [0, 500], ok)
    with pytest.raises(InterventionError, match="at least one token"):
        intervene(lm, tc, [0], ok)
    assert issubclass(InterventionError, CircuitAtlasError)


def test_parse_intervention_and_feature_keys() -> None:
    assert parse_intervention("3:12=0") == Intervention(3, None, 12, "zero", 0.0)
    assert parse_intervention("3:12@5=0.0") == Intervention(3, 5, 12, "zero", 0.0)
    assert parse_intervention("3:12@5=x2.5") == Intervention(3, 5, 12, "scale", 2.5)
    assert parse_intervention(" 3 : 12 @ -1 = x-1 ") == Intervention(3, -1, 12, "scale", -1.0)
    assert parse_intervention("0:7=3.0") == Intervention(0, None, 7, "clamp", 3.0)
    assert parse_intervention("0:7=-1.5e1") == Intervention(0, None, 7, "clamp", -15.0)
    assert parse_intervention("1:-1@2=0") == Intervention(1, 2, -1, "zero", 0.0)
    for bad in ("3=0", "3:12", "a:b=1", "3:12@=1", "3:12=x", "3:12=inf", "3:12=1.2.3"):
        with pytest.raises(InterventionError):
            parse_intervention(bad)
    assert parse_feature_key("scan:with:colons:3:17") == ("scan:with:colons", 3, 17)
    with pytest.raises(InterventionError):
        parse_feature_key("3:17")


def test_validate_circuit_on_prompts(llama) -> None:
    lm, tc = llama
    prompts = [{"id": "a", "text": "The cat sat on", "expected": "t"}, {"id": "b", "text": "The dog sat on"},
               "A cat ran to"]
    # the circuit: the features most active at the last position of the first prompt
    clean = clean_run(lm, tc, lm.tokenize(prompts[0]["text"]))
    keys = [f"t:{l}:{int(f)}" for l in range(lm.n_layers) for f in clean.acts[l][-1].topk(2).indices]
    res = validate_circuit(lm, tc, prompts, keys, controls=3, seed=7)
    t = res.table
    assert list(t["prompt_id"]) == ["a", "b", 2] and len(res.controls) == 9
    assert list(t["expected_source"]) == ["expected", "top1", "top1"]
    variants = {lm.tokenizer.encode(v, add_special_tokens=False)[0] for v in ("t", " t")}
    assert t.loc[0, "expected_id"] in variants
    assert (t["delta"] == t["p_after"] - t["p_clean"]).all() and (t["delta"].abs() > 0).all()
    assert ((t["p_value"] > 0) & (t["p_value"] <= 1)).all()
    assert res.summary["n_prompts"] == 3 and res.summary["features"] == keys
    assert res.summary["mean_delta"] == pytest.approx(t["delta"].mean())
    # controls: same layers, none of the circuit's features, deterministic by seed
    for feats in res.controls["features"]:
        got = feats.split(";")
        assert sorted(int(k.split(":")[1]) for k in got) == sorted(int(k.split(":")[1]) for k in keys)
        assert not set(got) & set(keys)
    again = validate_circuit(lm, tc, prompts, keys, controls=3, seed=7)
    assert again.controls.equals(res.controls)
    flip = validate_circuit(lm, tc, prompts, keys, mode="flip", controls=0, positions="active")
    assert not torch.allclose(torch.tensor(flip.table["p_after"].values), torch.tensor(t["p_after"].values))
    assert flip.table["control_delta_mean"].isna().all() and flip.summary["frac_beating_all_controls"] is None
    nothing = validate_circuit(lm, tc, prompts, [], controls=2)
    assert (nothing.table["delta"] == 0).all() and (nothing.controls["delta"] == 0).all()
    with pytest.raises(InterventionError, match="scan"):
        validate_circuit(lm, tc, prompts, ["other:0:1"])
    with pytest.raises(InterventionError, match="outside"):
        validate_circuit(lm, tc, prompts, ["t:9:1"])
    with pytest.raises(InterventionError, match="mode"):
        validate_circuit(lm, tc, prompts, keys, mode="scale")


@pytest.mark.parametrize("arch,kind,hin,hout", [("gemma2", "plt", "ln2.hook_normalized", "hook_mlp_out"),
                                                ("llama", "clt", "hook_resid_mid", "mlp.hook_out")])
def test_interventions_read_and_write_at_the_transcoders_hook_points(arch, kind, hin, hout) -> None:
    from circuit_atlas.engine.attribution.replacement import replacement_run

    lm = tiny_model(arch, n_layers=2, d_model=32, vocab_size=97, seed=0)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in lm.adapter.norm_modules(lm.model):
            m.weight.add_(0.3 * torch.randn(m.weight.shape, generator=g))
    tc = random_transcoders(2, 32, 24, kind=kind, activation="relu", skip=True, seed=1)
    tc.feature_input_hook, tc.feature_output_hook = hin, hout
    ids = lm.tokenize(PROMPT)
    real = lm.logits(ids)[0]
    clean = clean_run(lm, tc, ids)
    run = replacement_run(lm, tc, torch.tensor(ids))
    for l in range(2):  # the same point read as attribution reads
        assert torch.allclose(clean.acts[l], run.activations[l], atol=1e-6)
    assert torch.equal(intervened_logits(lm, tc, clean, [], layer_range=(0, 2)), real)
    state = frozen_state(lm, tc, torch.tensor(ids))
    p, f = _active(clean, 0)[0]
    after = intervened_logits(lm, tc, clean, [Intervention(0, p, f, "scale", 6.0)], layer_range=(0, 2))
    acts = [a.clone() for a in state.activations]
    acts[0][p, f] *= 6.0
    ref, _ = frozen_forward(lm, tc, state, activations=acts)
    assert torch.allclose(after, ref, atol=1e-4, rtol=1e-4) and (after - real).abs().max() > 1e-3
