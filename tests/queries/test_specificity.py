"""Specificity ranking, answer-restricted paths, sensible supernode candidates and activation
contrasts, on the hub corpus (tests/queries/planted.py: build_hub_corpus), where raw recurrence
counts put hubs first, as on the full demo (issue 16)."""

from __future__ import annotations

import math

import pytest
from planted import (
    CAP_A, CAP_B, CAP_C, CAP_S, HUB1, HUB2, N_HUB_MISC, N_HUB_TASK, OPP_D, OPP_E, OPP_F, PRE, THE, THE_ACTIVATION, hub_key,
)
from test_planted import _normal

from circuit_atlas.queries.runner import QueryError, run_query

N = 2 * N_HUB_TASK + N_HUB_MISC  # graphs in the hub corpus
HUBS = {hub_key(HUB1), hub_key(HUB2)}  # active in every graph
CAPITAL = {hub_key(n) for n in (CAP_A, CAP_B, CAP_C, CAP_S)}
OPPOSITE = {hub_key(n) for n in (OPP_D, OPP_E, OPP_F)}


def _spec(prompts: int, share: float) -> float:
    return prompts * math.log(1 / share)


def test_recurring_edges_rank_hubs_last_and_keep_raw_counts(hub_store):
    raw = run_query(hub_store, "recurring_edges", {"rank": "prompts"})
    assert (raw["source_key"].iloc[0], raw["target_key"].iloc[0]) == (hub_key(HUB1), hub_key(HUB2))  # the symptom
    df = run_query(hub_store, "recurring_edges", {})
    assert set(zip(df["source_key"], df["target_key"])) == set(zip(raw["source_key"], raw["target_key"]))  # same rows
    first = df.iloc[0]
    assert {first.source_key, first.target_key} <= CAPITAL | OPPOSITE
    assert first.specificity == pytest.approx(_spec(N_HUB_TASK, N_HUB_TASK / N))
    with_hub = df["source_key"].isin(HUBS) | df["target_key"].isin(HUBS)
    assert (df.loc[with_hub, "specificity"] == 0).all() and (df.loc[~with_hub, "specificity"] > 0).all()
    assert with_hub.any() and df.index[~with_hub].max() < df.index[with_hub].min()  # hub edges last
    hub = df[(df.source_key == hub_key(HUB1)) & (df.target_key == hub_key(HUB2))].iloc[0]
    assert (hub.prompts, hub.source_prompts, hub.target_prompts, hub.max_share) == (N, N, N, 1.0)
    pre = df[df.source_key == hub_key(PRE)].iloc[0]  # on "The" in the 20 prompts of both tasks
    assert pre.common_member == hub_key(PRE) and pre.max_share == pytest.approx(2 * N_HUB_TASK / N)
    assert pre.specificity == pytest.approx(_spec(N_HUB_TASK, 2 * N_HUB_TASK / N))
    with pytest.raises(QueryError, match="'rank' must be"):
        run_query(hub_store, "recurring_edges", {"rank": "size"})


def test_recurring_paths_reach_each_prompts_own_answer(hub_store, hub_corpus):
    anywhere = run_query(hub_store, "recurring_paths", {"answer": "any", "rank": "prompts"})
    # every capital has its own answer: with any logit, only the hub path into " the" recurs
    assert [(r.f1_key, r.f2_key, r.token) for r in anywhere.itertuples()] == [(hub_key(HUB1), hub_key(HUB2), " the")]
    assert anywhere["specificity"].iloc[0] == 0 and anywhere["common_member"].iloc[0] == hub_key(HUB1)
    df = run_query(hub_store, "recurring_paths", {})
    answer_of = {p.graph_id: (hub_corpus.answers[n] or p.top_token) for n, p in hub_corpus.prompts.items()}
    for r in df.itertuples():
        assert [answer_of[p] for p in r.prompt_ids] == list(r.answers)  # each prompt's own answer, in order
    chain = df[(df.f1_key == hub_key(CAP_A)) & (df.f2_key == hub_key(CAP_B)) & (df.f3_key == hub_key(CAP_C))].iloc[0]
    assert chain.prompts == N_HUB_TASK and chain.token == "(answers)" and set(chain.prompt_ids) == hub_corpus.ids("capitals")
    assert {df.iloc[0].f1_key, df.iloc[0].f2_key} <= CAPITAL | OPPOSITE
    hubs = df["f1_key"].isin(HUBS) | df["f2_key"].isin(HUBS) | df["f3_key"].isin(HUBS)
    assert (df.loc[hubs, "specificity"] == 0).all() and hubs.any()
    assert df["specificity"].is_monotonic_decreasing
    the = run_query(hub_store, "recurring_paths", {"token": " the"})  # " the" is the answer of the misc prompts only
    assert [(r.f1_key, r.f2_key, r.token, r.prompts) for r in the.itertuples()] == [(hub_key(HUB1), hub_key(HUB2), " the", N_HUB_MISC)]
    with pytest.raises(QueryError, match="'answer' must be"):
        run_query(hub_store, "recurring_paths", {"answer": "top"})


def test_motifs_through_hubs_score_zero_and_come_last(hub_store):
    df = run_query(hub_store, "motifs", {"limit": 1000})
    hubs = df[["a_key", "b_key", "c_key"]].isin(HUBS).any(axis=1)
    assert hubs.any() and (df.loc[hubs, "specificity"] == 0).all()
    assert (df.loc[~hubs & ~df[["a_key", "b_key", "c_key"]].isin({hub_key(PRE)}).any(axis=1), "specificity"] > 0).all()
    assert df["specificity"].is_monotonic_decreasing
    assert ("feed_forward", hub_key(CAP_A), hub_key(CAP_B), hub_key(CAP_C)) in set(zip(df.motif, df.a_key, df.b_key, df.c_key))


@pytest.mark.parametrize("name,params", [
    ("recurring_edges", {"min_prompts": 2, "limit": 1000}),
    ("recurring_paths", {"limit": 1000}),
    ("recurring_paths", {"answer": "any", "limit": 1000}),
    ("motifs", {"limit": 1000}),
])
def test_specificity_is_the_documented_formula(hub_store, name, params):
    """specificity = prompts x ln(1 / max_share), max_share = graphs of the most common part / N."""
    df = run_query(hub_store, name, params)
    assert len(df)
    for r in df.itertuples():
        assert r.specificity == pytest.approx(_spec(r.prompts, r.max_share), abs=1e-9)
        assert 0 < r.max_share <= 1


def test_token_to_logit_down_weights_a_generic_output(store, planted):
    """In the planted corpus " the" is among the logits of every prompt: paths into it score 0."""
    df = run_query(store, "token_to_logit", {"input_token": " capital", "min_prompts": 1, "limit": 1000})
    assert len(df)
    for r in df.itertuples():
        assert r.specificity == pytest.approx(_spec(r.prompts, r.max_share), abs=1e-9)
    the = df[df.output_token == " the"]
    assert (the["specificity"] == 0).all() and (the["common_member"] == repr(" the")).all()
    assert df["specificity"].is_monotonic_decreasing


def _sensible(df, max_size: int = 30, max_share: float = 0.5) -> list[str]:
    """What 'sensible' means (docs/concepts/specificity.md): groups of 2..max_size features,
    none active in more than max_share of the graphs, no group mixing the two planted tasks."""
    bad = []
    for cand, g in df.groupby("candidate"):
        keys = set(g["key"])
        if not 2 <= len(keys) <= max_size:
            bad.append(f"#{cand}: {len(keys)} features")
        if (g["share"] > max_share).any():
            bad.append(f"#{cand}: holds a hub")
        if keys & CAPITAL and keys & OPPOSITE:
            bad.append(f"#{cand}: mixes the two tasks")
    return bad


def test_supernode_candidates_defaults_give_groups_of_sensible_size(hub_store):
    df = run_query(hub_store, "supernode_candidates", {})
    assert _sensible(df) == []
    groups = {frozenset(g["key"]) for _, g in df.groupby("candidate")}
    assert frozenset({hub_key(CAP_A), hub_key(CAP_B), hub_key(CAP_S), hub_key(THE)}) in groups
    assert frozenset({hub_key(OPP_D), hub_key(OPP_F)}) in groups
    assert set(df["hubs_left_out"]) == {3}  # HUB1, HUB2, PRE: said, not silently dropped
    # the old defaults (no hub left out, connected components): one group of both tasks and the hubs
    old = run_query(hub_store, "supernode_candidates", {"max_share": 1.0, "max_size": 0})
    assert _sensible(old) != [] and old["candidate"].nunique() == 1
    assert {hub_key(HUB2), hub_key(PRE)} | {hub_key(CAP_A), hub_key(OPP_D)} <= set(old["key"])
    split = run_query(hub_store, "supernode_candidates", {"max_size": 3})
    assert _sensible(split, max_size=3) == []
    with pytest.raises(QueryError, match="max_share"):
        run_query(hub_store, "supernode_candidates", {"max_share": 0})


def test_contrast_by_activation_finds_the_the_feature_unspecific(hub_store, hub_corpus):
    """THE fires on "The" with one activation everywhere but survives pruning only in the capital
    prompts (and opp0): by presence it looks capital-specific, by activation it is not."""
    presence = run_query(hub_store, "contrastive", {"a": "capitals", "kind": "feature", "limit": 1000}).set_index("key")
    assert presence.loc[hub_key(THE), "count_a"] == N_HUB_TASK and presence.loc[hub_key(THE), "count_b"] == 1
    assert presence.loc[hub_key(THE), "log_odds"] > 2  # the symptom
    assert presence["effect_size"].isna().all()
    for b in ("", "opposites"):
        df = run_query(hub_store, "contrastive", {"a": "capitals", "b": b, "measure": "activation", "limit": 1000})
        assert set(df["kind"]) == {"feature"}
        row = df.set_index("key").loc[hub_key(THE)]
        assert row.specific_effect == 0 and row.shared_prefix == 1
        assert row.mean_act_a == pytest.approx(THE_ACTIVATION)
        assert row.imputed == N_HUB_TASK - 1  # the opposites whose graphs pruned it, recovered from the shared prefix
        assert row.count_b == N_HUB_TASK  # every opposite starts with "The"
        top = df.head(len(CAPITAL))
        assert set(top["key"]) == CAPITAL and (top["specific_effect"] > 0).all() and (top["p_value"] < 1e-3).all()
        assert df["specific_effect"].is_monotonic_decreasing
    matched = run_query(hub_store, "contrastive", {"a": "capitals", "b": "opposites", "measure": "activation"}).set_index("key")
    assert matched.loc[hub_key(THE), "effect_size"] == 0 and matched.loc[hub_key(THE), "p_value"] == 1
    assert matched.loc[hub_key(THE), "mean_act_b"] == pytest.approx(THE_ACTIVATION)
    side_b = run_query(hub_store, "contrastive", {"a": "capitals", "measure": "activation", "enriched": "b", "limit": 3})
    assert set(side_b["key"]) == OPPOSITE and (side_b["specific_effect"] < 0).all()
    assert run_query(hub_store, "contrastive", {"a": "capitals", "measure": "activation", "kind": "edge"}).empty
    with pytest.raises(QueryError, match="'measure' must be"):
        run_query(hub_store, "contrastive", {"a": "capitals", "measure": "weight"})


CALLS = [
    ("recurring_edges", {"limit": 1000}),
    ("recurring_paths", {"limit": 1000}),
    ("recurring_paths", {"answer": "any", "rank": "prompts"}),
    ("motifs", {"limit": 1000}),
    ("supernode_candidates", {}),
    ("contrastive", {"a": "capitals", "measure": "activation", "limit": 1000}),
]


@pytest.mark.bolt
@pytest.mark.parametrize("name,params", CALLS, ids=[f"{c[0]}-{i}" for i, c in enumerate(CALLS)])
def test_same_rows_on_both_backends(name, params, hub_embedded_store, hub_bolt_store):
    a, b = run_query(hub_embedded_store, name, params), run_query(hub_bolt_store, name, params)
    assert list(a.columns) == list(b.columns) and _normal(a) == _normal(b)


@pytest.mark.parametrize("name,keys,extra", [("recurring_paths", ["f1_key", "f2_key", "f3_key"], {"hops": 2}),
                                            ("motifs", ["a_key", "b_key", "c_key"], {})])
def test_hubs_cannot_crowd_the_candidates_out(hub_store, name, keys, extra):
    """With a candidate pool of one, the most recurring row is a hub row (all 24 graphs); the pool
    leaves hubs out (max_share), so the specific row is found; without that (max_share=1) only the
    hub row reaches the cut-off."""
    top = run_query(hub_store, name, {"candidates": 1, "limit": 1, **extra})
    assert set(top[keys].iloc[0]) - {""} <= CAPITAL | OPPOSITE | {hub_key(THE)} and top["specificity"].iloc[0] > 0
    crowded = run_query(hub_store, name, {"candidates": 1, "limit": 1, "max_share": 1.0, **extra})
    if name == "recurring_paths":  # the BOS hub path reaches every prompt's answer
        assert set(crowded[keys].iloc[0]) & HUBS and crowded["specificity"].iloc[0] == 0
    with pytest.raises(QueryError, match="'max_share' must"):
        run_query(hub_store, name, {"max_share": 0})


def test_feature_profile_lists_specific_partners_first(hub_store):
    """CAP_B's upstream partners recur in 10 prompts each; the BOS hub and PRE come last."""
    df = run_query(hub_store, "feature_profile", {"key": hub_key(CAP_B)})
    up = df[df.section == "upstream"]
    assert set(up["prompts"]) == {N_HUB_TASK}
    assert up["key"].tolist()[-2:] == [hub_key(PRE), hub_key(HUB2)]  # PRE in 20 of 24 graphs, HUB2 in all
    assert up.set_index("key").loc[hub_key(HUB2), "specificity"] == 0
    assert up["specificity"].is_monotonic_decreasing
    raw = run_query(hub_store, "feature_profile", {"key": hub_key(CAP_B), "rank": "prompts"})
    assert set(raw[raw.section == "upstream"]["key"]) == set(up["key"])
    logits = run_query(hub_store, "feature_profile", {"key": hub_key(HUB2)})
    logits = logits[logits.section == "logit"]
    assert logits["token"].iloc[-1] == " the" and logits["specificity"].iloc[-1] == 0  # among every graph's logits
    assert df[df.section == "summary"]["specificity"].isna().all()
