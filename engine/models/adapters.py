"""Per-architecture adapters: where a Hugging Face causal LM keeps what attribution needs.

The engine needs, for every decoder layer, the MLP input (after the pre-MLP norm) and the MLP
output *as added to the residual stream* (for Gemma 2/3 that is after the post-feedforward norm,
as in GemmaScope and circuit-tracer) - or, where a transcoder set's config.yaml says so, the
pre-MLP norm's input or normalised value and the MLP's own output (``mlp_hooks``, ``INPUT_HOOKS``,
``OUTPUT_HOOKS``) - the input embedding, the unembedding and logit soft-cap,
and the normalisation modules on the residual path, whose denominators the local replacement
model freezes. Attention patterns are frozen through ``frozen_attention`` below, which every
supported architecture reaches through transformers' attention interface.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from circuit_atlas.engine.models.pattern_blocks import PatternRows, RecomputedPatternApply, block_rows, interval_mask
from circuit_atlas.errors import CircuitAtlasError

ATTN_IMPLEMENTATION = "circuit_atlas"


class UnsupportedModelError(CircuitAtlasError, ValueError):
    """The model's architecture has no adapter."""


@dataclass(frozen=True)
class Adapter:
    """How to reach the parts of one architecture family. ``norm`` names the arithmetic of
    its residual-path norms: "rms" (weight * x/rms), "rms1p" (Gemma: (1 + weight) * x/rms)
    or "layer" (LayerNorm with mean and bias)."""

    name: str
    norm: str
    layers: Callable[[nn.Module], nn.ModuleList]
    embed: Callable[[nn.Module], nn.Module]
    mlp: Callable[[nn.Module], nn.Module]  # layer -> the module whose input is the MLP input
    mlp_out: Callable[[nn.Module], nn.Module]  # layer -> the module whose output joins the residual
    mlp_norm: Callable[[nn.Module], nn.Module]  # layer -> the norm whose output is the MLP input
    position_embed: Callable[[nn.Module], nn.Module | None] = lambda m: None

    def __reduce__(self):
        """Pickled by name (its parts are lambdas): worker processes get the same adapter."""
        return (adapter_named, (self.name,))

    def unembed(self, model: nn.Module) -> Tensor:
        return model.get_output_embeddings().weight

    def logit_softcap(self, model: nn.Module) -> float | None:
        """Gemma 2's final-logit soft-cap (logits = cap * tanh(z / cap)), or None."""
        cap = getattr(model.config, "final_logit_softcapping", None)
        return float(cap) if cap else None

    def norm_modules(self, model: nn.Module) -> list[nn.Module]:
        """Every normalisation module in the model; freezing the ones inside attention (q/k
        norms) changes nothing, since no gradient flows through queries and keys."""
        kinds = (nn.LayerNorm,)
        return [m for m in model.modules() if isinstance(m, kinds) or type(m).__name__.endswith("RMSNorm")]


def _decoder(name: str, norm: str = "rms", post_mlp_norm: bool = False) -> Adapter:
    """The HF decoder layout (model.layers, embed_tokens, norm); Gemma 2/3 add a norm after the
    MLP, and what joins the residual is that norm's output."""
    return Adapter(
        name=name,
        norm=norm,
        layers=lambda m: m.model.layers,
        embed=lambda m: m.model.embed_tokens,
        mlp=lambda layer: layer.mlp,
        mlp_out=(lambda layer: layer.post_feedforward_layernorm) if post_mlp_norm else (lambda layer: layer.mlp),
        mlp_norm=(lambda layer: layer.pre_feedforward_layernorm) if post_mlp_norm else (lambda layer: layer.post_attention_layernorm),
    )


GPT2 = Adapter(
    name="gpt2",
    norm="layer",
    layers=lambda m: m.transformer.h,
    embed=lambda m: m.transformer.wte,
    mlp=lambda block: block.mlp,
    mlp_out=lambda block: block.mlp,
    mlp_norm=lambda block: block.ln_2,
    position_embed=lambda m: m.transformer.wpe,
)

ADAPTERS: dict[str, Adapter] = {
    "llama": _decoder("llama"),
    "mistral": _decoder("mistral"),
    "qwen2": _decoder("qwen2"),
    "qwen3": _decoder("qwen3"),
    "gemma": _decoder("gemma", norm="rms1p"),
    "gemma2": _decoder("gemma2", norm="rms1p", post_mlp_norm=True),
    "gemma3_text": _decoder("gemma3_text", norm="rms1p", post_mlp_norm=True),
    "gpt2": GPT2,
}


# ---- hook points ---------------------------------------------------------------------------
class HookPointError(CircuitAtlasError, ValueError):
    """A transcoder set's feature_input_hook / feature_output_hook that we cannot place."""


# TransformerLens names (circuit-tracer's config.yaml vocabulary), per block, -> what they are.
INPUT_HOOKS: dict[str, str] = {
    "mlp.hook_in": "the MLP's input: after the pre-MLP norm, its weight applied",
    "ln2.hook_normalized": "the pre-MLP norm's input divided by its (frozen) scale, before its weight (GemmaScope)",
    "hook_resid_mid": "the residual stream before the pre-MLP norm",
    "hook_mlp_in": "the residual stream before the pre-MLP norm (TransformerLens's copy of hook_resid_mid)",
}
OUTPUT_HOOKS: dict[str, str] = {
    "hook_mlp_out": "what the MLP block adds to the residual stream (after Gemma 2/3's post-MLP norm)",
    "mlp.hook_out": "the MLP's own output (before Gemma 2/3's post-MLP norm)",
}
DEFAULT_HOOKS = ("mlp.hook_in", "hook_mlp_out")
_BLOCK_PREFIX = re.compile(r"^blocks\.(\{[a-z_]*\}|\d+)\.")


def hook_point(name: str, which: str = "input") -> str:
    """The canonical name of a feature hook point (a ``blocks.{l}.`` prefix dropped), or a
    one-line HookPointError naming it and the supported ones."""
    table = INPUT_HOOKS if which == "input" else OUTPUT_HOOKS
    canon = _BLOCK_PREFIX.sub("", str(name).strip())
    if canon not in table:
        raise HookPointError(
            f"unsupported feature_{which}_hook {name!r}; supported: {', '.join(table)}"
        )
    return canon


def check_hook_points(input_hook: str, output_hook: str) -> tuple[str, str]:
    """Both hook points, canonical; raises HookPointError for an unknown one."""
    return hook_point(input_hook, "input"), hook_point(output_hook, "output")


def _normalized(norm: nn.Module, kind: str, x: Tensor) -> Tensor:
    """``ln2.hook_normalized``: the norm's input (centred for LayerNorm) times its scale, before
    the weight. Under a Freeze the scale is the frozen one (detached, or the replayed record),
    so the value is linear in x exactly as the norm itself is; with none, the live scale."""
    state = _STATE.get()
    xf = x.float()
    if kind == "layer":
        xf = xf - xf.mean(-1, keepdim=True)
    if state is not None and state.mode == "replay":
        scale = state.saved[id(norm)].expand(*x.shape[:-1], 1)
    else:
        fwd = norm.forward if isinstance(norm.forward, _SwitchingForward) else _SwitchingForward(norm, kind)
        scale = fwd.scale_of(x)
        if state is not None:
            scale = scale.detach()
    return (xf * scale).to(x.dtype)


@contextlib.contextmanager
def mlp_hooks(
    model: nn.Module,
    adapter: Adapter,
    pre: Callable[[int, Tensor], None],
    post: Callable[[int, Tensor], Tensor | None],
    *,
    input_hook: str = DEFAULT_HOOKS[0],
    output_hook: str = DEFAULT_HOOKS[1],
) -> Iterator[None]:
    """Inside: every layer calls ``pre(i, x)`` with the tensor at the transcoders' input hook
    point (default: the MLP input) and ``post(i, y)`` with the tensor at their output hook point
    (default: what joins the residual stream); a tensor returned by ``post`` replaces it there.
    Tensors are (B, T, d). The one place that knows how to hook a layer for transcoders."""
    inp, out = check_hook_points(input_hook, output_hook)

    def pre_hook(i: int):
        if inp == "ln2.hook_normalized":
            return lambda module, args: pre(i, _normalized(module, adapter.norm, args[0]))
        return lambda module, args: pre(i, args[0])

    def out_hook(i: int):
        def hook(module, args, output):
            true = output[0] if isinstance(output, tuple) else output
            new = post(i, true)
            if new is None:
                return None
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return hook

    handles = []
    try:
        for i, layer in enumerate(adapter.layers(model)):
            in_module = adapter.mlp(layer) if inp == "mlp.hook_in" else adapter.mlp_norm(layer)
            out_module = adapter.mlp_out(layer) if out == "hook_mlp_out" else adapter.mlp(layer)
            handles.append(in_module.register_forward_pre_hook(pre_hook(i)))
            handles.append(out_module.register_forward_hook(out_hook(i)))
        yield
    finally:
        for h in handles:
            h.remove()


def adapter_named(name: str) -> Adapter:
    return ADAPTERS[name]


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter of ``model``'s architecture, or a clear error naming the supported ones."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in ADAPTERS:
        raise UnsupportedModelError(
            f"unsupported architecture {model_type!r}; supported: {', '.join(sorted(ADAPTERS))} "
            "(Llama, SmolLM2, Mistral, Qwen 2/3, Gemma 1/2/3 text models, GPT-2)"
        )
    return ADAPTERS[model_type]


# ---- frozen attention and norms -----------------------------------------------------------
@dataclass
class Freeze:
    """What prepared models do with attention patterns and norm denominators in this context.

    ``detach``: compute them as usual but as constants of autograd (the local replacement model).
    ``record``: compute them as usual and keep them in ``saved`` (keyed by module).
    ``replay``: use the ones in ``saved`` instead of computing them, so a perturbed forward pass
    runs with the clean run's patterns and scales: the frozen model's exact response (used to
    check edges by perturbation, and by interventions with frozen attention)."""

    mode: str
    saved: dict = field(default_factory=dict)


_STATE: contextvars.ContextVar[Freeze | None] = contextvars.ContextVar("circuit_atlas_freeze", default=None)


def _attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    softcap: float | None = None,
    **kwargs,
) -> tuple[Tensor, Tensor]:
    """Eager attention (grouped KV heads, optional logit soft-capping, additive mask) whose
    pattern is detached, recorded or replayed as the current ``Freeze`` says; with none active,
    plain eager attention."""
    state = _STATE.get()
    n_rep = query.shape[1] // key.shape[1]
    if n_rep > 1:
        value = value.repeat_interleave(n_rep, dim=1)
    if state is not None and state.mode == "detach":
        long = _recomputed_attention(query, key, value, attention_mask, scaling, softcap)
        if long is not None:
            return long, None
    if state is not None and state.mode == "replay":
        pattern = state.saved[id(module)].to(value.dtype)
        pattern = pattern.expand(value.shape[0], *pattern.shape[1:])
    else:
        if scaling is None:
            scaling = query.shape[-1] ** -0.5
        if n_rep > 1:
            key = key.repeat_interleave(n_rep, dim=1)
        scores = torch.matmul(query, key.transpose(2, 3)) * scaling
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        if attention_mask is not None:
            scores = scores + attention_mask[..., : key.shape[-2]]
        pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
        if state is not None:
            pattern = pattern.detach()
            if state.mode == "record":
                state.saved[id(module)] = pattern
    if state is not None:  # a constant pattern: its backward folds batched targets into one product
        out = _ConstantPatternApply.apply(pattern, value).transpose(1, 2).contiguous()
    else:
        out = torch.matmul(pattern, value).transpose(1, 2).contiguous()
    return out, pattern


def _recomputed_attention(query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                          scaling: float | None, softcap: float | None) -> Tensor | None:
    """Frozen attention whose pattern is never held whole (``pattern_blocks``), when a whole
    pattern would be larger than one block; None (the usual path) otherwise. ``value`` has its
    grouped heads repeated already; ``key`` has not."""
    bsz, heads, q_len, _ = query.shape
    kv_len = key.shape[-2]
    rows = block_rows(bsz, heads, q_len, kv_len)
    if rows >= q_len:
        return None
    lo, hi, mask = interval_mask(attention_mask, q_len, kv_len)
    pattern_rows = PatternRows(
        query=query.detach(), key=key.detach(), scaling=query.shape[-1] ** -0.5 if scaling is None else scaling,
        softcap=softcap, lo=lo, hi=hi, mask=mask, dtype=value.dtype, block=rows,
    )
    return RecomputedPatternApply.apply(value, pattern_rows).transpose(1, 2).contiguous()


class _PatternTransposeApply(torch.autograd.Function):
    """``pattern^T @ grad``. Under vmap (attribution's batched backward: one gradient per target)
    the targets are folded into the columns of one product per head; autograd's own batching
    rule for matmul copies the T x T pattern once per target first (22% of the time on a small
    model, and T^2 bytes per target on long prompts). The same products, bit for bit."""

    @staticmethod
    def forward(pattern: Tensor, grad: Tensor) -> Tensor:
        return torch.matmul(pattern.mT, grad)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def vmap(info, in_dims, pattern: Tensor, grad: Tensor):
        p_dim, g_dim = in_dims
        if p_dim is not None:  # a batched pattern: nothing to share
            pattern = pattern.movedim(p_dim, 0)
            grad = grad.movedim(g_dim, 0) if g_dim is not None else grad.expand(pattern.shape[0], *grad.shape)
            return torch.matmul(pattern.mT, grad), 0
        moved = grad.movedim(g_dim, -2)  # (..., T, targets, d_head)
        shape = moved.shape
        out = torch.matmul(pattern.mT, moved.reshape(*shape[:-2], shape[-2] * shape[-1]))
        return out.reshape(shape).movedim(-2, 0), 0


class _ConstantPatternApply(torch.autograd.Function):
    """``pattern @ value`` with the pattern a constant of autograd (frozen): only the value gets
    a gradient, through ``_PatternTransposeApply``."""

    @staticmethod
    def forward(pattern: Tensor, value: Tensor) -> Tensor:
        return torch.matmul(pattern, value)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[0])
        ctx.save_for_forward(inputs[0])

    @staticmethod
    def backward(ctx, grad: Tensor):
        (pattern,) = ctx.saved_tensors
        return None, _PatternTransposeApply.apply(pattern, grad)

    @staticmethod
    def jvp(ctx, pattern_tangent: Tensor | None, value_tangent: Tensor | None) -> Tensor:
        """Forward mode (head loadings): the pattern is a constant, so only the value's tangent moves."""
        (pattern,) = ctx.saved_tensors
        return torch.matmul(pattern, value_tangent)


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTN_IMPLEMENTATION, _attention)
    if ATTN_IMPLEMENTATION not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionMaskInterface.register(ATTN_IMPLEMENTATION, eager_mask)


def prepare_model(model: nn.Module, adapter: Adapter) -> None:
    """Make the model freezable, once: attention through ``_attention`` (eager arithmetic) and
    every norm through a forward that obeys the current ``Freeze``. With no Freeze active the
    model computes exactly what it did before. The switch is a context variable, so other
    threads using the same model are not affected."""
    _register_attention()
    if getattr(model, "_circuit_atlas_prepared", False):
        return
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    for m in adapter.norm_modules(model):
        m.forward = _SwitchingForward(m, adapter.norm)  # instance attribute shadows the class method
    model._circuit_atlas_prepared = True


class _SwitchingForward:
    """A norm's forward that obeys the current ``Freeze`` (a class, not a closure, so prepared
    models still pickle for worker processes)."""

    def __init__(self, module: nn.Module, kind: str) -> None:
        self.module = module
        self.kind = kind
        self.eps = getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6))

    def scale_of(self, x: Tensor) -> Tensor:
        """1 / denominator, in float32, (..., 1)."""
        xf = x.float()
        if self.kind == "layer":
            xf = xf - xf.mean(-1, keepdim=True)
        return torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)

    def apply(self, x: Tensor, scale: Tensor) -> Tensor:
        """The module's arithmetic with a given (constant) scale: linear in x."""
        m = self.module
        if self.kind == "layer":
            out = ((x.float() - x.float().mean(-1, keepdim=True)) * scale).to(x.dtype)
            if m.weight is not None:
                out = out * m.weight
            if m.bias is not None:
                out = out + m.bias
            return out
        if self.kind == "rms1p":
            return ((x.float() * scale) * (1.0 + m.weight.float())).type_as(x)
        return m.weight * (x.float() * scale).to(x.dtype)

    def __call__(self, x: Tensor) -> Tensor:
        state = _STATE.get()
        plain = type(self.module).forward
        if state is None:
            return plain(self.module, x)
        if state.mode == "replay":
            scale = state.saved[id(self.module)]
            return self.apply(x, scale.expand(*x.shape[:-1], 1))
        scale = self.scale_of(x).detach()
        if state.mode == "record":
            state.saved[id(self.module)] = scale
        lin = self.apply(x, scale)
        # the module's own value, bit for bit, with the frozen map's gradient
        return plain(self.module, x).detach() + (lin - lin.detach())


@contextlib.contextmanager
def _active(state: Freeze) -> Iterator[Freeze]:
    token = _STATE.set(state)
    try:
        yield state
    finally:
        _STATE.reset(token)


def frozen() -> contextlib.AbstractContextManager[Freeze]:
    """Inside (this thread/context only): attention patterns and normalisation denominators of
    prepared models are constants of autograd, with their usual values."""
    return _active(Freeze("detach"))


def recording() -> contextlib.AbstractContextManager[Freeze]:
    """Inside: like ``frozen``, and the patterns and scales are kept for ``replaying``."""
    return _active(Freeze("record"))


def replaying(record: Freeze) -> contextlib.AbstractContextManager[Freeze]:
    """Inside: prepared models use the recorded patterns and scales instead of computing them
    (one forward pass of the same length as the recorded one; any batch size if it was 1)."""
    return _active(Freeze("replay", record.saved))


try:  # registered at import, so a model unpickled in a worker process finds its attention
    _register_attention()
except ImportError:  # transformers missing: loading any model will say so
    pass
