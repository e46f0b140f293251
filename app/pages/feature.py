"""Feature: search a feature by key, label, context text or the tokens it fires on; its
top-activating contexts, activations, logit effects, the prompts where it is active, its
recurring partners; and an editable label (a user's label wins over the automatic one, which
is shown with the evidence it was read from).

Contexts are shown as escaped HTML, never as Markdown: text from a corpus holds backticks,
underscores and asterisks that Markdown would turn into code spans and italics, and a token that
is only whitespace must still be seen."""

from __future__ import annotations

import json

import pandas as pd
import plotly.express as px
import streamlit as st

from circuit_atlas.app import data
from circuit_atlas.app.graph_view import AUTO_MARK, context_html, contexts_html, visible

SEARCH = (  # key or key prefix, label, stored contexts (their text and tokens), case-insensitive
    "MATCH (f:Feature) WHERE f.key = $q OR f.key STARTS WITH $q OR toLower(f.label) CONTAINS $lq "
    "OR toLower(f.contexts) CONTAINS $lq "
    "OR toLower(f.auto_label) CONTAINS $lq "
    "RETURN f.key AS key, f.label AS label, f.label_source AS label_source, f.layer AS layer LIMIT 200"
)
# features active on a stored prompt's token that contains the words (what a researcher means by
# "the features on ' capital'")
SEARCH_TOKENS = (
    "MATCH (e:Embedding) WHERE toLower(e.token) CONTAINS $lq "
    "WITH e.prompt_id AS pid, e.pos AS pos "
    "MATCH (a:Active) WHERE a.prompt_id = pid AND a.pos = pos "
    "RETURN a.feature_key AS key, count(*) AS hits ORDER BY hits DESC, key LIMIT 200"
)
INFO = (
    "MATCH (f:Feature) WHERE f.key = $key RETURN f.key AS key, f.label AS label, f.label_source AS label_source, "
    "f.auto_label AS auto_label, f.layer AS layer, "
    "f.`index` AS idx, f.scan AS scan, f.frequency AS frequency, f.max_activation AS max_activation, "
    "f.contexts AS contexts, f.logit_effects AS logit_effects"
)


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
        st.html(contexts_html(ctx, limit=20, css_class="ft-contexts"))
        return
    st.caption("No stored contexts (run `circuit-atlas features`); the prompts where it is most active:")
    toks = dict(zip(prompts["prompt_id"], prompts["tokens"]))
    rows = []
    for r in occ.sort_values("activation", ascending=False).head(20).itertuples():
        tokens = [str(t) for t in (toks.get(r.prompt_id) if toks.get(r.prompt_id) is not None else [])]
        p = int(r.pos)
        if 0 <= p < len(tokens):
            rows.append(context_html("".join(tokens[:p]), tokens[p], "".join(tokens[p + 1:]), r.activation))
        else:
            rows.append(context_html("", str(r.token), "", r.activation))
    st.html(f"<div class='ft-contexts'>{''.join(rows)}</div>")


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
    q = st.text_input("Search features", key="ft_search",
                      placeholder="scan:layer:index, a key prefix, words of a label or a context, or a token it fires on")
    if not q.strip():
        hubs = data.query("hubs", {"by": "prompts", "min_prompts": 1, "limit": 50})
        if hubs.empty:
            st.info("No active features in the store.")
            return None
        options = hubs["key"].tolist()
        labels = _shown_labels(hubs)
    else:
        found = _search(q.strip())
        if found.empty:
            st.warning(f"No feature matches '{q.strip()}'.")
            return None
        exact = found[found["key"] == q.strip()]
        options = exact["key"].tolist() + [k for k in found["key"] if k != q.strip()]
        labels = _shown_labels(found)
    return st.selectbox("Feature", options, key=f"ft_pick_{q.strip()}",
                        format_func=lambda k: f"{k} — {labels.get(k)}" if isinstance(labels.get(k), str) and labels.get(k) else k)


def _shown_labels(df: pd.DataFrame) -> dict[str, str]:
    """Key -> the label as the picker shows it: an automatic one marked as such."""
    src = df["label_source"] if "label_source" in df.columns else pd.Series([None] * len(df), index=df.index)
    return {k: visible(lab) + (AUTO_MARK if s == "auto" else "") for k, lab, s in zip(df["key"], df["label"], src)
            if isinstance(lab, str) and lab}


SOURCE_NAMES = {"user": "yours (saved here)", "import": "imported (e.g. a Neuronpedia explanation)",
                "auto": "automatic, from this feature's evidence"}


def _label_panel(key: str, info: dict) -> None:
    """The shown label and where it came from; the automatic label and why it reads so; the form
    that sets the user's label (empty: back to the automatic one)."""
    from circuit_atlas.ingest.autolabel import auto_label

    label, source, auto = info.get("label"), info.get("label_source"), info.get("auto_label")
    if label:
        st.caption(f"label: {visible(label)} — {SOURCE_NAMES.get(source, 'origin unknown')}")
    else:
        st.caption("label: (none)" + ("" if auto else " — no automatic label: run `circuit-atlas features` "
                                                           "to compute contexts and labels"))
    if auto:
        try:
            ctx = json.loads(info.get("contexts") or "[]")
            eff = json.loads(info.get("logit_effects") or "{}")
        except json.JSONDecodeError:
            ctx, eff = [], {}
        again = auto_label(ctx, eff)  # the rule is deterministic: the stored evidence says why
        why = again.why if again.text == auto else "computed by another version of the rule: rerun `circuit-atlas features`"
        st.caption(f"automatic label: {visible(auto)} ({why})" if source != "auto" else f"why: {why}")
    user_value = str(label) if label and source in ("user", "import") else ""
    with st.form("ft_label_form"):
        new_label = st.text_input("Label", value=user_value, key=f"ft_label_{key}",
                                  placeholder=f"automatic: {visible(auto)}" if auto else "a name for this feature",
                                  help="Your label is shown everywhere instead of the automatic one, and no recompute "
                                       "replaces it. Save an empty label to go back to the automatic one.")
        saved = st.form_submit_button("Save label")
    if saved:
        try:
            data.save_label(key, new_label.strip())
        except data.StoreError as exc:
            st.error(f"Could not save the label: {exc}")
        else:
            st.session_state["ft_flash"] = (f"Label of {key} saved: '{new_label.strip()}'" if new_label.strip()
                                            else f"Label of {key} cleared" + (": the automatic label shows" if auto else ""))
            st.rerun()
    if st.session_state.get("ft_flash"):
        st.success(st.session_state.pop("ft_flash"))


def _search(q: str) -> pd.DataFrame:
    """Features whose key, label or stored contexts match, then those active on a stored prompt's
    token containing the words (most occurrences first)."""
    lq = q.lower()
    found = data.read(SEARCH, {"q": q, "lq": lq}).sort_values(["layer", "key"])
    on_tokens = data.read(SEARCH_TOKENS, {"lq": lq})
    if not on_tokens.empty:
        extra = [k for k in on_tokens["key"] if k not in set(found["key"])]
        if extra:
            info = data.read("MATCH (f:Feature) WHERE f.key IN $keys RETURN f.key AS key, f.label AS label, "
                             "f.label_source AS label_source, f.layer AS layer", {"keys": extra})
            order = {k: i for i, k in enumerate(extra)}  # most occurrences first
            found = pd.concat([found, info.sort_values("key", key=lambda c: c.map(order))], ignore_index=True)
    return found


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
    _label_panel(key, info)

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
    table["token"] = [visible(str(t)) for t in table["token"]]
    st.dataframe(table, hide_index=True, column_config={"open": st.column_config.LinkColumn("open", display_text="graph")})

    a, b = st.columns(2)
    for col, section, title in ((a, "upstream", "Recurring upstream partners"), (b, "downstream", "Recurring downstream partners")):
        cols = ["key", "label"] + (["label_source"] if "label_source" in profile.columns else []) + ["prompts", "weight"]
        part = profile[profile["section"] == section][cols].copy()
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
