"""The attribution-graph figure, laid out like the paper's: x = token position (tokens as tick
labels), y = layer, embeddings at the bottom and logits at the top; edge width and colour by
|weight| and sign. Pure pandas/plotly (no Streamlit), so it is easy to test and reuse.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import pandas as pd
import plotly.graph_objects as go

POSITIVE = "#1f77b4"
NEGATIVE = "#d62728"
KIND_STYLE = {  # marker symbol and colour per node kind
    "embedding": ("square", "#7f7f7f"),
    "feature": ("circle", "#2ca02c"),
    "error": ("diamond", "#bcbd22"),
    "logit": ("square", "#9467bd"),
    "supernode": ("hexagon", "#ff7f0e"),
}


def split_subgraph(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The prompt_subgraph query's one frame as (nodes, edges)."""
    nodes = frame[frame["kind"] != "edge"].drop(columns=["source", "target", "weight"]).reset_index(drop=True)
    edges = frame[frame["kind"] == "edge"][["source", "target", "weight"]].reset_index(drop=True)
    return nodes, edges


def node_rows(nodes: pd.DataFrame, n_layers: int | None = None) -> pd.DataFrame:
    """Nodes with a drawing row: embeddings 0, layer l at l + 1, logits above the top layer."""
    out = nodes.copy()
    layer = pd.to_numeric(out["layer"], errors="coerce")
    top = int(layer[out["kind"].isin(["feature", "error"])].max()) if layer.notna().any() else 0
    n_layers = n_layers if n_layers is not None else top + 1
    row = layer + 1
    row[out["kind"] == "embedding"] = 0
    row[out["kind"] == "logit"] = n_layers + 1
    out["row"] = row.fillna(0).astype(float)
    return out


def prune(nodes: pd.DataFrame, edges: pd.DataFrame, node_threshold: float = 1.0,
          edge_threshold: float = 1.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep the most influential features/errors up to ``node_threshold`` of their total
    influence (embeddings and logits always stay), then the strongest edges among the kept
    nodes up to ``edge_threshold`` of their total |weight|. The stored graph is already pruned
    by the engine; this only thins it further for reading."""
    keep = nodes["kind"].isin(["embedding", "logit", "supernode"])
    inner = nodes[~keep]
    infl = pd.to_numeric(inner["influence"], errors="coerce").fillna(0.0).abs()
    kept_inner = _cumulative(infl, node_threshold)
    kept = nodes[keep | nodes.index.isin(kept_inner)]
    ids = set(kept["node_id"])
    e = edges[edges["source"].isin(ids) & edges["target"].isin(ids)]
    e = e.loc[_cumulative(e["weight"].abs(), edge_threshold)]
    return kept.reset_index(drop=True), e.reset_index(drop=True)


def _cumulative(values: pd.Series, fraction: float) -> pd.Index:
    """Index of the largest values whose sum first reaches ``fraction`` of the total."""
    if values.empty or fraction >= 1.0:
        return values.index
    order = values.sort_values(ascending=False)
    total = float(order.sum())
    if total <= 0:
        return order.index
    csum = order.cumsum().to_numpy()
    n = int(np.searchsorted(csum, fraction * total - 1e-12) + 1)
    return order.index[: max(1, min(n, len(order)))]


def layout(nodes: pd.DataFrame) -> pd.DataFrame:
    """x, y for every node: nodes sharing a (position, row) cell are spread across the cell."""
    out = nodes.copy()
    out["x"] = pd.to_numeric(out["pos"], errors="coerce").fillna(0).astype(float)
    out["y"] = out["row"].astype(float)
    out = out.sort_values(["pos", "row", "node_id"]).reset_index(drop=True)
    for _, idx in out.groupby(["x", "y"]).groups.items():
        k = len(idx)
        if k > 1:
            offsets = np.linspace(-0.35, 0.35, k)
            out.loc[idx, "x"] = out.loc[idx, "x"] + offsets
    return out


def _hover(r: pd.Series) -> str:
    parts = [f"<b>{r['node_id']}</b> ({r['kind']})"]
    if isinstance(r.get("feature_key"), str) and r.get("feature_key"):
        parts.append(f"feature {r['feature_key']}")
    if isinstance(r.get("label"), str) and r.get("label"):
        parts.append(f"label: {r['label']}")
    for col in ("activation", "influence", "prob"):
        v = r.get(col)
        if v is not None and not (isinstance(v, float) and math.isnan(v)) and not pd.isna(v):
            parts.append(f"{col}: {float(v):.4g}")
    if "members" in r and not pd.isna(r.get("members")) and r["kind"] == "supernode":
        parts.append(f"members: {int(r['members'])}")
    return "<br>".join(parts)


def figure(nodes: pd.DataFrame, edges: pd.DataFrame, tokens: Iterable[str] = (), *,
           highlight: Iterable[str] = (), n_layers: int | None = None, height: int = 600) -> go.Figure:
    """The interactive graph. Each node trace carries ``customdata`` = node id, so a selection
    event names the nodes picked."""
    tokens = list(tokens)
    pos_nodes = layout(node_rows(nodes, n_layers))
    at = pos_nodes.set_index("node_id")[["x", "y"]]
    fig = go.Figure()
    if len(edges):
        e = edges[edges["source"].isin(at.index) & edges["target"].isin(at.index)]
        wmax = float(e["weight"].abs().max()) if len(e) else 1.0
        wmax = wmax if wmax > 0 else 1.0
        # One trace per (sign, width bin): thousands of edges stay one handful of traces.
        bins = np.minimum((e["weight"].abs() / wmax * 4).astype(int), 3)
        for positive, color in ((True, POSITIVE), (False, NEGATIVE)):
            side = (e["weight"] >= 0) if positive else (e["weight"] < 0)
            for b in range(4):
                sub = e[side & (bins == b)]
                if sub.empty:
                    continue
                # segments as numpy arrays (x0, x1, NaN) per edge: NaN breaks the line, and
                # plotly validates and serialises arrays far faster than lists of floats
                gap = np.full(len(sub), np.nan)
                xs, ys = (np.column_stack([sub["source"].map(at[c]).to_numpy(float), sub["target"].map(at[c]).to_numpy(float),
                                           gap]).ravel() for c in ("x", "y"))
                fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                                         line=dict(color=color, width=0.5 + 1.5 * b), opacity=0.25 + 0.15 * b,
                                         name="+ edges" if positive else "- edges"))
    hi = set(highlight)
    for kind, (symbol, color) in KIND_STYLE.items():
        sub = pos_nodes[pos_nodes["kind"] == kind]
        if sub.empty:
            continue
        infl = pd.to_numeric(sub.get("influence"), errors="coerce").fillna(0).abs()
        size = 9 + 14 * (infl / infl.max() if infl.max() > 0 else 0)
        fig.add_trace(go.Scatter(
            x=sub["x"], y=sub["y"], mode="markers", name=kind, customdata=sub["node_id"],
            hovertext=[_hover(r) for _, r in sub.iterrows()], hoverinfo="text",
            marker=dict(symbol=symbol, color=color, size=size,
                        line=dict(width=[3 if n in hi else 0.5 for n in sub["node_id"]],
                                  color=["black" if n in hi else "white" for n in sub["node_id"]])),
        ))
    n_pos = int(pd.to_numeric(pos_nodes["pos"], errors="coerce").max() + 1) if len(pos_nodes) else 0
    n_pos = max(n_pos, len(tokens), 1)
    ticks = [f"{i}: {tokens[i]!r}" if i < len(tokens) else str(i) for i in range(n_pos)]
    top_row = int(pos_nodes["y"].max()) if len(pos_nodes) else 1
    top_row = max(top_row, (n_layers + 1) if n_layers is not None else 1)
    yticks = ["emb"] + [f"L{i}" for i in range(top_row - 1)] + ["logit"]
    fig.update_layout(
        height=height, margin=dict(l=10, r=10, t=30, b=10),
        legend=dict(orientation="h", y=1.05), plot_bgcolor="white",
        xaxis=dict(tickmode="array", tickvals=list(range(n_pos)), ticktext=ticks, title="token position",
                   showgrid=False, zeroline=False, range=[-0.6, n_pos - 0.4]),
        yaxis=dict(tickmode="array", tickvals=list(range(len(yticks))), ticktext=yticks, title="layer",
                   gridcolor="#eee", zeroline=False, range=[-0.5, len(yticks) - 0.5]),
    )
    return fig


def neighbours(edges: pd.DataFrame, nodes: pd.DataFrame, selected: Iterable[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(inputs, outputs) of the selected nodes: edges into and out of them, strongest first,
    with the other end's kind and label."""
    sel = set(selected)
    info = nodes.set_index("node_id")[["kind", "label", "feature_key"]] if len(nodes) else None

    def describe(df: pd.DataFrame, other: str) -> pd.DataFrame:
        df = df.copy()
        if info is not None:
            df = df.join(info, on=other)
        df["abs_weight"] = df["weight"].abs()
        return df.sort_values("abs_weight", ascending=False).drop(columns="abs_weight").reset_index(drop=True)

    return describe(edges[edges["target"].isin(sel)], "source"), describe(edges[edges["source"].isin(sel)], "target")


def heads_figure(heads: Iterable[float], bypass: float, edge: float, title: str = "", height: int = 320) -> go.Figure:
    """An edge's head loadings at one layer: one bar per head, then the bypass (what does not
    pass through the layer's attention), signed; the caption line says what they sum to."""
    values = [float(v) for v in heads]
    names = [f"head {h}" for h in range(len(values))] + ["bypass"]
    values.append(float(bypass))
    colors = [POSITIVE if v >= 0 else NEGATIVE for v in values[:-1]] + ["#7f7f7f"]
    share = [f"{100 * v / edge:.1f}% of the edge" if edge else "" for v in values]
    fig = go.Figure(go.Bar(x=names, y=values, marker_color=colors, hovertext=share, hoverinfo="x+y+text"))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10), plot_bgcolor="white",
                      title=title or None, yaxis=dict(title="effect on the target", gridcolor="#eee", zeroline=True),
                      xaxis=dict(title=f"parts sum to {sum(values):+.4g} (edge {edge:+.4g})"))
    return fig


def key_layer(key: str) -> int:
    """The layer of a feature key ``{scan}:{layer}:{index}``."""
    try:
        return int(str(key).rsplit(":", 2)[1])
    except (IndexError, ValueError):
        return 0


def result_figure(edges: list[tuple[str, str, float]], labels: dict[str, str] | None = None, height: int = 420) -> go.Figure:
    """A small graph of a search result: feature keys, input tokens (``in:TEXT``, bottom) and
    output tokens (``out:TEXT``, top) as nodes, features placed by layer, edges weighted by how
    many prompts carry them (signed by the mean weight)."""
    labels = labels or {}
    names: list[str] = []
    for s, t, _ in edges:
        for n in (s, t):
            if n not in names:
                names.append(n)
    rows = {n: (0 if n.startswith("in:") else None if n.startswith("out:") else key_layer(n) + 1) for n in names}
    top = max([r for r in rows.values() if r is not None] or [0]) + 1
    rows = {n: (top if r is None else r) for n, r in rows.items()}
    by_row: dict[int, list[str]] = {}
    for n, r in rows.items():
        by_row.setdefault(r, []).append(n)
    xy = {}
    for r, members in by_row.items():
        for i, n in enumerate(members):
            xy[n] = (i - (len(members) - 1) / 2, r)
    fig = go.Figure()
    wmax = max([abs(w) for _, _, w in edges] or [1.0]) or 1.0
    for s, t, w in edges:
        (x0, y0), (x1, y1) = xy[s], xy[t]
        fig.add_trace(go.Scatter(x=[x0, x1], y=[y0, y1], mode="lines", hoverinfo="skip", showlegend=False,
                                 line=dict(width=1 + 5 * abs(w) / wmax, color=POSITIVE if w >= 0 else NEGATIVE), opacity=0.5))
    fig.add_trace(go.Scatter(
        x=[xy[n][0] for n in names], y=[xy[n][1] for n in names], mode="markers+text", showlegend=False,
        text=[labels.get(n) or n.split(":", 1)[-1] for n in names], textposition="top center",
        hovertext=[f"{n}<br>{labels.get(n, '')}" for n in names], hoverinfo="text",
        marker=dict(size=14, color=["#9467bd" if n.startswith(("in:", "out:")) else "#2ca02c" for n in names]),
    ))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=10, b=10), plot_bgcolor="white",
                      xaxis=dict(visible=False), yaxis=dict(title="inputs (0), layer + 1, outputs (top)", gridcolor="#eee"))
    return fig
