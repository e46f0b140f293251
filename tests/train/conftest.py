"""A tiny real model for the training tests.

Uses `engine.models.tiny_model` when it exists; until then (or if it is missing) a real
LlamaForCausalLM built from a config with a word-level tokenizer and `mlp_io` read by forward
hooks on the MLP modules, exposing the LoadedModel attributes the trainer uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class _TinyLM:
    model: object
    tokenizer: object
    adapter: object
    model_id: str
    n_layers: int
    d_model: int
    vocab_size: int
    max_context: int
    device: torch.device
    dtype: torch.dtype

    def tokenize(self, prompt: str) -> list[int]:
        return [self.tokenizer.bos_token_id] + self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids).logits

    @torch.no_grad()
    def mlp_io(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        ins: list[torch.Tensor] = []
        outs: list[torch.Tensor] = []

        def hook(module, args, output):
            ins.append(args[0])
            outs.append(output)

        handles = [layer.mlp.register_forward_hook(hook) for layer in self.model.model.layers]
        try:
            self.model(input_ids)
        finally:
            for h in handles:
                h.remove()
        return ins, outs


def _fallback_tiny(n_layers: int, d_model: int, vocab_size: int, seed: int) -> _TinyLM:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=d_model, intermediate_size=2 * d_model,
                      num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=256)
    model = LlamaForCausalLM(cfg).eval()
    chars = "abcdefghijklmnopqrstuvwxyz .,ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    vocab = {"<bos>": 0, "<eos>": 1, "<unk>": 2, **{c: 3 + i for i, c in enumerate(chars)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>")
    return _TinyLM(model, tok, None, "tiny-llama", n_layers, d_model, vocab_size, 256, torch.device("cpu"), torch.float32)


def tiny_lm(n_layers: int = 2, d_model: int = 32, vocab_size: int = 97, seed: int = 0):
    """engine.models.tiny_model("llama", ...) when available, else the fallback above."""
    try:
        from circuit_atlas.engine.models import tiny_model
    except ImportError:
        return _fallback_tiny(n_layers, d_model, vocab_size, seed)
    return tiny_model("llama", n_layers=n_layers, d_model=d_model, vocab_size=vocab_size, seed=seed)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def make_tiny_lm():
    """The `tiny_lm` factory as a fixture (test modules cannot import conftest under importlib mode)."""
    return tiny_lm
