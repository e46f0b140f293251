"""Small pandas steps after the Cypher of some library queries.

The Cypher does the matching and the heavy aggregation; these functions compute what the
common Cypher subset of LadybugDB and Neo4j lacks or spells differently (medians, natural
logs, weighted Jaccard, connected components, list indexing) and give every query a total,
deterministic row order, so both backends return the same rows. Each takes the frames of the
query's parts (by part name) and the validated parameters.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import networkx as nx
import numpy as np
import pandas as pd

from circuit_atlas.queries import specificity as spec

Frames = dict[str, pd.DataFrame]


def _ids(value: Any) -> list[str]:
    """A collected list of ids, sorted, whatever container the driver returned."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    return sorted(str(v) for v in value)


def _num(frame: pd.DataFrame, cols: list[str], kind: str = "float") -> pd.DataFrame:
    for c in cols:
        frame[c] = pd.to_numeric(frame[c]).astype("float64" if kind == "float" else "int64")
    return frame


def _counts(frame: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """Graph counts of features (Feature.prompts, NULL on a one-off feature: 1) as ints."""
    for c in cols:
        frame[c] = pd.to_numeric(frame[c]).fillna(1).astype("int64")
    return frame


def _str(frame: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    for c in cols:
        frame[c] = frame[c].astype(object).where(frame[c].notna(), "").astype(str)
    return frame


def _stacked(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """The rows of several parts in one frame (parts that did not run or found nothing are empty)."""
    parts = [f for f in frames if len(f)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _empty(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype=object) for c in columns})


def corpus_overview(frames: Frames, params: dict[str, Any]) -> pd.DataFrame:
    prompts = frames["main"].copy()
    if prompts.empty:
        return _empty(["bucket"])
    counts = pd.concat([f for k, f in frames.items() if k != "main" and len(f)], ignore_index=True) if len(frames) > 1 else pd.DataFrame()
    if not counts.empty:
        wide = counts.pivot_table(index="prompt_id", columns="kind", values="n", aggfunc="sum", fill_value=0)
        prompts = prompts.merge(wide, left_on="prompt_id", right_index=True, how="left")
    kinds = ["errors", "embeddings", "logits"] + [k for k in frames if k.startswith("edges_")]
    for kind in kinds:
        prompts[kind] = pd.to_numeric(prompts[kind], errors="coerce").fillna(0) if kind in prompts else 0
    # the two large counts by difference from each prompt's stored totals, so no statement scans
    # every feature or every feature->feature edge: a node is one of four types, and an edge whose
    # source is no embedding or error and whose target is no logit joins two features
    for c in ("nodes", "edges"):
        prompts[c] = pd.to_numeric(prompts[c], errors="coerce").fillna(0)
    prompts["features"] = prompts["nodes"] - prompts["errors"] - prompts["embeddings"] - prompts["logits"]
    prompts["edges_feature_feature"] = prompts["edges"] - sum(prompts[k] for k in kinds if k.startswith("edges_"))
    kinds = ["features", *kinds, "edges_feature_feature"]
    by = params["by"]
    if by == "tag":
        prompts["bucket"] = prompts["tags"].map(lambda t: list(t) if t is not None and not isinstance(t, float) else [])
        prompts = prompts.explode("bucket")
    elif by in ("group", "corpus", "all"):
        prompts["bucket"] = "*" if by == "all" else prompts["grp" if by == "group" else "corpus"]
    else:
        from circuit_atlas.queries.runner import QueryError

        raise QueryError(f"query 'corpus_overview': parameter 'by' must be group, tag, corpus or all, not {by!r}")
    prompts["bucket"] = prompts["bucket"].astype(object).where(prompts["bucket"].notna(), "").astype(str)
    prompts["correct"] = prompts["correct"].map(lambda v: bool(v) if v is not None and v == v else False)
    for c in ("nodes", "edges", "replacement_score", "completeness_score"):
        prompts[c] = pd.to_numeric(prompts[c], errors="coerce")
    g = prompts.groupby("bucket", sort=True)
    out = pd.DataFrame(
        {
            "prompts": g.size(),
            "correct": g["correct"].sum().astype("int64"),
            "features": g["features"].sum().astype("int64"),
            "errors": g["errors"].sum().astype("int64"),
            "embeddings": g["embeddings"].sum().astype("int64"),
            "logits": g["logits"].sum().astype("int64"),
            "nodes": g["nodes"].sum().astype("int64"),
            "edges": g["edges"].sum().astype("int64"),
            **{k: g[k].sum().astype("int64") for k in kinds if k.startswith("edges_")},
            "replacement_mean": g["replacement_score"].mean(),
            "replacement_min": g["replacement_score"].min(),
            "replacement_max": g["replacement_score"].max(),
            "completeness_mean": g["completeness_score"].mean(),
            "completeness_min": g["completeness_score"].min(),
            "completeness_max": g["completeness_score"].max(),
            "prompt_ids": g["prompt_id"].agg(lambda s: sorted(set(map(str, s)))),
        }
    ).reset_index()
    return out


def recurring_edges(frames: Frames, params: dict[str, Any]) -> pd.DataFrame:
    df = frames["main"].copy()
    df = df[pd.to_numeric(df.get("prompts", pd.Series(dtype=float))) >= params["min_prompts"]] if len(df) else df
    if df.empty:
        return _empty(["source_key"])
    df = _num(df, ["prompts", "edges", "positive"], "int")
    df = _num(df, ["mean_weight", "mean_abs_weight"])
    df["median_weight"] = df["weights"].map(lambda w: float(np.median(np.asarray(list(w), dtype=float))))
    df["sign_consistency"] = np.maximum(df["positive"], df["edges"] - df["positive"]) / df["edges"]
    df["prompt_ids"] = df["prompt_ids"].map(_ids)
    df = _str(df, ["source_key", "source_label", "target_key", "target_label"])
    spec.check_rank("recurring_edges", params["rank"])
    df = spec.score_rows(df, [("source_key", "source_prompts"), ("target_key", "target_prompts")], [],
                         spec.graphs_per_scan(frames.get("graphs")), {})
    df = _counts(df, ["source_prompts", "target_prompts"])
    df = df.sort_values(spec.order(params["rank"]) + ["mean_abs_weight", "source_key", "target_key"],
                        ascending=[False, False, False, True, True])
    return df.head(params["limit"])


def _answers(ids: Any, answers: Any) -> tuple[list[str], list[str]]:
    """prompt_ids sorted, with each prompt's answer token kept beside it."""
    pairs = sorted(zip(map(str, ids if ids is not None else []), map(str, answers if answers is not None else [])))
    return [p for p, _ in pairs], [a for _, a in pairs]


def recurring_paths(frames: Frames, params: dict[str, Any]) -> pd.DataFrame:
    from circuit_atlas.queries.runner import QueryError

    if params["hops"] not in (0, 2, 3):
        raise QueryError(f"query 'recurring_paths': parameter 'hops' must be 2, 3 or 0 (both), not {params['hops']}")
    if params["answer"] not in ("expected", "any"):
        raise QueryError(f"query 'recurring_paths': parameter 'answer' must be expected or any, not {params['answer']!r}")
    spec.check_rank("recurring_paths", params["rank"], params["max_share"])
    df = _stacked([f for k, f in frames.items() if k in ("main", "three")])
    if df.empty:
        return _empty(["hops"])
    df = _num(df, ["hops", "prompts"], "int")
    df = _num(df, ["mean_path_weight"])
    df = df[df["prompts"] >= params["min_prompts"]].copy()
    pairs = [_answers(i, a) for i, a in zip(df["prompt_ids"], df["answers"])]
    df["prompt_ids"] = [p for p, _ in pairs]
    df["answers"] = [a for _, a in pairs]
    if params["answer"] != "any":  # one row per feature chain: the answer it reaches, or '(answers)' when they differ
        df["token"] = [a[0] if len(set(a)) == 1 else "(answers)" for a in df["answers"]]
    keys = ["f1_key", "f2_key", "f3_key", "token", "f1_label", "f2_label", "f3_label"]
    df = _str(df, keys)
    df = _counts(df, ["f1_prompts", "f2_prompts", "f3_prompts"])
    feats = [("f1_key", "f1_prompts"), ("f2_key", "f2_prompts"), ("f3_key", "f3_prompts")]
    tokens = ["token"] if params["answer"] == "any" else []  # a prompt's own answer is no generic output
    df = spec.score_rows(df, feats, tokens, spec.graphs_per_scan(frames.get("graphs")), spec.token_graphs(frames.get("tokens")))
    df = df.sort_values(spec.order(params["rank"]) + ["hops"] + keys, ascending=[False, False, True] + [True] * len(keys))
    return df.head(params["limit"])


def token_to_logit(frames: Frames, params: dict[str, Any]) -> pd.DataFrame:
    spec.check_rank("token_to_logit", params["rank"])
    df = _stacked([frames["main"], frames["three"]])
    if df.empty:
        return _empty(["hops"])
    keys = ["f1_key", "f2_key", "output_token", "f1_label", "f2_label"]
    df = _num(df, ["hops", "prompts"], "int")
    df = _num(df, ["mean_path_weight"])
    df = df[df["prompts"] >= params["min_prompts"]].copy()
    df["prompt_ids"] = df["prompt_ids"].map(_ids)
    df = _counts(_str(df, keys), ["f1_prompts", "f2_prompts"])
    df = spec.score_rows(df, [("f1_key", "f1_prompts"), ("f2_key", "f2_prompts")], ["output_token"],
                         spec.graphs_per_scan(frames.get("graphs")), spec.token_graphs(frames.get("tokens")))
    df = df.sort_values(spec.order(params["rank"]) + ["hops"] + keys, ascending=[False, False, True] + [True] * len(keys))
    df = df.head(params["limit"])
    df["input_token"] = params["input_token"]
    return df


def feature_profile(frames: Frames, params: dict[str, Any]) -> pd.DataFrame:
    cols = ["section", "key", "label", "prompt_id", "pos", "token", "activation", "influence", "prompts", "weight", "specificity"]
    spec.check_rank("feature_profile", params["rank"])
    graphs, token_df = spec.graphs_per_scan(frames.get("graphs")), spec.token_graphs(frames.get("tokens"))
    order = spec.order(params["rank"])
    occ = frames["main"].copy()
    rows = []
    if occ.empty:
        from circuit_atlas.queries.runner import QueryError

        raise QueryError(f"query 'feature_profile': no feature with key {params['key']!r} is active in any prompt")
    occ = _num(occ, ["activation", "influence"])
    occ["pos"] = pd.to_numeric(occ["pos"]).astype("int64")
    occ["token"] = [
        str(list(t)[p]) if t is not None and not isinstance(t, float) and 0 <= p < len(list(t)) else ""
        for t, p in zip(occ["tokens"], occ["pos"])
    ]
    rows.append(
        pd.DataFrame(
            [
                {
                    "section": "summary",
                    "key": str(occ["key"].iloc[0]),
                    "label": "" if pd.isna(occ["label"].iloc[0]) else str(occ["label"].iloc[0]),
                    "prompts": int(occ["prompt_id"].nunique()),
                    "activation": float(occ["activation"].mean()),
                    "influence": float(occ["influence"].mean()),
                    "weight": float(occ["activation"].max()),
                }
            ]
        )
    )
    occ = occ.assign(section="occurrence", label="").sort_values(["prompt_id", "pos"])
    rows.append(occ[["section", "key", "label", "prompt_id", "pos", "token", "activation", "influence"]])
    for part in ("upstream", "downstream"):
        df = frames[part].copy()
        if len(df):
            df = _num(df, ["prompts"], "int")
            df = _num(df, ["weight"])
            df = _counts(_str(df, ["key", "label"]), ["partner_prompts"])
            df = spec.score_rows(df, [("key", "partner_prompts")], [], graphs, token_df)
            df = df.sort_values(order + ["key"], ascending=[False, False, True]).head(params["limit"]).assign(section=part)
            rows.append(df.drop(columns=["partner_prompts", "max_share", "common_member"]))
    logits = frames["logits"].copy()
    if len(logits):
        logits = _num(logits, ["prompts"], "int")
        logits = logits[logits["prompts"] >= params["min_prompts"]]
        logits = _num(logits, ["weight"])
        logits = _str(logits, ["token"])
        logits = _score_tokens(logits, spec.scan_of(str(params["key"])), graphs, token_df)
        rows.append(logits.sort_values(order + ["token"], ascending=[False, False, True]).head(params["limit"]).assign(section="logit"))
    out = pd.concat(rows, ignore_index=True)
    for c in cols:
        if c not in out:
            out[c] = None
    out = _str(out, ["key", "label", "prompt_id", "token"])
    out["pos"] = out["pos"].astype("Int64")
    out["prompts"] = out["prompts"].astype("Int64")
    return out[cols]


def _score_tokens(logits: pd.DataFrame, scan: str, graphs: dict[str, int], token_df: dict[tuple[str, str], int]) -> pd.DataFrame:
    """A feature's logit rows scored like any row: prompts x ln(N / graphs with the token among their logits)."""
    n = graphs.get(scan) or sum(graphs.values()) or 1
    share = np.minimum(np.array([token_df.get((scan, t), 1) for t in logits["token"]], dtype="float64") / n, 1.0)
    return logits.assign(specificity=logits["prompts"].to_numpy(dtype="float64") * -np.log(np.where(share > 0, share, 1.0)))


def prompts_with_circuit(frames: Frames, params: dict[str, Any]) -> pd.DataFrame:
    keys = sorted(set(params["keys"]))
    df = frames["main"].copy()
    if df.empty or not keys:
        return _empty(["prompt_id"])
    edges = frames["edges"]
    per_prompt = edges.groupby("prompt_id").size() if len(edges) else pd.Series(dtype="int64")
    df["present"] = df["present"].map(_ids)
    df["features_present"] = df["present"].map(len).astype("int64")
    df["coverage"] = df["features_present"] / len(keys)
    df["edges_present"] = df["prompt_id"].map(per_prompt).fillna(0).astype("int64")
    df["missing_keys"] = df["present"].map(lambda p: [k for k in keys if k not in set(p)])
    df = _str(df, ["prompt_id", "text", "grp"]).rename(columns={"grp": "group"})
    df = df[df["coverage"] >= params["min_coverage"]]
    df = df.sort_values(["coverage", "edges_present", "prompt_id"], ascending=[False, False, True])
    return df.head(params["limit"])


def _log_odds(a: pd.Series, n_a: int, b: pd.Series, n_b: int, alpha: float) -> pd.Series:
    return np.log((a + alpha) / (n_a - a + alpha)) - np.log((b + alpha) / (n_b - b + alpha))


def contrastive(frames: Frames, params: dict[str, Any]) -> pd.DataFrame:
    from circuit_atlas.queries.runner import QueryError

    if params["field"] not in ("group", "tag", "corpus", "correct"):
        raise QueryError(f"query 'contrastive': parameter 'field' must be group, tag, corpus or correct, not {params['field']!r}")
    if params["alpha"] <= 0:
        raise QueryError("query 'contrastive': parameter 'alpha' must be positive")
    if params["kind"] not in ("", "feature", "edge"):
        raise QueryError(f"query 'contrastive': parameter 'kind' must be feature or edge ('' = both), not {params['kind']!r}")
    if params["enriched"] not in ("a", "b"):
        raise QueryError(f"query 'contrastive': parameter 'enriched' must be a or b, not {params['enriched']!r}")
    if params["measure"] not in ("presence", "activation"):
        raise QueryError(f"query 'contrastive': parameter 'measure' must be presence or activation, not {params['measure']!r}")
    n_a, n_b = len(params.get("ids_a") or []), len(params.get("ids_b") or [])  # the sides, from let_sides
    if n_a == 0:
        raise QueryError(f"query 'contrastive': no prompt has {params['field']} = {params['a']!r}")
    if params["measure"] == "activation":
        return _contrast_activations(frames, params, n_a, n_b)
    parts = []
    feats = frames["features"].copy()
    if len(feats):
        feats = feats.assign(kind="feature", source_key=feats["key"], target_key="")
        parts.append(feats)
    edges = frames["edges"].copy()
    if len(edges):
        # an edge's label is its source feature's; every such feature passed the same
        # min_prompts in the features part, so its label is there
        labels = dict(zip(feats["key"].astype(str), feats["label"])) if len(feats) else {}
        edges = edges.assign(kind="edge", key=edges["source_key"].astype(str) + "->" + edges["target_key"].astype(str),
                             label=edges["source_key"].astype(str).map(labels))
        parts.append(edges)
    if not parts:
        return _empty(["kind"])
    df = pd.concat(parts, ignore_index=True)
    if params["kind"]:  # feature rows are always read (edge rows take their labels from them)
        df = df[df["kind"] == params["kind"]]
    df = _num(df, ["count_a", "count_b"], "int")
    df = df[df["count_a"] + df["count_b"] >= params["min_prompts"]].copy()
    df["n_a"], df["n_b"] = n_a, n_b
    df["freq_a"] = df["count_a"] / n_a
    df["freq_b"] = df["count_b"] / n_b if n_b else 0.0
    df["log_odds"] = _log_odds(df["count_a"], n_a, df["count_b"], n_b, params["alpha"])
    for c in ACTIVATION_COLUMNS:  # measure=presence: the activation columns stay empty
        df[c] = np.nan
    df = _str(df, ["kind", "key", "source_key", "target_key", "label"])
    if params["enriched"] == "a":
        df = df.sort_values(["log_odds", "count_a", "kind", "key"], ascending=[False, False, False, True])
    else:  # side B's rows first, with A's and B's columns unchanged (count_a stays A's count)
        df = df.sort_values(["log_odds", "count_b", "kind", "key"], ascending=[True, False, False, True])
    return df.head(params["limit"])


ACTIVATION_COLUMNS = ["mean_act_a", "mean_act_b", "effect_size", "t_stat", "p_value", "shared_prefix", "specific_effect", "imputed"]


def _contrast_activations(frames: Frames, params: dict[str, Any], n_a: int, n_b: int) -> pd.DataFrame:
    """contrastive with measure=activation: feature rows from the activations (see
    queries/activation_contrast.py), ordered by specific_effect for the side asked for."""
    from circuit_atlas.queries.activation_contrast import contrast

    inst, prompts = frames.get("instances", pd.DataFrame()), frames.get("prompt_tokens", pd.DataFrame())
    if inst.empty or prompts.empty or params["kind"] == "edge":
        return _empty(["kind"])
    feats = frames["features"]
    labels = dict(zip(feats["key"].astype(str), feats["label"])) if len(feats) else {}
    df = contrast(inst, prompts, params.get("ids_a") or [], params.get("ids_b") or [], labels)
    if df.empty:
        return _empty(["kind"])
    df = df[df["count_a"] + df["count_b"] >= params["min_prompts"]].copy()
    df = df.assign(kind="feature", source_key=df["key"], target_key="", n_a=n_a, n_b=n_b)
    df["freq_a"] = df["count_a"] / n_a
    df["freq_b"] = df["count_b"] / n_b if n_b else 0.0
    df["log_odds"] = _log_odds(df["count_a"], n_a, df["count_b"], n_b, params["alpha"])
    df = _str(df, ["kind", "key", "source_key", "target_key", "label"])
    asc = params["enriched"] == "b"
    df = df.sort_values(["specific_effect", "effect_size", "key"], ascending=[asc, asc, True])
    return df.head(params["limit"])


def hubs(frames: Frames, params: dict[str, Any]) -> pd.DataFrame:
    from circuit_atlas.queries.runner import QueryError

    order = {"influence": "total_influence", "prompts": "prompts", "partners": "partners"}
    if params["by"] not in order:
        raise QueryError(f"query 'hubs': parameter 'by' must be influence, prompts or partners, not {params['by']!r}")
    df = _stacked([frames["main"], frames["every"]])  # one of them ran, chosen by min_prompts
    if df.empty:
        return _empty(["key"])
    df = _num(df, ["prompts", "occurrences", "layer", "partners"], "int")
    df = _num(df, ["total_influence", "mean_activation"])
    df = _str(df, ["key", "label"])
    df = df.sort_values([order[params["by"]], "prompts", "key"], ascending=[False, False, True])
    return df.head(params["limit"])


def similar_prompts(frames: Frames, params: dict[str, Any]) -> pd.DataFrame:
    target = frames["main"]
    if target.empty:
        from circuit_atlas.queries.runner import QueryError

        raise QueryError(f"query 'similar_prompts': no prompt with id {params['prompt_id']!r} (or it has no features)")
    mine = target.assign(key=target["key"].astype(str), weight=pd.to_numeric(target["weight"]).astype(float))
    mine = mine.groupby("key")["weight"].max()
    theirs = frames["shared"]
    totals = frames["totals"]
    if theirs.empty or totals.empty:
        return _empty(["prompt_id"])
    # Cypher returns only the shared features' weights and each prompt's total; then
    # sum(min) over shared features, and sum(max) over the union = shared max + both rests.
    shared = theirs.assign(key=theirs["key"].astype(str), weight=pd.to_numeric(theirs["weight"]).astype(float))
    shared["mine"] = shared["key"].map(mine)
    shared["lo"] = np.minimum(shared["weight"], shared["mine"])
    shared["hi"] = np.maximum(shared["weight"], shared["mine"])
    g = shared.groupby("prompt_id")
    stats = pd.DataFrame({"n": g.size(), "lo": g["lo"].sum(), "hi": g["hi"].sum(), "t_shared": g["weight"].sum(), "m_shared": g["mine"].sum()})
    info = totals.set_index("prompt_id")
    stats = stats.join(pd.to_numeric(info["total"]).astype(float).rename("t_total")).join(info[["text", "grp"]])
    den = stats["hi"] + (stats["t_total"] - stats["t_shared"]) + (float(mine.sum()) - stats["m_shared"])
    rows = pd.DataFrame(
        {
            "prompt_id": stats.index,
            "text": stats["text"].values,
            "group": stats["grp"].values,
            "shared_features": stats["n"].astype("int64").values,
            "weighted_jaccard": np.where(den > 0, stats["lo"] / den.where(den > 0, 1.0), 0.0),
        }
    )
    if rows.empty:
        return _empty(["prompt_id"])
    df = _str(rows, ["prompt_id", "text", "group"])
    df = df.sort_values(["weighted_jaccard", "prompt_id"], ascending=[False, True])
    return df.head(params["limit"])


def motifs(frames: Frames, params: dict[str, Any]) -> pd.DataFrame:
    from circuit_atlas.queries.runner import QueryError

    if params["kind"] not in ("", "feed_forward", "fan_in", "fan_out"):
        raise QueryError(f"query 'motifs': parameter 'kind' must be feed_forward, fan_in or fan_out, not {params['kind']!r}")
    df = _stacked([f for k, f in frames.items() if k != "graphs"])
    if df.empty:
        return _empty(["motif"])
    spec.check_rank("motifs", params["rank"], params["max_share"])
    df = _num(df, ["prompts"], "int")
    df = df[df["prompts"] >= params["min_prompts"]].copy()
    df["prompt_ids"] = df["prompt_ids"].map(_ids)
    df = _str(df, ["motif", "a_key", "b_key", "c_key", "a_label", "b_label", "c_label"])
    df = _counts(df, ["a_prompts", "b_prompts", "c_prompts"])
    df = spec.score_rows(df, [("a_key", "a_prompts"), ("b_key", "b_prompts"), ("c_key", "c_prompts")], [],
                         spec.graphs_per_scan(frames.get("graphs")), {})
    df = df.sort_values(spec.order(params["rank"]) + ["motif", "a_key", "b_key", "c_key"],
                        ascending=[False, False, True, True, True, True])
    return df.head(params["limit"])


def supernode_candidates(frames: Frames, params: dict[str, Any]) -> pd.DataFrame:
    from scipy import sparse

    from circuit_atlas.queries.runner import QueryError

    if not 0 < params["max_share"] <= 1:
        raise QueryError(f"query 'supernode_candidates': parameter 'max_share' must lie in (0, 1], not {params['max_share']}")
    links, members = frames["main"], frames["members"]
    if links.empty or members.empty:
        return _empty(["candidate"])
    graphs = spec.graphs_per_scan(frames.get("graphs"))
    total = sum(graphs.values()) or 1
    members = members.assign(key=members["key"].astype(str))
    members["share"] = [len(_ids(v)) / (graphs.get(spec.scan_of(k)) or total) for k, v in zip(members["key"], members["prompt_ids"])]
    hubs = set(members.loc[members["share"] > params["max_share"], "key"])
    members = members[~members["key"].isin(hubs)].reset_index(drop=True)
    links = links[~links["f_key"].astype(str).isin(hubs) & links["f_key"].astype(str).isin(set(members["key"]))]
    if links.empty or members.empty:
        return _empty(["candidate"])
    keys = members["key"].astype(str).tolist()
    index = {k: i for i, k in enumerate(keys)}
    sets = [set(_ids(v)) for v in members["prompt_ids"]]
    prompt_index = {p: j for j, p in enumerate(sorted(set().union(*sets)))}
    # feature x prompt membership as packed bits; feature x target feeding as a sparse 0/1 matrix
    member = np.zeros((len(keys), len(prompt_index)), dtype=bool)
    for i, s in enumerate(sets):
        member[i, [prompt_index[p] for p in s]] = True
    bits = np.packbits(member, axis=1)
    sizes = member.sum(axis=1)
    src = links["f_key"].astype(str).map(index).to_numpy()
    tgt = links["t_key"].astype(str)
    fed = [set() for _ in keys]  # feature -> the targets it feeds
    for f, t in zip(src, tgt):
        fed[f].add(t)
    targets = sorted(set(tgt))
    target_index = {k: j for j, k in enumerate(targets)}
    feeds = sparse.csr_matrix((np.ones(len(links)), (src, tgt.map(target_index).to_numpy())), shape=(len(keys), len(targets)))
    feeds.data[:] = 1.0
    shared = sparse.triu(feeds @ feeds.T, k=1).tocoo()  # pairs (f < g by index) with a common target
    f_idx, g_idx = shared.row, shared.col
    both = np.zeros(len(f_idx), dtype=np.int64)
    step = 1 << 20  # pairs per chunk: bounds the memory of the AND below
    for s in range(0, len(f_idx), step):  # popcount of the AND of the two prompt bitsets
        both[s:s + step] = np.unpackbits(bits[f_idx[s:s + step]] & bits[g_idx[s:s + step]], axis=1).sum(axis=1)
    union = sizes[f_idx] + sizes[g_idx] - both
    jaccard = np.divide(both, union, out=np.zeros(len(both)), where=union > 0)
    keep = jaccard >= params["min_jaccard"]
    graph = nx.Graph()
    for f, g, jac in zip(f_idx[keep], g_idx[keep], jaccard[keep]):
        graph.add_edge(keys[f], keys[g], jaccard=float(jac), targets=fed[f] & fed[g])
    groups = [g for c in nx.connected_components(graph) for g in _split(graph.subgraph(c), params["max_size"])]
    comps = [sorted(c) for c in groups if len(c) >= params["min_size"]]
    comps.sort(key=lambda c: (-len(c), c[0]))
    labels = dict(zip(keys, members["label"]))
    layers = dict(zip(keys, members["layer"]))
    shares = dict(zip(keys, members["share"]))
    out = []
    for i, comp in enumerate(comps[: params["limit"]], start=1):
        inside = graph.subgraph(comp)
        for k in comp:
            edges = [inside.edges[k, n] for n in inside.neighbors(k)] or [graph.edges[k, n] for n in graph.neighbors(k)]
            out.append({"candidate": i, "size": len(comp), "key": k, "label": labels.get(k), "layer": int(layers.get(k, -1)),
                        "prompts": int(sizes[index[k]]), "shared_targets": sorted(set().union(*(e["targets"] for e in edges))),
                        "mean_jaccard": float(np.mean([e["jaccard"] for e in edges])), "share": float(shares[k]),
                        "hubs_left_out": len(hubs)})
    if not out:
        return _empty(["candidate"])
    return _str(pd.DataFrame(out), ["label"])


def _split(graph: nx.Graph, max_size: int) -> list[set[str]]:
    """A connected group cut into Louvain communities (Jaccard-weighted, seeded) until each has
    at most max_size members; the resolution doubles while a community is still too big, and a
    community Louvain will not split any further is kept whole. max_size 0: never split."""
    if max_size <= 0 or graph.number_of_nodes() <= max_size:
        return [set(graph.nodes)]
    out: list[set[str]] = []
    todo = [(set(graph.nodes), 1.0)]
    while todo:
        nodes, resolution = todo.pop()
        if len(nodes) <= max_size:
            out.append(nodes)
            continue
        parts = nx.community.louvain_communities(graph.subgraph(nodes), weight="jaccard", resolution=resolution, seed=0)
        if len(parts) == 1 and resolution >= 64:
            out.append(nodes)  # no split found: kept whole, over max_size
            continue
        todo.extend((set(p), resolution if len(parts) > 1 else resolution * 2) for p in parts)
    return out


def prompt_subgraph(frames: Frames, params: dict[str, Any]) -> pd.DataFrame:
    parts = []
    for part, kind in (("embeddings", "embedding"), ("main", "feature"), ("errors", "error"), ("logits", "logit")):
        df = frames[part]
        if len(df):
            parts.append(df.assign(kind=kind))
    if not parts:
        from circuit_atlas.queries.runner import QueryError

        raise QueryError(f"query 'prompt_subgraph': no prompt with id {params['prompt_id']!r}")
    nodes = pd.concat(parts, ignore_index=True)
    kept = set(nodes["node_id"].astype(str))
    edges = frames["edges"].copy()
    if len(edges):
        edges = edges[edges["source"].astype(str).isin(kept) & edges["target"].astype(str).isin(kept)]
        edges = _num(edges.assign(kind="edge", node_id=""), ["weight"]).sort_values(["source", "target"])
    nodes = nodes.sort_values(["kind", "node_id"])
    out = pd.concat([nodes, edges], ignore_index=True)
    for c in ("layer", "pos", "feature_key", "label", "activation", "influence", "prob", "source", "target", "weight"):
        if c not in out:
            out[c] = None
    out = _str(out, ["node_id", "feature_key", "label", "source", "target"])
    for c in ("layer", "pos"):
        out[c] = pd.to_numeric(out[c]).astype("Int64")
    for c in ("activation", "influence", "prob", "weight"):
        out[c] = pd.to_numeric(out[c]).astype("float64")
    return out


def untrusted_graphs(frames: Frames, params: dict[str, Any]) -> pd.DataFrame:
    df = frames["prompts"].copy()
    if df.empty:
        return _empty(["prompt_id"])
    err = frames["main"]
    feat = frames["features"]
    df["error_influence"] = df["prompt_id"].map(dict(zip(err["prompt_id"], err["error_influence"])) if len(err) else {})
    df["feature_influence"] = df["prompt_id"].map(dict(zip(feat["prompt_id"], feat["feature_influence"])) if len(feat) else {})
    df = _num(df, ["error_influence", "feature_influence", "replacement_score", "completeness_score"])
    df[["error_influence", "feature_influence"]] = df[["error_influence", "feature_influence"]].fillna(0.0)
    total = df["error_influence"] + df["feature_influence"]
    df["error_share"] = np.where(total > 0, df["error_influence"] / total.where(total > 0, 1.0), 0.0)
    df = df[df["error_share"] >= params["min_error_share"]]
    df = _str(df, ["prompt_id", "text", "grp"]).rename(columns={"grp": "group"})
    df = df.sort_values(["error_share", "replacement_score", "prompt_id"], ascending=[False, True, True])
    return df.head(params["limit"])


def prompt_texts(frames: Frames, params: dict[str, Any]) -> pd.DataFrame:
    df = frames["main"].copy()
    if df.empty:
        return _empty(["text"])
    df = _num(df, ["graphs"], "int")
    df = df[df["graphs"] >= params["min_graphs"]].copy()
    df["graph_ids"] = df["graph_ids"].map(_ids)
    df["scans"] = df["scans"].map(_ids)
    df = _str(df, ["text"]).sort_values(["graphs", "text"], ascending=[False, True])
    return df.head(params["limit"])
