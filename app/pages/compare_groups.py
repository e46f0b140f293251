"""Compare groups: features and edges enriched in one set of prompts versus another (by group,
tag, corpus or correctness), as tables and a plot: by presence in the pruned graphs (smoothed
log-odds) or by activation (effect size, Welch's t, and whether the other side shares the input
the feature fires on; see docs/concepts/specificity.md)."""

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


def _run(field: str, a: str, b: str, min_prompts: int, limit: int, kind: str, enriched: str,
         measure: str = "presence") -> pd.DataFrame:
    """One side's top rows: the same A/B split (columns keep their meaning: count_a is A's count),
    ordered for side `enriched`, so the limit never cuts one side away."""
    rows = "" if kind == "both" else kind  # only the rows shown: edge rows cost most of the query
    return data.query("contrastive", {"field": field, "a": a, "b": b, "min_prompts": min_prompts, "limit": limit,
                                      "kind": rows, "enriched": enriched, "measure": measure})


ACTIVATION_CONFIG = {
    "specific_effect": st.column_config.NumberColumn("specific effect", format="%.2f",
                                                     help="effect size x (1 - shared prefix): 0 when the other side shares the input it fires on"),
    "effect_size": st.column_config.NumberColumn("Cohen's d", format="%.2f"),
    "p_value": st.column_config.NumberColumn("p (Welch)", format="%.2g"),
    "mean_act_a": st.column_config.NumberColumn("mean act. A", format="%.3f"),
    "mean_act_b": st.column_config.NumberColumn("mean act. B", format="%.3f"),
    "shared_prefix": st.column_config.NumberColumn("shared prefix", format="%.2f",
                                                   help="share of the enriched side's prompts whose activation sits on a prefix the other side also starts with"),
    "imputed": st.column_config.NumberColumn("recovered", help="prompts whose graph pruned it; value from a graph with the same prefix"),
}


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
    c4, c5, c6, c7 = st.columns(4)
    min_prompts = int(c4.number_input("Least prompts (both sides)", 2, 10_000, 2, key="cg_min"))
    limit = int(c5.number_input("Rows per side", 5, 1000, 30, key="cg_limit"))
    measure = c6.radio("Compare", ["presence", "activation"], horizontal=True, key="cg_measure",
                       help="presence: prompts whose pruned graph holds the feature; activation: its activations "
                            "(0 where inactive), which pruning does not bias (features only)")
    kind = "feature" if measure == "activation" else c7.radio("Show", ["feature", "edge", "both"], horizontal=True, key="cg_kind")
    try:
        ab = _run(field, a, b, min_prompts, limit, kind, "a", measure)
        ba = _run(field, a, b, min_prompts, limit, kind, "b", measure)
    except QueryError as exc:
        st.error(str(exc))
        return
    if kind != "both":
        ab, ba = ab[ab["kind"] == kind], ba[ba["kind"] == kind]
    score = "specific_effect" if measure == "activation" else "log_odds"
    n_a = int(ab["n_a"].iloc[0]) if len(ab) else int((prompts["grp"] == a).sum()) if field == "group" else None
    st.caption(f"A = {field} '{a}'" + (f" ({n_a} prompts)" if n_a else "") + f" · B = {b_choice} · " + (
        "specific effect > 0: higher activations in A, on input B does not share (0 when B starts with the same "
        "tokens the feature fires on)." if measure == "activation" else
        "log-odds > 0: enriched in A (prompts whose pruned graph holds it). Edge rows need the LINKS layer."))
    side_a = ab[ab[score] > 0].assign(side="A")
    side_b = ba[ba[score] < 0].assign(side="B")
    ranked = pd.concat([side_a, side_b], ignore_index=True).sort_values(score, ascending=False)
    if ranked.empty:
        st.info("Nothing differs between the two sides at these settings.")
        return
    plot = ranked.head(20)
    if len(ranked) > 20:
        plot = pd.concat([ranked.head(15), ranked.tail(min(15, len(ranked) - 15))]).drop_duplicates("key")
    plot = plot.assign(name=[f"{k} {lab}" if isinstance(lab, str) and lab else k for k, lab in zip(plot["key"], plot["label"])])
    if measure == "activation":  # an infinite effect (no spread on either side) drawn at the largest finite one
        finite = plot[score].replace([float("inf"), float("-inf")], float("nan")).abs().max()
        plot = plot.assign(**{score: plot[score].clip(-(finite or 1.0) * 1.1, (finite or 1.0) * 1.1)})
    hover = ["count_a", "count_b", "freq_a", "freq_b"] + (["effect_size", "p_value", "shared_prefix"] if measure == "activation" else [])
    fig = px.bar(plot.sort_values(score), x=score, y="name", color="kind", orientation="h",
                 height=max(300, 22 * len(plot)), hover_data=hover)
    fig.update_layout(yaxis_title="", margin=dict(l=10, r=10, t=10, b=10))
    st.plotly_chart(fig, key="cg_plot")
    # one table under the other at full width: side by side, the score and count columns were cut off
    cols = ["source_key", "target_key", "label", "log_odds", "count_a", "count_b", "freq_a", "freq_b", "kind"]
    if measure == "activation":
        cols = ["source_key", "label", "specific_effect", "effect_size", "p_value", "mean_act_a", "mean_act_b",
                "shared_prefix", "count_a", "count_b", "imputed", "kind"]
    if kind == "feature" and "target_key" in cols:
        cols.remove("target_key")
    if kind != "both":
        cols.remove("kind")
    config_extra = {"log_odds": st.column_config.NumberColumn("log-odds (A over B)", format="%.2f"),
                    "count_a": st.column_config.NumberColumn("prompts in A"), "count_b": st.column_config.NumberColumn("prompts in B"),
                    "freq_a": st.column_config.NumberColumn("freq A", format="%.2f"),
                    "freq_b": st.column_config.NumberColumn("freq B", format="%.2f")}
    for side, title in (("A", f"Enriched in A ({a})"), ("B", f"Enriched in B ({b_choice})")):
        part = ranked[ranked["side"] == side].sort_values(score, ascending=(side == "B"))[cols]
        shown, config = data.linkify(part)
        st.subheader(title)
        if part.empty:
            st.caption("None at these settings.")
        else:
            st.dataframe(shown, hide_index=True, column_config={**config_extra, **ACTIVATION_CONFIG, **config}, key=f"cg_table_{side}",
                         width="stretch")


try:
    main()
except data.NoData as exc:
    data.empty_state(exc)
