"""The local replacement model on tiny random models of every supported architecture: it
reproduces the real logits exactly, and it is the frozen linear model the edges describe
(every edge equals the effect of doubling its source with patterns and scales held fixed)."""

from __future__ import annotations

import pytest
import torch

from circuit_atlas.engine.attribution import pruning
from circuit_atlas.engine.models.adapters import UnsupportedModelError, adapter_for
from circuit_atlas.engine.attribution.attribute import compute_graph
from circuit_atlas.engine.models.loading import TINY_ARCHS, tiny_model
from circuit_atlas.engine.attribution.replacement import frozen_forward, frozen_state, replacement_run
from circuit_atlas.engine.transcoders.transcoder_set import random_transcoders

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
    _check_edges_by_doubling(lm, tc, lm.tokenize("The cat sat"))


def _check_edges_by_doubling(lm, tc, ids: list[int]) -> None:
    """Every computed edge equals the frozen model's response to doubling its source (BOS
    embedding included: with skip transcoders its path through W_skip at BOS is live)."""
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


# ---- hook points (config.yaml's feature_input_hook / feature_output_hook) ---------------------
HOOK_CASES = [
    ("gemma2", "plt", True, "ln2.hook_normalized", "hook_mlp_out"),
    ("gemma2", "clt", True, "hook_resid_mid", "mlp.hook_out"),
    ("llama", "plt", True, "hook_mlp_in", "mlp.hook_out"),
    ("gpt2", "clt", True, "ln2.hook_normalized", "hook_mlp_out"),
    ("qwen3", "plt", False, "hook_resid_mid", "hook_mlp_out"),
    ("gemma3", "plt", True, "ln2.hook_normalized", "mlp.hook_out"),
]


def _hooked(arch: str, kind: str, skip: bool, hin: str, hout: str):
    """A tiny model with random norm weights (so every hook point reads something different)
    and transcoders reading and writing at the given points."""
    lm = tiny_model(arch, n_layers=2, d_model=32, vocab_size=97, seed=0)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for m in lm.adapter.norm_modules(lm.model):
            if getattr(m, "weight", None) is not None:
                m.weight.add_(0.3 * torch.randn(m.weight.shape, generator=g))
    tc = random_transcoders(2, 32, 24, kind=kind, activation="relu", skip=skip, seed=3)
    tc.feature_input_hook, tc.feature_output_hook = hin, hout
    return lm, tc


def _expected_points(lm, ids: torch.Tensor, hin: str, hout: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The tensors at the hook points, computed by hand from the norm's input and the MLP."""
    ins, outs = [], []
    handles = []
    for layer in lm.adapter.layers(lm.model):
        norm, mlp = lm.adapter.mlp_norm(layer), lm.adapter.mlp(layer)

        def at_norm(module, args, norm=norm):
            x = args[0][0]
            if hin in ("hook_resid_mid", "hook_mlp_in"):
                ins.append(x)
            elif hin == "ln2.hook_normalized":
                xf = x.float()
                if isinstance(norm, torch.nn.LayerNorm):
                    xf = xf - xf.mean(-1, keepdim=True)
                    ins.append(xf / torch.sqrt(xf.pow(2).mean(-1, keepdim=True) + norm.eps))
                else:
                    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))
                    ins.append(xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps))

        handles.append(norm.register_forward_pre_hook(at_norm))
        if hin == "mlp.hook_in":
            handles.append(mlp.register_forward_pre_hook(lambda m, a: ins.append(a[0][0])))
        out_module = mlp if hout == "mlp.hook_out" else lm.adapter.mlp_out(layer)
        handles.append(out_module.register_forward_hook(lambda m, a, o: outs.append((o[0] if isinstance(o, tuple) else o)[0])))
    try:
        with torch.no_grad():
            lm.model(input_ids=ids[None], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return ins, outs


@pytest.mark.parametrize("arch,kind,skip,hin,hout", HOOK_CASES)
def test_hook_points_are_read_where_they_say_and_the_logits_stay_exact(arch, kind, skip, hin, hout) -> None:
    lm, tc = _hooked(arch, kind, skip, hin, hout)
    ids = torch.tensor(lm.tokenize(PROMPT))
    real = lm.logits(ids)[0]
    run = replacement_run(lm, tc, ids)
    assert torch.equal(run.logits[0].detach(), real)
    want_in, want_out = _expected_points(lm, ids, hin, hout)
    default_in, _ = lm.mlp_io(ids[None])
    ins, outs = lm.mlp_io(ids[None], hooks=(hin, hout))
    for layer in range(lm.n_layers):
        assert torch.allclose(run.mlp_in[layer][0].detach(), want_in[layer], atol=1e-6, rtol=1e-6)
        assert torch.equal(run.mlp_out[layer][0].detach(), want_out[layer])
        assert torch.allclose(ins[layer][0], want_in[layer], atol=1e-6, rtol=1e-6) and torch.equal(outs[layer][0], want_out[layer])
        assert (want_in[layer] - default_in[layer][0]).abs().max() > 1e-2  # another point than the MLP input
    state = frozen_state(lm, tc, ids)
    logits, _ = frozen_forward(lm, tc, state)
    assert torch.allclose(logits, real, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch,kind,skip,hin,hout", HOOK_CASES[:3] + HOOK_CASES[-1:])
def test_every_edge_equals_doubling_its_source_at_any_hook_point(arch, kind, skip, hin, hout) -> None:
    lm, tc = _hooked(arch, kind, skip, hin, hout)
    _check_edges_by_doubling(lm, tc, lm.tokenize("The cat sat"))


def test_hook_mlp_in_is_hook_resid_mid() -> None:
    lm, tc = _hooked("llama", "plt", True, "hook_mlp_in", "hook_mlp_out")
    ids = lm.tokenize(PROMPT)
    a = compute_graph(lm, tc, ids, batch_size=16)
    tc.feature_input_hook = "blocks.{l}.hook_resid_mid"  # TransformerLens's full name reads the same
    b = compute_graph(lm, tc, ids, batch_size=16)
    assert torch.equal(a.rows, b.rows)


def test_unknown_hook_point_is_named_with_the_supported_ones() -> None:
    from circuit_atlas.engine.models.adapters import HookPointError, mlp_hooks

    lm = tiny_model("llama", n_layers=2, d_model=32, vocab_size=97, seed=0)
    with pytest.raises(HookPointError, match=r"unsupported feature_input_hook 'hook_resid_pre'; supported: mlp\.hook_in, ln2\.hook_normalized"):
        with mlp_hooks(lm.model, lm.adapter, lambda i, x: None, lambda i, y: None, input_hook="hook_resid_pre"):
            pass
    with pytest.raises(HookPointError, match=r"feature_output_hook 'hook_resid_post'.*hook_mlp_out, mlp\.hook_out"):
        random_transcoders(2, 32, 8).__class__("plt", 2, 32, 8, feature_output_hook="hook_resid_post")
