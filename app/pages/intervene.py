"""Intervene: for a prompt, clamp, scale or zero chosen features (e.g. a circuit found in the
store) and compare the model's top tokens before and after. Needs the model and its
transcoders on this machine; without them the page says what to set up.

Model and transcoders come from circuit_atlas.app.models (session state, the environment that
``circuit-atlas app --model M --transcoders T`` sets, or the prompt's stored model and scan).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.express as px
import streamlit as st

from circuit_atlas.app import data, models

UNAVAILABLE = "Intervene needs the model and transcoders on this machine."


def _engine() -> tuple[Any, Any] | str:
    """(Intervention, intervene), or why the engine cannot intervene here."""
    try:
        from circuit_atlas.engine.interventions.ablation import Intervention, intervene
    except ImportError as exc:
        return f"the intervention engine is not available ({exc})"
    return Intervention, intervene


def _parse_manual(text: str) -> list[tuple[int, int, int]]:
    """``layer:pos:feature`` triples, comma-separated."""
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        parts = item.split(":")
        if len(parts) != 3:
            raise ValueError(f"'{item}' is not layer:pos:feature")
        out.append((int(parts[0]), int(parts[1]), int(parts[2])))
    return out


def _feature_nodes(pid: str) -> pd.DataFrame:
    frame = data.query("prompt_subgraph", {"prompt_id": pid})
    feats = frame[frame["kind"] == "feature"].copy()
    feats["index"] = [int(n.split("_")[1]) for n in feats["node_id"]]
    return feats.sort_values("influence", ascending=False)


def _unavailable(why: str) -> None:
    st.info(f"{UNAVAILABLE} Here {why}.")
    st.markdown("Browse circuits on the other pages; to test them on the model, run the app where the model and "
                "transcoders are, e.g. `circuit-atlas app --model demo --transcoders DIR`.")


def main() -> None:
    st.title("Intervene")
    engine = _engine()
    prompts = data.require_prompts()
    ids = prompts["prompt_id"].tolist()
    wanted = st.query_params.get("prompt")
    if wanted in ids and "iv_prompt" not in st.session_state:
        st.session_state["iv_prompt"] = wanted
    labels = {r["prompt_id"]: data.prompt_label(r) for _, r in prompts.iterrows()}
    pid = st.selectbox("Prompt", ids, format_func=lambda i: labels[i], key="iv_prompt")
    prompt = prompts[prompts["prompt_id"] == pid].iloc[0]
    if isinstance(engine, str):
        _unavailable(engine)
        return
    Intervention, intervene = engine
    loaded = models.model_and_transcoders(prompt, key="iv")
    if isinstance(loaded, str):
        _unavailable(loaded)
        return
    lm, tc = loaded
    token_ids = [int(t) for t in (prompt["token_ids"] if prompt["token_ids"] is not None else [])]
    tokens = [str(t) for t in (prompt["tokens"] if prompt["tokens"] is not None else [])]
    st.caption(f"Model `{getattr(lm, 'model_id', type(lm).__name__)}` · transcoders "
               f"{getattr(tc, 'scan', '')} ({getattr(tc, 'n_layers', '?')} layers, {getattr(tc, 'd_transcoder', '?')} "
               f"features/layer) · {len(token_ids)} tokens")

    feats = _feature_nodes(pid)
    names = {n: f"{n}  (L{int(l)} pos {int(p)} {tokens[int(p)]!r} · infl {i:.3g} · {lab or k})" if 0 <= int(p) < len(tokens) else n
             for n, l, p, i, lab, k in zip(feats["node_id"], feats["layer"], feats["pos"], feats["influence"],
                                           feats["label"], feats["feature_key"])}
    chosen = st.multiselect("Features of this prompt (most influential first)", list(names), format_func=names.get,
                            key=f"iv_feats_{pid}")
    manual = st.text_input("More features (layer:pos:feature, comma-separated)", key="iv_manual")
    c1, c2, c3, c4 = st.columns(4)
    mode = c1.selectbox("Mode", ["zero", "scale", "clamp"], key="iv_mode")
    value = c2.number_input("Value (scale factor or clamp value)", value=0.0 if mode != "scale" else 2.0, key=f"iv_value_{mode}")
    top_k = int(c3.number_input("Top tokens", 1, 50, 10, key="iv_topk"))
    freeze = c4.checkbox("Freeze attention", value=True, key="iv_freeze")
    n_layers = int(getattr(tc, "n_layers", 1))
    limit = st.checkbox("Limit the effect to a layer range", key="iv_limit")
    layer_range = st.slider("Layers", 0, max(n_layers - 1, 1), (0, max(n_layers - 1, 1)), key="iv_layers") if limit else None

    if not st.button("Run intervention", key="iv_run", type="primary"):
        return
    try:
        triples = [(int(n.split("_")[0]), int(n.split("_")[2]), int(n.split("_")[1])) for n in chosen]
        triples += _parse_manual(manual)
    except ValueError as exc:
        st.error(f"More features: {exc}")
        return
    if not triples:
        st.warning("Choose at least one feature.")
        return
    d_tc = int(getattr(tc, "d_transcoder", 10**12))
    bad = [t for t in triples if not (0 <= t[0] < n_layers and 0 <= t[1] < len(token_ids) and 0 <= t[2] < d_tc)]
    if bad:
        st.warning("Skipped (outside these transcoders or this prompt): " + ", ".join(f"{l}:{p}:{f}" for l, p, f in bad))
    triples = [t for t in triples if t not in bad]
    if not triples:
        return
    ivs = [Intervention(layer=l, pos=p, feature=f, mode=mode, value=float(value)) for l, p, f in triples]
    try:
        result = intervene(lm, tc, token_ids or str(prompt["text"]), ivs, freeze_attention=freeze,
                           layer_range=(layer_range[0], layer_range[1] + 1) if layer_range else None, top_k=top_k)
    except Exception as exc:  # the engine's message says what was wrong with the request
        st.error(f"Intervention failed: {exc}")
        return
    st.metric("KL divergence (before ‖ after)", f"{float(result.kl):.4g}")
    left, right = st.columns(2)
    left.markdown("**Before**")
    left.dataframe(result.before, hide_index=True, key="iv_before")
    right.markdown("**After**")
    right.dataframe(result.after, hide_index=True, key="iv_after")
    both = pd.concat([result.before.assign(run="before"), result.after.assign(run="after")], ignore_index=True)
    both["token"] = both["token"].astype(str).map(repr)
    st.plotly_chart(px.bar(both, x="token", y="prob", color="run", barmode="group", height=320), key="iv_plot")


try:
    main()
except data.NoData as exc:
    data.empty_state(exc)
