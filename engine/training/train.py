"""Train per-layer (PLT) and cross-layer (CLT) transcoders on any LoadedModel.

Activations are made on the fly: one forward pass per batch records every layer's MLP input and
output (`lm.mlp_io`, at the configured hook points `feature_input_hook` / `feature_output_hook`)
and all layers train together, so nothing holds the whole activation set.
The method follows "Circuit Tracing" (2025): JumpReLU with a straight-through estimator for the
threshold, sparsity penalty λ·Σ tanh(c·‖W_dec,i‖·a_i) (a CLT feature's decoder norm is the norm
of all its decoders concatenated), an optional pre-activation loss, a linear λ warm-up; TopK and
ReLU as simpler alternatives. Inputs and targets are normalised per layer while training and the
normalisation is folded back into the weights on save, so the saved set works on raw activations.
Checkpoints hold model, optimizer, RNG states and the data position, so `resume` continues
bit-for-bit and a killed run loses at most one checkpoint interval.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor, nn

from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.paths import home

__all__ = [
    "TrainConfig",
    "TrainError",
    "TranscoderTrainer",
    "JumpReLU",
    "train_transcoders",
    "load_recipe",
    "list_recipes",
    "ensure_demo_transcoders",
    "token_windows",
]

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


class TrainError(CircuitAtlasError, ValueError):
    """A training run cannot start or continue (bad option, mismatched checkpoint, no data)."""


@dataclass
class TrainConfig:
    """Every setting of a training run; saved with checkpoints so `resume` can refuse a mismatch."""

    model: str = "demo"
    kind: str = "plt"  # plt | clt
    features: int = 512
    activation: str = "jumprelu"  # jumprelu | topk | relu
    k: int | None = None
    corpus: str = "default"
    field: str = "text"
    model_text: float = 0.0  # fraction of training tokens written by the model itself (sampled, T=0.8) mixed into the corpus
    tokens: int = 200_000
    out: str = "transcoders"
    batch_size: int = 16  # windows per forward pass
    seq_len: int = 64
    lr: float = 1e-3
    dtype: str = "float32"  # the model's dtype for activation collection; transcoders train in fp32
    matmul_dtype: str = "float32"  # dtype of the transcoders' encoder/decoder matmuls (bfloat16: ~2x on CPUs with bf16 units); weights, Adam and the loss stay fp32
    device: str = "cpu"
    seed: int = 0
    lambda_: float = 1.0  # sparsity coefficient λ (jumprelu, relu); losses are in normalised units (E‖x‖² = d_model)
    tanh_c: float = 1.0  # c in tanh(c·‖W_dec‖·a)
    lambda_warmup: float = 0.5  # fraction of the run over which λ ramps up linearly from 0
    preact_lambda: float = 0.0  # pre-activation loss coefficient (revives features below threshold)
    threshold_init: float = 0.1  # initial JumpReLU threshold (normalised units)
    bandwidth: float = 0.1  # STE rectangle-kernel bandwidth ε
    init_fire_fraction: float = 0.02  # b_enc is set so about this fraction of features fires at init
    skip: bool = False  # learn a linear skip connection W_skip
    outlier_factor: float = 10.0  # tokens whose MLP output norm exceeds this × the layer's median are left out of the loss (0: keep all)
    checkpoint_every: int = 100  # steps
    steps_per_batch: int = 1  # optimizer steps on each batch of activations (cheap extra updates when the forward dominates)
    norm_batches: int = 2  # batches used to estimate the per-layer normalisation
    dead_tokens: int = 50_000  # a feature is dead if it did not fire in the last N training tokens
    lr_decay: float = 0.2  # final fraction of steps with linear learning-rate decay to 0
    scan: str | None = None  # transcoder set id; default {model-short}-{kind}-{features}
    activation_cache: str | None = None  # directory for an on-disk activation cache
    # where the features read and write (TransformerLens names, as config.yaml's; see adapters.INPUT_HOOKS)
    feature_input_hook: str = "mlp.hook_in"
    feature_output_hook: str = "hook_mlp_out"
    progress: bool = True

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * (self.seq_len - 1)

    @property
    def total_batches(self) -> int:
        return max(1, math.ceil(self.tokens / self.tokens_per_step))

    @property
    def total_steps(self) -> int:
        return self.total_batches * self.steps_per_batch

    def validate(self) -> None:
        if self.kind not in ("plt", "clt"):
            raise TrainError(f"--kind must be plt or clt, not {self.kind!r}")
        if self.activation not in ("jumprelu", "topk", "relu"):
            raise TrainError(f"--activation must be jumprelu, topk or relu, not {self.activation!r}")
        if self.activation == "topk":
            if not self.k or self.k < 1:
                raise TrainError("--activation topk needs --k (features active per token), e.g. --k 16")
            if self.k > self.features:
                raise TrainError(f"--k {self.k} is larger than --features {self.features}")
        if self.features < 1 or self.tokens < 1 or self.batch_size < 1:
            raise TrainError("--features, --tokens and --batch-size must be positive")
        if self.seq_len < 2:
            raise TrainError("--seq-len must be at least 2 (position 0, the BOS, is not trained on)")
        if not 0.0 <= self.model_text < 1.0:
            raise TrainError("--model-text is a fraction of the training tokens, in [0, 1)")
        if self.steps_per_batch < 1:
            raise TrainError("--steps-per-batch must be at least 1")
        if self.lr <= 0 or self.lambda_ < 0 or self.checkpoint_every < 1:
            raise TrainError("--lr must be positive, --lambda non-negative, --checkpoint-every at least 1")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise TrainError(f"--dtype must be float32, bfloat16 or float16, not {self.dtype!r}")
        if self.matmul_dtype not in ("float32", "bfloat16"):
            raise TrainError(f"--matmul-dtype must be float32 or bfloat16, not {self.matmul_dtype!r}")
        from circuit_atlas.engine.models.adapters import HookPointError, check_hook_points

        try:
            check_hook_points(self.feature_input_hook, self.feature_output_hook)
        except HookPointError as exc:
            raise TrainError(str(exc)) from exc

    @property
    def hooks(self) -> tuple[str, str]:
        return self.feature_input_hook, self.feature_output_hook

    def fingerprint(self) -> dict[str, Any]:
        """The settings that must match for a checkpoint to be resumed."""
        keep = ("model", "kind", "features", "activation", "k", "corpus", "field", "tokens", "batch_size",
                "seq_len", "lr", "seed", "lambda_", "tanh_c", "lambda_warmup", "preact_lambda", "skip",
                "threshold_init", "bandwidth", "init_fire_fraction", "norm_batches", "lr_decay", "dtype",
                "steps_per_batch", "outlier_factor", "model_text")
        out = {k: getattr(self, k) for k in keep}
        if self.hooks != ("mlp.hook_in", "hook_mlp_out"):  # so checkpoints from before hook points still resume
            out["hooks"] = list(self.hooks)
        if self.matmul_dtype != "float32":  # likewise checkpoints from before the option
            out["matmul_dtype"] = self.matmul_dtype
        return out


# ---------------------------------------------------------------------------------------------
# Activation functions with the straight-through estimator
# ---------------------------------------------------------------------------------------------


class _JumpReLUFn(torch.autograd.Function):
    """JumpReLU a = z·H(z − θ), θ = exp(log θ).

    Gradient w.r.t. z is H(z − θ) (exact almost everywhere); w.r.t. θ the step has no gradient, so
    the rectangle-kernel pseudo-derivative ∂a/∂θ = −(θ/ε)·K((z − θ)/ε), K = 1 on |u| < ½, is used.
    """

    @staticmethod
    def forward(ctx, z: Tensor, log_threshold: Tensor, bandwidth: float) -> Tensor:
        theta = log_threshold.exp()
        mask = z > theta
        ctx.save_for_backward(z, theta, mask)
        ctx.bandwidth = bandwidth
        return z * mask

    @staticmethod
    def backward(ctx, grad: Tensor):
        z, theta, mask = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_z = grad * mask
        kernel = ((z - theta).abs() < eps / 2).to(grad.dtype)
        grad_theta = -(theta / eps) * kernel * grad
        # chain rule through θ = exp(log θ)
        grad_log = (grad_theta * theta).sum_to_size(theta.shape)
        return grad_z, grad_log, None


def JumpReLU(z: Tensor, log_threshold: Tensor, bandwidth: float) -> Tensor:  # noqa: N802 - named like the function
    """JumpReLU with the rectangle-kernel straight-through estimator for the threshold."""
    return _JumpReLUFn.apply(z, log_threshold, bandwidth)


def topk_activation(z: Tensor, k: int) -> Tensor:
    """The k largest pre-activations per token, ReLU'd (as TranscoderSet.activate): k active unless fewer are positive."""
    vals, idx = z.topk(k, dim=-1)
    return torch.zeros_like(z).scatter(-1, idx, vals.relu())


# ---------------------------------------------------------------------------------------------
# The module trained in normalised space
# ---------------------------------------------------------------------------------------------


class _NormStats(nn.Module):
    """Per-layer mean vector and scalar scale for inputs (x) and targets (y): x_n = (x − μ)/s."""

    def __init__(self, n_layers: int, d_model: int):
        super().__init__()
        self.register_buffer("x_mean", torch.zeros(n_layers, d_model))
        self.register_buffer("x_scale", torch.ones(n_layers))
        self.register_buffer("y_mean", torch.zeros(n_layers, d_model))
        self.register_buffer("y_scale", torch.ones(n_layers))
        self.register_buffer("y_cap", torch.full((n_layers,), float("inf")))

    @torch.no_grad()
    def estimate(self, xs: Tensor, ys: Tensor, outlier_factor: float = 0.0) -> None:
        """xs, ys: (L, N, d) raw activations. s is chosen so E‖x_n‖² = d_model over the inlier tokens.

        Some layers write huge outputs at a few positions (e.g. SmolLM2 layer 11 right after BOS,
        10-20x the median norm); fitted by MSE they take over the layer's features, so tokens above
        `outlier_factor` × the median output norm are left out (they become error nodes instead).
        """
        if outlier_factor > 0:
            self.y_cap.copy_(ys.norm(dim=-1).median(dim=1).values * outlier_factor)
        keep = (ys.norm(dim=-1) <= self.y_cap[:, None]).float()[..., None]  # (L, N, 1)
        cnt = keep.sum(1).clamp_min(1)
        for buf_m, buf_s, a in ((self.x_mean, self.x_scale, xs), (self.y_mean, self.y_scale, ys)):
            mean = (a * keep).sum(1) / cnt
            var = ((a - mean[:, None]).pow(2) * keep).sum(-1).sum(1) / cnt[:, 0] / a.shape[-1]
            buf_m.copy_(mean)
            buf_s.copy_(var.clamp_min(1e-12).sqrt())

    def inliers(self, ys: Tensor) -> Tensor:
        """(L, N) float mask of the tokens the loss is computed on."""
        return (ys.norm(dim=-1) <= self.y_cap[:, None]).float()

    def norm_x(self, xs: Tensor) -> Tensor:
        return (xs - self.x_mean[:, None]) / self.x_scale[:, None, None]

    def norm_y(self, ys: Tensor) -> Tensor:
        return (ys - self.y_mean[:, None]) / self.y_scale[:, None, None]


class TranscoderTrainer(nn.Module):
    """The trainable transcoders (all layers) in normalised space, plus the losses.

    Layout: W_enc (L, F, d); b_enc (L, F); log_threshold (L, F) for JumpReLU; b_dec (L, d);
    PLT W_dec (L, F, d); CLT W_dec[l] (F, L − l, d) in a ParameterList; W_skip (L, d, d) optional.
    """

    def __init__(self, n_layers: int, d_model: int, cfg: TrainConfig):
        super().__init__()
        self.cfg = cfg
        self.n_layers, self.d_model, self.n_features = n_layers, d_model, cfg.features
        L, F, d = n_layers, cfg.features, d_model
        g = torch.Generator().manual_seed(cfg.seed)
        self.norm = _NormStats(L, d)
        # decoder directions first; the encoder starts as their transpose (a feature reads what it writes)
        if cfg.kind == "plt":
            w_dec = torch.randn(L, F, d, generator=g)
            w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True) * 0.1
            self.W_dec = nn.Parameter(w_dec)
            enc = w_dec.clone()
        else:
            decs = []
            enc = torch.empty(L, F, d)
            for l in range(L):
                w = torch.randn(F, L - l, d, generator=g)
                w = w / w.flatten(1).norm(dim=-1)[:, None, None] * 0.1
                decs.append(nn.Parameter(w))
                enc[l] = w[:, 0]
            self.W_dec = nn.ParameterList(decs)
        self.W_enc = nn.Parameter(enc / enc.norm(dim=-1, keepdim=True))  # unit rows: pre ~ N(0, 1) on normalised x
        self.b_enc = nn.Parameter(torch.zeros(L, F))
        self.b_dec = nn.Parameter(torch.zeros(L, d))
        self.log_threshold = (
            nn.Parameter(torch.full((L, F), math.log(cfg.threshold_init))) if cfg.activation == "jumprelu" else None
        )
        self.W_skip = nn.Parameter(torch.zeros(L, d, d)) if cfg.skip else None

    # -- forward pieces ----------------------------------------------------------------------
    @property
    def _mm(self) -> torch.dtype:
        """The matmuls' dtype: bf16 halves their time on CPUs with bf16 units (fp32 master weights)."""
        return torch.bfloat16 if self.cfg.matmul_dtype == "bfloat16" else torch.float32

    def pre(self, xn: Tensor) -> Tensor:
        """xn (L, N, d) -> (L, N, F), in the matmul dtype."""
        mm = self._mm
        return torch.baddbmm(self.b_enc[:, None, :].to(mm), xn.to(mm), self.W_enc.to(mm).transpose(1, 2))

    def act(self, pre: Tensor) -> Tensor:
        a = self.cfg.activation
        if a == "jumprelu":
            return JumpReLU(pre, self.log_threshold[:, None, :], self.cfg.bandwidth)
        if a == "topk":
            return topk_activation(pre, int(self.cfg.k))
        return pre.relu()

    def decode(self, acts: Tensor, xn: Tensor) -> Tensor:
        """acts (L, N, F) -> reconstructions (L, N, d) of the normalised targets."""
        L = self.n_layers
        if self.cfg.kind == "plt":
            out = torch.bmm(acts.to(self._mm), self.W_dec.to(self._mm)).float()
        else:
            acts = acts.float()
            out = torch.zeros(L, acts.shape[1], self.d_model, dtype=acts.dtype, device=acts.device)
            for l in range(L):
                w = self.W_dec[l]  # (F, L-l, d): layer-l features write to layers l..L-1 only
                contrib = (acts[l] @ w.reshape(w.shape[0], -1)).reshape(-1, L - l, self.d_model)
                out[l:] += contrib.transpose(0, 1)
        out = out + self.b_dec[:, None, :]
        if self.W_skip is not None:
            out = out + torch.bmm(xn.to(self._mm), self.W_skip.to(self._mm).transpose(1, 2)).float()
        return out

    def decoder_norms(self) -> Tensor:
        """(L, F): a PLT feature's decoder norm; a CLT feature's norm over all its decoders concatenated."""
        if self.cfg.kind == "plt":
            return self.W_dec.norm(dim=-1)
        return torch.stack([w.flatten(1).norm(dim=-1) for w in self.W_dec])

    @torch.no_grad()
    def prepare(self, xs: Tensor, ys: Tensor) -> dict[str, Tensor]:
        """What `losses` needs of a batch that does not change between its optimizer steps:
        normalised inputs (in the matmul dtype) and targets, the inlier mask and each layer's
        target variance, computed once per batch rather than once per step."""
        xn, yn = self.norm.norm_x(xs), self.norm.norm_y(ys)
        keep = self.norm.inliers(ys)  # (L, N)
        cnt = keep.sum(1).clamp_min(1)
        ym = (yn * keep[..., None]).sum(1, keepdim=True) / cnt[:, None, None]
        var = ((yn - ym).pow(2).sum(-1) * keep).sum(1) / cnt
        return {"xn": xn.to(self._mm), "yn": yn, "keep": keep, "cnt": cnt, "var": var}

    def losses(self, xs: Tensor, ys: Tensor, step: int, batch: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Raw activations (L, N, d) -> loss terms and batch metrics; `batch`: `prepare(xs, ys)` if already made."""
        b = batch if batch is not None else self.prepare(xs, ys)
        xn, yn, keep, cnt = b["xn"], b["yn"], b["keep"], b["cnt"]
        pre = self.pre(xn)
        acts = self.act(pre)
        recon = self.decode(acts, xn)
        err = (recon - yn).pow(2).sum(-1) * keep  # (L, N)
        mse = (err.sum(1) / cnt).sum()
        total = mse
        out = {"mse": mse}
        cfg = self.cfg
        if cfg.activation != "topk" and pre.dtype != torch.float32:  # the penalties below read them in fp32
            pre, acts = pre.float(), acts.float()
        if cfg.activation != "topk" and cfg.lambda_ > 0:
            warm = max(1, int(cfg.lambda_warmup * cfg.total_steps))
            lam = cfg.lambda_ * min(1.0, (step + 1) / warm)
            norms = self.decoder_norms()[:, None, :]
            sparsity = (torch.tanh(cfg.tanh_c * norms * acts).sum(-1) * keep).sum(1).div(cnt).sum()
            total = total + lam * sparsity
            out["sparsity"] = sparsity.detach()
        if cfg.preact_lambda > 0 and cfg.activation == "jumprelu":
            theta = self.log_threshold.exp()[:, None, :]
            pre_loss = (((theta - pre).relu() * self.decoder_norms()[:, None, :]).sum(-1) * keep).sum(1).div(cnt).sum()
            total = total + cfg.preact_lambda * pre_loss
        out["loss"] = total
        with torch.no_grad():
            out["nmse_layers"] = (err.sum(1) / cnt) / b["var"].clamp_min(1e-12)
            out["outliers"] = (1 - keep).mean(1)
            out["fired"] = acts != 0  # (L, N, F)
        return out

    @torch.no_grad()
    def init_encoder_bias(self, xs: Tensor) -> None:
        """Set b_enc so about `init_fire_fraction` of tokens fire each feature at the start."""
        xs = xs[:, :4096]  # enough tokens for a quantile; bounded memory on big sets
        n = xs.shape[1]
        kth = min(n, max(1, round(n * (1 - self.cfg.init_fire_fraction))))
        xn = self.norm.norm_x(xs)
        q = torch.stack([  # per layer: the (1 − fraction) quantile of each feature's pre-activation
            (xn[l] @ self.W_enc[l].T).kthvalue(kth, dim=0).values for l in range(self.n_layers)
        ])  # (L, F)
        if self.log_threshold is not None:
            level = self.log_threshold.exp()
        else:  # relu: fire above 0; topk: any shift keeps the selection, stay clear of exact zeros
            level = torch.full_like(q, 1.0 if self.cfg.activation == "topk" else 0.0)
        self.b_enc.copy_(level - q)

    @torch.no_grad()
    def init_skip(self, xs: Tensor, ys: Tensor, ridge: float = 0.05) -> None:
        """Start W_skip at the ridge least-squares linear map from inputs to targets (normalised).

        The linear part of an MLP is most of what a skip connection can carry; solving for it from
        the first batches costs one d x d solve per layer and spares the optimizer from learning it
        from zero, so the features spend the short CPU run on the non-linear rest. The ridge term
        (a fraction of the mean input variance) keeps the solve stable on a few thousand tokens.
        """
        if self.W_skip is None:
            return
        xn, yn = self.norm.norm_x(xs).double(), self.norm.norm_y(ys).double()
        keep = self.norm.inliers(ys).double()[..., None]
        for l in range(self.n_layers):
            x, y = xn[l] * keep[l], yn[l] * keep[l]
            gram = x.T @ x
            gram += torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device) * ridge * gram.diagonal().mean()
            self.W_skip[l].copy_(torch.linalg.solve(gram, x.T @ y).T.float())

    # -- export ------------------------------------------------------------------------------
    @torch.no_grad()
    def folded(self) -> dict[str, list[Tensor]]:
        """Weights for raw activations: x_n = (x − μx)/sx and y = sy·ŷ_n + μy folded in."""
        L = self.n_layers
        n = self.norm
        res: dict[str, list[Tensor]] = {k: [] for k in ("W_enc", "b_enc", "threshold", "W_dec", "b_dec", "W_skip")}
        for l in range(L):
            sx, mx = n.x_scale[l], n.x_mean[l]
            w_enc = self.W_enc[l] / sx
            res["W_enc"].append(w_enc.clone())
            res["b_enc"].append(self.b_enc[l] - w_enc @ mx)
            res["threshold"].append(self.log_threshold[l].exp().clone() if self.log_threshold is not None else None)
            if self.cfg.kind == "plt":
                res["W_dec"].append(self.W_dec[l] * n.y_scale[l])
            else:
                res["W_dec"].append(self.W_dec[l] * n.y_scale[l:][None, :, None])
            b_dec = self.b_dec[l] * n.y_scale[l] + n.y_mean[l]
            if self.W_skip is not None:
                w_skip = self.W_skip[l] * (n.y_scale[l] / sx)
                res["W_skip"].append(w_skip)
                b_dec = b_dec - w_skip @ mx
            else:
                res["W_skip"].append(None)
            res["b_dec"].append(b_dec)
        return res

    def to_transcoder_set(self, *, scan: str, model_name: str | None, hooks: tuple[str, str] | None = None):
        """A `TranscoderSet` (engine/transcoders/transcoder_set.py) holding the folded weights."""
        from circuit_atlas.engine.transcoders.transcoder_set import TranscoderSet

        cfg = self.cfg
        extra = {"feature_input_hook": hooks[0], "feature_output_hook": hooks[1]} if hooks else {}
        ts = TranscoderSet(cfg.kind, self.n_layers, self.d_model, cfg.features, activation=cfg.activation,
                           k=cfg.k, skip=cfg.skip, scan=scan, model_name=model_name, **extra)
        w = self.folded()
        with torch.no_grad():
            for l in range(self.n_layers):
                ts.W_enc[l].copy_(w["W_enc"][l])
                ts.b_enc[l].copy_(w["b_enc"][l])
                ts.W_dec[l].copy_(w["W_dec"][l])
                ts.b_dec[l].copy_(w["b_dec"][l])
                if w["threshold"][l] is not None:
                    ts.threshold[l].copy_(w["threshold"][l])
                if w["W_skip"][l] is not None:
                    ts.W_skip[l].copy_(w["W_skip"][l])
        return ts


# ---------------------------------------------------------------------------------------------
# Data: token windows from the corpus, activations from the model
# ---------------------------------------------------------------------------------------------


def _bos_prefix(lm) -> list[int]:
    """The special tokens `lm.tokenize` puts before a prompt (usually [BOS]); attribution sees the same."""
    probe = "hello"
    full = lm.tokenize(probe)
    plain = lm.tokenizer(probe, add_special_tokens=False)["input_ids"]
    if full[len(full) - len(plain):] == plain:
        return list(full[: len(full) - len(plain)])
    return []


def token_stream(lm, texts: list[str], *, progress: bool = True) -> np.ndarray:
    """All documents tokenized and concatenated, each followed by EOS (or BOS when there is none)."""
    tok = lm.tokenizer
    sep = tok.eos_token_id if tok.eos_token_id is not None else tok.bos_token_id
    chunks: list[np.ndarray] = []
    it: Any = range(0, len(texts), 256)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="tokenizing corpus", unit="batch", leave=False)
    for i in it:
        enc = tok(texts[i : i + 256], add_special_tokens=False)["input_ids"]
        for ids in enc:
            if ids:
                chunks.append(np.asarray(ids + ([sep] if sep is not None else []), dtype=np.int64))
    if not chunks:
        raise TrainError("the corpus tokenized to nothing")
    return np.concatenate(chunks)


def token_windows(stream: np.ndarray, prefix: list[int], seq_len: int) -> np.ndarray:
    """(n_windows, seq_len) windows: the BOS prefix (or position 0 of the text) then a slice of the stream."""
    body = seq_len - len(prefix)
    if body < 1:
        raise TrainError(f"--seq-len {seq_len} leaves no room after the {len(prefix)} prefix tokens")
    n = len(stream) // body
    if n == 0:
        raise TrainError(f"the corpus has {len(stream)} tokens, fewer than one window of {seq_len}")
    wins = stream[: n * body].reshape(n, body)
    if prefix:
        wins = np.concatenate([np.tile(np.asarray(prefix, dtype=np.int64), (n, 1)), wins], axis=1)
    return wins


class _Batches:
    """Deterministic batches: step i uses windows perm[i·B:(i+1)·B] of a seeded permutation (re-drawn per epoch)."""

    def __init__(self, windows: np.ndarray, batch_size: int, seed: int):
        self.windows, self.bs, self.seed = windows, batch_size, seed
        self.per_epoch = max(1, len(windows) // batch_size)
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None

    def __call__(self, step: int) -> Tensor:
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.windows))
            self._perm_epoch = epoch
        idx = self._perm[i * self.bs : (i + 1) * self.bs]
        if len(idx) < self.bs:  # fewer windows than one batch: repeat
            idx = np.resize(idx, self.bs)
        return torch.from_numpy(self.windows[idx])


class _Activations:
    """MLP inputs/outputs of every layer for a batch, positions ≥ 1 only, as (L, N, d) fp32.

    With a cache directory, the activations of each step are stored once (bf16) and read back on
    later runs with the same model, corpus and window settings.
    """

    def __init__(self, lm, batches: _Batches, cache_dir: str | None, key: str, hooks: tuple[str, str] | None = None):
        self.lm, self.batches, self.hooks = lm, batches, hooks
        self.cache = Path(cache_dir) / key if cache_dir else None
        if self.cache:
            self.cache.mkdir(parents=True, exist_ok=True)

    def __call__(self, step: int) -> tuple[Tensor, Tensor]:
        if self.cache is not None:
            f = self.cache / f"step_{step:07d}.pt"
            if f.exists():
                d = torch.load(f)
                return d["x"].float().to(self.lm.device), d["y"].float().to(self.lm.device)
        ids = self.batches(step).to(self.lm.device)
        ins, outs = self.lm.mlp_io(ids, hooks=self.hooks)
        xs = torch.stack([t[:, 1:].reshape(-1, t.shape[-1]) for t in ins]).float()
        ys = torch.stack([t[:, 1:].reshape(-1, t.shape[-1]) for t in outs]).float()
        if self.cache is not None:
            xs, ys = xs.bfloat16(), ys.bfloat16()  # what a later run reads back, so both runs agree
            tmp = f.with_suffix(".tmp")
            torch.save({"x": xs.cpu(), "y": ys.cpu()}, tmp)
            tmp.replace(f)
            xs, ys = xs.float(), ys.float()
        return xs, ys


# ---------------------------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])


def _lr_at(cfg: TrainConfig, step: int) -> float:
    total = cfg.total_steps
    decay_start = int(total * (1 - cfg.lr_decay))
    if step < decay_start or cfg.lr_decay <= 0:
        return cfg.lr
    return cfg.lr * max(0.0, (total - step) / max(1, total - decay_start))


def default_scan(model_id: str, cfg: TrainConfig) -> str:
    """`{model-short}-{kind}-{features}`, e.g. smollm2-135m-instruct-plt-512."""
    short = Path(str(model_id).rstrip("/")).name.lower()
    short = short.removesuffix(".gguf").split(".q")[0]
    feats = f"{cfg.features // 1024}k" if cfg.features % 1024 == 0 else str(cfg.features)
    return f"{short}-{cfg.kind}-{feats}"


def _save_checkpoint(path: Path, trainer: TranscoderTrainer, opt, step: int, fired_at: Tensor, cfg: TrainConfig) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "step": step,
            "model": trainer.state_dict(),
            "optimizer": opt.state_dict(),
            "rng": _rng_state(),
            "last_fired": fired_at,
            "config": cfg.fingerprint(),
        },
        tmp,
    )
    os.replace(tmp, path)  # atomic: a kill mid-write leaves the previous checkpoint intact


def train_transcoders(cfg: TrainConfig, lm=None, texts: list[str] | None = None, *, resume: bool = False) -> Path:
    """Train, checkpoint, and save a TranscoderSet to `cfg.out`; returns that directory.

    `lm` and `texts` may be given (tests, the demo); otherwise they come from `cfg.model` and
    `cfg.corpus`. Everything that can fail on bad input (options, corpus, checkpoint) fails before
    the first training step.
    """
    cfg.validate()
    out = Path(cfg.out).expanduser()
    ckpt_path = out / CHECKPOINT
    ckpt = None
    if resume:
        if not ckpt_path.exists():
            raise TrainError(f"--resume: no checkpoint at {ckpt_path}")
        ckpt = torch.load(ckpt_path, weights_only=False, map_location="cpu")
        if ckpt["config"] != cfg.fingerprint():
            diff = {k: (v, cfg.fingerprint().get(k)) for k, v in ckpt["config"].items() if cfg.fingerprint().get(k) != v}
            raise TrainError(f"--resume: {ckpt_path} was written with other settings (checkpoint vs now: {diff})")
    elif ckpt_path.exists():
        raise TrainError(f"{out} already holds a run (checkpoint.pt); pass --resume to continue it or choose another --out")

    if texts is None:
        from circuit_atlas.engine.training.corpus import load_texts

        texts = load_texts(cfg.corpus, field=cfg.field, tokens=cfg.tokens * 2, seed=cfg.seed, max_chars=cfg.tokens * 12)
    if lm is None:
        from circuit_atlas.engine.models.loading import load_model

        lm = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device)

    if cfg.model_text > 0:
        from circuit_atlas.engine.training.corpus import sample_model_text

        texts = list(texts) + sample_model_text(lm, int(cfg.tokens * cfg.model_text), seed=cfg.seed)
        random.Random(cfg.seed).shuffle(texts)

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)

    stream = token_stream(lm, texts, progress=cfg.progress)
    windows = token_windows(stream, _bos_prefix(lm), cfg.seq_len)
    batches = _Batches(windows, cfg.batch_size, cfg.seed)
    keyed = [lm.model_id, cfg.dtype, cfg.seq_len, cfg.batch_size, cfg.seed, hashlib.sha256(stream.tobytes()).hexdigest()]
    if "hooks" in cfg.fingerprint():  # activations read at other points are another cache
        keyed.append(list(cfg.hooks))
    key = hashlib.sha256(json.dumps(keyed).encode()).hexdigest()[:16]
    acts = _Activations(lm, batches, cfg.activation_cache, key, hooks=cfg.hooks)

    dev = torch.device(lm.device)
    trainer = TranscoderTrainer(lm.n_layers, lm.d_model, cfg).to(dev)  # transcoders train where the model runs
    opt = torch.optim.Adam(trainer.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    L, F = lm.n_layers, cfg.features
    last_fired = torch.zeros(L, F, dtype=torch.long, device=dev)  # token count at which each feature last fired
    start = 0
    if ckpt is not None:
        trainer.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        _set_rng_state(ckpt["rng"])
        last_fired = ckpt["last_fired"].to(dev)
        start = ckpt["step"]
    else:
        out.mkdir(parents=True, exist_ok=True)
        # per-layer normalisation and encoder bias from the first batches (they are trained on too)
        xs, ys = zip(*(acts(i) for i in range(min(cfg.norm_batches, cfg.total_batches))))
        trainer.norm.estimate(torch.cat(xs, 1), torch.cat(ys, 1), cfg.outlier_factor)
        trainer.init_encoder_bias(torch.cat(xs, 1))
        trainer.init_skip(torch.cat(xs, 1), torch.cat(ys, 1))
        (out / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
        (out / METRICS).write_text("")

    metrics_path = out / METRICS
    _truncate_metrics(metrics_path, start)
    bar = None
    if cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.total_steps, initial=start, desc=f"train {cfg.kind} {F}/layer", unit="step")
    t0 = time.perf_counter()
    with open(metrics_path, "a") as mf:
        batch_no = -1
        for step in range(start, cfg.total_steps):
            if step // cfg.steps_per_batch != batch_no:
                batch_no = step // cfg.steps_per_batch
                xs, ys = acts(batch_no)
                prepared = trainer.prepare(xs, ys)
            for group in opt.param_groups:
                group["lr"] = _lr_at(cfg, step)
            res = trainer.losses(xs, ys, step, prepared)
            opt.zero_grad(set_to_none=True)
            res["loss"].backward()
            opt.step()
            n_tok = xs.shape[1]
            tokens_seen = (batch_no + 1) * n_tok
            fired = res["fired"]
            any_fired = fired.any(1)
            last_fired[any_fired] = tokens_seen
            dead = ((tokens_seen - last_fired) >= cfg.dead_tokens).float().mean().item() if tokens_seen >= cfg.dead_tokens else float("nan")
            l0_layers = fired.sum(-1).float().mean(1)
            rec = {
                "step": step + 1,
                "tokens": tokens_seen,
                "loss": res["loss"].item(),
                "mse": res["mse"].item(),
                "nmse": res["nmse_layers"].mean().item(),
                "l0": l0_layers.mean().item(),
                "dead": dead,
                "outliers": round(res["outliers"].mean().item(), 5),
                "lr": _lr_at(cfg, step),
                "elapsed_s": round(time.perf_counter() - t0, 3),
            }
            if "sparsity" in res:
                rec["sparsity"] = res["sparsity"].item()
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.total_steps:
                rec["nmse_layers"] = [round(v, 5) for v in res["nmse_layers"].tolist()]
                rec["l0_layers"] = [round(v, 3) for v in l0_layers.tolist()]
            mf.write(json.dumps(rec) + "\n")
            mf.flush()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{rec['loss']:.3g}", nmse=f"{rec['nmse']:.3f}", l0=f"{rec['l0']:.1f}",
                                dead="-" if math.isnan(dead) else f"{dead:.2f}")
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.total_steps:
                _save_checkpoint(ckpt_path, trainer, opt, step + 1, last_fired, cfg)
    if bar is not None:
        bar.close()
    scan = cfg.scan or default_scan(lm.model_id, cfg)
    ts = trainer.to_transcoder_set(scan=scan, model_name=lm.model_id, hooks=cfg.hooks)
    ts.save(out)
    return out


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines after the checkpoint being resumed, so metrics.jsonl has each step once."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
    path.write_text("".join(ln + "\n" for ln in keep))


def read_metrics(out: str | Path) -> list[dict]:
    """The per-step metrics of a run directory."""
    p = Path(out) / METRICS
    return [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()]


# ---------------------------------------------------------------------------------------------
# Recipes and the demo set
# ---------------------------------------------------------------------------------------------


def _recipe_dir() -> Path:
    return Path(str(resources.files("circuit_atlas.engine.training") / "recipes"))


def list_recipes() -> list[str]:
    """Names of the YAML recipes shipped in engine/training/recipes/."""
    return sorted(p.stem for p in _recipe_dir().glob("*.yaml"))


def load_recipe(name_or_path: str) -> dict[str, Any]:
    """A recipe's settings (TrainConfig field names); a name from engine/training/recipes/ or a YAML path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = _recipe_dir() / f"{name_or_path}.yaml"
    if not path.exists():
        raise TrainError(f"unknown recipe {name_or_path!r}; shipped recipes: {', '.join(list_recipes())}")
    data = yaml.safe_load(path.read_text()) or {}
    settings = data.get("train", data)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    bad = [k for k in settings if k.replace("-", "_") not in names and k not in ("lambda",)]
    if bad:
        raise TrainError(f"{path}: unknown settings {bad}")
    out = {}
    for k, v in settings.items():
        k = k.replace("-", "_")
        out["lambda_" if k == "lambda" else k] = v
    return out


def _finished_fingerprint(out: Path) -> dict[str, Any] | None:
    """The settings a finished run in `out` was trained with (its train_config.json), or None."""
    try:
        saved = json.loads((out / "train_config.json").read_text())
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        return TrainConfig(**{k: v for k, v in saved.items() if k in names}).fingerprint()
    except (OSError, ValueError, TypeError):
        return None


def ensure_demo_transcoders(quick: bool = False, *, progress: bool = True) -> Path:
    """The demo model's transcoders, trained once (recipe `demo`, or `demo-quick`) and then reused.

    Cached under $CIRCUIT_ATLAS_HOME/transcoders/<recipe>; a finished run has config.yaml, an
    interrupted one is resumed from its checkpoint. A set trained with other settings than the
    recipe's now (an older recipe) is said and trained again, so the demo always uses the recipe's set.
    """
    recipe = "demo-quick" if quick else "demo"
    out = home() / "transcoders" / recipe
    settings = load_recipe(recipe)
    settings["out"] = str(out)
    settings["progress"] = progress
    cfg = TrainConfig(**settings)
    if (out / "config.yaml").exists():
        if _finished_fingerprint(out) == cfg.fingerprint():
            return out
        import shutil
        import sys

        print(f"{out}: trained with an older '{recipe}' recipe; training it again", file=sys.stderr)
        shutil.rmtree(out)
    if (out / CHECKPOINT).exists():
        saved = torch.load(out / CHECKPOINT, weights_only=False, map_location="cpu").get("config")
        if saved != cfg.fingerprint():  # an interrupted run of an older recipe: start again
            import shutil

            shutil.rmtree(out)
    train_transcoders(cfg, resume=(out / CHECKPOINT).exists())
    return out
