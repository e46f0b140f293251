"""Feature contexts on a tiny real model and random transcoders: stored contexts, frequencies
and logit effects checked against an independent recomputation."""

from __future__ import annotations

import json

import pytest
import torch
from ingest_helpers import run_cli

from circuit_atlas.ingest.features import FeatureContextError, compute_feature_contexts
from circuit_atlas.store import open_store

models = pytest.importorskip("circuit_atlas.engine.models.loading", reason="engine.models.loading not in the tree yet")
from circuit_atlas.engine.training.train import _bos_prefix  # noqa: E402
from circuit_atlas.engine.transcoders.transcoder_set import random_transcoders  # noqa: E402

TEXT = "\n".join(f"the {w} number {i} sat on the mat and looked at the {w}" for i, w in
                 enumerate(["cat", "dog", "bird", "fish", "fox"] * 8))


@pytest.fixture(scope="module")
def tiny():
    lm = models.tiny_model("llama", n_layers=2, d_model=32, vocab_size=97, seed=0)
    tc = random_transcoders(lm.n_layers, lm.d_model, 48, kind="clt", activation="relu", seed=1, scan="tiny-clt")
    return lm, tc


def _features(store) -> dict:
    df = store.read("MATCH (f:Feature) RETURN f.key AS key, f.layer AS layer, f.`index` AS idx, f.frequency AS freq, "
                    "f.max_activation AS mx, f.contexts AS ctx, f.logit_effects AS eff")
    return {r.key: r for r in df.itertuples(index=False)}


def test_feature_contexts_are_stored_and_right(tmp_path, tiny):
    lm, tc = tiny
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT)
    with open_store(f"embedded:{tmp_path / 'store'}") as s:
        rep = compute_feature_contexts(corpus, lm, tc, s, top_k=5, max_tokens=1500, seq_len=32, batch_size=8,
                                       context_window=4, progress=False)
        feats = _features(s)
    assert rep.tokens > 0 and rep.stored == len(feats) == rep.features - rep.dead > 0
    # independent recomputation: every window through the model, encoded, BOS left out
    from circuit_atlas.engine.training.corpus import load_texts
    from circuit_atlas.engine.training.train import token_stream, token_windows

    prefix = _bos_prefix(lm)
    stream = token_stream(lm, load_texts(corpus), progress=False)
    body = 32 - len(prefix)
    stream = stream[: (1500 // body) * body]
    windows = torch.from_numpy(token_windows(stream, prefix, 32))
    with torch.no_grad():
        ins, _ = lm.mlp_io(windows)
        acts = [tc.encode(l, ins[l][:, len(prefix):]).reshape(-1, tc.d_transcoder) for l in range(tc.n_layers)]
    assert rep.tokens == acts[0].shape[0]
    checked = 0
    for key, f in feats.items():
        a = acts[f.layer][:, f.idx]
        assert f.freq == pytest.approx(float((a > 0).float().mean()))
        assert f.mx == pytest.approx(float(a.max()), rel=1e-5)
        ctx = json.loads(f.ctx)
        assert 1 <= len(ctx) <= 5
        vals = [c["activation"] for c in ctx]
        assert vals == sorted(vals, reverse=True) and vals[0] == pytest.approx(float(a.max()), rel=1e-4)
        expected_top = sorted(a[a > 0].tolist(), reverse=True)[: len(ctx)]
        assert vals == pytest.approx(expected_top, rel=1e-4)
        for c in ctx:
            lo, hi = c["highlight"]
            assert c["text"][lo:hi] == c["token"] and c["text"] == c["left"] + c["token"] + c["right"]
        eff = json.loads(f.eff)
        assert len(eff["promoted"]) == len(eff["suppressed"]) == 10
        checked += 1
    assert checked == len(feats)


def test_logit_effects_sum_a_clt_features_decoders(tmp_path, tiny):
    lm, tc = tiny
    from circuit_atlas.ingest.features import logit_effects

    layer, f = 0, 5
    with torch.no_grad():
        w_u = lm.model.get_output_embeddings().weight.float()
        dec = sum(tc.decoder_vectors(layer, t, torch.tensor([f])).float() for t in range(layer, tc.n_layers))[0]
        logits = w_u @ dec
        logits = logits - logits.mean()
    want = [lm.tokenizer.decode([int(i)]) for i in logits.topk(10).indices]
    got = logit_effects(lm, tc, layer, torch.tensor([f]))[0]
    assert [t for t, _ in got["promoted"]] == want
    assert got["promoted"][0][1] == pytest.approx(float(logits.max()), rel=1e-4)
    assert got["suppressed"][0][1] == pytest.approx(float(logits.min()), rel=1e-4)


def test_bad_settings(tmp_path, tiny):
    lm, tc = tiny
    (tmp_path / "c.txt").write_text(TEXT)
    with open_store(f"embedded:{tmp_path / 'store'}") as s:
        with pytest.raises(FeatureContextError, match="top_k"):
            compute_feature_contexts(tmp_path / "c.txt", lm, tc, s, top_k=0, progress=False)


def test_features_command(tmp_path, tiny):
    lm, tc = tiny
    model_dir, tc_dir = tmp_path / "model", tmp_path / "tc"
    lm.model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    tc.save(tc_dir)
    (tmp_path / "c.txt").write_text(TEXT)
    url = f"embedded:{tmp_path / 'store'}"
    r = run_cli("features", str(tmp_path / "c.txt"), "--model", str(model_dir), "--transcoders", str(tc_dir),
                "--store", url, "--top-k", "3", "--tokens", "600", "--seq-len", "24", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    with open_store(url, read_only=True) as s:
        feats = _features(s)
    assert feats and all(1 <= len(json.loads(f.ctx)) <= 3 for f in feats.values())
    assert "features stored" in r.stdout
    # the automatic labels are said: every stored feature has contexts here, so each is labelled
    assert f"automatic labels: {len(feats)} labelled (" in r.stderr and "0 kept" in r.stderr
