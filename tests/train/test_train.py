"""The trainer on tiny random models: it learns, λ controls sparsity, saves what it trained, resumes exactly."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from circuit_atlas.engine.training.corpus import CorpusError
from circuit_atlas.engine.training.train import (
    JumpReLU,
    TrainConfig,
    TrainError,
    TranscoderTrainer,
    _Activations,
    _Batches,
    _bos_prefix,
    read_metrics,
    token_stream,
    token_windows,
    train_transcoders,
)

N_LAYERS, D_MODEL = 3, 32
WORDS = "the cat sat on a mat and the dog ran to the park while birds sang in tall green trees near water".split()


@pytest.fixture(scope="module")
def lm(make_tiny_lm):
    return make_tiny_lm(n_layers=N_LAYERS, d_model=D_MODEL, vocab_size=97, seed=0)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(40)) for _ in range(200)]


def _cfg(out: Path, **kw) -> TrainConfig:
    base = dict(model="tiny", kind="plt", features=64, activation="jumprelu", tokens=4000, out=str(out),
                batch_size=8, seq_len=16, lr=3e-3, lambda_=1e-3, progress=False, checkpoint_every=5, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def _windows(lm, texts, cfg: TrainConfig):
    """The exact batches the trainer sees, so tests can compare against its own data."""
    wins = token_windows(token_stream(lm, texts, progress=False), _bos_prefix(lm), cfg.seq_len)
    return _Activations(lm, _Batches(wins, cfg.batch_size, cfg.seed), None, "")


def test_short_run_lowers_loss_and_nmse(lm, texts, tmp_path: Path) -> None:
    out = train_transcoders(_cfg(tmp_path / "r", tokens=6000), lm=lm, texts=texts)
    m = read_metrics(out)
    assert len(m) == math.ceil(6000 / (8 * 15))
    first, last = m[:3], m[-3:]
    assert sum(r["loss"] for r in last) < 0.6 * sum(r["loss"] for r in first)
    assert sum(r["nmse"] for r in last) < 0.6 * sum(r["nmse"] for r in first)
    assert len(m[-1]["nmse_layers"]) == N_LAYERS and len(m[-1]["l0_layers"]) == N_LAYERS
    assert (out / "config.yaml").exists()


def test_higher_lambda_gives_lower_l0(lm, texts, tmp_path: Path) -> None:
    l0 = {}
    for lam in (1e-3, 10.0):
        out = train_transcoders(_cfg(tmp_path / f"l{lam}", lambda_=lam, lambda_warmup=0.2), lm=lm, texts=texts)
        l0[lam] = sum(r["l0"] for r in read_metrics(out)[-5:]) / 5
    assert l0[10.0] < 0.7 * l0[1e-3]


def test_topk_keeps_exactly_the_k_largest(lm, texts, tmp_path: Path) -> None:
    from circuit_atlas.engine.transcoders.transcoder_set import load_transcoders

    cfg = _cfg(tmp_path / "t", activation="topk", k=5, tokens=1500)
    out = train_transcoders(cfg, lm=lm, texts=texts)
    l0 = [r["l0"] for r in read_metrics(out)]
    assert max(l0) <= 5 + 1e-9 and l0[-1] > 4.5  # k active per token (ReLU'd: never more)
    tc = load_transcoders(out)
    assert tc.activation == "topk" and tc.k == 5
    xs, _ = _windows(lm, texts, cfg)(0)
    for layer in range(N_LAYERS):
        pre = tc.pre_activations(layer, xs[layer])
        acts = tc.encode(layer, xs[layer])
        top = pre.topk(5, dim=-1).indices
        on = acts != 0
        assert (on.sum(-1) == (pre.gather(-1, top) > 0).sum(-1)).all()  # exactly the positive ones of the top k
        assert on.gather(-1, top).sum() == on.sum()  # and nothing outside the top k
        assert (on.sum(-1) == 5).float().mean() > 0.9


@pytest.mark.parametrize("kind,skip", [("plt", True), ("clt", False)])
def test_save_load_reproduces_reconstructions(lm, texts, tmp_path: Path, kind: str, skip: bool) -> None:
    from circuit_atlas.engine.transcoders.transcoder_set import load_transcoders

    cfg = _cfg(tmp_path / kind, kind=kind, skip=skip, tokens=1500)
    out = train_transcoders(cfg, lm=lm, texts=texts)
    tc = load_transcoders(out)
    trainer = TranscoderTrainer(N_LAYERS, D_MODEL, cfg)
    trainer.load_state_dict(torch.load(out / "checkpoint.pt", weights_only=False)["model"])
    xs, ys = _windows(lm, texts, cfg)(3)
    with torch.no_grad():
        xn = trainer.norm.norm_x(xs)
        acts = trainer.act(trainer.pre(xn))
        raw = trainer.decode(acts, xn) * trainer.norm.y_scale[:, None, None] + trainer.norm.y_mean[:, None]
        tc_acts, tc_recon = tc.forward(list(xs))
    for layer in range(N_LAYERS):
        torch.testing.assert_close(tc_acts[layer], acts[layer], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(tc_recon[layer], raw[layer], rtol=1e-4, atol=1e-4)
    # and the reconstruction is a useful one on raw activations
    nmse = ((tc_recon[-1] - ys[-1]) ** 2).sum() / ((ys[-1] - ys[-1].mean(0)) ** 2).sum()
    assert nmse < 1.0  # better than predicting the mean, after 1500 tokens


def test_resume_is_bit_for_bit(lm, texts, tmp_path: Path, monkeypatch) -> None:
    import circuit_atlas.engine.training.train as train_mod

    full = train_transcoders(_cfg(tmp_path / "full", tokens=1000, checkpoint_every=4, steps_per_batch=2), lm=lm, texts=texts)
    ref = read_metrics(full)

    cfg = _cfg(tmp_path / "cut", tokens=1000, checkpoint_every=4, steps_per_batch=2)
    real_lr = train_mod._lr_at

    def killed(c, step):  # the process "dies" during step 10: steps 9-10 are lost, 8 is checkpointed
        if step == 10:
            raise KeyboardInterrupt
        return real_lr(c, step)

    monkeypatch.setattr(train_mod, "_lr_at", killed)
    with pytest.raises(KeyboardInterrupt):
        train_transcoders(cfg, lm=lm, texts=texts)
    monkeypatch.setattr(train_mod, "_lr_at", real_lr)
    assert torch.load(Path(cfg.out) / "checkpoint.pt", weights_only=False)["step"] == 8
    with pytest.raises(TrainError, match="--resume"):
        train_transcoders(cfg, lm=lm, texts=texts)
    train_transcoders(cfg, lm=lm, texts=texts, resume=True)
    got = read_metrics(cfg.out)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]  # noqa: E731
    assert strip(got) == strip(ref)  # every loss, NMSE, L0 identical, each step exactly once
    a = torch.load(Path(full) / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(Path(cfg.out) / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = _cfg(tmp_path / "cut", tokens=1000, checkpoint_every=4, steps_per_batch=2, lr=1e-2)
    with pytest.raises(TrainError, match="other settings"):
        train_transcoders(other, lm=lm, texts=texts, resume=True)


def test_clt_feature_decodes_to_later_layers_only(lm, texts, tmp_path: Path) -> None:
    from circuit_atlas.engine.transcoders.transcoder_set import load_transcoders

    cfg = _cfg(tmp_path / "clt", kind="clt", tokens=1000)
    tc = load_transcoders(train_transcoders(cfg, lm=lm, texts=texts))
    assert tc.kind == "clt"
    for layer in range(N_LAYERS):
        assert tuple(tc.W_dec[layer].shape) == (64, N_LAYERS - layer, D_MODEL)
    feats = torch.arange(4)
    assert tc.decoder_vectors(0, 2, feats).shape == (4, D_MODEL)
    with pytest.raises(Exception):
        tc.decoder_vectors(2, 1, feats)
    # the reconstruction at layer 0 ignores features of layers 1..L-1
    xs, _ = _windows(lm, texts, cfg)(0)
    acts = [tc.encode(layer, xs[layer]) for layer in range(N_LAYERS)]
    base = tc.decode(acts, 0)
    changed = [acts[0]] + [a * 0 + 7.0 for a in acts[1:]]
    torch.testing.assert_close(tc.decode(changed, 0), base)
    assert not torch.allclose(tc.decode(changed, 2), tc.decode(acts, 2))


def test_jumprelu_ste_gradients() -> None:
    z = torch.tensor([[0.04, 0.12, 0.5, 0.098]], requires_grad=True)
    log_t = torch.full((4,), math.log(0.1), requires_grad=True)
    a = JumpReLU(z, log_t, 0.1)
    assert a.tolist()[0] == pytest.approx([0.0, 0.12, 0.5, 0.0])
    a.sum().backward()
    assert z.grad.tolist()[0] == [0.0, 1.0, 1.0, 0.0]
    # rectangle kernel: only |z − θ| < ε/2 = 0.05 gets −(θ/ε)·θ (θ from the exp chain rule)
    expected = [-(0.1 / 0.1) * 0.1 if abs(v - 0.1) < 0.05 else 0.0 for v in (0.04, 0.12, 0.5, 0.098)]
    assert log_t.grad.tolist() == pytest.approx(expected)


def test_bad_options_and_corpus_fail_before_training(tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="--k"):
        train_transcoders(_cfg(tmp_path / "a", activation="topk", k=None))
    with pytest.raises(TrainError, match="no checkpoint"):
        train_transcoders(_cfg(tmp_path / "b"), resume=True)
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"other": "x"}) + "\n")
    with pytest.raises(CorpusError, match="no field 'text'"):
        train_transcoders(_cfg(tmp_path / "c", corpus=str(empty), model="no-such-model"))
    assert not (tmp_path / "c" / "checkpoint.pt").exists()


def test_cli_reports_bad_corpus_in_one_line(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-c", "from circuit_atlas.cli import main; main()", "train", "--model", "demo", "--kind", "plt",
         "--features", "8", "--activation", "relu", "--corpus", str(tmp_path / "nope.jsonl"), "--tokens", "100",
         "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 2
    assert "corpus file not found" in r.stderr and "Traceback" not in r.stderr


def test_cli_passes_matmul_dtype_and_refuses_a_bad_one(tmp_path: Path) -> None:
    """--matmul-dtype reaches the config: a bad value is the config's one-line refusal, exit 2."""
    r = subprocess.run(
        [sys.executable, "-c", "from circuit_atlas.cli import main; main()", "train", "--model", "demo", "--kind", "plt",
         "--features", "8", "--activation", "relu", "--matmul-dtype", "float16", "--tokens", "100",
         "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 2
    assert "--matmul-dtype must be float32 or bfloat16, not 'float16'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o" / "checkpoint.pt").exists()


def test_clt_sparsity_uses_the_norm_of_all_decoders_concatenated(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path / "n", kind="clt", features=8)
    tr = TranscoderTrainer(N_LAYERS, D_MODEL, cfg)
    norms = tr.decoder_norms()
    for layer in range(N_LAYERS):
        w = tr.W_dec[layer]  # (F, L - layer, d)
        assert w.shape == (8, N_LAYERS - layer, D_MODEL)
        torch.testing.assert_close(norms[layer], torch.cat([w[:, j] for j in range(w.shape[1])], dim=-1).norm(dim=-1))


def test_model_written_text_is_mixed_in(lm, texts, tmp_path: Path) -> None:
    from circuit_atlas.engine.training.corpus import sample_model_text

    sampled = sample_model_text(lm, 60, seed=0, max_new_tokens=20)
    assert sampled and all(isinstance(t, str) and t for t in sampled)
    assert sample_model_text(lm, 60, seed=0, max_new_tokens=20) == sampled  # seeded
    out = train_transcoders(_cfg(tmp_path / "mt", tokens=600, model_text=0.2), lm=lm, texts=texts[:20])
    assert read_metrics(out)[-1]["step"] == 5


def test_activation_cache_is_written_once_and_reused(lm, texts, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    a = train_transcoders(_cfg(tmp_path / "a", tokens=600, activation_cache=str(cache)), lm=lm, texts=texts)
    files = sorted(cache.rglob("step_*.pt"))
    assert len(files) == 5
    stamps = [f.stat().st_mtime_ns for f in files]
    b = train_transcoders(_cfg(tmp_path / "b", tokens=600, activation_cache=str(cache)), lm=lm, texts=texts)
    assert [f.stat().st_mtime_ns for f in sorted(cache.rglob("step_*.pt"))] == stamps  # read, not rewritten
    strip = lambda rows: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]  # noqa: E731
    assert strip(read_metrics(a)) == strip(read_metrics(b))
