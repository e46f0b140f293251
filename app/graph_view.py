"""The attribution-graph figure, laid out like the paper's: x = token position (tokens as tick
labels), y = layer, embeddings at the bottom and logits at the top; edge width and colour by
|weight| and sign. Pure pandas/plotly (no Streamlit), so it is easy to test and reuse.
"""

from __future__ import annotations

import html
import math
from typing import Collection, Iterable

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
          edge_threshold: float = 1.0, max_nodes: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep the most influential features/errors up to ``node_threshold`` of their total
    influence (and at most ``max_nodes`` of them; embeddings and logits always stay), then the
    strongest edges among the kept nodes up to ``edge_threshold`` of their total |weight|. The
    stored graph is already pruned by the engine; this only thins it further for reading."""
    keep = nodes["kind"].isin(["embedding", "logit", "supernode"])
    inner = nodes[~keep]
    infl = pd.to_numeric(inner["influence"], errors="coerce").fillna(0.0).abs()
    kept_inner = _cumulative(infl, node_threshold)
    if max_nodes is not None and len(kept_inner) > max_nodes:
        kept_inner = infl.loc[kept_inner].sort_values(ascending=False, kind="stable").index[: max(0, int(max_nodes))]
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


WHITESPACE = {" ": "\u2423", "\n": "\u21b5", "\t": "\u21e5", "\r": "\u240d"}


def visible(token: str) -> str:
    """A token as text a reader can see: a whitespace-only token spelled with visible marks,
    line breaks inside others as a mark (a label stays one line)."""
    token = str(token)
    if token and not token.strip():
        return "".join(WHITESPACE.get(ch, ch) for ch in token)
    return token.replace("\r", "").replace("\n", WHITESPACE["\n"])


def _num(v: object) -> float | None:
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


AUTO_MARK = " (auto)"  # after an automatic label in plain text; the drawing sets it in italics


def is_auto(r: pd.Series | dict) -> bool:
    """True for a feature whose shown label is an automatic one (``label_source`` 'auto')."""
    return r.get("kind", "feature") == "feature" and r.get("label_source") == "auto" and isinstance(r.get("label"), str)


def node_label(r: pd.Series | dict, mark_auto: bool = True) -> str:
    """What a reader calls a node: the token (embedding), the token and its probability (logit),
    the feature's label or else its key (feature), ``err L{layer}`` (error), the name (supernode).
    An automatic feature label ends in `` (auto)`` unless ``mark_auto`` is off."""
    kind, label = r.get("kind"), r.get("label")
    label = label if isinstance(label, str) else ""
    layer = _num(r.get("layer"))
    if kind == "embedding":
        return visible(label) if label else str(r.get("node_id"))
    if kind == "logit":
        p = _num(r.get("prob"))
        return f"{visible(label) or r.get('node_id')} ({100 * p:.1f}%)" if p is not None else (visible(label) or str(r.get("node_id")))
    if kind == "error":
        return f"err L{int(layer)}" if layer is not None else "err"
    if kind == "feature":
        key = r.get("feature_key")
        if label and mark_auto and is_auto(r):
            return visible(label) + AUTO_MARK
        return visible(label) if label else (str(key) if isinstance(key, str) and key else str(r.get("node_id")))
    return label or str(r.get("node_id"))


def node_labels(nodes: pd.DataFrame, mark_auto: bool = True) -> pd.Series:
    """``node_label`` for every row, indexed like ``nodes``."""
    if nodes.empty:
        return pd.Series([], dtype=object, index=nodes.index)
    return pd.Series([node_label(r, mark_auto) for r in nodes.to_dict("records")], index=nodes.index, dtype=object)


def picker_label(r: pd.Series | dict, tokens: list[str] | None = None) -> str:
    """A node's name in the picker: its label, then where it is (layer and position with the
    token), so two nodes with one label stay apart."""
    tokens = tokens or []
    lab = node_label(r)
    kind, layer, pos = r.get("kind"), _num(r.get("layer")), _num(r.get("pos"))
    where = []
    if kind in ("feature", "error") and layer is not None:
        where.append(f"L{int(layer)}")
    if pos is not None and pos >= 0:
        p = int(pos)
        where.append(f"@{p} {visible(tokens[p])!r}" if p < len(tokens) else f"@{p}")
    where.append(str(kind))
    return f"{lab}  ({' '.join(where)})"


ERROR_MODES = ("show", "one per layer", "hide")


def collapse_errors(nodes: pd.DataFrame, edges: pd.DataFrame, how: str = "show") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Error nodes as they are (``show``), merged into one node per layer (``one per layer``:
    id ``err_L{layer}``, influence summed, parallel edges summed, drawn in an ``errors`` column
    right of the last token), or dropped with their edges (``hide``)."""
    if how not in ERROR_MODES:
        raise ValueError(f"error nodes: {how!r} is not one of {ERROR_MODES}")
    is_err = nodes["kind"] == "error"
    if how == "show" or not is_err.any():
        return nodes, edges
    err_ids = set(nodes.loc[is_err, "node_id"])
    if how == "hide":
        keep = edges[~edges["source"].isin(err_ids) & ~edges["target"].isin(err_ids)]
        return nodes[~is_err].reset_index(drop=True), keep.reset_index(drop=True)
    errs = nodes[is_err].copy()
    layer = pd.to_numeric(errs["layer"], errors="coerce").fillna(-1).astype(int)
    errs["new_id"] = [f"err_L{l}" for l in layer]
    rename = dict(zip(errs["node_id"], errs["new_id"]))
    n_pos = int(pd.to_numeric(nodes["pos"], errors="coerce").max() + 1) if len(nodes) else 0
    infl = pd.to_numeric(errs["influence"], errors="coerce").fillna(0.0)
    merged = (errs.assign(influence=infl, layer=layer).groupby("new_id", sort=True)
              .agg(layer=("layer", "first"), influence=("influence", "sum"), merged=("node_id", "size")).reset_index()
              .rename(columns={"new_id": "node_id"}))
    merged["kind"], merged["pos"] = "error", n_pos
    out_nodes = pd.concat([nodes[~is_err], merged], ignore_index=True)
    e = edges.copy()
    e["source"], e["target"] = e["source"].map(lambda x: rename.get(x, x)), e["target"].map(lambda x: rename.get(x, x))
    e = e.groupby(["source", "target"], sort=False, as_index=False)["weight"].sum()
    return out_nodes, e.reset_index(drop=True)


def layout(nodes: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[float, int]]]:
    """x, y for every node, and the centre of each position's column. A position's column is as
    wide as its fullest (position, row) cell, one unit per node, so no two nodes ever share a
    spot and empty positions take no room (the pinned subgraph stays compact)."""
    out = nodes.copy()
    out["pos_i"] = pd.to_numeric(out["pos"], errors="coerce").fillna(0).astype(int)
    out["y"] = out["row"].astype(float)
    sort_cols = ["pos_i", "row"] + [c for c in ("layer", "node_id") if c in out]
    out = out.sort_values(sort_cols, kind="stable").reset_index(drop=True)
    cell = out.groupby(["pos_i", "y"]).cumcount().to_numpy()
    size = out.groupby(["pos_i", "y"])["node_id"].transform("size").to_numpy()
    width = out.assign(k=size).groupby("pos_i")["k"].max()
    start = width.cumsum() - width
    centres = [(float(start[p] + width[p] / 2), int(p)) for p in width.index]
    col_start = out["pos_i"].map(start).to_numpy(float)
    col_width = out["pos_i"].map(width).to_numpy(float)
    out["x"] = col_start + (col_width - size) / 2 + cell + 0.5
    return out, centres


def _hover(r: dict) -> str:
    parts = [f"<b>{_plotly_text(node_label(r))}</b> ({r['kind']}, {r['node_id']})"]
    if is_auto(r):
        parts.append("label: automatic, from the feature's top contexts and logit effects")
    if isinstance(r.get("feature_key"), str) and r.get("feature_key"):
        parts.append(f"feature {r['feature_key']}")
    for col in ("activation", "influence", "prob"):
        v = _num(r.get(col))
        if v is not None:
            parts.append(f"{col}: {v:.4g}")
    if r.get("kind") == "supernode" and _num(r.get("members")) is not None:
        parts.append(f"members: {int(r['members'])}")
    if _num(r.get("merged")) is not None:
        parts.append(f"{int(r['merged'])} error nodes merged")
    return "<br>".join(parts)


def _plotly_text(text: str) -> str:
    """Text for Plotly's pseudo-HTML: '<', '>' and '&' escaped so a token like '<b>' shows as
    itself; quotes left alone (Plotly shows '&quot;' literally)."""
    return html.escape(str(text), quote=False)


def _short(text: str, n: int = 18) -> str:
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def figure(nodes: pd.DataFrame, edges: pd.DataFrame, tokens: Iterable[str] = (), *,
           highlight: Iterable[str] = (), n_layers: int | None = None, height: int = 600,
           groups: dict[str, list[str]] | None = None, text_limit: int = 150) -> go.Figure:
    """The interactive graph. Each node trace carries ``customdata`` = node id, so a click or
    selection event names the nodes picked. Nodes carry their labels as text (when more than
    ``text_limit`` are shown, only the most influential features do; every node has a hover);
    ``groups`` (name -> node ids) are drawn as labelled boxes around their members."""
    tokens = list(tokens)
    pos_nodes, centres = layout(node_rows(nodes, n_layers)) if len(nodes) else (node_rows(nodes, n_layers).assign(x=[], y=[]), [])
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
    for name, members in (groups or {}).items():
        m = at.loc[[n for n in members if n in at.index]]
        if m.empty:
            continue
        x0, x1, y0, y1 = m["x"].min() - 0.45, m["x"].max() + 0.45, m["y"].min() - 0.35, m["y"].max() + 0.35
        fig.add_shape(type="rect", x0=x0, x1=x1, y0=y0, y1=y1, line=dict(color=KIND_STYLE["supernode"][1], dash="dash", width=2),
                      fillcolor="rgba(255,127,14,0.08)", layer="below")
        fig.add_annotation(x=x0, y=y1, text=_plotly_text(_short(name, 30)), showarrow=False, xanchor="left", yanchor="bottom",
                           font=dict(size=10, color=KIND_STYLE["supernode"][1]))
    hi = set(highlight)
    labels = node_labels(pos_nodes, mark_auto=False)
    keyed = pos_nodes["kind"].eq("feature") & labels.eq(pos_nodes.get("feature_key"))
    labels[keyed] = [":".join(str(k).rsplit(":", 2)[-2:]) for k in labels[keyed]]  # "layer:index" on the drawing
    auto = {i for i, r in zip(pos_nodes.index, pos_nodes.to_dict("records")) if is_auto(r)}
    infl_all = pd.to_numeric(pos_nodes.get("influence"), errors="coerce").fillna(0).abs()
    if len(pos_nodes) <= text_limit:
        texted = set(pos_nodes["node_id"])
    else:  # embeddings, logits, and the most influential of the rest
        inner = pos_nodes["kind"].isin(["feature", "error", "supernode"])
        top = infl_all[inner].sort_values(ascending=False).index[: max(0, text_limit - int((~inner).sum()))]
        texted = set(pos_nodes.loc[~inner, "node_id"]) | set(pos_nodes.loc[top, "node_id"])
    records = pos_nodes.to_dict("records")
    for kind, (symbol, color) in KIND_STYLE.items():
        idx = pos_nodes.index[pos_nodes["kind"] == kind]
        if not len(idx):
            continue
        sub = pos_nodes.loc[idx]
        infl = infl_all.loc[idx]
        size = (9 + 14 * (infl / infl.max() if infl.max() > 0 else infl * 0)).to_numpy(float)
        fig.add_trace(go.Scatter(
            x=sub["x"], y=sub["y"], mode="markers+text", name=kind, customdata=sub["node_id"],
            text=[(f"<i>{_plotly_text(_short(labels[i]))}</i>" if i in auto else _plotly_text(_short(labels[i])))
                  if records[i]["node_id"] in texted else "" for i in idx],
            textposition="bottom center" if kind == "embedding" else "top center", textfont=dict(size=9),
            hovertext=[_hover(records[i]) for i in idx], hoverinfo="text",
            marker=dict(symbol=symbol, color=color, size=size, line=dict(width=0.5, color="white")),
        ))
    ring = pos_nodes[pos_nodes["node_id"].isin(hi)]
    if len(ring):  # pinned nodes ringed by one overlay trace (per-point line styles validate slowly)
        fig.add_trace(go.Scatter(x=ring["x"], y=ring["y"], mode="markers", name="pinned", hoverinfo="skip",
                                 marker=dict(symbol="circle-open", size=26, color="black", line=dict(width=2))))
    ticks = [(x, f"{p}: {tokens[p]!r}" if p < len(tokens) else ("errors" if tokens else str(p))) for x, p in centres]
    xmax = float(pos_nodes["x"].max() + 0.5) if len(pos_nodes) else 1.0
    top_row = int(pos_nodes["y"].max()) if len(pos_nodes) else 1
    top_row = max(top_row, (n_layers + 1) if n_layers is not None else 1)
    yticks = ["emb"] + [f"L{i}" for i in range(top_row - 1)] + ["logit"]
    fig.update_layout(
        height=height, margin=dict(l=10, r=10, t=30, b=10),
        legend=dict(orientation="h", y=1.05), plot_bgcolor="white",
        xaxis=dict(tickmode="array", tickvals=[x for x, _ in ticks], ticktext=[t for _, t in ticks], title="token position",
                   showgrid=False, zeroline=False, range=[-0.2, xmax + 0.2]),
        yaxis=dict(tickmode="array", tickvals=list(range(len(yticks))), ticktext=yticks, title="layer",
                   gridcolor="#eee", zeroline=False, range=[-0.7, len(yticks) - 0.3]),
    )
    return fig


def neighbours(edges: pd.DataFrame, nodes: pd.DataFrame, selected: Iterable[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(inputs, outputs) of the selected nodes: edges into and out of them, strongest first,
    with the other end's readable label and kind."""
    sel = set(selected)
    info = nodes.assign(name=node_labels(nodes)).set_index("node_id")[["name", "kind", "feature_key"]] if len(nodes) else None

    def describe(df: pd.DataFrame, other: str) -> pd.DataFrame:
        df = df.copy()
        if info is not None:
            df = df.join(info, on=other)
        df["abs_weight"] = df["weight"].abs()
        return df.sort_values("abs_weight", ascending=False).drop(columns="abs_weight").reset_index(drop=True)

    return describe(edges[edges["target"].isin(sel)], "source"), describe(edges[edges["source"].isin(sel)], "target")


def context_html(left: str, token: str, right: str, activation: object = None) -> str:
    """One context as an escaped HTML line, the active token highlighted and made visible: text
    is never read as Markdown (corpus text holds backticks, underscores and tags)."""
    act = _num(activation)
    return (f"<div style='margin:2px 0;white-space:pre-wrap'><code style='margin-right:0.5em'>"
            f"{'' if act is None else format(act, '.3g')}</code>{html.escape(str(left))}"
            f"<mark style='background:#ffd54f'><b>{html.escape(visible(token))}</b></mark>{html.escape(str(right))}</div>")


def contexts_html(contexts: list[dict], limit: int = 10, css_class: str = "pg-contexts") -> str:
    """Stored top contexts (``left``, ``token``, ``right``, ``activation``) as one HTML block."""
    rows = [context_html(c.get("left", ""), c.get("token", ""), c.get("right", ""), c.get("activation"))
            for c in contexts[:limit]]
    return f"<div class='{css_class}'>{''.join(rows)}</div>"


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


def _result_text(name: str, labels: dict[str, str], auto: Collection[str]) -> str:
    text = _plotly_text(labels.get(name) or name.split(":", 1)[-1])
    return f"<i>{text} (auto)</i>" if name in auto and labels.get(name) else text


def result_figure(edges: list[tuple[str, str, float]], labels: dict[str, str] | None = None, height: int = 420,
                  auto: Collection[str] = ()) -> go.Figure:
    """A small graph of a search result: feature keys, input tokens (``in:TEXT``, bottom) and
    output tokens (``out:TEXT``, top) as nodes, features placed by layer, edges weighted by how
    many prompts carry them (signed by the mean weight). Labels of the keys in ``auto`` are
    automatic ones: in italics with "(auto)", as on the prompt graph."""
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
        text=[_result_text(n, labels, auto) for n in names], textposition="top center",
        hovertext=[f"{_plotly_text(n)}<br>{_plotly_text(labels.get(n, ''))}" for n in names], hoverinfo="text",
        marker=dict(size=14, color=["#9467bd" if n.startswith(("in:", "out:")) else "#2ca02c" for n in names]),
    ))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=10, b=10), plot_bgcolor="white",
                      xaxis=dict(visible=False), yaxis=dict(title="inputs (0), layer + 1, outputs (top)", gridcolor="#eee"))
    return fig
