"""evaluate-transcoders on a tiny model: figures agree with a direct computation, training beats random."""

from __future__ import annotations

import random

import pytest
import torch

from circuit_atlas.engine.training.train import TrainConfig, _bos_prefix, token_stream, token_windows, train_transcoders

WORDS = "the cat sat on a mat and the dog ran to the park while birds sang in tall green trees near water".split()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, make_tiny_lm):
    import circuit_atlas.engine.transcoders.transcoder_set as tcs

    lm = make_tiny_lm(n_layers=2, d_model=32, vocab_size=97, seed=1)
    rng = random.Random(1)
    texts = [" ".join(rng.choice(WORDS) for _ in range(40)) for _ in range(120)]
    out = tmp_path_factory.mktemp("ev") / "set"
    cfg = TrainConfig(model="tiny", kind="plt", features=48, activation="topk", k=6, tokens=5000, out=str(out),
                      batch_size=8, seq_len=16, lr=5e-3, progress=False, checkpoint_every=50)
    train_transcoders(cfg, lm=lm, texts=texts)
    wins = torch.from_numpy(token_windows(token_stream(lm, texts, progress=False), _bos_prefix(lm), 16)[:24])
    return lm, tcs, tcs.load_transcoders(out), wins


def test_figures_match_a_direct_computation(setup) -> None:
    from circuit_atlas.engine.training.evaluate import evaluate_loaded, render_table

    lm, _, tc, wins = setup
    res = evaluate_loaded(lm, tc, wins, batch_size=8, progress=False)
    assert res.tokens == wins.shape[0] * (wins.shape[1] - 1)
    ins, outs = lm.mlp_io(wins)
    for layer, d in enumerate(res.layers):
        x = ins[layer][:, 1:].reshape(-1, lm.d_model).float()
        y = outs[layer][:, 1:].reshape(-1, lm.d_model).float()
        with torch.no_grad():
            acts, rec = tc.forward([ins[l][:, 1:].reshape(-1, lm.d_model).float() for l in range(lm.n_layers)])
        nmse = ((rec[layer] - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
        assert d["nmse"] == pytest.approx(float(nmse), rel=1e-3)
        assert d["l0"] == pytest.approx(float((acts[layer] != 0).sum(-1).float().mean()))
        assert 5.0 < d["l0"] <= 6.0  # TopK 6 (ReLU'd)
        assert 0.0 <= d["dead_fraction"] <= 1.0
        assert d["explained_variance"] >= 1 - d["nmse"] - 1e-6  # EV discounts a constant offset
        assert x.shape[0] == res.tokens
    assert 0.0 <= res.next_token_agreement <= 1.0 and res.kl >= 0.0
    assert "NMSE" in str([c.header for c in render_table(res).columns])


def test_trained_set_beats_a_random_one(setup) -> None:
    from circuit_atlas.engine.training.evaluate import evaluate_loaded

    lm, tcs, tc, wins = setup
    rnd = tcs.random_transcoders(lm.n_layers, lm.d_model, 48, kind="plt", activation="topk", k=6, seed=3)
    good = evaluate_loaded(lm, tc, wins, progress=False)
    bad = evaluate_loaded(lm, rnd, wins, progress=False)
    assert good.mean_nmse < bad.mean_nmse
    assert good.kl < bad.kl
    assert good.next_token_agreement >= bad.next_token_agreement


def test_mismatched_set_is_refused(setup) -> None:
    from circuit_atlas.engine.training.evaluate import evaluate_loaded

    lm, tcs, _, wins = setup
    wrong = tcs.random_transcoders(lm.n_layers + 1, lm.d_model, 8, seed=0)
    with pytest.raises(tcs.TranscoderMismatchError, match="wrong-set"):
        evaluate_loaded(lm, wrong, wins, progress=False, source="wrong-set")


def test_evaluation_reads_and_writes_at_the_sets_hook_points(setup) -> None:
    """A set trained at another point (config.yaml's feature_input_hook) is evaluated there: the
    figures equal a direct computation at that point, and the replacement logits change with it."""
    from circuit_atlas.engine.training.evaluate import evaluate_loaded

    lm, tcs, _, wins = setup
    at_mlp = tcs.random_transcoders(lm.n_layers, lm.d_model, 48, kind="plt", seed=5)
    at_resid = tcs.random_transcoders(lm.n_layers, lm.d_model, 48, kind="plt", seed=5)
    at_resid.feature_input_hook = "hook_resid_mid"  # the residual before the pre-MLP norm
    res = evaluate_loaded(lm, at_resid, wins, progress=False)
    ins, outs = lm.mlp_io(wins, hooks=("hook_resid_mid", at_resid.feature_output_hook))
    default_ins, _ = lm.mlp_io(wins)
    assert not torch.allclose(ins[1], default_ins[1])  # the two points differ on this model
    with torch.no_grad():
        _, rec = at_resid.forward([t[:, 1:].reshape(-1, lm.d_model).float() for t in ins])
    for layer, d in enumerate(res.layers):
        y = outs[layer][:, 1:].reshape(-1, lm.d_model).float()
        nmse = ((rec[layer] - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
        assert d["nmse"] == pytest.approx(float(nmse), rel=1e-3)
    assert res.kl != pytest.approx(evaluate_loaded(lm, at_mlp, wins, progress=False).kl, rel=1e-3)


def test_demo_prompt_sample_spans_the_groups() -> None:
    from circuit_atlas.engine.training.evaluate import demo_prompt_sample

    eight = demo_prompt_sample(8)
    assert len({r["group"] for r in eight}) == 8  # one of each group first
    every = demo_prompt_sample(1000)
    assert len(every) == 64 and len({r["id"] for r in every}) == 64


def test_graph_scores_are_the_attribution_scores(setup) -> None:
    from circuit_atlas.engine.attribution.attribute import attribute
    from circuit_atlas.engine.training.evaluate import graph_scores

    lm, _, tc, _ = setup
    prompts = ["the cat sat on a mat", "the dog ran to the park"]
    got = graph_scores(lm, tc, prompts, max_feature_nodes=None, progress=False)
    direct = [attribute(lm, tc, p).meta["scores"] for p in prompts]
    assert got["prompts"] == 2
    assert got["mean_replacement"] == pytest.approx(sum(d["replacement_score"] for d in direct) / 2, rel=1e-6)
    assert got["min_completeness"] == pytest.approx(min(d["completeness_score"] for d in direct), rel=1e-6)
    assert 0 < got["mean_replacement"] <= 1
