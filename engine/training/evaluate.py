"""How good is a transcoder set? Reconstruction per layer and the replacement model's fidelity.

Per layer: NMSE (‖y − ŷ‖² / ‖y − ȳ‖²), explained variance, L0 (active features per token) and the
fraction of features that never fired on the evaluation text. For the whole set: the replacement
model (every MLP output replaced by the transcoder reconstruction, no error term, BOS position
kept real as attribution does) against the real model: next-token agreement (same argmax) and
KL(real ‖ replacement) per token. These are the numbers that say whether graphs built on the set
will mostly be features or mostly error nodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["EvalResult", "evaluate_transcoders", "evaluate_loaded", "render_table", "mlp_modules", "graph_scores",
           "demo_prompt_sample"]


@dataclass
class EvalResult:
    """Evaluation figures; `layers` holds one dict per layer (nmse, explained_variance, l0, dead_fraction)."""

    model: str
    transcoders: str
    tokens: int
    layers: list[dict[str, float]] = field(default_factory=list)
    mean_nmse: float = math.nan
    mean_l0: float = math.nan
    next_token_agreement: float = math.nan
    kl: float = math.nan
    graphs: dict[str, Any] | None = None  # graph_scores over demo prompts, when asked for


def mlp_modules(lm) -> list[torch.nn.Module]:
    """The modules whose forward output is the MLP output the transcoders reconstruct.

    Asks the architecture adapter (engine/models/adapters.py) first; falls back to the usual HF layouts.
    """
    adapter = getattr(lm, "adapter", None)
    for name in ("mlp_modules", "mlp_module"):
        fn = getattr(adapter, name, None) if adapter is not None else None
        if callable(fn):
            try:
                mods = fn(lm.model) if name == "mlp_modules" else [fn(lm.model, i) for i in range(lm.n_layers)]
                return list(mods)
            except TypeError:
                pass
    m = lm.model
    base = getattr(m, "model", None) or getattr(m, "transformer", None)
    layers = getattr(base, "layers", None) or getattr(base, "h", None)
    if layers is None:
        raise TypeError(f"cannot find the MLP modules of {type(m).__name__}")
    return [layer.mlp for layer in layers]


class _Accum:
    """Running sums for NMSE / explained variance per layer, without holding activations."""

    def __init__(self, n_layers: int, d_model: int, n_features: int):
        z = lambda *s: torch.zeros(*s, dtype=torch.float64)  # noqa: E731
        self.n = 0
        self.sse = z(n_layers)
        self.y_sum, self.y_sq = z(n_layers, d_model), z(n_layers)
        self.r_sum, self.r_sq = z(n_layers, d_model), z(n_layers)
        self.active = z(n_layers)
        self.fired = torch.zeros(n_layers, n_features, dtype=torch.bool)

    def add(self, layer: int, y: Tensor, y_hat: Tensor, acts: Tensor) -> None:
        y, y_hat = y.double(), y_hat.double()
        r = y - y_hat
        self.sse[layer] += r.pow(2).sum()
        self.y_sum[layer] += y.sum(0)
        self.y_sq[layer] += y.pow(2).sum()
        self.r_sum[layer] += r.sum(0)
        self.r_sq[layer] += r.pow(2).sum()
        on = acts != 0
        self.active[layer] += on.sum()
        self.fired[layer] |= on.any(0).cpu()

    def layers(self) -> list[dict[str, float]]:
        n = max(self.n, 1)
        tot = self.y_sq - self.y_sum.pow(2).sum(-1) / n  # Σ‖y − ȳ‖²
        res = self.r_sq - self.r_sum.pow(2).sum(-1) / n  # Σ‖r − r̄‖²
        out = []
        for l in range(len(self.sse)):
            out.append({
                "layer": l,
                "nmse": float(self.sse[l] / tot[l].clamp_min(1e-30)),
                "explained_variance": float(1 - res[l] / tot[l].clamp_min(1e-30)),
                "l0": float(self.active[l] / n),
                "dead_fraction": float((~self.fired[l]).float().mean()),
            })
        return out


@torch.no_grad()
def _replacement_logits(lm, tc, ids: Tensor) -> Tensor:
    """Logits with every MLP output replaced by the transcoder reconstruction (BOS kept real),
    read and written at the set's own hook points (config.yaml), as attribution does."""
    from circuit_atlas.engine.models.adapters import mlp_hooks
    from circuit_atlas.engine.attribution.replacement import hook_points

    inputs: dict[int, Tensor] = {}
    acts: list[Tensor] = []

    def pre(layer: int, x: Tensor) -> None:
        inputs[layer] = x

    def post(layer: int, y: Tensor) -> Tensor:
        x = inputs.pop(layer).float()
        acts.append(tc.encode(layer, x))
        rec = tc.decode(acts, layer)
        sk = tc.skip(layer, x)
        if sk is not None:
            rec = rec + sk
        rec = rec.to(y.dtype)
        rec[:, 0] = y[:, 0]
        return rec

    with mlp_hooks(lm.model, lm.adapter, pre, post, **hook_points(tc)):
        return lm.model(ids).logits.float()


@torch.no_grad()
def evaluate_loaded(lm, tc, windows: Tensor, *, batch_size: int = 8, progress: bool = True, source: str = "") -> EvalResult:
    """Evaluate `tc` on `lm` over token windows (n, T) whose position 0 is BOS (not scored)."""
    tc.check_fits(lm.n_layers, lm.d_model, source)
    acc = _Accum(lm.n_layers, lm.d_model, tc.d_transcoder)
    agree = 0.0
    kl_sum = 0.0
    n_pos = 0
    it: Any = range(0, len(windows), batch_size)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="evaluating transcoders", unit="batch", leave=False)
    for i in it:
        ids = windows[i : i + batch_size].to(lm.device)
        ins, outs = lm.mlp_io(ids, hooks=(tc.feature_input_hook, tc.feature_output_hook))
        xs = [t[:, 1:].reshape(-1, t.shape[-1]).float() for t in ins]
        ys = [t[:, 1:].reshape(-1, t.shape[-1]).float() for t in outs]
        tc_acts, recons = tc.forward(xs)
        for l in range(lm.n_layers):
            acc.add(l, ys[l], recons[l], tc_acts[l])
        acc.n += xs[0].shape[0]
        real = lm.model(ids).logits.float()[:, 1:]
        repl = _replacement_logits(lm, tc, ids)[:, 1:]
        agree += (real.argmax(-1) == repl.argmax(-1)).sum().item()
        lp, lq = real.log_softmax(-1), repl.log_softmax(-1)
        kl_sum += (lp.exp() * (lp - lq)).sum(-1).sum().item()
        n_pos += real.shape[0] * real.shape[1]
    layers = acc.layers()
    return EvalResult(
        model=str(lm.model_id), transcoders=source or str(getattr(tc, "scan", "")), tokens=acc.n, layers=layers,
        mean_nmse=sum(d["nmse"] for d in layers) / len(layers), mean_l0=sum(d["l0"] for d in layers) / len(layers),
        next_token_agreement=agree / max(n_pos, 1), kl=kl_sum / max(n_pos, 1),
    )


def evaluate_transcoders(
    *, model: str, transcoders: str, corpus: str = "default", field: str = "text", tokens: int = 8192,
    seq_len: int = 64, batch_size: int = 8, dtype: str = "float32", device: str = "cpu", seed: int = 1,
    progress: bool = True,
) -> EvalResult:
    """Load model, transcoders and text, then `evaluate_loaded` on about `tokens` scored tokens."""
    import numpy as np

    from circuit_atlas.engine.training.corpus import load_texts
    from circuit_atlas.engine.models.loading import load_model
    from circuit_atlas.engine.training.train import _bos_prefix, token_stream, token_windows
    from circuit_atlas.engine.transcoders.transcoder_set import load_transcoders

    lm = load_model(model, dtype=dtype, device=device)
    tc = load_transcoders(transcoders, device=device)
    texts = load_texts(corpus, field=field, tokens=max(tokens * 4, 50_000), seed=0, max_chars=tokens * 40)
    wins = token_windows(token_stream(lm, texts, progress=progress), _bos_prefix(lm), seq_len)
    n = max(1, math.ceil(tokens / (seq_len - 1)))
    pick = np.random.default_rng(seed).permutation(len(wins))[:n]
    return evaluate_loaded(lm, tc, torch.from_numpy(wins[pick]), batch_size=batch_size, progress=progress, source=str(transcoders))


def render_table(res: EvalResult):
    """A rich Table of the per-layer figures with the replacement-model summary as caption."""
    from rich.table import Table

    t = Table(title=f"{res.transcoders} on {res.model} ({res.tokens} tokens)")
    for col in ("layer", "NMSE", "expl. var.", "L0", "dead"):
        t.add_column(col, justify="right")
    for d in res.layers:
        t.add_row(str(d["layer"]), f"{d['nmse']:.3f}", f"{d['explained_variance']:.3f}", f"{d['l0']:.1f}", f"{d['dead_fraction']:.2f}")
    t.caption = (
        f"mean NMSE {res.mean_nmse:.3f}, mean L0 {res.mean_l0:.1f}; replacement model: next-token agreement "
        f"{res.next_token_agreement:.3f}, KL {res.kl:.3f} nats/token"
    )
    if res.graphs:
        g = res.graphs
        t.caption += (f"; graphs of {g['prompts']} demo prompts: replacement score {g['mean_replacement']:.3f} "
                      f"({g['min_replacement']:.3f}-{g['max_replacement']:.3f}), completeness {g['mean_completeness']:.3f}")
    return t


def demo_prompt_sample(n: int) -> list[dict[str, Any]]:
    """`n` prompts of the demo corpus taken round-robin over its groups (file order within a group),
    so a small sample still spans every kind of circuit the demo looks for."""
    import json
    from importlib import resources
    from pathlib import Path

    path = Path(str(resources.files("circuit_atlas.ingest") / "demo_corpus.jsonl"))
    groups: dict[str, list[dict[str, Any]]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            groups.setdefault(row["group"], []).append(row)
    out: list[dict[str, Any]] = []
    depth = 0
    while len(out) < n and any(depth < len(g) for g in groups.values()):
        out += [g[depth] for g in groups.values() if depth < len(g)][: n - len(out)]
        depth += 1
    return out


# Features visited per prompt (the most influential first). Unvisited features' inputs are left
# out of every score, so more visited features explain more of each graph: on 8 demo prompts
# (one per group) 1,024 / 1,536 / 2,048 gave replacement 0.466 / 0.520 / 0.552 and completeness
# 0.843 / 0.865 / 0.878 (docs/demo.md); circuit-tracer's and Neuronpedia's graphs visit up to 8,192.
# A full demo at 2,048 was stopped past 15 minutes while the store's loader still ran per-batch
# derived-layer deltas (fixed since: store/embedded.py _begin_delta); 2,048 was not re-measured after.
DEMO_MAX_FEATURE_NODES = 1536


def graph_scores(lm, tc, prompts: list[str], *, max_feature_nodes: int | None = DEMO_MAX_FEATURE_NODES, progress: bool = True) -> dict[str, Any]:
    """Mean, min and max replacement and completeness scores of the prompts' attribution graphs.

    These are the scores attribution writes into every graph (engine/pruning.graph_scores: the
    share of the logits' influence that reaches tokens rather than error nodes, and the share of
    each node's input that comes from non-error nodes), computed with the demo's settings
    (`DEMO_MAX_FEATURE_NODES`), so they predict what the demo's graphs will score."""
    from circuit_atlas.engine.attribution.attribute import attribute

    it: Any = prompts
    if progress:
        from tqdm import tqdm

        it = tqdm(prompts, desc="graph scores", unit="prompt")
    rep, comp = [], []
    for text in it:
        sc = attribute(lm, tc, text, max_feature_nodes=max_feature_nodes).meta["scores"]
        rep.append(float(sc["replacement_score"]))
        comp.append(float(sc["completeness_score"]))
    if not rep:
        return {}
    return {"prompts": len(rep), "mean_replacement": sum(rep) / len(rep), "min_replacement": min(rep),
            "max_replacement": max(rep), "mean_completeness": sum(comp) / len(comp), "min_completeness": min(comp),
            "max_completeness": max(comp)}
