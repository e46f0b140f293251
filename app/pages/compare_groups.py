"""Compare groups: features and edges enriched in one set of prompts versus another (by group,
tag, corpus or correctness), ranked by smoothed log-odds, as tables and a plot."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from circuit_atlas.app import data
from circuit_atlas.queries.runner import QueryError

REST = "(every other prompt)"


def _values(prompts: pd.DataFrame, field: str) -> list[str]:
    if field == "group":
        vals = prompts["grp"].dropna().astype(str)
    elif field == "corpus":
        vals = prompts["corpus"].dropna().astype(str)
    elif field == "tag":
        vals = pd.Series([str(t) for tags in prompts["tags"] if tags is not None for t in list(tags)], dtype=object)
    else:
        vals = pd.Series(["true", "false"])
    return sorted(vals.unique().tolist())


def _run(field: str, a: str, b: str, min_prompts: int, limit: int, kind: str, enriched: str) -> pd.DataFrame:
    """One side's top rows: the same A/B split (columns keep their meaning: count_a is A's count),
    ordered for side `enriched`, so the limit never cuts one side away."""
    rows = "" if kind == "both" else kind  # only the rows shown: edge rows cost most of the query
    return data.query("contrastive", {"field": field, "a": a, "b": b, "min_prompts": min_prompts, "limit": limit,
                                      "kind": rows, "enriched": enriched})


def main() -> None:
    st.title("Compare groups")
    prompts = data.require_prompts()
    c1, c2, c3 = st.columns(3)
    field = c1.selectbox("Split prompts by", ["group", "tag", "corpus", "correct"], key="cg_field")
    values = _values(prompts, field)
    if not values:
        st.info(f"No prompt has a {field}.")
        return
    a = c2.selectbox("Side A", values, key=f"cg_a_{field}")
    rest = [v for v in values if v != a]
    b_choice = c3.selectbox("Side B", [REST] + rest, key=f"cg_b_{field}")
    b = "" if b_choice == REST else b_choice
    c4, c5, c6 = st.columns(3)
    min_prompts = int(c4.number_input("Least prompts (both sides)", 2, 10_000, 2, key="cg_min"))
    limit = int(c5.number_input("Rows per side", 5, 1000, 30, key="cg_limit"))
    kind = c6.radio("Show", ["feature", "edge", "both"], horizontal=True, key="cg_kind")
    try:
        ab = _run(field, a, b, min_prompts, limit, kind, "a")
        ba = _run(field, a, b, min_prompts, limit, kind, "b")
    except QueryError as exc:
        st.error(str(exc))
        return
    if kind != "both":
        ab, ba = ab[ab["kind"] == kind], ba[ba["kind"] == kind]
    n_a = int(ab["n_a"].iloc[0]) if len(ab) else int((prompts["grp"] == a).sum()) if field == "group" else None
    st.caption(f"A = {field} '{a}'" + (f" ({n_a} prompts)" if n_a else "") + f" · B = {b_choice} · "
               "log-odds > 0: enriched in A. Edge rows need the LINKS layer.")
    side_a = ab[ab["log_odds"] > 0].assign(side="A")
    side_b = ba[ba["log_odds"] < 0].assign(side="B")
    ranked = pd.concat([side_a, side_b], ignore_index=True).sort_values("log_odds", ascending=False)
    if ranked.empty:
        st.info("Nothing differs between the two sides at these settings.")
        return
    plot = ranked.head(20)
    if len(ranked) > 20:
        plot = pd.concat([ranked.head(15), ranked.tail(min(15, len(ranked) - 15))]).drop_duplicates("key")
    plot = plot.assign(name=[f"{k} {lab}" if isinstance(lab, str) and lab else k for k, lab in zip(plot["key"], plot["label"])])
    fig = px.bar(plot.sort_values("log_odds"), x="log_odds", y="name", color="kind", orientation="h",
                 height=max(300, 22 * len(plot)), hover_data=["count_a", "count_b", "freq_a", "freq_b"])
    fig.update_layout(yaxis_title="", margin=dict(l=10, r=10, t=10, b=10))
    st.plotly_chart(fig, key="cg_plot")
    # one table under the other at full width: side by side, the score and count columns were cut off
    cols = ["source_key", "target_key", "label", "log_odds", "count_a", "count_b", "freq_a", "freq_b", "kind"]
    if kind == "feature":
        cols.remove("target_key")
    if kind != "both":
        cols.remove("kind")
    config_extra = {"log_odds": st.column_config.NumberColumn("log-odds (A over B)", format="%.2f"),
                    "count_a": st.column_config.NumberColumn("prompts in A"), "count_b": st.column_config.NumberColumn("prompts in B"),
                    "freq_a": st.column_config.NumberColumn("freq A", format="%.2f"),
                    "freq_b": st.column_config.NumberColumn("freq B", format="%.2f")}
    for side, title in (("A", f"Enriched in A ({a})"), ("B", f"Enriched in B ({b_choice})")):
        part = ranked[ranked["side"] == side].sort_values("log_odds", ascending=(side == "B"))[cols]
        shown, config = data.linkify(part)
        st.subheader(title)
        if part.empty:
            st.caption("None at these settings.")
        else:
            st.dataframe(shown, hide_index=True, column_config={**config_extra, **config}, key=f"cg_table_{side}",
                         width="stretch")


try:
    main()
except data.NoData as exc:
    data.empty_state(exc)
