"""Specificity: how much a recurring row says about *some* prompts rather than all of them.

A recurrence count alone ranks hubs first: a feature active on the first token of every prompt
takes part in more recurring edges, paths and motifs than any circuit of one task, and so does an
output token such as " the" that is among the logits of most prompts. Like TF-IDF in text
retrieval, each part of a row (a feature, or an output token) gets an inverse document frequency

    idf(x) = ln(N / df(x))

where N is the number of graphs of the transcoder set (scan) and df(x) the graphs in which x
occurs (a feature active, a token among the logits). A row's score is its raw count times the idf
of its most common part:

    specificity = prompts * min_x idf(x) = prompts * ln(1 / max_share),  max_share = max_x df(x) / N

so a row through a part present in every graph scores 0 whatever its count. The raw count, the
most common part and its share are returned beside the score. See docs/concepts/specificity.md.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

RANKS = ("specificity", "prompts")


def scan_of(key: str) -> str:
    """The transcoder set of a feature key ``{scan}:{layer}:{index}`` (a scan may hold ':')."""
    return key.rsplit(":", 2)[0] if key.count(":") >= 2 else ""


def graphs_per_scan(frame: pd.DataFrame | None) -> dict[str, int]:
    """Scan -> number of graphs, from a part returning ``scan, graphs``."""
    if frame is None or frame.empty:
        return {}
    out: dict[str, int] = {}
    for scan, n in zip(frame["scan"], frame["graphs"]):
        key = "" if scan is None or (isinstance(scan, float) and math.isnan(scan)) else str(scan)
        out[key] = out.get(key, 0) + int(n)
    return out


def token_graphs(frame: pd.DataFrame | None) -> dict[tuple[str, str], int]:
    """(scan, token) -> graphs with the token among their logits, from a part returning
    ``scan, token, graphs``."""
    if frame is None or frame.empty:
        return {}
    return {("" if s is None else str(s), str(t)): int(n) for s, t, n in zip(frame["scan"], frame["token"], frame["graphs"])}


def score_rows(df: pd.DataFrame, features: Iterable[tuple[str, str]], tokens: Iterable[str], graphs: Mapping[str, int],
               token_df: Mapping[tuple[str, str], int]) -> pd.DataFrame:
    """Add ``specificity``, ``max_share`` and ``common_member`` to ``df``.

    ``features``: (key column, graph-count column) pairs naming each row's features (a NULL
    count, a one-off feature, counts 1); ``tokens``: columns holding output tokens that count as
    parts (shown quoted in ``common_member``). Empty keys/tokens are no part. A row's scan is its
    first feature's; N is that scan's graph count (all graphs when the scan is unknown)."""
    out = df.copy()
    if out.empty:
        return out.assign(specificity=pd.Series(dtype="float64"), max_share=pd.Series(dtype="float64"),
                          common_member=pd.Series(dtype=object))
    features, tokens = list(features), list(tokens)
    first = out[features[0][0]].astype(str) if features else pd.Series("", index=out.index)
    scans = first.map(scan_of)
    total = sum(graphs.values()) or 1
    n = scans.map(lambda s: graphs.get(s) or total).astype("float64")
    counts, names = [], []
    for key, col in features:
        present = out[key].astype(object).map(lambda k: isinstance(k, str) and k != "")
        c = pd.to_numeric(out[col], errors="coerce").fillna(1).clip(lower=1)
        counts.append(c.where(present, 0.0))
        names.append(out[key].astype(object).where(present, ""))
    for col in tokens:
        tok = out[col].astype(object)
        present = tok.map(lambda v: isinstance(v, str) and v != "")
        c = pd.Series([token_df.get((s, str(v)), 1) for s, v in zip(scans, tok)], index=out.index, dtype="float64")
        counts.append(c.where(present, 0.0))
        names.append(tok.map(lambda v: repr(str(v))).where(present, ""))
    if not counts:
        return out.assign(specificity=0.0, max_share=0.0, common_member="")
    c = np.column_stack([x.to_numpy(dtype="float64") for x in counts])
    which = c.argmax(axis=1)  # the most common part (the first listed on a tie)
    most = c[np.arange(len(c)), which]
    share = np.minimum(most / n.to_numpy(), 1.0)
    label = np.column_stack([x.to_numpy(dtype=object) for x in names])[np.arange(len(c)), which]
    prompts = pd.to_numeric(out["prompts"]).to_numpy(dtype="float64")
    with np.errstate(divide="ignore"):
        idf = np.where(share > 0, -np.log(np.where(share > 0, share, 1.0)), 0.0)
    out["specificity"] = prompts * np.maximum(idf, 0.0)
    out["max_share"] = share
    out["common_member"] = pd.Series(label, index=out.index, dtype=object)
    return out


def check_rank(query: str, rank: str, max_share: float | None = None) -> None:
    from circuit_atlas.queries.runner import QueryError

    if rank not in RANKS:
        raise QueryError(f"query '{query}': parameter 'rank' must be specificity or prompts, not {rank!r}")
    if max_share is not None and not 0 < max_share <= 1:
        raise QueryError(f"query '{query}': parameter 'max_share' must lie in (0, 1], not {max_share}")


def order(rank: str) -> list[str]:
    """The leading sort columns for a rank (descending), before each query's own tie-breaks."""
    return ["specificity", "prompts"] if rank == "specificity" else ["prompts", "specificity"]
