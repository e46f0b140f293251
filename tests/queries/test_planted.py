"""Every library query finds exactly the circuits planted in the synthetic corpus, on each backend."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from planted import CAPITAL_EDGES, LOGIT_EDGES, A, B, C, D, E, H, S1, S2, key

from circuit_atlas.engine.formats.graph_files import GraphFile
from circuit_atlas.queries.runner import QueryError, run_query

MIN = 3  # noise recurs in at most 2 prompts (the near-duplicate pair)


def test_corpus_overview(store, planted):
    df = run_query(store, "corpus_overview").set_index("bucket")
    assert df["prompts"].to_dict() == {"capitals": 7, "opposites": 6, "misc": 2}
    assert df["correct"].to_dict() == {"capitals": 7, "opposites": 3, "misc": 2}
    graphs = {GraphFile.load(d).graph_id: GraphFile.load(d) for d in planted.graph_dirs}
    for bucket, names in (("capitals", planted.capitals), ("opposites", planted.opposites)):
        gs = [graphs[planted.gid(n)] for n in names]
        assert df.loc[bucket, "features"] == sum((g.nodes["type"] == "feature").sum() for g in gs)
        assert df.loc[bucket, "logits"] == sum((g.nodes["type"] == "logit").sum() for g in gs)
        assert df.loc[bucket, "edges"] == sum(len(g.edges) for g in gs)
        assert df.loc[bucket, "nodes"] == sum(len(g.nodes) for g in gs)
        types = {}
        for g in gs:
            kind = dict(zip(g.nodes["node_id"], g.nodes["type"]))
            for s, t in zip(g.edges["source"], g.edges["target"]):
                types[(kind[s], kind[t])] = types.get((kind[s], kind[t]), 0) + 1
        for (a, b), n in types.items():
            assert df.loc[bucket, f"edges_{a}_{b}"] == n, (bucket, a, b)
        assert sum(df.loc[bucket, c] for c in df.columns if c.startswith("edges_")) == df.loc[bucket, "edges"]
        assert sorted(df.loc[bucket, "prompt_ids"]) == sorted(planted.ids(names))
    assert df.loc["misc", "replacement_min"] == pytest.approx(0.2)
    assert df.loc["misc", "replacement_max"] == pytest.approx(0.9)
    tags = run_query(store, "corpus_overview", {"by": "tag"}).set_index("bucket")
    assert tags["prompts"].to_dict() == {"geo": 7, "lex": 6, "noise": 2}
    assert run_query(store, "corpus_overview", {"by": "all"})["prompts"].tolist() == [15]


def test_recurring_edges(store, planted):
    df = run_query(store, "recurring_edges", {"min_prompts": MIN})
    expected = planted.recurring_edges(MIN)
    got = {(r.source_key, r.target_key): r for r in df.itertuples()}
    assert set(got) == set(expected)
    for pair, inst in expected.items():
        row = got[pair]
        weights = [w for _, w in inst]
        assert row.prompts == len(inst)
        assert sorted(row.prompt_ids) == sorted(pid for pid, _ in inst)
        assert row.mean_weight == pytest.approx(sum(weights) / len(weights), abs=1e-6)
        assert row.median_weight == pytest.approx(sorted(weights)[len(weights) // 2], abs=1e-6)
        pos = sum(w > 0 for w in weights)
        assert row.sign_consistency == pytest.approx(max(pos, len(weights) - pos) / len(weights))
    assert got[(key(B), key(C))].sign_consistency == pytest.approx(6 / 7)
    # weight threshold drops the planted edges weaker than 0.5 in every prompt
    strong = run_query(store, "recurring_edges", {"min_prompts": MIN, "min_weight": 0.5})
    assert {(r.source_key, r.target_key) for r in strong.itertuples()} == {
        (key(s), key(t)) for (s, t), w in {**CAPITAL_EDGES, (D, E): 0.7}.items() if abs(w) >= 0.5
    }
    # min_prompts=2 adds the noise shared only by the near-duplicate pair, and nothing else
    two = run_query(store, "recurring_edges", {"min_prompts": 2, "limit": 10_000})
    extra = two[~two.apply(lambda r: (r.source_key, r.target_key) in expected, axis=1)]
    pair = planted.ids(["cap0", "cap0dup"])
    assert all(set(ids) == pair for ids in extra["prompt_ids"])
    # a small limit expands only the top pairs (LINKS cut-off): the same rows as the head of the full result
    full = run_query(store, "recurring_edges", {"min_prompts": MIN, "limit": 10_000})
    top2 = run_query(store, "recurring_edges", {"min_prompts": MIN, "limit": 2})
    assert top2[["source_key", "target_key", "prompts"]].values.tolist() == full.head(2)[["source_key", "target_key", "prompts"]].values.tolist()
    # no pair reaches min_prompts: the cut-off part is empty and so is the result, with every column
    none = run_query(store, "recurring_edges", {"min_prompts": 10_000})
    assert none.empty and "prompt_ids" in none.columns


def test_recurring_paths(store, planted):
    df = run_query(store, "recurring_paths", {"min_prompts": MIN})
    expected = planted.paths(MIN)
    got = {}
    for r in df.itertuples():
        path = (r.f1_key, r.f2_key) + ((r.f3_key,) if r.hops == 3 else ()) + (r.token,)
        got[path] = set(r.prompt_ids)
        assert r.prompts == len(r.prompt_ids)
    assert got == expected
    assert (key(A), key(B), key(C), " Paris") in got  # the planted 3-hop chain
    cold = run_query(store, "recurring_paths", {"min_prompts": MIN, "token": " cold"})
    assert [(r.f1_key, r.f2_key) for r in cold.itertuples()] == [(key(D), key(E))]
    with pytest.raises(QueryError, match="'hops' must be 2, 3 or 0"):
        run_query(store, "recurring_paths", {"hops": 4})
    three = run_query(store, "recurring_paths", {"min_prompts": MIN, "hops": 3})
    assert set(three["hops"]) == {3}
    assert len(three) == sum(len(k) == 4 for k in expected)



TOP_K_CALLS = [
    ("recurring_edges", {"min_prompts": 2}),
    ("recurring_paths", {"min_prompts": 2}),
    ("recurring_paths", {"min_prompts": 2, "hops": 3}),
    ("token_to_logit", {"input_token": " capital", "min_prompts": 1}),
    ("motifs", {"min_prompts": 2}),
    ("contrastive", {"a": "capitals", "min_prompts": 2}),
    ("hubs", {"min_prompts": 1}),
    ("hubs", {"min_prompts": 1, "by": "prompts"}),
    ("recurring_edges", {"min_prompts": 2, "rank": "prompts"}),
    ("recurring_paths", {"min_prompts": 2, "rank": "prompts", "answer": "any"}),
    ("motifs", {"min_prompts": 2, "rank": "prompts"}),
    ("token_to_logit", {"input_token": " capital", "min_prompts": 1, "rank": "prompts"}),
]


@pytest.mark.parametrize("name,params", TOP_K_CALLS, ids=[f"{c[0]}-{i}" for i, c in enumerate(TOP_K_CALLS)])
def test_top_limit_rows_are_the_head_of_the_full_result(store, planted, name, params):
    """Queries that expand only what can make their top `limit` rows (cut-offs found by a first
    statement, ORDER BY ... LIMIT per part) must return exactly the head of the unlimited result."""
    full = run_query(store, name, {**params, "limit": 100_000})
    assert len(full) >= 2, "the planted corpus must give these queries something to cut"
    for k in sorted({1, 2, 3, 5, len(full) - 1} & set(range(1, len(full)))):
        top = run_query(store, name, {**params, "limit": k})
        assert _normal(top) == _normal(full.head(k)), (name, k)

def test_token_to_logit(store, planted):
    df = run_query(store, "token_to_logit", {"input_token": " capital", "output_token": " Paris", "min_prompts": MIN})
    assert [(r.hops, r.f1_key, r.f2_key, r.output_token) for r in df.itertuples()] == [(3, key(A), key(C), " Paris")]
    assert set(df["prompt_ids"].iloc[0]) == planted.ids(planted.capitals)
    assert df["mean_path_weight"].iloc[0] == pytest.approx(0.3 * CAPITAL_EDGES[(A, C)] * LOGIT_EDGES["capitals"][C])
    hot = run_query(store, "token_to_logit", {"input_token": " hot", "min_prompts": MIN})
    assert [(r.f1_key, r.f2_key, r.output_token, r.prompts) for r in hot.itertuples()] == [(key(D), key(E), " cold", 6)]
    assert run_query(store, "token_to_logit", {"input_token": " nowhere"}).empty


def test_feature_profile(store, planted):
    df = run_query(store, "feature_profile", {"key": key(C), "min_prompts": MIN})
    summary = df[df.section == "summary"].iloc[0]
    assert summary["key"] == key(C) and summary["prompts"] == 7
    occ = df[df.section == "occurrence"]
    assert set(occ["prompt_id"]) == planted.ids(planted.capitals)
    assert set(occ["pos"]) == {5} and set(occ["token"]) == {" is"}
    up = df[df.section == "upstream"]
    assert set(up["key"]) == {key(A), key(B), key(S1), key(S2)} and set(up["prompts"]) == {7}
    assert df[df.section == "downstream"].empty
    logit = df[df.section == "logit"]
    assert logit["token"].tolist() == [" Paris"] and logit["prompts"].tolist() == [7]
    assert logit["weight"].iloc[0] == pytest.approx(LOGIT_EDGES["capitals"][C])
    hub = run_query(store, "feature_profile", {"key": key(H)})
    assert hub[hub.section == "summary"]["prompts"].iloc[0] == 15
    with pytest.raises(QueryError, match="no feature"):
        run_query(store, "feature_profile", {"key": "planted-scan:9:9"})


def test_prompts_with_circuit(store, planted):
    keys = [key(A), key(B), key(C)]
    df = run_query(store, "prompts_with_circuit", {"keys": keys, "min_coverage": 1.0})
    assert set(df["prompt_id"]) == planted.ids(planted.capitals)
    assert set(df["edges_present"]) == {3} and set(df["coverage"]) == {1.0}
    mixed = run_query(store, "prompts_with_circuit", {"keys": [key(A), key(B), key(D)]})
    cov = dict(zip(mixed["prompt_id"], mixed["coverage"]))
    assert {pid for pid, c in cov.items() if c == pytest.approx(2 / 3)} == planted.ids(planted.capitals)
    assert {pid for pid, c in cov.items() if c == pytest.approx(1 / 3)} == planted.ids(planted.opposites)
    assert all(m == [key(D)] for m in mixed[mixed.coverage > 0.5]["missing_keys"])


def test_contrastive(store, planted):
    df = run_query(store, "contrastive", {"a": "capitals", "min_prompts": MIN, "limit": 1000})
    enriched = df[df.log_odds > 0]
    assert set(enriched[enriched.kind == "feature"]["key"]) == {key(n) for n in (A, B, C, S1, S2)}
    assert set(enriched[enriched.kind == "edge"]["key"]) == {f"{key(s)}->{key(t)}" for s, t in CAPITAL_EDGES}
    assert set(enriched["count_a"]) == {7} and set(enriched["count_b"]) == {0}
    assert set(df["n_a"]) == {7} and set(df["n_b"]) == {8}
    hub = df[df.key == key(H)].iloc[0]
    assert (hub.count_a, hub.count_b) == (7, 8) and hub.log_odds < 0
    alpha = 0.5
    expect = math.log((7 + alpha) / alpha) - math.log(alpha / (8 + alpha))
    assert enriched["log_odds"].iloc[0] == pytest.approx(expect)
    # by tag, side B named explicitly
    lex = run_query(store, "contrastive", {"field": "tag", "a": "lex", "b": "geo", "min_prompts": MIN})
    top = lex[lex.log_odds > 0]
    assert set(top["key"]) == {key(D), key(E), f"{key(D)}->{key(E)}"}
    assert set(lex["n_b"]) == {7}
    with pytest.raises(QueryError, match="no prompt"):
        run_query(store, "contrastive", {"a": "no-such-group"})



def test_contrastive_enriched_b_puts_side_bs_rows_first_with_the_same_columns(store, planted):
    """Side B's top rows must survive a limit smaller than side A's row count (the app's B table
    read "None." when A's rows filled the limit), and count_a stays A's count."""
    full = run_query(store, "contrastive", {"a": "capitals", "min_prompts": MIN, "limit": 100_000, "kind": "feature"})
    n_a_rows = int((full.log_odds > 0).sum())
    assert n_a_rows >= 3
    top_a = run_query(store, "contrastive", {"a": "capitals", "min_prompts": MIN, "limit": n_a_rows, "kind": "feature"})
    assert (top_a.log_odds > 0).all()  # the limit is used up by side A
    top_b = run_query(store, "contrastive", {"a": "capitals", "min_prompts": MIN, "limit": 2, "kind": "feature",
                                             "enriched": "b"})
    assert set(top_b["key"]) == {key(D), key(E)} and (top_b.log_odds < 0).all()
    assert set(top_b["count_a"]) == {0} and set(top_b["count_b"]) == {6}  # A's and B's counts, not swapped
    expect = full.sort_values(["log_odds", "count_b", "key"], ascending=[True, False, True]).head(2)
    assert _normal(top_b) == _normal(expect)
    with pytest.raises(QueryError, match="enriched"):
        run_query(store, "contrastive", {"a": "capitals", "enriched": "c"})


def test_contrastive_kind_keeps_one_kind_of_row(store, planted):
    both = run_query(store, "contrastive", {"a": "capitals", "min_prompts": 2, "limit": 10_000})
    for kind in ("feature", "edge"):
        only = run_query(store, "contrastive", {"a": "capitals", "min_prompts": 2, "limit": 10_000, "kind": kind})
        assert set(only["kind"]) == {kind}
        assert _normal(only) == _normal(both[both["kind"] == kind])
    labels = dict(zip(both[both["kind"] == "feature"]["key"], both[both["kind"] == "feature"]["label"]))
    edges = both[both["kind"] == "edge"]
    assert len(edges) and all(lab == labels[s] for s, lab in zip(edges["source_key"], edges["label"]))  # source's label
    with pytest.raises(QueryError, match="kind"):
        run_query(store, "contrastive", {"a": "capitals", "kind": "motif"})

def test_hubs(store, planted):
    df = run_query(store, "hubs", {"limit": 1})
    assert df["key"].tolist() == [key(H)] and df["prompts"].tolist() == [15]
    assert df["total_influence"].iloc[0] == pytest.approx(15 * 0.9, rel=1e-5)
    by_prompts = run_query(store, "hubs", {"by": "prompts", "min_prompts": MIN})
    expected = {key(H): 15, **{key(n): 7 for n in (A, B, C, S1, S2)}, key(D): 6, key(E): 6}
    assert dict(zip(by_prompts["key"], by_prompts["prompts"])) == expected
    assert by_prompts["key"].iloc[0] == key(H)


def test_similar_prompts(store, planted):
    df = run_query(store, "similar_prompts", {"prompt_id": planted.gid("cap0"), "limit": 3})
    assert df["prompt_id"].iloc[0] == planted.gid("cap0dup")
    assert df["weighted_jaccard"].iloc[0] == pytest.approx(0.98, abs=1e-4)
    assert set(df["prompt_id"].iloc[1:]) <= planted.ids(planted.capitals)
    assert (df["weighted_jaccard"].iloc[1:] < 0.9).all()
    with pytest.raises(QueryError, match="no prompt"):
        run_query(store, "similar_prompts", {"prompt_id": "missing"})


def test_motifs(store, planted):
    df = run_query(store, "motifs", {"min_prompts": MIN})
    got = {(r.motif, r.a_key, r.b_key, r.c_key): set(r.prompt_ids) for r in df.itertuples()}
    assert got == planted.motifs(MIN)
    assert ("feed_forward", key(A), key(B), key(C)) in got
    ffl = run_query(store, "motifs", {"min_prompts": MIN, "kind": "feed_forward"})
    assert set(ffl["motif"]) == {"feed_forward"} and len(ffl) == 1


def test_supernode_candidates(store, planted):
    df = run_query(store, "supernode_candidates", {"min_prompts": MIN})
    assert set(df["candidate"]) == {1}
    assert set(df["key"]) == {key(A), key(B), key(S1), key(S2)}
    assert all(t == [key(C)] for t in df["shared_targets"])
    assert set(df["mean_jaccard"]) == {1.0}


def test_prompt_subgraph(store, planted):
    gid = planted.gid("cap1")
    graph = next(GraphFile.load(d) for d in planted.graph_dirs if GraphFile.load(d).graph_id == gid)
    df = run_query(store, "prompt_subgraph", {"prompt_id": gid})
    nodes, edges = df[df.kind != "edge"], df[df.kind == "edge"]
    assert set(nodes["node_id"]) == set(graph.nodes["node_id"])
    want = {(s, t): w for s, t, w in graph.edges[["source", "target", "weight"]].itertuples(index=False)}
    assert {(s, t) for s, t in zip(edges["source"], edges["target"])} == set(want)
    for s, t, w in zip(edges["source"], edges["target"], edges["weight"]):
        assert w == pytest.approx(want[(s, t)], abs=1e-6)
    strong = run_query(store, "prompt_subgraph", {"prompt_id": gid, "min_influence": 0.35})
    kept = strong[strong.kind.isin(["feature", "error"])]
    assert set(kept["feature_key"]) == {key(C), key(H)}
    e = strong[strong.kind == "edge"]
    assert set(e["source"]) | set(e["target"]) <= set(strong["node_id"])


def test_untrusted_graphs(store, planted):
    df = run_query(store, "untrusted_graphs", {"limit": 3})
    assert df["prompt_id"].iloc[0] == planted.gid("untrusted0")
    assert df["error_influence"].iloc[0] == pytest.approx(20.0)
    assert df["replacement_score"].iloc[0] == pytest.approx(0.2)
    assert df["error_share"].iloc[0] > 0.9 > df["error_share"].iloc[1]


ALL_CALLS = [
    ("corpus_overview", {}),
    ("recurring_edges", {"min_prompts": 2, "limit": 1000}),
    ("recurring_paths", {"min_prompts": 2, "limit": 1000}),
    ("token_to_logit", {"input_token": " capital", "min_prompts": 1}),
    ("feature_profile", {"key": key(C)}),
    ("prompts_with_circuit", {"keys": [key(A), key(E), key(H)]}),
    ("contrastive", {"a": "capitals", "min_prompts": 2, "limit": 1000}),
    ("hubs", {"limit": 1000, "min_prompts": 2}),
    ("motifs", {"min_prompts": 2, "limit": 1000}),
    ("supernode_candidates", {"min_prompts": 2}),
    ("untrusted_graphs", {}),
]


def _normal(df: pd.DataFrame) -> list[tuple]:
    def cell(v):
        if isinstance(v, (list, tuple)) or hasattr(v, "tolist") and not isinstance(v, str):
            v = v.tolist() if hasattr(v, "tolist") else v
            return tuple(sorted(map(str, v))) if isinstance(v, list) else v
        if isinstance(v, float):
            return None if math.isnan(v) else round(v, 5)
        if v is None or v is pd.NA:
            return None
        return v.item() if hasattr(v, "item") else v

    return [tuple(cell(v) for v in row) for row in df.itertuples(index=False)]


@pytest.mark.bolt
@pytest.mark.parametrize("name,params", ALL_CALLS, ids=[c[0] for c in ALL_CALLS])
def test_same_rows_on_both_backends(name, params, embedded_store, bolt_store, planted):
    a = run_query(embedded_store, name, params)
    b = run_query(bolt_store, name, params)
    assert list(a.columns) == list(b.columns)
    assert _normal(a) == _normal(b)


@pytest.mark.bolt
def test_same_rows_on_both_backends_prompt_queries(embedded_store, bolt_store, planted):
    for name, params in (("similar_prompts", {"prompt_id": planted.gid("cap0")}), ("prompt_subgraph", {"prompt_id": planted.gid("cap2")})):
        assert _normal(run_query(embedded_store, name, params)) == _normal(run_query(bolt_store, name, params))


def test_option_values_are_checked(store, planted):
    with pytest.raises(QueryError, match="'by' must be"):
        run_query(store, "hubs", {"by": "size"})
    with pytest.raises(QueryError, match="'by' must be"):
        run_query(store, "corpus_overview", {"by": "colour"})
    with pytest.raises(QueryError, match="'kind' must be"):
        run_query(store, "motifs", {"kind": "triangle"})
    with pytest.raises(QueryError, match="'field' must be"):
        run_query(store, "contrastive", {"field": "colour", "a": "x"})
    assert run_query(store, "hubs", {"scan": "other-scan"}).empty
    assert run_query(store, "recurring_edges", {"scan": "other-scan"}).empty
    by_corpus = run_query(store, "corpus_overview", {"by": "corpus"})
    assert by_corpus[["bucket", "prompts"]].values.tolist() == [["planted", 15]]


def test_hub_partners_and_correctness_split(store, planted):
    df = run_query(store, "hubs", {"by": "partners", "min_prompts": MIN, "limit": 100})
    partners = dict(zip(df["key"], df["partners"]))
    assert partners[key(C)] >= 4 and partners[key(D)] >= 1  # C: A, B, S1, S2 feed it; D feeds E
    assert list(df["partners"]) == sorted(df["partners"], reverse=True)
    right = run_query(store, "contrastive", {"field": "correct", "a": "true", "b": "false", "min_prompts": MIN})
    assert set(right["n_a"]) == {12} and set(right["n_b"]) == {3}
    # capitals are all right and absent from the wrong side: enriched; the opposites chain is in both
    row = right.set_index("key")
    assert row.loc[key(A), "count_a"] == 7 and row.loc[key(A), "count_b"] == 0
    assert (row.loc[key(D), "count_a"], row.loc[key(D), "count_b"]) == (3, 3)
