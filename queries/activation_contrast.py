"""Group enrichment by activation (contrastive, measure=activation).

Counting the prompts whose *pruned* graph holds a feature measures where pruning kept it, not
where it fired: a feature on "The" is kept where its downstream features matter (one task) and
pruned elsewhere, though it fires with the same activation in every prompt that starts with "The".
Here each (feature, prompt) gets the feature's largest activation in that prompt, 0 where it is
not active, and a value pruned away is recovered from another graph: a causal model's activation
at position k depends only on tokens 0..k, so a graph of the same model and transcoder set whose
tokens agree up to k had the same activation there.

The two sides are compared by Cohen's d and Welch's t-test; ``shared_prefix`` is the share of the
enriched side's prompts whose activation sits on a prefix that also begins a prompt of the other
side (both sides give the feature the same input there), and ``specific_effect`` = d x (1 -
shared_prefix) ranks the rows.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from typing import Any, Iterable

import numpy as np
import pandas as pd

Prefix = tuple  # (model, scan, token id, token id, ...)


def _prefixes(prompts: pd.DataFrame) -> tuple[dict[str, list[int]], dict[str, tuple[str, str]], dict[Prefix, list[str]]]:
    """Token ids and (model, scan) of each prompt, and every prefix -> the prompts it begins."""
    tokens: dict[str, list[int]] = {}
    where: dict[str, tuple[str, str]] = {}
    begins: dict[Prefix, list[str]] = defaultdict(list)
    for pid, ids, model, scan in zip(prompts["prompt_id"], prompts["token_ids"], prompts["model"], prompts["scan"]):
        pid = str(pid)
        ids = [int(i) for i in (ids if ids is not None and not isinstance(ids, float) else [])]
        tokens[pid], where[pid] = ids, (str(model), str(scan))
        for k in range(len(ids)):
            begins[(str(model), str(scan), *ids[: k + 1])].append(pid)
    return tokens, where, begins


def activation_values(instances: pd.DataFrame, prompts: pd.DataFrame) -> tuple[pd.DataFrame, dict[tuple[str, str], set[Prefix]]]:
    """(key, prompt_id) -> value, imputed; and (key, prompt_id) -> the prefixes it is active on.

    Observed instances first; then every prompt sharing an instance's prefix gets the same
    activation at that position (imputed unless observed there too)."""
    tokens, where, begins = _prefixes(prompts)
    seen: dict[tuple[str, str], float] = {}  # what the prompt's own graph holds: it wins
    recovered: dict[tuple[str, str], float] = {}
    active_on: dict[tuple[str, str], set[Prefix]] = defaultdict(set)
    for key, pid, pos, act in zip(instances["key"].astype(str), instances["prompt_id"].astype(str),
                                  pd.to_numeric(instances["pos"]).astype(int), pd.to_numeric(instances["activation"]).astype(float)):
        seen[(key, pid)] = max(seen.get((key, pid), 0.0), act)
        ids = tokens.get(pid)
        if ids is None or not 0 <= pos < len(ids):  # no tokens stored: the observation alone
            continue
        prefix = (*where[pid], *ids[: pos + 1])
        for other in begins.get(prefix, [pid]):
            recovered[(key, other)] = max(recovered.get((key, other), 0.0), act)
            active_on[(key, other)].add(prefix)
    rows = [(k, p, v, False) for (k, p), v in seen.items()]
    rows += [(k, p, v, True) for (k, p), v in recovered.items() if (k, p) not in seen]
    return pd.DataFrame(rows, columns=["key", "prompt_id", "value", "imputed"]), active_on


def _stats(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Cohen's d (pooled sd), Welch's t and its two-sided p-value, A over B."""
    from scipy import stats

    diff = float(a.mean() - b.mean()) if len(a) and len(b) else 0.0
    if len(a) < 2 or len(b) < 2:
        return (0.0 if diff == 0 else math.copysign(math.inf, diff)), math.nan, math.nan
    pooled = math.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2))
    d = diff / pooled if pooled > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff))
    if a.var() == 0 and b.var() == 0:  # the t-test is undefined: no spread on either side
        return d, (0.0 if diff == 0 else math.copysign(math.inf, diff)), (1.0 if diff == 0 else 0.0)
    with warnings.catch_warnings():  # near-identical values: scipy warns, the result stands
        warnings.simplefilter("ignore", RuntimeWarning)
        t, p = stats.ttest_ind(a, b, equal_var=False)
    return d, float(t), float(p)


def contrast(instances: pd.DataFrame, prompts: pd.DataFrame, ids_a: Iterable[str], ids_b: Iterable[str],
             labels: dict[str, Any]) -> pd.DataFrame:
    """One row per feature active (or recovered) in A or B, with the activation statistics."""
    ids_a, ids_b = sorted(map(str, ids_a)), sorted(map(str, ids_b))
    values, active_on = activation_values(instances, prompts)
    _, where, begins = _prefixes(prompts)
    side = {**{p: "a" for p in ids_a}, **{p: "b" for p in ids_b}}
    values = values[values["prompt_id"].isin(side)]
    by_key = {k: g for k, g in values.groupby("key", sort=True)}
    out = []
    for key, g in by_key.items():
        got = dict(zip(g["prompt_id"], g["value"]))
        a = np.array([got.get(p, 0.0) for p in ids_a], dtype=float)
        b = np.array([got.get(p, 0.0) for p in ids_b], dtype=float)
        d, t, p = _stats(a, b)
        enriched, other = (ids_a, "b") if d >= 0 else (ids_b, "a")
        held = [q for q in enriched if got.get(q, 0.0) > 0]
        shared = [q for q in held if active_on.get((key, q)) and all(
            any(side.get(o) == other for o in begins.get(prefix, [])) for prefix in active_on[(key, q)])]
        share = len(shared) / len(held) if held else 0.0
        out.append({"key": key, "label": labels.get(key), "count_a": int((a > 0).sum()), "count_b": int((b > 0).sum()),
                    "mean_act_a": float(a.mean()) if len(a) else 0.0, "mean_act_b": float(b.mean()) if len(b) else 0.0,
                    "effect_size": d, "t_stat": t, "p_value": p, "shared_prefix": share,
                    "specific_effect": 0.0 if share == 1 else d * (1 - share), "imputed": int(g["imputed"].sum())})
    return pd.DataFrame(out)
