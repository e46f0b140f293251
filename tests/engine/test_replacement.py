"""The local replacement model on tiny random models of every supported architecture: it
reproduces the real logits exactly, and it is the frozen linear model the edges describe
(every edge equals the effect of doubling its source with patterns and scales held fixed)."""

from __future__ import annotations

import pytest
import torch

from circuit_atlas.engine import pruning
from circuit_atlas.engine.adapters import UnsupportedModelError, adapter_for
from circuit_atlas.engine.attribution import compute_graph
from circuit_atlas.engine.models import TINY_ARCHS, tiny_model
from circuit_atlas.engine.replacement import frozen_forward, frozen_state, replacement_run
from circuit_atlas.engine.transcoders import random_transcoders

PROMPT = "The cat sat on the mat"


@pytest.mark.parametrize("arch", TINY_ARCHS)
@pytest.mark.parametrize("kind,skip", [("plt", False), ("clt", True)])
def test_replacement_reproduces_the_real_logits_exactly(arch: str, kind: str, skip: bool) -> None:
    lm = tiny_model(arch, n_layers=3, d_model=32, vocab_size=97, seed=0)
    tc = random_transcoders(lm.n_layers, lm.d_model, 40, kind=kind, activation="relu", skip=skip, seed=1)
    ids = torch.tensor(lm.tokenize(PROMPT))
    real = lm.logits(ids)[0]
    run = replacement_run(lm, tc, ids, batch_size=2)
    assert torch.equal(run.logits[0].detach(), real) and torch.equal(run.logits[1].detach(), real)
    ins, outs = lm.mlp_io(ids.unsqueeze(0))
    for layer in range(lm.n_layers):
        assert torch.equal(run.mlp_in[layer][0].detach(), ins[layer][0])
        assert torch.equal(run.mlp_out[layer][0].detach(), outs[layer][0])
        # reconstruction + skip + error is the true output at every position after BOS
        assert run.errors[layer][0].abs().max() == 0 and run.activations[layer][0].abs().max() == 0
        assert run.activations[layer].gt(0).any(), "no active features: the check would prove little"
    # the replayed frozen model at the clean sources gives the same logits
    state = frozen_state(lm, tc, ids)
    logits, _ = frozen_forward(lm, tc, state)
    assert torch.allclose(logits, real, atol=1e-5, rtol=1e-5)


def test_patterns_and_norms_matter_in_these_models() -> None:
    """Guard: with larger embeddings the live model's logits change non-linearly (else the
    perturbation test below could not tell frozen from live)."""
    lm = tiny_model("llama", n_layers=2, d_model=32, vocab_size=97, seed=0)
    ids = torch.tensor(lm.tokenize(PROMPT))
    emb = lm.adapter.embed(lm.model)(ids)
    a = lm.model(inputs_embeds=emb[None]).logits[0, -1]
    b = lm.model(inputs_embeds=2 * emb[None]).logits[0, -1]
    c = lm.model(inputs_embeds=3 * emb[None]).logits[0, -1]
    assert (c - b - (b - a)).abs().max() > 1e-3


def _targets(tc, raw, logits, mlp_in, cap=None) -> torch.Tensor:
    """Feature pre-activations and de-meaned logits (before soft-capping, where they are linear)."""
    if cap:
        logits = cap * torch.atanh(logits.double() / cap)
    n_feat, n_nodes, k = raw.feat_layer.shape[0], raw.kinds.shape[0], raw.logits.token_ids.shape[0]
    out = []
    for node in raw.row_nodes.tolist():
        if node < n_feat:
            l, p, f = int(raw.feat_layer[node]), int(raw.feat_pos[node]), int(raw.feat_index[node])
            out.append(tc.pre_activations(l, mlp_in[l][p])[f])
        else:
            last = logits[-1]
            out.append(last[raw.logits.token_ids[node - (n_nodes - k)]] - last.mean())
    return torch.stack(out).double()


@pytest.mark.parametrize("arch,kind,skip", [("llama", "clt", True), ("gemma2", "plt", False), ("gpt2", "clt", False),
                                            ("qwen3", "plt", True)])
def test_every_edge_equals_doubling_its_source_with_patterns_and_scales_fixed(arch: str, kind: str, skip: bool) -> None:
    lm = tiny_model(arch, n_layers=2, d_model=32, vocab_size=97, seed=0)
    tc = random_transcoders(lm.n_layers, lm.d_model, 24, kind=kind, activation="relu", skip=skip, seed=3)
    ids = lm.tokenize("The cat sat")
    raw = compute_graph(lm, tc, ids, batch_size=7)
    state = frozen_state(lm, tc, torch.tensor(ids))
    cap = lm.adapter.logit_softcap(lm.model)
    base = _targets(tc, raw, *frozen_forward(lm, tc, state), cap)
    n_feat, L, T = raw.feat_layer.shape[0], raw.n_layers, raw.n_pos
    cols = []
    for i in range(n_feat):
        acts = [a.clone() for a in state.activations]
        acts[int(raw.feat_layer[i])][int(raw.feat_pos[i]), int(raw.feat_index[i])] *= 2
        cols.append(_targets(tc, raw, *frozen_forward(lm, tc, state, activations=acts), cap) - base)
    for l in range(L):
        for p in range(1, T):
            errs = [e.clone() for e in state.errors]
            errs[l][p] *= 2
            cols.append(_targets(tc, raw, *frozen_forward(lm, tc, state, errors=errs), cap) - base)
    for p in range(T):
        emb = state.embeddings.clone()
        emb[p] *= 2
        cols.append(_targets(tc, raw, *frozen_forward(lm, tc, state, embeddings=emb), cap) - base)
    measured = torch.stack(cols, dim=1)
    got = raw.rows[:, : measured.shape[1]].double()
    assert torch.allclose(got, measured, rtol=1e-3, atol=1e-4 * measured.abs().max().item())
    assert (raw.kinds == pruning.FEATURE).sum() == n_feat


def test_unsupported_architecture_is_named() -> None:
    from transformers import BertConfig, BertForMaskedLM

    model = BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32))
    with pytest.raises(UnsupportedModelError, match="supported: .*llama"):
        adapter_for(model)
