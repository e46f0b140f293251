"""Feature: search a feature by key or label; its top-activating contexts, activations, logit
effects, the prompts where it is active, its recurring partners; and an editable label."""

from __future__ import annotations

import html
import json

import pandas as pd
import plotly.express as px
import streamlit as st

from circuit_atlas.app import data

SEARCH = (
    "MATCH (f:Feature) WHERE f.key = $q OR f.key STARTS WITH $q OR f.label CONTAINS $q "
    "RETURN f.key AS key, f.label AS label, f.layer AS layer LIMIT 200"
)
INFO = (
    "MATCH (f:Feature) WHERE f.key = $key RETURN f.key AS key, f.label AS label, f.layer AS layer, "
    "f.`index` AS idx, f.scan AS scan, f.frequency AS frequency, f.max_activation AS max_activation, "
    "f.contexts AS contexts, f.logit_effects AS logit_effects"
)


def _highlight(left: str, token: str, right: str) -> str:
    return (f"{html.escape(left)}<mark style='background:#ffd54f'><b>{html.escape(token)}</b></mark>"
            f"{html.escape(right)}")


def _contexts(info: dict, occ: pd.DataFrame, prompts: pd.DataFrame) -> None:
    """Stored top contexts (from `circuit-atlas features`) or, failing those, the stored prompts
    where the feature is active, with the token highlighted."""
    raw = info.get("contexts")
    try:
        ctx = json.loads(raw) if isinstance(raw, str) and raw else []
    except json.JSONDecodeError:
        ctx = []
    if ctx:
        st.caption("Top-activating contexts from the feature-context corpus.")
        for c in ctx[:20]:
            st.markdown(f"`{c.get('activation', 0):.3g}` &nbsp; " + _highlight(c.get("left", ""), c.get("token", ""),
                        c.get("right", "")), unsafe_allow_html=True)
        return
    st.caption("No stored contexts (run `circuit-atlas features`); the prompts where it is most active:")
    toks = dict(zip(prompts["prompt_id"], prompts["tokens"]))
    for r in occ.sort_values("activation", ascending=False).head(20).itertuples():
        tokens = [str(t) for t in (toks.get(r.prompt_id) if toks.get(r.prompt_id) is not None else [])]
        p = int(r.pos)
        if 0 <= p < len(tokens):
            text = _highlight("".join(tokens[:p]), tokens[p], "".join(tokens[p + 1:]))
        else:
            text = html.escape(str(r.token))
        st.markdown(f"`{r.activation:.3g}` &nbsp; {text}", unsafe_allow_html=True)


def _logit_effects(info: dict, logits: pd.DataFrame) -> None:
    raw = info.get("logit_effects")
    try:
        eff = json.loads(raw) if isinstance(raw, str) and raw else {}
    except json.JSONDecodeError:
        eff = {}
    if eff:
        a, b = st.columns(2)
        a.markdown("**Promotes**")
        a.dataframe(pd.DataFrame(eff.get("promoted", []), columns=["token", "effect"]), hide_index=True)
        b.markdown("**Suppresses**")
        b.dataframe(pd.DataFrame(eff.get("suppressed", []), columns=["token", "effect"]), hide_index=True)
    if not logits.empty:
        st.markdown("**Output tokens it feeds in the stored graphs**")
        st.dataframe(logits[["token", "prompts", "weight"]], hide_index=True)
    if not eff and logits.empty:
        st.caption("No logit effects stored and no direct edges to output tokens.")


def _pick_key() -> str | None:
    wanted = st.query_params.get("key")
    if wanted and st.session_state.get("_ft_from_url") != wanted:
        st.session_state["ft_search"] = wanted
        st.session_state["_ft_from_url"] = wanted
    q = st.text_input("Search by feature key or label", key="ft_search",
                      placeholder="scan:layer:index, a key prefix, or words of a label")
    if not q.strip():
        hubs = data.query("hubs", {"by": "prompts", "min_prompts": 1, "limit": 50})
        if hubs.empty:
            st.info("No active features in the store.")
            return None
        options = hubs["key"].tolist()
        labels = dict(zip(hubs["key"], hubs["label"]))
    else:
        found = data.read(SEARCH, {"q": q.strip()})
        if found.empty:
            st.warning(f"No feature matches '{q.strip()}'.")
            return None
        found = found.sort_values(["layer", "key"])
        exact = found[found["key"] == q.strip()]
        options = exact["key"].tolist() + [k for k in found["key"] if k != q.strip()]
        labels = dict(zip(found["key"], found["label"]))
    return st.selectbox("Feature", options, key=f"ft_pick_{q.strip()}",
                        format_func=lambda k: f"{k} — {labels.get(k)}" if isinstance(labels.get(k), str) and labels.get(k) else k)


def main() -> None:
    st.title("Feature")
    data.require_prompts()
    key = _pick_key()
    if key is None:
        return
    info_df = data.read(INFO, {"key": key})
    info = info_df.iloc[0].to_dict() if len(info_df) else {"key": key}
    info = {k: (None if not isinstance(v, (str, list)) and pd.isna(v) else v) for k, v in info.items()}
    st.header(f"{key}")
    st.caption(f"label: {info.get('label') or '(none)'}")

    with st.form("ft_label_form"):
        new_label = st.text_input("Label", value=str(info.get("label") or ""), key=f"ft_label_{key}")
        saved = st.form_submit_button("Save label")
    if saved:
        try:
            data.save_label(key, new_label.strip())
        except data.StoreError as exc:
            st.error(f"Could not save the label: {exc}")
        else:
            st.session_state["ft_flash"] = f"Label of {key} saved: '{new_label.strip()}'"
            st.rerun()
    if st.session_state.get("ft_flash"):
        st.success(st.session_state.pop("ft_flash"))

    try:
        profile = data.query("feature_profile", {"key": key, "min_prompts": 1, "limit": 25})
    except data.CircuitAtlasError as exc:
        st.info(str(exc))
        return
    summary = profile[profile["section"] == "summary"].iloc[0]
    occ = profile[profile["section"] == "occurrence"]
    cols = st.columns(4)
    cols[0].metric("Prompts where active", int(summary["prompts"]))
    cols[1].metric("Mean activation", f"{summary['activation']:.3g}")
    cols[2].metric("Max activation", f"{summary['weight']:.3g}")
    freq = info.get("frequency")
    cols[3].metric("Frequency", "n/a" if freq is None or pd.isna(freq) else f"{float(freq):.2%}")

    prompts = data.prompts()
    left, right = st.columns(2)
    with left:
        st.subheader("Top-activating contexts")
        _contexts(info, occ, prompts)
    with right:
        st.subheader("Activations")
        st.plotly_chart(px.histogram(occ, x="activation", nbins=20, height=260), key="ft_hist")
        st.subheader("Logit effects")
        _logit_effects(info, profile[profile["section"] == "logit"])

    st.subheader("Prompts where it is active")
    texts = dict(zip(prompts["prompt_id"], prompts["text"]))
    table = occ[["prompt_id", "pos", "token", "activation", "influence"]].copy()
    table.insert(0, "open", [data.link("prompt_graph", prompt=p) for p in table["prompt_id"]])
    table.insert(2, "text", table["prompt_id"].map(texts))
    st.dataframe(table, hide_index=True, column_config={"open": st.column_config.LinkColumn("open", display_text="graph")})

    a, b = st.columns(2)
    for col, section, title in ((a, "upstream", "Recurring upstream partners"), (b, "downstream", "Recurring downstream partners")):
        part = profile[profile["section"] == section][["key", "label", "prompts", "weight"]].copy()
        with col:
            st.subheader(title)
            if part.empty:
                st.caption("None (or the LINKS layer is not built).")
            else:
                part.insert(0, "open", [data.link("feature", key=k) for k in part["key"]])
                st.dataframe(part, hide_index=True,
                             column_config={"open": st.column_config.LinkColumn("open", display_text="feature")})


try:
    main()
except data.NoData as exc:
    data.empty_state(exc)
