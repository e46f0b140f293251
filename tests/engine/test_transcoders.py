"""Transcoders: maths, save->load round trips in circuit-tracer's layout, GemmaScope npz, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from circuit_atlas.engine.transcoders import transcoder_set as T
from circuit_atlas.engine.transcoders.gemmascope import load_gemmascope

CASES = [(k, a, s) for k in ("plt", "clt") for a in ("relu", "jumprelu", "topk") for s in (False, True)]


def _inputs(n_layers=3, d=16, seed=5):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(7, d, generator=g) for _ in range(n_layers)]


@pytest.mark.parametrize("kind,act,skip", CASES)
def test_round_trip_preserves_every_tensor_and_reconstruction(tmp_path, kind, act, skip):
    tc = T.random_transcoders(3, 16, 40, kind=kind, activation=act, skip=skip, seed=2, scan="s1")
    tc.model_name = "tiny-llama"
    tc.save(tmp_path / "tc")
    back = T.load_transcoders(tmp_path / "tc")
    assert (back.kind, back.activation, back.k, back.has_skip, back.scan, back.model_name) == (
        kind, act, tc.k, skip, "s1", "tiny-llama")
    a, b = dict(tc.named_parameters()), dict(back.named_parameters())
    assert a.keys() == b.keys() and len(a) > 0
    for name in a:
        assert torch.equal(a[name], b[name]), name
        assert isinstance(b[name], torch.nn.Parameter)
    x = _inputs()
    (acts1, rec1), (acts2, rec2) = tc(x), back(x)
    for p, q in zip(rec1 + acts1, rec2 + acts2):
        assert torch.equal(p, q)
    cfg = yaml.safe_load((tmp_path / "tc" / "config.yaml").read_text())
    assert cfg["model_kind"] == ("transcoder_set" if kind == "plt" else "cross_layer_transcoder")
    assert cfg["feature_input_hook"] and cfg["feature_output_hook"] and cfg["activation"] == act


def test_plt_file_layout_matches_circuit_tracer(tmp_path):
    tc = T.random_transcoders(2, 8, 12, kind="plt", activation="jumprelu", skip=True)
    tc.save(tmp_path)
    d = load_file(str(tmp_path / "layer_1.safetensors"))
    assert set(d) == {"W_enc", "W_dec", "b_enc", "b_dec", "activation_function.threshold", "W_skip"}
    assert d["W_enc"].shape == (12, 8) and d["W_dec"].shape == (12, 8) and d["W_skip"].shape == (8, 8)


def test_clt_file_layout_matches_circuit_tracer(tmp_path):
    tc = T.random_transcoders(3, 8, 12, kind="clt", activation="jumprelu")
    tc.save(tmp_path)
    enc = load_file(str(tmp_path / "W_enc_1.safetensors"))
    assert set(enc) == {"W_enc_1", "b_enc_1", "b_dec_1", "threshold_1"}
    assert enc["W_enc_1"].shape == (12, 8)
    for i in range(3):
        assert load_file(str(tmp_path / f"W_dec_{i}.safetensors"))[f"W_dec_{i}"].shape == (12, 3 - i, 8)


def test_activations():
    tc = T.random_transcoders(1, 8, 10, activation="jumprelu")
    pre = torch.linspace(-2, 2, 10)
    with torch.no_grad():
        tc.threshold[0].fill_(0.5)
    assert torch.equal(tc.activate(0, pre), torch.where(pre > 0.5, pre, torch.zeros_like(pre)))
    topk = T.random_transcoders(1, 8, 10, activation="topk", k=3)
    out = topk.activate(0, torch.randn(4, 10))
    assert ((out != 0).sum(-1) <= 3).all() and (out >= 0).all()
    relu = T.random_transcoders(1, 8, 10)
    assert torch.equal(relu.activate(0, pre), pre.clamp(min=0))


def test_clt_decode_sums_earlier_layers():
    tc = T.random_transcoders(3, 8, 10, kind="clt", seed=3)
    acts = [tc.encode(l, x) for l, x in enumerate(_inputs(3, 8))]
    manual = tc.b_dec[2] + sum(acts[l] @ tc.W_dec[l][:, 2 - l] for l in range(3))
    assert torch.allclose(tc.decode(acts, 2), manual)
    f = torch.tensor([0, 4])
    assert torch.equal(tc.decoder_vectors(0, 2, f), tc.W_dec[0][f, 2])
    with pytest.raises(ValueError):
        tc.decoder_vectors(2, 1, f)
    plt = T.random_transcoders(3, 8, 10)
    with pytest.raises(ValueError):
        plt.decoder_vectors(0, 1, f)


def test_random_sets_fire_sparsely():
    for act in ("relu", "jumprelu"):
        tc = T.random_transcoders(2, 32, 200, activation=act)
        frac = float((tc.encode(0, torch.randn(64, 32)) > 0).float().mean())
        assert 0.05 <= frac <= 0.30, (act, frac)


def test_parameters_are_trainable():
    tc = T.random_transcoders(2, 8, 10, kind="clt", activation="relu", skip=True)
    _, rec = tc(_inputs(2, 8))
    sum(r.pow(2).sum() for r in rec).backward()
    assert tc.W_dec[0].grad is not None and tc.W_enc[1].grad is not None and tc.W_skip[1].grad is not None


def test_check_fits_names_file_and_mismatch(tmp_path):
    T.random_transcoders(2, 8, 10).save(tmp_path)
    tc = T.load_transcoders(tmp_path)
    tc.check_fits(2, 8)
    with pytest.raises(T.TranscoderMismatchError, match=r"layer_0\.safetensors: W_enc has d_model 8, the model has 12"):
        tc.check_fits(2, 12)
    with pytest.raises(T.TranscoderMismatchError, match="2 layers.*the model has 3"):
        tc.check_fits(3, 8)
    with pytest.raises(T.TranscoderMismatchError, match=r"^my-set: layer_0\.safetensors: W_enc has d_model 8, the model has 576$"):
        tc.check_fits(2, 576, source="my-set")
    with pytest.raises(T.TranscoderMismatchError, match="my-set: the transcoders cover 2 layers"):
        tc.check_fits(30, 8, source="my-set")


def test_gemmascope_npz(tmp_path, capsys):
    g = np.random.default_rng(0)
    d_model, d_tc = 8, 12
    params = []
    for layer in range(2):
        p = {
            "W_enc": g.standard_normal((d_model, d_tc)).astype(np.float32),
            "W_dec": g.standard_normal((d_tc, d_model)).astype(np.float32),
            "b_enc": g.standard_normal(d_tc).astype(np.float32),
            "b_dec": g.standard_normal(d_model).astype(np.float32),
            "threshold": np.abs(g.standard_normal(d_tc)).astype(np.float32),
        }
        folder = tmp_path / "gs" / f"layer_{layer}" / "width_16k" / "average_l0_9"
        folder.mkdir(parents=True)
        np.savez(folder / "params.npz", **p)
        params.append(p)
    tc = T.load_transcoders(tmp_path / "gs")
    assert (tc.kind, tc.activation, tc.n_layers, tc.d_model, tc.d_transcoder) == ("plt", "jumprelu", 2, 8, 12)
    # GemmaScope's transcoders read the norm's input over its scale, before its weight (said)
    assert (tc.feature_input_hook, tc.feature_output_hook) == ("ln2.hook_normalized", "hook_mlp_out")
    assert "assuming GemmaScope's ln2.hook_normalized -> hook_mlp_out" in capsys.readouterr().err
    x = torch.randn(4, d_model)
    p = params[1]
    pre = x.numpy() @ p["W_enc"] + p["b_enc"]
    want = np.where(pre > p["threshold"], pre, 0) @ p["W_dec"] + p["b_dec"]
    got = tc.decode([tc.encode(0, x), tc.encode(1, x)], 1)
    assert np.allclose(got.detach().numpy(), want, atol=1e-5)
    one = load_gemmascope(tmp_path / "gs" / "layer_0" / "width_16k" / "average_l0_9" / "params.npz")
    assert torch.equal(one.W_enc[0], torch.from_numpy(params[0]["W_enc"]).T)
    # our save of a GemmaScope set loads back identically
    tc.save(tmp_path / "ours")
    back = T.load_transcoders(tmp_path / "ours")
    assert all(torch.equal(a, b) for a, b in zip(tc.parameters(), back.parameters()))


def test_gemmascope_errors(tmp_path):
    bad = tmp_path / "layer_0"
    bad.mkdir()
    np.savez(bad / "params.npz", W_enc=np.zeros((8, 12), np.float32))
    with pytest.raises(T.TranscoderFileError, match=r"params\.npz: lacks"):
        T.load_transcoders(tmp_path)
    np.savez(bad / "params.npz", W_enc=np.zeros((8, 12), np.float32), W_dec=np.zeros((12, 9), np.float32),
             b_enc=np.zeros(12, np.float32), b_dec=np.zeros(8, np.float32), threshold=np.zeros(12, np.float32))
    with pytest.raises(T.TranscoderMismatchError, match=r"W_dec has shape \(12, 9\), expected \(12, 8\)"):
        T.load_transcoders(tmp_path)
    (bad / "params.npz").write_bytes(b"not a zip")
    with pytest.raises(T.TranscoderFileError, match="not a readable .npz"):
        T.load_transcoders(tmp_path)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(T.TranscoderFileError, match="no such transcoder"):
        T.load_transcoders(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(T.TranscoderFileError, match="no transcoder files"):
        T.load_transcoders(empty)
    d = tmp_path / "tc"
    T.random_transcoders(3, 8, 10).save(d)
    (d / "layer_1.safetensors").unlink()
    with pytest.raises(T.TranscoderFileError, match=r"layer_1\.safetensors: missing"):
        T.load_transcoders(d)
    T.random_transcoders(3, 8, 10).save(d)
    (d / "layer_2.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(T.TranscoderFileError, match=r"layer_2\.safetensors: not a readable safetensors"):
        T.load_transcoders(d)
    c = tmp_path / "clt"
    T.random_transcoders(2, 8, 10, kind="clt").save(c)
    (c / "W_dec_1.safetensors").unlink()
    with pytest.raises(T.TranscoderFileError, match=r"W_dec_1\.safetensors: missing"):
        T.load_transcoders(c)
    (c / "config.yaml").write_text("model_kind: [unclosed")
    with pytest.raises(T.TranscoderFileError, match="config.yaml: not valid YAML"):
        T.load_transcoders(c)


def test_wrong_tensor_names_and_shapes(tmp_path):
    d = tmp_path / "tc"
    T.random_transcoders(2, 8, 10).save(d)
    t = load_file(str(d / "layer_1.safetensors"))
    t["W_encoder"] = t.pop("W_enc")
    save_file(t, str(d / "layer_1.safetensors"))
    with pytest.raises(T.TranscoderFileError, match=r"layer_1\.safetensors: lacks tensor 'W_enc'"):
        T.load_transcoders(d)
    t["W_enc"] = torch.zeros(10, 9)
    save_file(t, str(d / "layer_1.safetensors"))
    with pytest.raises(T.TranscoderMismatchError, match=r"layer_1\.safetensors: W_enc has shape \(10, 9\), expected \(10, 8\)"):
        T.load_transcoders(d)
    c = tmp_path / "clt"
    T.random_transcoders(3, 8, 10, kind="clt").save(c)
    save_file({"W_dec_1": torch.zeros(10, 3, 8)}, str(c / "W_dec_1.safetensors"))
    with pytest.raises(T.TranscoderMismatchError, match=r"W_dec_1\.safetensors: W_dec_1 has shape \(10, 3, 8\), expected \(10, 2, 8\)"):
        T.load_transcoders(c)


def test_config_less_directory_and_hooks(tmp_path):
    tc = T.random_transcoders(2, 8, 10, activation="jumprelu")
    tc.feature_input_hook, tc.feature_output_hook = "blocks.{l}.ln2.hook_normalized", "blocks.{l}.hook_mlp_out"
    tc.save(tmp_path)
    back = T.load_transcoders(tmp_path)
    assert (back.feature_input_hook, back.feature_output_hook) == (tc.feature_input_hook, tc.feature_output_hook)
    (tmp_path / "config.yaml").unlink()
    bare = T.load_transcoders(tmp_path)  # threshold tensors imply JumpReLU, as in circuit-tracer
    assert bare.activation == "jumprelu" and bare.scan == tmp_path.name


def test_load_dtype():
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        T.random_transcoders(2, 8, 10).save(d)
        tc = T.load_transcoders(d, dtype=torch.bfloat16)
        assert tc.W_enc[0].dtype == torch.bfloat16 and tc.dtype == torch.bfloat16


def test_thresholds_saved_with_a_leading_unit_axis(tmp_path):
    tc = T.random_transcoders(2, 8, 10, kind="clt", activation="jumprelu")
    tc.save(tmp_path)
    enc = load_file(str(tmp_path / "W_enc_1.safetensors"))
    enc["threshold_1"] = enc["threshold_1"][None, :]
    save_file(enc, str(tmp_path / "W_enc_1.safetensors"))
    back = T.load_transcoders(tmp_path)
    assert torch.equal(back.threshold[1], tc.threshold[1])


def test_hook_points_from_config_and_unknown_ones_refused(tmp_path):
    tc = T.random_transcoders(2, 8, 10)
    tc.feature_input_hook, tc.feature_output_hook = "hook_resid_mid", "mlp.hook_out"
    tc.save(tmp_path / "ok")
    back = T.load_transcoders(tmp_path / "ok")
    assert (back.feature_input_hook, back.feature_output_hook) == ("hook_resid_mid", "mlp.hook_out")
    cfg = yaml.safe_load((tmp_path / "ok" / "config.yaml").read_text())
    cfg["feature_input_hook"] = "hook_resid_pre"
    (tmp_path / "ok" / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(T.HookPointError, match=r"config\.yaml: unsupported feature_input_hook 'hook_resid_pre'; supported: mlp\.hook_in, ln2\.hook_normalized, hook_resid_mid, hook_mlp_in$"):
        T.load_transcoders(tmp_path / "ok")
    with pytest.raises(T.HookPointError, match="feature_output_hook 'blocks.{l}.hook_resid_post'"):
        T.TranscoderSet("plt", 2, 8, 10, feature_output_hook="blocks.{l}.hook_resid_post")


def test_training_reads_and_writes_at_the_configured_hook_points(tmp_path):
    from circuit_atlas.engine.models.loading import tiny_model
    from circuit_atlas.engine.training.train import TrainConfig, TrainError, _Activations, _Batches, _bos_prefix, token_stream, token_windows, train_transcoders

    lm = tiny_model("gemma2", n_layers=2, d_model=32, vocab_size=97, seed=0)
    texts = ["the cat sat on the mat while the dog ran to the park"] * 20
    hooks = ("ln2.hook_normalized", "mlp.hook_out")
    cfg = TrainConfig(model="tiny", kind="plt", features=16, activation="relu", tokens=300, out=str(tmp_path / "t"), batch_size=4,
                      seq_len=12, progress=False, checkpoint_every=50, feature_input_hook=hooks[0], feature_output_hook=hooks[1])
    cfg.validate()
    out = train_transcoders(cfg, lm=lm, texts=texts)
    tc = T.load_transcoders(out)
    assert (tc.feature_input_hook, tc.feature_output_hook) == hooks
    # the trainer's inputs and targets are the tensors at those points, not the MLP's own
    wins = token_windows(token_stream(lm, texts, progress=False), _bos_prefix(lm), cfg.seq_len)
    batches = _Batches(wins, cfg.batch_size, cfg.seed)
    xs, ys = _Activations(lm, batches, None, "", hooks=hooks)(0)
    ins, outs = lm.mlp_io(batches(0), hooks=hooks)
    mlp_in, mlp_out = lm.mlp_io(batches(0))
    assert torch.equal(xs[0], ins[0][:, 1:].reshape(-1, 32)) and torch.equal(ys[1], outs[1][:, 1:].reshape(-1, 32))
    assert (xs[0] - mlp_in[0][:, 1:].reshape(-1, 32)).abs().max() > 1e-2
    assert (ys[1] - mlp_out[1][:, 1:].reshape(-1, 32)).abs().max() > 1e-2
    with pytest.raises(TrainError, match="unsupported feature_input_hook 'resid'"):
        TrainConfig(feature_input_hook="resid").validate()
