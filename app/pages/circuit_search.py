"""Circuit search: forms over the query library (recurring edges and paths, token -> logit,
motifs, prompts with a circuit, supernode candidates); results as tables whose rows link to
the prompt graph and feature pages, and a small graph of the top results."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import streamlit as st

from circuit_atlas.app import data, graph_view, models
from circuit_atlas.queries.runner import Param, QueryError, load_query

SEARCHES = {  # query -> title shown in the picker
    "recurring_edges": "Recurring edges",
    "recurring_paths": "Recurring paths to a logit",
    "token_to_logit": "Input token → output token",
    "motifs": "Motifs (feed-forward, fan-in, fan-out)",
    "prompts_with_circuit": "Prompts containing a circuit",
    "supernode_candidates": "Supernode candidates",
}


SCORE_CONFIG = {  # score and share columns, readable at a glance
    "specificity": st.column_config.NumberColumn("specificity", format="%.2f",
                                                 help="prompts × ln(1 / max_share); 0 through a part present in every graph"),
    "max_share": st.column_config.NumberColumn("max share", format="%.2f", help="share of graphs holding the row's most common part"),
    "common_member": st.column_config.TextColumn("most common part"),
    "share": st.column_config.NumberColumn("share", format="%.2f"),
    "mean_jaccard": st.column_config.NumberColumn("mean Jaccard", format="%.2f"),
}


def _widget(name: str, p: Param) -> Any:
    """One form field for a declared parameter, typed like it."""
    key = f"cs_{name}_{p.name}"
    label = f"{p.name}{' (required)' if p.required else ''}"
    if p.type == "int":
        return st.number_input(label, value=int(p.default or 0), min_value=None if p.min is None else int(p.min), step=1, help=p.help, key=key)
    if p.type == "float":
        return st.number_input(label, value=float(p.default or 0.0), min_value=None if p.min is None else float(p.min), help=p.help, key=key, format="%.4f")
    if p.type == "bool":
        return st.checkbox(label, value=bool(p.default), help=p.help, key=key)
    if p.type == "list[str]":
        text = st.text_input(label, value=",".join(p.default or []), help=p.help + " (comma-separated)", key=key)
        return [v.strip() for v in text.split(",") if v.strip()]
    return st.text_input(label, value=p.default or "", help=p.help, key=key)


def _edges_of(name: str, df: pd.DataFrame) -> list[tuple[str, str, float]]:
    """The result's top rows as graph edges (source, target, signed prompt count)."""
    out: dict[tuple[str, str], float] = {}

    def add(s: str, t: str, w: float) -> None:
        if s and t:
            out[(s, t)] = out.get((s, t), 0.0) + w

    for r in df.head(15).to_dict("records"):
        n = float(r.get("prompts") or 1)
        sign = -1.0 if (r.get("mean_weight") or r.get("mean_path_weight") or 0) < 0 else 1.0
        if name == "recurring_edges":
            add(r["source_key"], r["target_key"], sign * n)
        elif name == "recurring_paths":
            chain = [r["f1_key"], r["f2_key"]] + ([r["f3_key"]] if r.get("f3_key") else []) + [f"out:{r['token']}"]
            for s, t in zip(chain, chain[1:]):
                add(s, t, sign * n)
        elif name == "token_to_logit":
            chain = [f"in:{r['input_token']}", r["f1_key"]] + ([r["f2_key"]] if r.get("f2_key") else []) + [f"out:{r['output_token']}"]
            for s, t in zip(chain, chain[1:]):
                add(s, t, sign * n)
        elif name == "motifs":
            a, b, c = r["a_key"], r["b_key"], r["c_key"]
            pairs = {"feed_forward": [(a, b), (b, c), (a, c)], "fan_in": [(a, c), (b, c)], "fan_out": [(a, b), (a, c)]}
            for s, t in pairs.get(r["motif"], []):
                add(s, t, n)
    return [(s, t, w) for (s, t), w in out.items()]


def _labels(df: pd.DataFrame) -> tuple[dict[str, str], set[str]]:
    """Each result feature's label, and the keys whose label is an automatic one."""
    labels: dict[str, str] = {}
    auto: set[str] = set()
    for col in df.columns:
        if col.endswith("_key"):
            lab = col[: -len("_key")] + "_label"
            if lab in df.columns:
                sources = df[f"{lab}_source"] if f"{lab}_source" in df.columns else [None] * len(df)
                for k, v, src in zip(df[col], df[lab], sources):
                    if isinstance(k, str) and isinstance(v, str) and v:
                        labels[k] = v
                        if src == "auto":
                            auto.add(k)
    return labels, auto


def _row_sets(name: str, df: pd.DataFrame) -> dict[str, list[str]]:
    """The features of each result row (its ``*_key`` columns; a supernode candidate as a
    whole), named for the picker, for one-click validation."""
    if name == "supernode_candidates" and "candidate" in df:
        return {f"candidate #{c} ({len(g)} features)": [str(k) for k in g["key"]] for c, g in df.groupby("candidate")}
    if name == "prompts_with_circuit":
        return {}
    cols = [c for c in df.columns if c.endswith("_key")]
    sets = {}
    for i, r in enumerate(df.head(50).to_dict("records")):
        keys = [str(r[c]) for c in cols if isinstance(r.get(c), str) and r[c]]
        if keys:
            sets[f"row {i + 1}: " + " → ".join(keys)] = keys
    return sets


def _row_groups(name: str, df: pd.DataFrame, sets: dict[str, list[str]]) -> dict[str, str]:
    """Each row's own group: the most common group among the prompts it was found in (its
    ``prompt_ids``), so validating an 'opposites' edge defaults to the opposites' prompts."""
    if "prompt_ids" not in df or name in ("supernode_candidates", "prompts_with_circuit"):
        return {}
    prompts = data.require_prompts()
    grp_of = dict(zip(prompts["prompt_id"], prompts["grp"]))
    rows = [r for r in df.head(50).to_dict("records")
            if any(isinstance(r.get(c), str) and r[c] for c in df.columns if c.endswith("_key"))]
    out = {}
    for label, r in zip(sets, rows):
        ids = r.get("prompt_ids")
        ids = json.loads(ids) if isinstance(ids, str) else list(ids if ids is not None else [])
        groups = pd.Series([grp_of.get(i) for i in ids], dtype=object).dropna()
        if len(groups):
            out[label] = str(groups.value_counts().index[0])
    return out


def _validate_rows(name: str, df: pd.DataFrame) -> None:
    sets = _row_sets(name, df)
    if sets:
        models.validate_panel(sets, _row_groups(name, df, sets), key=f"cs_val_{name}", what="a result row's features")


def main() -> None:
    st.title("Circuit search")
    data.require_prompts()
    name = st.selectbox("Search", list(SEARCHES), format_func=SEARCHES.get, key="cs_query")
    q = load_query(name)
    st.caption(q.description)
    with st.form(f"cs_form_{name}"):
        cols = st.columns(3)
        values = {}
        for i, p in enumerate(q.params.values()):
            with cols[i % 3]:
                values[p.name] = _widget(name, p)
        submitted = st.form_submit_button("Run")
    if q.uses_links:
        st.caption("Uses the derived LINKS layer, which every write keeps fresh (a stale one is refused with what to run).")
    if submitted:
        st.session_state[f"cs_params_{name}"] = values
    params = st.session_state.get(f"cs_params_{name}")
    if params is None:
        st.info("Set the parameters and press Run.")
        return
    try:
        df = data.query(name, params)
    except QueryError as exc:
        st.error(str(exc))
        return
    st.markdown(f"**{len(df)} rows**")
    if df.empty:
        st.info("No results: lower min_prompts or the weight threshold.")
        return
    if "specificity" in df:
        ranked = "specificity" if params.get("rank", "specificity") == "specificity" else "raw prompt count"
        st.caption(f"Ranked by {ranked}. specificity = prompts × ln(1 / max_share): max_share is the share of graphs "
                   "holding the row's most common part (common_member), so rows through hubs or generic outputs "
                   "such as ' the' score 0; `prompts` is the raw count. See docs/concepts/specificity.md.")
    if name == "supernode_candidates" and "hubs_left_out" in df and len(df):
        st.caption(f"{int(df['hubs_left_out'].iloc[0])} hub features (active in more than max_share of the graphs) "
                   "were left out of the groups.")
    shown, config = data.linkify(df)
    config = {**SCORE_CONFIG, **config}
    st.dataframe(shown, hide_index=True, column_config=config, key=f"cs_table_{name}")
    st.download_button("Download CSV", df.to_csv(index=False).encode(), file_name=f"{name}.csv", mime="text/csv",
                       key=f"cs_csv_{name}")
    _validate_rows(name, df)
    edges = _edges_of(name, df)
    if edges:
        st.subheader("Top results as a graph")
        st.caption("Features by layer; input tokens at the bottom, output tokens on top; width = prompts.")
        labels, auto = _labels(df)
        st.plotly_chart(graph_view.result_figure(edges, labels, auto=auto), key=f"cs_graph_{name}")
    elif name == "supernode_candidates":
        st.subheader("Candidates")
        for cand, grp in df.groupby("candidate"):
            st.markdown(f"**#{cand}** ({len(grp)} features, mean Jaccard "
                        f"{grp['mean_jaccard'].mean():.2f}): " + ", ".join(
                            f"[{k}]({data.link('feature', key=k)})" for k in grp["key"]))


try:
    main()
except data.NoData as exc:
    data.empty_state(exc)
