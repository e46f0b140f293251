"""Loading models: local directories round-trip, clear errors for what cannot load, and (slow)
the offline demo model from its GGUF file, cached as safetensors."""

from __future__ import annotations

import pytest
import torch

from circuit_atlas.engine.models.loading import (ModelLoadError, PromptError, UnsupportedModelError, load_model,
                                         tiny_model)


def test_directory_round_trip_gives_the_same_logits(tmp_path) -> None:
    lm = tiny_model("qwen3", n_layers=2, d_model=32, vocab_size=97, seed=4)
    lm.model.save_pretrained(tmp_path / "m")
    lm.tokenizer.save_pretrained(tmp_path / "m")
    back = load_model(str(tmp_path / "m"))
    ids = lm.tokenize("a cat")
    assert back.tokenize("a cat") == ids and ids[0] == lm.tokenizer.bos_token_id
    assert torch.allclose(back.logits(ids), lm.logits(ids), atol=1e-6)
    assert (back.n_layers, back.d_model, back.vocab_size, back.model_id) == (2, 32, 97, "m")


def test_mlp_io_shapes_and_values() -> None:
    lm = tiny_model("gemma2", n_layers=3, d_model=32, vocab_size=97, seed=0)
    ids = torch.tensor([lm.tokenize("abc"), lm.tokenize("xyz")])
    ins, outs = lm.mlp_io(ids)
    assert len(ins) == len(outs) == 3 and ins[0].shape == (2, 4, 32)
    # Gemma's MLP output joins the residual after the post-feedforward norm
    layer = lm.adapter.layers(lm.model)[1]
    assert torch.allclose(outs[1], layer.post_feedforward_layernorm(layer.mlp(ins[1])), atol=1e-6)


def test_bad_references_get_clear_errors(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="no model at"):
        load_model(str(tmp_path / "nothing-here"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path / "empty"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="broken.gguf"):
        load_model(str(bad))
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(str(tmp_path / "missing.gguf"))


def test_unsupported_architecture_directory(tmp_path) -> None:
    from transformers import BertConfig

    BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path / "b")
    with pytest.raises(UnsupportedModelError, match="supported:.*gpt2.*llama"):
        load_model(str(tmp_path / "b"))
    with pytest.raises(UnsupportedModelError):
        tiny_model("mamba")


def test_empty_prompt_is_refused() -> None:
    lm = tiny_model("gpt2", n_layers=1, d_model=16, vocab_size=80)
    with pytest.raises(PromptError):
        lm.tokenize("   ")
    assert lm.tokenize("ab")[0] == lm.bos_token_id  # GPT-2 style: a special token always at position 0


@pytest.mark.slow
def test_demo_model_from_gguf_predicts_paris(tmp_path, monkeypatch) -> None:
    lm = load_model("demo")
    assert (lm.n_layers, lm.d_model, lm.vocab_size) == (30, 576, 49152)
    probs = lm.logits(lm.tokenize("The capital of France is"))[0, -1].softmax(-1)
    assert lm.token_strings([int(probs.argmax())]) == [" Paris"] and probs.max() > 0.5
