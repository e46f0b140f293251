"""Prompt graph: one prompt's attribution graph, laid out like the paper's, with thresholds,
node inspection (inputs and outputs), pinning, and supernodes saved to the store."""

from __future__ import annotations

import hashlib
import html
import json
import time
from typing import Any

import pandas as pd
import streamlit as st

from circuit_atlas.app import data, graph_view, models
from circuit_atlas.queries.supernodes import supernode_graph

SUPERNODES = (
    "MATCH (s:Supernode) WHERE s.scan = $scan AND (s.prompt_id IS NULL OR s.prompt_id = $pid) "
    "OPTIONAL MATCH (s)-[:CONTAINS]->(f:Feature) "
    "RETURN s.key AS key, s.label AS label, s.method AS method, s.prompt_id AS prompt_id, s.node_ids AS node_ids, "
    "collect(f.key) AS members"
)


def _pick_prompt(prompts: pd.DataFrame) -> pd.Series:
    ids = prompts["prompt_id"].tolist()
    wanted = st.query_params.get("prompt")
    if wanted in ids and st.session_state.get("_pg_from_url") != wanted:
        st.session_state["pg_prompt"] = wanted  # a link from another page names the prompt
        st.session_state["_pg_from_url"] = wanted
    labels = {r["prompt_id"]: data.prompt_label(r) for _, r in prompts.iterrows()}
    pid = st.selectbox("Prompt", ids, format_func=lambda i: labels[i], key="pg_prompt")
    return prompts[prompts["prompt_id"] == pid].iloc[0]


def _supernodes(scan: str, pid: str) -> list[dict]:
    df = data.read(SUPERNODES, {"scan": scan, "pid": pid})
    out = []
    for r in df.to_dict("records"):
        node_ids = [str(x) for x in (r.get("node_ids") if r.get("node_ids") is not None else [])]
        members = [str(x) for x in (r.get("members") if r.get("members") is not None else [])]
        out.append({"key": r["key"], "label": r["label"] or r["key"], "method": r["method"],
                    "node_ids": node_ids or None, "members": members})
    return out


def _collapse(nodes: pd.DataFrame, edges: pd.DataFrame, chosen: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    new_nodes, new_edges = supernode_graph(nodes, edges, chosen)
    kind = new_nodes["kind"] if "kind" in new_nodes else pd.Series([None] * len(new_nodes))
    new_nodes["kind"] = kind.fillna(new_nodes.get("type"))
    new_nodes["layer"] = pd.to_numeric(new_nodes["layer"], errors="coerce").round()
    return new_nodes, new_edges


def _selected_from_event(event) -> list[str]:
    try:
        points = event.selection.points  # type: ignore[union-attr]
    except AttributeError:
        try:
            points = event["selection"]["points"]
        except (KeyError, TypeError):
            return []
    out = []
    for p in points or []:
        nid = p.get("customdata") if isinstance(p, dict) else None
        if isinstance(nid, list):
            nid = nid[0] if nid else None
        if isinstance(nid, str) and nid not in out:
            out.append(nid)
    return out


def _head_loadings(prompt: pd.Series, edges: pd.DataFrame, inspect: list[str]) -> None:
    """The node card's per-head split of one edge touching the inspected nodes."""
    from circuit_atlas.engine.attribution import head_loadings as hl
    from circuit_atlas.errors import CircuitAtlasError

    with st.expander("Head loadings: which attention heads carried an edge"):
        loaded = models.model_and_transcoders()
        if isinstance(loaded, str):
            st.caption(f"Head loadings need the model and transcoders on this machine: {loaded}.")
            return
        lm, tc = loaded
        touching = edges[edges["source"].isin(inspect) | edges["target"].isin(inspect)]
        touching = touching.reindex(touching["weight"].abs().sort_values(ascending=False).index)
        if touching.empty:
            st.caption("The inspected nodes have no edges shown.")
            return
        weights = {f"{s} -> {t}": float(w) for s, t, w in zip(touching["source"], touching["target"], touching["weight"])}
        choice = st.selectbox("Edge", list(weights), key="pg_hl_edge", format_func=lambda k: f"{k} ({weights[k]:+.4g})")
        source, target = choice.split(" -> ")
        try:
            layers = hl.valid_layers(hl.parse_node(source, lm.n_layers), hl.parse_node(target, lm.n_layers), lm.n_layers)
        except CircuitAtlasError as exc:
            st.caption(str(exc))
            return
        if not len(layers):
            st.caption(f"No attention layer lies between {source} and {target}: the edge passes no head.")
            return
        layer = st.selectbox("Attention layer", list(layers), key="pg_hl_layer")
        if not st.button("Split across heads", key="pg_hl_run"):
            return
        try:
            hl.check_origin(lm, tc, {"scan": prompt["scan"]})
            token_ids = [int(t) for t in (prompt["token_ids"] if prompt["token_ids"] is not None else [])]
            cache = st.session_state.setdefault("_pg_hl_prepared", {})
            key = (str(prompt["prompt_id"]), id(lm), id(tc))
            if key not in cache:
                cache.clear()  # one prompt's frozen run at a time
                cache[key] = hl.prepare(lm, tc, token_ids)
            (r,) = hl.head_loadings(cache[key], source, target, [int(layer)])
        except CircuitAtlasError as exc:
            st.error(f"Cannot split this edge: {exc}")
            return
        st.plotly_chart(graph_view.heads_figure(r.heads.tolist(), r.bypass, r.edge, f"{source} → {target}, layer {layer}"),
                        key="pg_hl_chart")
        st.caption(f"Parts sum to {r.total:+.6g}; the edge recomputed {r.edge:+.6g}, in the store {weights[choice]:+.6g} "
                   "(frozen attention patterns and norms, as the graph).")


NODE_THRESHOLD, EDGE_THRESHOLD = 0.8, 0.98  # the paper's (and circuit-tracer's) pruning defaults
MAX_NODES = 500  # features/errors drawn at most: the browser's drawing time grows with them (docs/benchmarks/app.md)
FEATURE_INFO = ("MATCH (f:Feature) WHERE f.key = $key RETURN f.label AS label, f.contexts AS contexts, "
                "f.logit_effects AS logit_effects, f.frequency AS frequency")


def _json(raw: Any, default: Any) -> Any:
    try:
        return json.loads(raw) if isinstance(raw, str) and raw else default
    except json.JSONDecodeError:
        return default


def _side(df: pd.DataFrame, other: str) -> pd.DataFrame:
    """An inputs/outputs table as a reader wants it: the other node's label and kind, the weight."""
    cols = [c for c in ("name", "kind", "weight", other) if c in df]
    return df[cols].rename(columns={"name": "node", other: "node_id"})


def _card(node: pd.Series, nodes: pd.DataFrame, edges: pd.DataFrame, tokens: list[str]) -> None:
    """One node's card: its label and numbers, for a feature its stored top contexts and logit
    effects, its strongest inputs and outputs in the graph shown, and a link to its page."""
    label = graph_view.node_label(node)
    st.html(f"<div class='pg-card-title' style='font-size:1.3em;font-weight:600'>{html.escape(label)}</div>")
    facts = [str(node["kind"]), f"`{node['node_id']}`"]
    layer, pos = pd.to_numeric(node.get("layer"), errors="coerce"), pd.to_numeric(node.get("pos"), errors="coerce")
    if node["kind"] in ("feature", "error") and pd.notna(layer):
        facts.append(f"layer {int(layer)}")
    if pd.notna(pos) and 0 <= int(pos) < len(tokens):
        facts.append(f"position {int(pos)} {tokens[int(pos)]!r}")
    for col in ("activation", "influence", "prob"):
        v = pd.to_numeric(node.get(col), errors="coerce")
        if pd.notna(v):
            facts.append(f"{col} {float(v):.4g}")
    st.caption(" · ".join(facts))
    key = node.get("feature_key")
    if isinstance(key, str) and key:
        st.markdown(f"[Open the feature page for `{key}`]({data.link('feature', key=key)})")
        info = data.read(FEATURE_INFO, {"key": key})
        row = info.iloc[0].to_dict() if len(info) else {}
        contexts = _json(row.get("contexts"), [])
        st.markdown("**Top contexts**")
        if contexts:
            st.html(graph_view.contexts_html(contexts, limit=8))
        else:
            st.caption("None stored (run `circuit-atlas features` to collect them).")
        effects = _json(row.get("logit_effects"), {})
        st.markdown("**Logit effects**")
        if effects:
            up = ", ".join(f"{graph_view.visible(t)!r} {float(v):+.3g}" for t, v in effects.get("promoted", [])[:8])
            down = ", ".join(f"{graph_view.visible(t)!r} {float(v):+.3g}" for t, v in effects.get("suppressed", [])[:8])
            st.caption(f"promotes {up or '–'}; suppresses {down or '–'}")
        else:
            st.caption("None stored.")
    elif node["kind"] == "error" and pd.notna(pd.to_numeric(node.get("merged"), errors="coerce")):
        st.caption(f"{int(node['merged'])} error nodes of this layer, merged.")
    inputs, outputs = graph_view.neighbours(edges, nodes, [node["node_id"]])
    st.markdown(f"**Inputs** ({len(inputs)})")
    st.dataframe(_side(inputs, "source"), hide_index=True, key="pg_card_inputs")
    st.markdown(f"**Outputs** ({len(outputs)})")
    st.dataframe(_side(outputs, "target"), hide_index=True, key="pg_card_outputs")


def main() -> None:
    st.title("Prompt graph")
    prompts = data.require_prompts()
    prompt = _pick_prompt(prompts)
    pid, scan = str(prompt["prompt_id"]), str(prompt["scan"])
    tokens = [str(t) for t in (prompt["tokens"] if prompt["tokens"] is not None else [])]
    st.caption(f"`{pid}` · group {prompt['grp']} · model {prompt['model']} · scan {scan} · "
               f"replacement {prompt['replacement_score']:.3g} · completeness {prompt['completeness_score']:.3g}")
    started = time.perf_counter()
    nodes, edges = graph_view.split_subgraph(data.query("prompt_subgraph", {"prompt_id": pid}))

    c1, c2, c3, c4 = st.columns(4)
    node_t = c1.slider("Node threshold (cumulative influence kept)", 0.05, 1.0, NODE_THRESHOLD, 0.05, key="pg_node_t")
    edge_t = c2.slider("Edge threshold (cumulative |weight| kept)", 0.05, 1.0, EDGE_THRESHOLD, 0.01, key="pg_edge_t")
    errors_how = c3.selectbox("Error nodes", graph_view.ERROR_MODES, key="pg_errors")
    supernodes = _supernodes(scan, pid)
    chosen_keys = c4.multiselect("Supernodes", [s["key"] for s in supernodes], key="pg_collapse",
                                 format_func=lambda k: next(s["label"] for s in supernodes if s["key"] == k))
    merge = c4.checkbox("Merge each supernode into one node", key="pg_merge",
                        help="Off: its members are drawn inside a labelled box. On: one node with summed edges.")
    max_nodes = int(c3.number_input("Most features and errors drawn", 10, 100_000, MAX_NODES, 50, key="pg_max_nodes",
                                    help="The most influential first; the thresholds apply before this cap."))
    kept_nodes, kept_edges = graph_view.prune(nodes, edges, node_t, edge_t, max_nodes=max_nodes)
    kept_nodes, kept_edges = graph_view.collapse_errors(kept_nodes, kept_edges, errors_how)
    chosen = [s for s in supernodes if s["key"] in chosen_keys]
    groups: dict[str, list[str]] = {}
    if chosen and merge:
        kept_nodes, kept_edges = _collapse(kept_nodes, kept_edges, chosen)
    for s in ([] if merge else chosen):
        ids = set(s["node_ids"] or []) | set(kept_nodes.loc[kept_nodes["feature_key"].isin(s["members"]), "node_id"]
                                             if "feature_key" in kept_nodes else [])
        groups[s["label"]] = sorted(ids)

    pins: dict[str, list[str]] = st.session_state.setdefault("pg_pins", {})
    pinned = [n for n in pins.get(pid, [])]
    n_layers = int(pd.to_numeric(nodes["layer"], errors="coerce").max() + 1) if nodes["layer"].notna().any() else 1
    capped = int((~nodes["kind"].isin(["embedding", "logit"])).sum()) > max_nodes and \
        int((~kept_nodes["kind"].isin(["embedding", "logit", "supernode"])).sum()) >= max_nodes
    st.caption(f"{len(kept_nodes)} of {len(nodes)} nodes, {len(kept_edges)} of {len(edges)} edges shown"
               + (f" (at most {max_nodes} features and errors drawn: raise the cap to see more)" if capped else "")
               + ". Click a node (or pick it) to open its card; box-select several to inspect them together.")
    left, right = st.columns([3, 2])
    fig = graph_view.figure(kept_nodes, kept_edges, tokens, highlight=pinned, n_layers=n_layers, groups=groups, height=640)
    with left:
        event = st.plotly_chart(fig, on_select="rerun", selection_mode=("points", "box", "lasso"), key=f"pg_graph_{pid}")
    st.session_state["_pg_render_s"] = time.perf_counter() - started  # read by the tests and the browser check

    picked = _selected_from_event(event)
    if picked and picked != st.session_state.get("_pg_last_pick"):
        st.session_state["pg_inspect"] = [p for p in picked if p in set(kept_nodes["node_id"])]
    st.session_state["_pg_last_pick"] = picked
    options = kept_nodes["node_id"].tolist()
    if any(n not in options for n in st.session_state.get("pg_inspect", [])):
        st.session_state["pg_inspect"] = [n for n in st.session_state["pg_inspect"] if n in options]
    names = {r["node_id"]: graph_view.picker_label(r, tokens) for r in kept_nodes.to_dict("records")}
    seen = pd.Series(list(names.values())).value_counts()
    names = {n: f"{v} · {n}" if seen[v] > 1 else v for n, v in names.items()}  # two alike (one label, one spot): the id tells them apart
    with right:
        inspect = st.multiselect("Inspect nodes", options, key="pg_inspect", format_func=lambda n: names.get(n, n),
                                 placeholder="Click a node or type a label, token or layer")
        if inspect:
            shown = inspect[-1]
            if len(inspect) > 1:
                shown = st.radio("Card of", inspect, index=len(inspect) - 1, key="pg_card_of", horizontal=True,
                                 format_func=lambda n: names.get(n, n))
            node = kept_nodes[kept_nodes["node_id"] == shown].iloc[0]
            with st.container(border=True):
                _card(node, kept_nodes, kept_edges, tokens)
            if st.button("Pin inspected nodes", key="pg_pin"):
                pins[pid] = list(dict.fromkeys(pinned + inspect))
                st.rerun()
        else:
            st.caption("No node inspected: click one in the graph or pick it here.")
    if inspect:
        _head_loadings(prompt, kept_edges, inspect)
    if supernodes:
        models.validate_panel({s["label"]: s["members"] for s in supernodes}, str(prompt["grp"] or ""), key="pg_val_sn",
                              what="a supernode")

    st.subheader("Pinned subgraph")
    if not pinned:
        st.caption("Nothing pinned yet: inspect nodes above and pin them.")
        return
    sub_nodes = nodes[nodes["node_id"].isin(pinned)]
    sub_edges = edges[edges["source"].isin(pinned) & edges["target"].isin(pinned)]
    st.plotly_chart(graph_view.figure(sub_nodes, sub_edges, tokens, n_layers=n_layers, height=420), key=f"pg_pinned_{pid}")
    st.write("Pinned: " + ", ".join(f"`{n}`" for n in pinned))
    if st.button("Clear pins", key="pg_clear"):
        pins[pid] = []
        st.rerun()
    pinned_keys = sorted(set(sub_nodes["feature_key"].dropna()) - {""})
    models.validate_panel({"pinned features": pinned_keys}, str(prompt["grp"] or ""), key="pg_val_pins",
                          what="the pinned features")
    with st.form("pg_supernode"):
        name = st.text_input("Supernode name", key="pg_sn_name", placeholder="e.g. say a capital")
        save = st.form_submit_button("Save pinned nodes as a supernode")
    if save:
        if not name.strip():
            st.error("Name the supernode first.")
            return
        members = sorted(set(nodes[nodes["node_id"].isin(pinned)]["feature_key"].dropna()) - {""})
        digest = hashlib.sha1(("|".join([pid] + sorted(pinned))).encode()).hexdigest()[:12]
        record = {"key": f"{scan}:user:{digest}", "scan": scan, "label": name.strip(), "method": "user",
                  "score": None, "prompt_id": pid, "node_ids": sorted(pinned), "members": members}
        try:
            data.save_supernode(record)
        except data.StoreError as exc:
            st.error(f"Could not save the supernode: {exc}")
            return
        st.success(f"Saved supernode '{name.strip()}' ({len(pinned)} nodes, {len(members)} features).")

try:
    main()
except data.NoData as exc:
    data.empty_state(exc)
