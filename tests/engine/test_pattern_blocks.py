"""Frozen attention recomputed in blocks of query rows (engine/models/pattern_blocks.py): the
same graphs as with whole patterns, masks read as intervals only when they are, the forward-mode
and batched-backward rules, and no T x T pattern kept for the backward passes."""

from __future__ import annotations

import pytest
import torch

from circuit_atlas.engine.attribution.attribute import compute_graph
from circuit_atlas.engine.attribution.replacement import replacement_run
from circuit_atlas.engine.models import pattern_blocks
from circuit_atlas.engine.models.loading import tiny_model
from circuit_atlas.engine.models.pattern_blocks import PatternRows, RecomputedPatternApply, interval_mask
from circuit_atlas.engine.transcoders.transcoder_set import random_transcoders

PROMPT = "The cat sat on the mat because it was tired and wanted to sleep"


def _model(arch: str, kind: str = "plt"):
    lm = tiny_model(arch, n_layers=2, d_model=32, vocab_size=97, seed=0)
    tc = random_transcoders(lm.n_layers, lm.d_model, 48, kind=kind, activation="relu", skip=True, seed=1)
    return lm, tc


def _whole_pattern(q, k, scaling, softcap, mask):
    rep = q.shape[1] // k.shape[1]
    scores = torch.matmul(q, k.repeat_interleave(rep, dim=1).transpose(2, 3)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if mask is not None:
        scores = scores + mask
    return torch.softmax(scores, dim=-1, dtype=torch.float32)


@pytest.mark.parametrize("arch,kind", [("llama", "plt"), ("llama", "clt"), ("gemma2", "plt"), ("gpt2", "clt")])
def test_blocks_give_the_whole_patterns_graph(arch: str, kind: str, monkeypatch) -> None:
    """Llama (grouped KV heads), Gemma 2 (sliding window, soft-capped scores), GPT-2: forcing
    blocks of a few rows changes no row node and no edge beyond float rounding."""
    lm, tc = _model(arch, kind)
    ids = lm.tokenize(PROMPT)
    whole = compute_graph(lm, tc, ids, batch_size=5)
    calls = []
    real = pattern_blocks.PatternRows.pattern
    monkeypatch.setattr(pattern_blocks, "PATTERN_BLOCK_ELEMENTS", 3 * len(ids) * 4)  # ~3 rows of 4 heads
    monkeypatch.setattr(pattern_blocks.PatternRows, "pattern", lambda self, a, b: calls.append(b - a) or real(self, a, b))
    blocked = compute_graph(lm, tc, ids, batch_size=5)
    assert calls and max(calls) < len(ids), "the blocked path did not run"
    assert torch.equal(whole.row_nodes, blocked.row_nodes)
    scale = float(whole.rows.abs().max())
    assert scale > 0
    assert torch.allclose(whole.rows, blocked.rows, rtol=1e-5, atol=1e-6 * scale)


def test_no_whole_pattern_is_kept_for_the_backward(monkeypatch) -> None:
    """What autograd saves for the backward passes: with whole patterns, a T x T tensor per layer;
    with blocks, nothing with T x T entries (the queries and keys are linear in T)."""
    lm, tc = _model("llama")
    ids = torch.tensor(lm.tokenize(PROMPT * 2)[:120])
    t = ids.shape[0]

    def largest_saved() -> int:
        sizes: list[int] = []
        with torch.autograd.graph.saved_tensors_hooks(lambda x: sizes.append(x.numel()) or x, lambda x: x):
            replacement_run(lm, tc, ids, batch_size=1, last_logits_only=True)
        return max(sizes)

    assert largest_saved() >= t * t  # the control: the whole path keeps heads x T x T patterns
    monkeypatch.setattr(pattern_blocks, "PATTERN_BLOCK_ELEMENTS", 8 * t * 4)
    assert largest_saved() < t * t


def test_interval_masks_and_the_rest() -> None:
    t = 7
    neg = torch.finfo(torch.float32).min
    causal = torch.full((t, t), neg).triu(1)[None, None]
    lo, hi, mask = interval_mask(causal, t, t)
    assert mask is None and lo.tolist() == [[0] * t] and hi.tolist() == [list(range(t))]
    window = causal.clone()
    window[0, 0][torch.arange(t)[:, None] - torch.arange(t)[None] >= 3] = neg  # sliding window of 3
    lo, hi, mask = interval_mask(window, t, t)
    assert mask is None and lo.tolist() == [[0, 0, 0, 1, 2, 3, 4]]
    holey = causal.clone()
    holey[0, 0, 5, 2] = neg  # a padding hole inside row 5: not an interval
    assert interval_mask(holey, t, t)[2] is holey
    biased = causal.clone()
    biased[0, 0, 3, 1] = -0.5  # an additive bias (ALiBi-like): kept as it is
    assert interval_mask(biased, t, t)[2] is biased
    assert interval_mask(None, t, t) == (None, None, None)


@pytest.mark.parametrize("use_interval", [True, False])
def test_rows_forward_mode_and_batched_backward(use_interval: bool) -> None:
    """The pattern's rows, its product, the forward-mode rule (head loadings) and the batched
    backward (attribution's targets folded into columns) against the whole pattern."""
    g = torch.Generator().manual_seed(0)
    b, h, hkv, t, d = 1, 4, 2, 9, 5
    q, k = torch.randn(b, h, t, d, generator=g), torch.randn(b, hkv, t, d, generator=g)
    neg = torch.finfo(torch.float32).min
    mask = torch.full((t, t), neg).triu(1)[None, None]
    lo, hi, kept = interval_mask(mask, t, t) if use_interval else (None, None, mask)
    rows = PatternRows(query=q, key=k, scaling=0.4, softcap=2.0, lo=lo, hi=hi, mask=kept, dtype=torch.float32, block=2)
    whole = _whole_pattern(q, k, 0.4, 2.0, mask)
    for a, z in rows.blocks():
        k0, k1 = rows.keys(a, z)
        assert torch.allclose(rows.pattern(a, z), whole[:, :, a:z, k0:k1], atol=1e-6)
        assert float(whole[:, :, a:z, :k0].abs().sum() + whole[:, :, a:z, k1:].abs().sum()) == 0.0

    value = torch.randn(b, h, t, d, generator=g, requires_grad=True)
    tangent = torch.randn(b, h, t, d, generator=g)
    out, jvp = torch.func.jvp(lambda v: RecomputedPatternApply.apply(v, rows), (value.detach(),), (tangent,))
    assert torch.allclose(out, whole @ value.detach(), atol=1e-5)
    assert torch.allclose(jvp, whole @ tangent, atol=1e-5)

    out = RecomputedPatternApply.apply(value, rows)
    grads = torch.randn(6, *out.shape, generator=g)  # 6 targets at once, as attribution asks
    (batched,) = torch.autograd.grad(out, value, grads, is_grads_batched=True, retain_graph=True)
    for i in range(6):
        (one,) = torch.autograd.grad(out, value, grads[i], retain_graph=True)
        assert torch.allclose(batched[i], one, atol=1e-5)
        assert torch.allclose(one, whole.mT @ grads[i], atol=1e-5)
