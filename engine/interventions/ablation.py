"""Interventions: set transcoder features to chosen values and watch the model's output change.

The model runs with every layer's MLP output (at positions >= 1) replaced by

    transcoder reconstruction (decoders times the feature activations)
    + skip path (linear in the current MLP input, when the transcoders have one)
    + error node (frozen: the clean run's true MLP output minus its reconstruction and skip)

so with no intervention the logits are exactly the clean ones. At BOS the output is the clean
one except that a skip path stays live there too (as in circuit-tracer and the attribution
graph). "MLP input" and "output" are the transcoders' hook points (config.yaml's
``feature_input_hook`` / ``feature_output_hook``). Intervened features are set at
their positions (``clamp`` to a value, ``scale`` by a factor, ``zero``); what the other
features do depends on the mode:

- iterative (``layer_range=None``, the default): every feature is re-encoded from the
  (modified) MLP input of its layer, so downstream features react to the change;
- constrained (``layer_range=(a, b)``, layers a..b-1): inside the range features keep their
  clean activations (only the intervened ones change: "patch decodings"); outside it they are
  re-encoded as in iterative mode. ``(0, n_layers)`` constrains every layer: with frozen
  attention the model is then the local replacement model of the attribution graph, linear in
  the activations, and a change is exactly what the graph's direct edges predict.

``freeze_attention=True`` replays the clean run's attention patterns *and* every normalisation
denominator (pre-attention, pre-MLP, q/k and final norms) in the intervened pass (the frozen
quantities of the local replacement model); ``False`` recomputes them from the new residual
stream. Error nodes are always frozen. ``feature=-1`` names a layer's error node (Neuronpedia's
``{layer}_-1_{pos}``), which can be zeroed or scaled.

Exactness: the intervened pass is compared with a reference pass run exactly the same way
(replayed when attention is frozen) and every MLP output is written as the reference output
plus the change, so an intervention that changes nothing gives the clean logits bit for bit on
every architecture (for LayerNorm models the replayed arithmetic differs from the live one in
the last bits; that difference is removed).
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from circuit_atlas.engine.models.adapters import Freeze, recording, replaying
from circuit_atlas.errors import CircuitAtlasError

__all__ = [
    "MODES",
    "CircuitValidation",
    "CleanRun",
    "Intervention",
    "InterventionError",
    "InterventionResult",
    "clean_run",
    "intervene",
    "intervened_logits",
    "parse_feature_key",
    "parse_intervention",
    "prompts_from_store",
    "validate_circuit",
]

MODES = ("clamp", "scale", "zero")
ERROR_NODE = -1  # feature index that names a layer's error node


class InterventionError(CircuitAtlasError, ValueError):
    """A bad intervention request: layer, feature or position out of range, unknown mode,
    bad layer range or option; the message names the offending value and the allowed range."""


@dataclass(frozen=True)
class Intervention:
    """Set feature ``feature`` of layer ``layer`` at position ``pos`` (None: every position but
    BOS). ``mode``: ``clamp`` (to ``value``), ``scale`` (multiply by ``value``) or ``zero``.
    ``feature=-1`` is the layer's error node (zero or scale only). Negative positions count
    from the end (-1: the last token)."""

    layer: int
    pos: int | None
    feature: int
    mode: str = "clamp"
    value: float = 0.0


@dataclass
class InterventionResult:
    """``before``/``after``: top tokens at the last position (token, token_id, prob, logit).
    ``before`` holds the clean top ``top_k``; ``after`` holds the union of those tokens and the
    intervened run's own top ``top_k``, sorted by the new probability, with ``prob_before`` and
    ``change`` (prob - prob_before) beside them. ``kl`` is KL(before || after) at the last
    position, in nats. ``generated`` is the greedy continuation under the intervention
    (``generated_before`` the clean one) when ``generate`` > 0."""

    before: pd.DataFrame
    after: pd.DataFrame
    kl: float
    logits_before: Tensor  # (V,)
    logits_after: Tensor  # (V,)
    generated: str | None = None
    generated_before: str | None = None
    generated_ids: list[int] | None = None
    generated_before_ids: list[int] | None = None
    token_ids: list[int] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    interventions: list[Intervention] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no logit vectors)."""
        return {
            "token_ids": self.token_ids,
            "tokens": self.tokens,
            "interventions": [asdict(iv) for iv in self.interventions],
            "settings": self.settings,
            "kl": self.kl,
            "before": self.before.to_dict(orient="records"),
            "after": self.after.to_dict(orient="records"),
            "generated": self.generated,
            "generated_before": self.generated_before,
            "generated_ids": self.generated_ids,
            "generated_before_ids": self.generated_before_ids,
        }


# ---- parsing ---------------------------------------------------------------------------------
_SPEC = re.compile(r"^\s*(-?\d+)\s*:\s*(-?\d+)\s*(?:@\s*(-?\d+)\s*)?=\s*(x|\*)?\s*([-+]?[\d.]+(?:[eE][-+]?\d+)?|[-+]?inf|nan)\s*$")


def parse_intervention(spec: str) -> Intervention:
    """``LAYER:FEATURE[@POS]=VALUE`` (clamp; ``=0`` zeroes) or ``LAYER:FEATURE[@POS]=xSCALE``
    (scale). Without ``@POS`` the intervention applies at every position but BOS."""
    m = _SPEC.match(spec)
    if not m:
        raise InterventionError(
            f"--set {spec!r}: expected LAYER:FEATURE[@POS]=VALUE (clamp, =0 zeroes) or LAYER:FEATURE[@POS]=xSCALE"
        )
    layer, feature, pos, scale, num = m.groups()
    try:
        value = float(num)
    except ValueError as exc:
        raise InterventionError(f"--set {spec!r}: {num!r} is not a number") from exc
    if not math.isfinite(value):
        raise InterventionError(f"--set {spec!r}: the value must be finite")
    if scale:
        mode = "scale"
    elif value == 0.0:
        mode = "zero"
    else:
        mode = "clamp"
    return Intervention(int(layer), None if pos is None else int(pos), int(feature), mode, value)


def parse_feature_key(key: str) -> tuple[str, int, int]:
    """``"{scan}:{layer}:{index}"`` -> (scan, layer, index); the scan may itself hold colons."""
    parts = str(key).strip().rsplit(":", 2)
    if len(parts) != 3:
        raise InterventionError(f"feature key {key!r}: expected SCAN:LAYER:INDEX")
    try:
        return parts[0], int(parts[1]), int(parts[2])
    except ValueError as exc:
        raise InterventionError(f"feature key {key!r}: layer and index must be integers") from exc


# ---- the clean run ---------------------------------------------------------------------------
@dataclass
class CleanRun:
    """What the intervened passes of one token sequence compare against. ``logits`` are the real
    model's; ``x``/``out``/``acts``/``skip`` come from the reference pass (run the way the
    intervened passes run: replayed when ``record`` is set), ``ref_logits`` are its logits."""

    ids: Tensor  # (T,)
    logits: Tensor  # (T, V) real model
    record: Freeze | None
    x: list[Tensor]  # per layer (T, d) MLP input
    out: list[Tensor]  # per layer (T, d) MLP output as added to the residual
    acts: list[Tensor]  # per layer (T, d_tc), row 0 (BOS) zero
    skip: list[Tensor | None]  # per layer (T, d) skip path, or None
    ref_logits: Tensor  # (T, V)
    _errors: list[Tensor] | None = None

    def errors(self, tc) -> list[Tensor]:
        """Error nodes per layer (T, d) in the transcoders' dtype, row 0 zero."""
        if self._errors is None:
            errs = []
            for i in range(len(self.out)):
                e = self.out[i].to(tc.dtype) - tc.decode(self.acts, i)
                if self.skip[i] is not None:
                    e = e - self.skip[i]
                e = e.clone()
                e[0] = 0
                errs.append(e)
            self._errors = errs
        return self._errors

    @property
    def n_pos(self) -> int:
        return int(self.ids.shape[0])


def _hooked_pass(lm, tc, ids: Tensor, pre, post) -> Tensor:
    """One forward pass of the real model with a hook at each layer's feature input point
    (``pre(i, x)``) and one at its output point (``post(i, out) -> new out or None``), the
    transcoders' hook points; returns the logits (T, V)."""
    from circuit_atlas.engine.models.adapters import mlp_hooks

    def post_one(i: int, output: Tensor) -> Tensor | None:
        new = post(i, output[0])
        return None if new is None else new.unsqueeze(0)

    points = {"input_hook": tc.feature_input_hook, "output_hook": tc.feature_output_hook}
    with mlp_hooks(lm.model, lm.adapter, lambda i, x: pre(i, x[0]), post_one, **points):
        return lm.model(input_ids=ids.unsqueeze(0), use_cache=False).logits[0]


@torch.no_grad()
def clean_run(lm, tc, token_ids: Sequence[int] | Tensor, *, freeze_attention: bool = True) -> CleanRun:
    """The clean pass of ``token_ids`` (with BOS) and, when attention is frozen, a replayed
    reference pass with its recorded patterns and scales."""
    ids = torch.as_tensor(token_ids, dtype=torch.long, device=lm.device).reshape(-1)
    n = lm.n_layers
    xs: list[Tensor] = [None] * n  # type: ignore[list-item]
    outs: list[Tensor] = [None] * n  # type: ignore[list-item]

    def pre(i, x):
        xs[i] = x

    def post(i, out):
        outs[i] = out
        return None

    record = None
    if freeze_attention:
        with recording() as record:
            logits = _hooked_pass(lm, tc, ids, lambda i, x: None, lambda i, o: None)
        with replaying(record):
            ref_logits = _hooked_pass(lm, tc, ids, pre, post)
    else:
        logits = _hooked_pass(lm, tc, ids, pre, post)
        ref_logits = logits
    acts, skips = [], []
    for i in range(n):
        x = xs[i].to(tc.dtype)
        a = tc.encode(i, x)
        a[0] = 0
        acts.append(a)
        s = tc.skip(i, x)
        skips.append(None if s is None else s)
    return CleanRun(ids, logits, record, xs, outs, acts, skips, ref_logits)


# ---- the intervened pass ---------------------------------------------------------------------
@dataclass
class _Resolved:
    layer: int
    positions: Tensor  # (P,) long, all >= 1
    feature: int
    mode: str
    value: float


def _check_layer_range(layer_range, n_layers: int) -> tuple[int, int] | None:
    if layer_range is None:
        return None
    try:
        a, b = (int(v) for v in layer_range)
    except (TypeError, ValueError) as exc:
        raise InterventionError(f"layer_range must be (start, stop), got {layer_range!r}") from exc
    if not 0 <= a < b <= n_layers:
        raise InterventionError(
            f"layer_range {a}:{b} is outside 0 <= start < stop <= {n_layers} (stop is exclusive; "
            f"0:{n_layers} constrains every layer)"
        )
    return a, b


def _resolve(lm, tc, interventions: Iterable[Intervention], n_pos: int) -> list[_Resolved]:
    out = []
    for iv in interventions:
        if not isinstance(iv, Intervention):
            raise InterventionError(f"expected an Intervention, got {type(iv).__name__}")
        if iv.mode not in MODES:
            raise InterventionError(f"{iv}: unknown mode {iv.mode!r}; choose one of {', '.join(MODES)}")
        if not 0 <= int(iv.layer) < tc.n_layers:
            raise InterventionError(f"{iv}: layer {iv.layer} is outside 0..{tc.n_layers - 1}")
        if not (int(iv.feature) == ERROR_NODE or 0 <= int(iv.feature) < tc.d_transcoder):
            raise InterventionError(
                f"{iv}: feature {iv.feature} is outside 0..{tc.d_transcoder - 1} (or -1 for the error node)"
            )
        if int(iv.feature) == ERROR_NODE and iv.mode == "clamp":
            raise InterventionError(f"{iv}: an error node (feature -1) can be zeroed or scaled, not clamped")
        try:
            value = float(iv.value)
        except (TypeError, ValueError) as exc:
            raise InterventionError(f"{iv}: value {iv.value!r} is not a number") from exc
        if not math.isfinite(value):
            raise InterventionError(f"{iv}: value must be finite")
        if iv.pos is None:
            positions = torch.arange(1, n_pos, device=lm.device)
        else:
            p = int(iv.pos)
            q = p + n_pos if p < 0 else p
            if not 0 <= q < n_pos:
                raise InterventionError(f"{iv}: position {p} is beyond the prompt ({n_pos} tokens with BOS, positions 0..{n_pos - 1})")
            if q == 0:
                raise InterventionError(f"{iv}: position 0 is the BOS token, which has no features; use 1..{n_pos - 1}")
            positions = torch.tensor([q], device=lm.device)
        out.append(_Resolved(int(iv.layer), positions, int(iv.feature), iv.mode, value))
    return out


def _apply(a: Tensor, r: _Resolved) -> None:
    """Apply one resolved intervention in place to a (T, d_tc) activation matrix or (T, d) error."""
    if r.feature == ERROR_NODE:
        rows = a[r.positions]
        a[r.positions] = rows * (0.0 if r.mode == "zero" else r.value)
        return
    col = a[r.positions, r.feature]
    if r.mode == "zero":
        new = torch.zeros_like(col)
    elif r.mode == "scale":
        new = col * r.value
    else:
        new = torch.full_like(col, r.value)
    a[r.positions, r.feature] = new


@torch.no_grad()
def _intervened_pass(lm, tc, clean: CleanRun, resolved: list[_Resolved], layer_range: tuple[int, int] | None) -> Tensor:
    n = lm.n_layers
    by_layer: dict[int, list[_Resolved]] = {}
    for r in resolved:
        by_layer.setdefault(r.layer, []).append(r)
    xs: list[Tensor] = [None] * n  # type: ignore[list-item]
    deltas: list[Tensor] = []

    def pre(i, x):
        xs[i] = x

    def post(i, true):
        x = xs[i].to(tc.dtype)
        ref_acts = clean.acts[i]
        if layer_range is not None and layer_range[0] <= i < layer_range[1]:
            a = ref_acts.clone()
        else:
            a = tc.encode(i, x)
            a[0] = 0
        errs = [r for r in by_layer.get(i, []) if r.feature == ERROR_NODE]
        for r in by_layer.get(i, []):
            if r.feature != ERROR_NODE:
                _apply(a, r)
        deltas.append(a - ref_acts)
        change = tc.decode(deltas, i) - tc.b_dec[i]
        skip_change = None if clean.skip[i] is None else tc.skip(i, x) - clean.skip[i]
        if skip_change is not None:
            change = change + skip_change
        if errs:
            err = clean.errors(tc)[i]
            new_err = err.clone()
            for r in errs:
                _apply(new_err, r)
            change = change + (new_err - err)
        new = clean.out[i] + change.to(clean.out[i].dtype)
        new[0] = clean.out[i][0]
        if skip_change is not None:  # the skip path stays live at BOS (circuit-tracer's choice)
            new[0] += skip_change[0].to(new.dtype)
        return new

    ctx = replaying(clean.record) if clean.record is not None else contextlib.nullcontext()
    with ctx:
        logits = _hooked_pass(lm, tc, clean.ids, pre, post)
    if torch.equal(clean.ref_logits, clean.logits):
        return logits
    return clean.logits + (logits - clean.ref_logits)


def intervened_logits(
    lm, tc, clean: CleanRun, interventions: Iterable[Intervention], *, layer_range: tuple[int, int] | None = None
) -> Tensor:
    """Logits (T, V) of the clean run's tokens under ``interventions`` (attention frozen iff
    ``clean`` was made with ``freeze_attention``); see the module docstring for the semantics."""
    rng = _check_layer_range(layer_range, lm.n_layers)
    resolved = _resolve(lm, tc, interventions, clean.n_pos)
    return _intervened_pass(lm, tc, clean, resolved, rng)


# ---- the public entry point ------------------------------------------------------------------
def _top_table(lm, logits: Tensor, ids: Tensor) -> pd.DataFrame:
    probs = torch.softmax(logits.double(), dim=-1)
    ids_list = [int(i) for i in ids.tolist()]
    return pd.DataFrame(
        {
            "token": lm.token_strings(ids_list) if ids_list else [],
            "token_id": ids_list,
            "prob": [float(probs[i]) for i in ids_list],
            "logit": [float(logits[i]) for i in ids_list],
        }
    )


def _kl(before: Tensor, after: Tensor) -> float:
    lp = torch.log_softmax(before.double(), dim=-1)
    lq = torch.log_softmax(after.double(), dim=-1)
    return float(max(0.0, (lp.exp() * (lp - lq)).sum().item()))


def _check_prompt(lm, prompt: str | Sequence[int]) -> list[int]:
    from circuit_atlas.engine.attribution.attribute import _check_prompt as check

    if isinstance(prompt, Tensor):
        prompt = [int(t) for t in prompt.reshape(-1).tolist()]
    _, ids = check(lm, prompt)
    if len(ids) < 2:
        raise InterventionError("the prompt needs at least one token after BOS (features live at positions >= 1)")
    return ids


def _greedy(lm, tc, ids: list[int], interventions: list[Intervention], n: int, *, freeze: bool,
            layer_range, intervene_new: bool) -> list[int]:
    """Greedy continuation: one full re-forward per token, the clean run recomputed each step
    (its patterns, scales, errors and activations are those of the clean run of the current
    tokens). Interventions with a fixed position stay at that prompt position; ``pos=None`` ones
    cover the new positions too. Stops at EOS or the context limit."""
    seq = list(ids)
    eos = lm.tokenizer.eos_token_id
    new: list[int] = []
    for _ in range(n):
        if len(seq) >= lm.max_context:
            break
        if intervene_new:
            clean = clean_run(lm, tc, seq, freeze_attention=freeze)
            logits = _intervened_pass(lm, tc, clean, _resolve(lm, tc, interventions, len(seq)), layer_range)[-1]
        else:
            logits = lm.logits(seq)[0, -1]
        tok = int(torch.argmax(logits))
        new.append(tok)
        seq.append(tok)
        if eos is not None and tok == int(eos) and eos != lm.bos_token_id:
            break
    return new


def intervene(
    lm,
    tc,
    prompt: str | list[int],
    interventions: list[Intervention],
    *,
    freeze_attention: bool = True,
    layer_range: tuple[int, int] | None = None,
    top_k: int = 10,
    generate: int = 0,
) -> InterventionResult:
    """Run ``prompt`` (text, or token ids starting with BOS) with ``interventions`` applied and
    compare the last position's top tokens before and after. ``layer_range=(a, b)`` constrains
    layers a..b-1 (stop exclusive); None is iterative. ``generate=N`` adds a greedy continuation
    of up to N tokens with and without the intervention."""
    tc.check_fits(lm.n_layers, lm.d_model, source=str(getattr(tc, "scan", "")))
    if int(top_k) < 1:
        raise InterventionError(f"top_k must be >= 1, got {top_k}")
    if int(generate) < 0:
        raise InterventionError(f"generate must be >= 0, got {generate}")
    ids = _check_prompt(lm, prompt)
    rng = _check_layer_range(layer_range, lm.n_layers)
    ivs = list(interventions)
    resolved = _resolve(lm, tc, ivs, len(ids))
    clean = clean_run(lm, tc, ids, freeze_attention=freeze_attention)
    after_all = _intervened_pass(lm, tc, clean, resolved, rng)
    before, after = clean.logits[-1].float(), after_all[-1].float()
    k = min(int(top_k), before.shape[-1])
    top_before = torch.softmax(before, -1).topk(k).indices
    top_after = torch.softmax(after, -1).topk(k).indices
    before_df = _top_table(lm, before, top_before)
    union = list(dict.fromkeys([*top_before.tolist(), *top_after.tolist()]))
    after_df = _top_table(lm, after, torch.tensor(union))
    p_before = torch.softmax(before.double(), -1)
    after_df["prob_before"] = [float(p_before[i]) for i in union]
    after_df["change"] = after_df["prob"] - after_df["prob_before"]
    after_df = after_df.sort_values("prob", ascending=False, kind="stable").reset_index(drop=True)
    generated = generated_before = g_after = g_before = None
    if generate:
        g_after = _greedy(lm, tc, ids, ivs, int(generate), freeze=freeze_attention, layer_range=rng, intervene_new=True)
        g_before = _greedy(lm, tc, ids, [], int(generate), freeze=freeze_attention, layer_range=rng, intervene_new=False)
        generated = lm.tokenizer.decode(g_after)
        generated_before = lm.tokenizer.decode(g_before)
    settings = {"freeze_attention": bool(freeze_attention), "layer_range": list(rng) if rng else None,
                "top_k": int(top_k), "generate": int(generate), "model": getattr(lm, "model_id", None),
                "scan": getattr(tc, "scan", None)}
    return InterventionResult(
        before=before_df,
        after=after_df,
        kl=_kl(before, after),
        logits_before=before.detach().cpu(),
        logits_after=after.detach().cpu(),
        generated=generated,
        generated_before=generated_before,
        generated_ids=g_after,
        generated_before_ids=g_before,
        token_ids=ids,
        tokens=lm.token_strings(ids),
        interventions=ivs,
        settings=settings,
    )


# ---- circuit validation across a prompt group -----------------------------------------------
@dataclass
class CircuitValidation:
    """``table``: one row per prompt; ``controls``: one row per (prompt, control set);
    ``summary``: averages over prompts."""

    table: pd.DataFrame
    controls: pd.DataFrame
    summary: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary, "prompts": self.table.to_dict(orient="records"),
                "controls": self.controls.to_dict(orient="records")}


def prompts_from_store(store, group: str) -> list[dict[str, Any]]:
    """The prompts of ``group`` (``prompt_group`` property) as dicts with id, text, token_ids,
    expected, model and scan, ordered by id. Raises InterventionError when there are none."""
    frame = store.read(
        "MATCH (p:Prompt) WHERE p.prompt_group = $g RETURN p.id AS id, p.text AS text, p.token_ids AS token_ids, "
        "p.expected AS expected, p.model AS model, p.scan AS scan ORDER BY id",
        {"g": group},
    )
    if frame.empty:
        raise InterventionError(f"no prompts in group {group!r} in the store")
    rows = []
    for r in frame.to_dict(orient="records"):
        tids = r.get("token_ids")
        r["token_ids"] = None if tids is None else [int(t) for t in tids]
        for key in ("expected", "model", "scan", "text"):
            v = r.get(key)
            r[key] = None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
        rows.append(r)
    return rows


def _expected_token(lm, expected: str | None, probs: Tensor) -> tuple[int, str]:
    """(token id, source): the stored expected answer's first token (tried as given and with a
    leading space; the variant the clean model finds likelier wins), else the clean top-1."""
    if expected is not None and str(expected) != "":
        cands = []
        for text in dict.fromkeys([str(expected), " " + str(expected).lstrip()]):
            enc = lm.tokenizer.encode(text, add_special_tokens=False)
            if enc:
                cands.append(int(enc[0]))
        if cands:
            return max(cands, key=lambda t: float(probs[t])), "expected"
    return int(torch.argmax(probs)), "top1"


def _ablation(features: list[tuple[int, int]], acts: list[Tensor], mode: str, positions: str) -> list[Intervention]:
    value = 0.0 if mode == "zero" else -1.0
    m = "zero" if mode == "zero" else "scale"
    out = []
    for layer, f in features:
        if positions == "all":
            out.append(Intervention(layer, None, f, m, value))
        else:
            for p in torch.nonzero(acts[layer][:, f] != 0).flatten().tolist():
                out.append(Intervention(layer, int(p), f, m, value))
    return out


def _controls(features: list[tuple[int, int]], acts: list[Tensor], n: int, rng: np.random.Generator,
              pool: int = 5) -> list[list[tuple[int, int]]]:
    """``n`` sets of random features matched to ``features``: the same layers, and for each an
    active feature of similar peak activation on this prompt (drawn among the ``pool`` nearest
    in log-activation); an inactive circuit feature is matched by an inactive feature."""
    taken = set(features)
    peak = [a.max(dim=0).values.double().cpu().numpy() for a in acts]
    sets = []
    for _ in range(n):
        chosen: list[tuple[int, int]] = []
        used = set(taken)
        for layer, f in features:
            pk = peak[layer]
            target = pk[f]
            idx = np.arange(pk.shape[0])
            free = np.array([(layer, int(i)) not in used for i in idx])
            if target > 0:
                cand = idx[free & (pk > 0)]
                if cand.size:
                    dist = np.abs(np.log(pk[cand]) - np.log(target))
                    cand = cand[np.argsort(dist, kind="stable")[:pool]]
            else:
                cand = idx[free & (pk <= 0)]
            if not cand.size:
                cand = idx[free]
            if not cand.size:
                continue
            pick = int(rng.choice(cand))
            chosen.append((layer, pick))
            used.add((layer, pick))
        sets.append(chosen)
    return sets


def validate_circuit(
    lm,
    tc,
    prompts: Sequence[dict[str, Any] | str],
    feature_keys: Sequence[str],
    *,
    mode: str = "zero",
    controls: int = 5,
    seed: int = 0,
    positions: str = "all",
    freeze_attention: bool = True,
    layer_range: tuple[int, int] | None = None,
    progress: bool = False,
    on_prompt: Callable[[int], None] | None = None,
) -> CircuitValidation:
    """Ablate (``mode="zero"``) or sign-flip (``"flip"``: scale by -1) the features named by
    ``feature_keys`` ("{scan}:{layer}:{index}", scan = the transcoders' scan) in every prompt and
    measure the change in the expected token's probability (stored ``expected`` answer, else the
    clean top-1), against ``controls`` sets of random features of matched activation (same
    layers, similar peak activation on that prompt). ``positions``: "all" (every position but
    BOS) or "active" (where the feature is active in the clean run). Prompts are dicts with
    ``text`` and/or ``token_ids`` (and optional ``id``, ``expected``, ``model``) or plain text."""
    if mode not in ("zero", "flip"):
        raise InterventionError(f"mode must be 'zero' or 'flip', got {mode!r}")
    if positions not in ("all", "active"):
        raise InterventionError(f"positions must be 'all' or 'active', got {positions!r}")
    if int(controls) < 0:
        raise InterventionError(f"controls must be >= 0, got {controls}")
    rng_layers = _check_layer_range(layer_range, lm.n_layers)
    tc.check_fits(lm.n_layers, lm.d_model, source=str(getattr(tc, "scan", "")))
    features: list[tuple[int, int]] = []
    for key in feature_keys:
        scan, layer, index = parse_feature_key(key)
        if scan != str(tc.scan):
            raise InterventionError(f"feature {key!r} belongs to scan {scan!r}, but the transcoders are {tc.scan!r}")
        if not 0 <= layer < tc.n_layers or not 0 <= index < tc.d_transcoder:
            raise InterventionError(f"feature {key!r} is outside these transcoders ({tc.n_layers} layers x {tc.d_transcoder} features)")
        if (layer, index) not in features:
            features.append((layer, index))
    if not prompts:
        raise InterventionError("no prompts to validate on")
    rows, crow = [], []
    iterator: Iterable = enumerate(prompts)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, total=len(prompts), desc="validate-circuit", unit="prompt")
    model_id = getattr(lm, "model_id", None)
    for n, item in iterator:
        p = {"text": item} if isinstance(item, str) else dict(item)
        tids = p.get("token_ids")
        if tids and (p.get("model") in (None, model_id)):
            ids = _check_prompt(lm, [int(t) for t in tids])
        else:
            ids = _check_prompt(lm, p.get("text") or "")
        clean = clean_run(lm, tc, ids, freeze_attention=freeze_attention)
        probs = torch.softmax(clean.logits[-1].double(), -1)
        tok, source = _expected_token(lm, p.get("expected"), probs)

        def measure(feats: list[tuple[int, int]]) -> tuple[float, float, int]:
            ivs = _ablation(feats, clean.acts, mode, positions)
            logits = _intervened_pass(lm, tc, clean, _resolve(lm, tc, ivs, clean.n_pos), rng_layers)[-1]
            q = torch.softmax(logits.double(), -1)
            return float(q[tok]), _kl(clean.logits[-1], logits), int(torch.argmax(q))

        p_after, kl, top_after = measure(features)
        p_clean = float(probs[tok])
        delta = p_after - p_clean
        active = [(l, f) for l, f in features if bool((clean.acts[l][:, f] != 0).any())]
        total_act = float(sum(float(clean.acts[l][:, f].abs().sum()) for l, f in features))
        seed_seq = np.random.SeedSequence([int(seed), n])
        gen = np.random.default_rng(seed_seq)
        cdeltas = []
        for c, cset in enumerate(_controls(features, clean.acts, int(controls), gen)):
            cp, ckl, _ = measure(cset)
            cdeltas.append(cp - p_clean)
            crow.append({"prompt_id": p.get("id", n), "control": c, "features": ";".join(f"{tc.scan}:{l}:{f}" for l, f in cset),
                         "activation": float(sum(float(clean.acts[l][:, f].abs().sum()) for l, f in cset)),
                         "p_after": cp, "delta": cp - p_clean, "kl": ckl})
        cd = np.array(cdeltas, dtype=float)
        rows.append({
            "prompt_id": p.get("id", n),
            "text": p.get("text") if p.get("text") is not None else lm.tokenizer.decode(ids),
            "expected": lm.token_strings([tok])[0],
            "expected_id": tok,
            "expected_source": source,
            "p_clean": p_clean,
            "p_after": p_after,
            "delta": delta,
            "kl": kl,
            "top_after": lm.token_strings([top_after])[0],
            "features_active": len(active),
            "activation": total_act,
            "control_delta_mean": float(cd.mean()) if cd.size else float("nan"),
            "control_delta_std": float(cd.std()) if cd.size else float("nan"),
            "effect_vs_control": delta - float(cd.mean()) if cd.size else float("nan"),
            "p_value": float((1 + np.sum(np.abs(cd) >= abs(delta))) / (1 + cd.size)) if cd.size else float("nan"),
        })
        if on_prompt is not None:
            on_prompt(n)
    table = pd.DataFrame(rows)
    ctrl = pd.DataFrame(crow, columns=["prompt_id", "control", "features", "activation", "p_after", "delta", "kl"])

    def mean(col: str) -> float | None:
        v = table[col].dropna()
        return float(v.mean()) if len(v) else None

    beats = None
    if int(controls) > 0 and not ctrl.empty:
        worst = ctrl.assign(a=ctrl["delta"].abs()).groupby("prompt_id")["a"].max()
        beats = float(np.mean([abs(d) > worst.get(pid, 0.0) for pid, d in zip(table["prompt_id"], table["delta"])]))
    summary = {
        "n_prompts": int(len(table)),
        "features": [f"{tc.scan}:{l}:{f}" for l, f in features],
        "mode": mode,
        "positions": positions,
        "controls": int(controls),
        "seed": int(seed),
        "freeze_attention": bool(freeze_attention),
        "layer_range": list(rng_layers) if rng_layers else None,
        "mean_p_clean": mean("p_clean"),
        "mean_p_after": mean("p_after"),
        "mean_delta": mean("delta"),
        "mean_control_delta": mean("control_delta_mean"),
        "mean_effect_vs_control": mean("effect_vs_control"),
        "mean_kl": mean("kl"),
        "frac_beating_all_controls": beats,
    }
    return CircuitValidation(table, ctrl, summary)
