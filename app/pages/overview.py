"""Overview: the corpus at a glance (size, groups and tags, score and size distributions, the
most recurring features and circuits, graphs not to trust)."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from circuit_atlas.app import data


def _tags(prompts: pd.DataFrame) -> pd.DataFrame:
    rows = [(t, pid) for pid, tags in zip(prompts["prompt_id"], prompts["tags"]) if tags is not None for t in list(tags)]
    return pd.DataFrame(rows, columns=["tag", "prompt_id"]).groupby("tag").size().rename("prompts").reset_index()


def main() -> None:
    st.title("Overview")
    prompts = data.require_prompts()
    stats = data.stats()
    cols = st.columns(5)
    cols[0].metric("Prompts", len(prompts))
    cols[1].metric("Groups", int(prompts["grp"].nunique()))
    cols[2].metric("Features", int(stats.get("Feature", 0)))
    cols[3].metric("Attribution edges", int(stats.get("EDGE", 0)))
    cols[4].metric("Recurring links", int(stats.get("LINKS", 0)))
    if stats.get("LINKS", 0) == 0 and stats.get("EDGE", 0) > 0:
        st.info("The derived LINKS layer is empty: recurring edges, paths and motifs need it "
                "(`circuit-atlas store rebuild-links`).")

    left, right = st.columns(2)
    with left:
        st.subheader("Prompts by group")
        by_group = prompts.fillna({"grp": "(none)"}).groupby("grp").size().rename("prompts").reset_index()
        st.plotly_chart(px.bar(by_group, x="grp", y="prompts", labels={"grp": "group"}, height=300), key="by_group")
    with right:
        st.subheader("Prompts by tag")
        tags = _tags(prompts)
        if tags.empty:
            st.caption("No tags.")
        else:
            st.plotly_chart(px.bar(tags, x="tag", y="prompts", height=300), key="by_tag")

    st.subheader("Scores and graph sizes")
    scores = prompts.melt(id_vars=["prompt_id"], value_vars=["replacement_score", "completeness_score"],
                          var_name="score", value_name="value").dropna()
    a, b = st.columns(2)
    with a:
        if scores.empty:
            st.caption("No scores stored.")
        else:
            st.plotly_chart(px.histogram(scores, x="value", color="score", barmode="overlay", nbins=20, height=300),
                            key="scores")
    with b:
        sizes = prompts.melt(id_vars=["prompt_id"], value_vars=["n_nodes", "n_edges"], var_name="count",
                             value_name="value").dropna()
        if sizes.empty:
            st.caption("No graph sizes stored.")
        else:
            st.plotly_chart(px.histogram(sizes, x="value", color="count", barmode="overlay", nbins=20, height=300),
                            key="sizes")

    a, b = st.columns(2)
    with a:
        st.subheader("Most recurring features")
        hubs = data.query("hubs", {"by": "prompts", "min_prompts": 2, "limit": 15})
        hubs.insert(0, "open", [data.link("feature", key=k) for k in hubs["key"]])
        st.dataframe(hubs[["open", "key", "label", "layer", "prompts", "total_influence"]], hide_index=True,
                     column_config={"open": st.column_config.LinkColumn("open", display_text="feature")})
    with b:
        st.subheader("Most recurring edges")
        edges = data.query("recurring_edges", {"min_prompts": 2, "limit": 15})
        if edges.empty:
            st.caption("No edge recurs in two or more prompts (or LINKS is not built).")
        else:
            edges = edges.sort_values(["prompts", "mean_abs_weight"], ascending=False)
            shown, config = data.linkify(edges[["source_key", "target_key", "prompts", "mean_weight", "sign_consistency"]])
            st.dataframe(shown, hide_index=True, column_config=config)
            st.caption("Paths, motifs and more: the Circuit search page.")

    st.subheader("Graphs not to trust")
    st.caption("Error nodes carry much of the influence, or the replacement/completeness scores are low.")
    bad = data.query("untrusted_graphs", {"limit": 10})
    if not bad.empty:
        bad = bad[(bad["error_share"] >= 0.5) | (bad["replacement_score"].fillna(1) < 0.5)]
    if bad.empty:
        st.success("No graph is flagged.")
    else:
        bad.insert(0, "open", [data.link("prompt_graph", prompt=p) for p in bad["prompt_id"]])
        st.dataframe(bad[["open", "text", "group", "error_share", "replacement_score", "completeness_score"]],
                     hide_index=True, column_config={"open": st.column_config.LinkColumn("open", display_text="graph")})


try:
    main()
except data.NoData as exc:
    data.empty_state(exc)
