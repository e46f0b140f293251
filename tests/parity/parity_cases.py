"""The parity cases: tiny random models and transcoders saved to disk, for both sides.

Every model's norm weights are random (not all ones, nor Gemma's all-zero offsets), so a
feature read at the wrong hook point, or a norm weight applied twice or not at all, changes
activations and edges. Hook points per architecture are those circuit-tracer 0.5.0's nnsight
backend maps (``tl_nnsight_mapping``): Llama mlp.hook_in / hook_resid_mid -> hook_mlp_out /
mlp.hook_out; Gemma 2 ln2.hook_normalized / hook_resid_mid -> hook_mlp_out; Gemma 3 those and
mlp.hook_in; Qwen 3 mlp.hook_in -> mlp.hook_out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
import zlib
from pathlib import Path

import torch

PROMPT = "The capital of France is Paris"
ARCHS = ("llama", "gemma2", "qwen3")
N_LAYERS, D_MODEL, D_TC, VOCAB = 2, 32, 48, 71  # 71: the tiny char tokenizer's own size
# the hook points each architecture's transcoders use in the variant matrix (PLT, CLT)
MATRIX_HOOKS = {
    "llama": {"plt": ("mlp.hook_in", "hook_mlp_out"), "clt": ("mlp.hook_in", "hook_mlp_out")},
    "gemma2": {"plt": ("ln2.hook_normalized", "hook_mlp_out"), "clt": ("hook_resid_mid", "hook_mlp_out")},
    "qwen3": {"plt": ("mlp.hook_in", "mlp.hook_out"), "clt": ("mlp.hook_in", "mlp.hook_out")},
}


_SAVED: dict = {}  # arch -> (model, prompt ids) of the last save_model


@dataclass(frozen=True)
class Case:
    arch: str
    kind: str  # plt | clt
    skip: bool
    activation: str  # relu | jumprelu | topk
    input_hook: str
    output_hook: str
    batch: int = 16
    max_feat: int | None = None

    @property
    def name(self) -> str:
        extra = f"-max{self.max_feat}-b{self.batch}" if self.max_feat else ""
        return f"{self.arch}-{self.kind}{'+skip' if self.skip else ''}-{self.activation}-{self.input_hook}-{self.output_hook}{extra}"


def all_cases() -> list[Case]:
    out = []
    for arch in ARCHS:
        for kind in ("plt", "clt"):
            for skip in (False, True):
                for act in ("relu", "jumprelu"):
                    out.append(Case(arch, kind, skip, act, *MATRIX_HOOKS[arch][kind]))
    out += [
        # the other hook points circuit-tracer maps, one case each (skip on: it reads the hook too)
        Case("llama", "plt", True, "jumprelu", "hook_resid_mid", "hook_mlp_out"),
        Case("llama", "clt", True, "relu", "mlp.hook_in", "mlp.hook_out"),
        Case("gemma2", "plt", True, "relu", "hook_resid_mid", "hook_mlp_out"),
        Case("gemma2", "clt", True, "jumprelu", "ln2.hook_normalized", "hook_mlp_out"),
        # TopK: 0.5.0 has the activation but no loader sets it; the worker does
        Case("llama", "plt", False, "topk", "mlp.hook_in", "hook_mlp_out"),
        Case("qwen3", "plt", True, "topk", "mlp.hook_in", "mlp.hook_out"),
        # Gemma 3 (its mapping has mlp.hook_in as well)
        Case("gemma3", "plt", True, "jumprelu", "mlp.hook_in", "hook_mlp_out"),
        Case("gemma3", "clt", False, "relu", "ln2.hook_normalized", "hook_mlp_out"),
        # greedy max_feature_nodes with a small batch (several influence updates)
        Case("llama", "plt", False, "relu", "mlp.hook_in", "hook_mlp_out", batch=3, max_feat=12),
        Case("gemma2", "clt", True, "jumprelu", "hook_resid_mid", "hook_mlp_out", batch=4, max_feat=10),
    ]
    return out


@torch.no_grad()
def save_model(arch: str, directory: Path) -> list[int]:
    """A tiny model of ``arch`` with random norm weights, saved (weights + tokenizer); returns
    the prompt's token ids (the model is kept for ``save_transcoders``)."""
    from circuit_atlas.engine.models.loading import tiny_model

    lm = tiny_model(arch, n_layers=N_LAYERS, d_model=D_MODEL, vocab_size=VOCAB, seed=0)
    g = torch.Generator().manual_seed(7)
    for m in lm.model.modules():
        if type(m).__name__.endswith("RMSNorm"):
            offset = 0.0 if arch.startswith("gemma") else 1.0  # Gemma scales by (1 + weight)
            m.weight.copy_(offset + 0.3 * torch.randn(m.weight.shape, generator=g))
    lm.model.save_pretrained(directory)
    lm.tokenizer.save_pretrained(directory)
    ids = lm.tokenize(PROMPT)
    _SAVED[arch] = (lm, ids)
    return ids


@torch.no_grad()
def save_transcoders(case: Case, directory: Path) -> None:
    """Random transcoders for ``case``, their biases (or thresholds) set from the prompt's own
    inputs at the case's hook point so about a fifth of the features fire at every layer: the
    raw residual (hook_resid_mid) is far larger than a normalised one. ``save_model`` of the
    case's architecture must have run in this process."""
    from circuit_atlas.engine.transcoders.transcoder_set import random_transcoders

    lm, ids = _SAVED[case.arch]
    seed = zlib.crc32(case.name.encode()) % 1000  # differs per case, the same every run
    tc = random_transcoders(N_LAYERS, D_MODEL, D_TC, kind=case.kind, activation=case.activation, skip=case.skip,
                            seed=seed, scan="parity")
    tc.feature_input_hook, tc.feature_output_hook = case.input_hook, case.output_hook
    ins, _ = lm.mlp_io(torch.tensor([ids]), hooks=(case.input_hook, case.output_hook))
    for l in range(N_LAYERS):
        x = ins[l][0, 1:].float()
        scale = float(x.pow(2).mean().sqrt())
        if tc.W_skip is not None:  # keep the skip term about as large as the rest
            tc.W_skip[l].div_(scale)
        pre = x @ tc.W_enc[l].T
        # TopK: about half fire, so every position has at least k positive pre-activations;
        # there circuit-tracer's TopK (the k largest, even negative) and ours (then ReLU) agree
        cut = torch.quantile(pre.flatten(), 0.5 if case.activation == "topk" else 0.8)
        if case.activation == "topk":
            tc.b_enc[l].copy_(-cut + 0.01 * scale * (tc.b_enc[l] - tc.b_enc[l].mean()))
            kth = (pre + tc.b_enc[l]).topk(tc.k, dim=-1).values[:, -1]
            assert bool((kth > 0).all()), f"{case.name}: a position with fewer than k positive pre-activations"
        elif case.activation == "jumprelu":
            tc.b_enc[l].mul_(scale)
            tc.threshold[l].copy_(cut + tc.b_enc[l] + 0.01 * scale * tc.threshold[l])
        else:
            tc.b_enc[l].copy_(-cut + 0.1 * scale * (tc.b_enc[l] - tc.b_enc[l].mean()))
    tc.save(directory)


def worker_case(case: Case, model_dir: Path, tc_dir: Path, ids: list[int], out: Path) -> dict:
    d = asdict(case)
    return {
        "name": case.name, "model_dir": str(model_dir), "tc_dir": str(tc_dir), "kind": case.kind, "n_layers": N_LAYERS,
        "scan": "parity", "input_hook": case.input_hook, "output_hook": case.output_hook, "ids": ids,
        "batch": case.batch, "max_feat": case.max_feat, "out": str(out),
        "topk": max(1, D_TC // 8) if case.activation == "topk" else None, "case": d,
    }
