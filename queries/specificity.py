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
from typing import Any, Iterable, Mapping

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


def _df(value: Any) -> int:
    """A feature's graph count (Feature.prompts is NULL on a one-off feature: 1)."""
    try:
        n = int(value)
    except (TypeError, ValueError):
        return 1
    return max(n, 1)


def score_rows(df: pd.DataFrame, features: Iterable[tuple[str, str]], tokens: Iterable[str], graphs: Mapping[str, int],
               token_df: Mapping[tuple[str, str], int]) -> pd.DataFrame:
    """Add ``specificity``, ``max_share`` and ``common_member`` to ``df``.

    ``features``: (key column, graph-count column) pairs naming each row's features; ``tokens``:
    columns holding output tokens that count as parts. Empty keys/tokens are skipped. The scan of
    a row is its first feature's; N is that scan's graph count."""
    features, tokens = list(features), list(tokens)
    spec, share, member = [], [], []
    for r in df.to_dict("records"):
        keys = [(str(r[k]), _df(r[c])) for k, c in features if isinstance(r.get(k), str) and r[k]]
        scan = scan_of(keys[0][0]) if keys else ""
        n = graphs.get(scan) or sum(graphs.values()) or 1
        parts = [(k, d) for k, d in keys]
        parts += [(repr(str(r[t])), token_df.get((scan, str(r[t])), 1)) for t in tokens if isinstance(r.get(t), str) and r[t]]
        worst, most = max(parts, key=lambda p: p[1]) if parts else ("", 1)
        s = min(1.0, most / n)
        share.append(s)
        member.append(worst)
        spec.append(float(r["prompts"]) * max(0.0, -math.log(s)) if s > 0 else 0.0)
    out = df.copy()
    out["specificity"] = np.asarray(spec, dtype="float64")
    out["max_share"] = np.asarray(share, dtype="float64")
    out["common_member"] = pd.Series(member, index=out.index, dtype=object)
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
