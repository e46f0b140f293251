// name: motifs
// needs: derived
// description: "Recurring small motifs among features counted across prompts: feed-forward loops (A->B->C with A->C), fan-in (A->C, B->C) and fan-out (A->B, A->C)."
// uses_links: true
// notes: >
//   Motifs are counted in the per-prompt graphs (all edges of a motif among the same nodes of
//   one prompt). A motif's prompt count is at most the LINKS count of each of its feature pairs,
//   so each kind first counts exactly the motifs of its `limit` strongest LINKS candidates; the
//   limit-th best of those counts is a cut-off no top row can fall below, and only the features
//   of candidates whose LINKS pairs all reach it are matched, as list parameters, in the recurring
//   subgraph (RActive, REDGE: every motif seen in two or more prompts lies in it). Exact, and fast
//   on dense real graphs and on large sparse corpora alike; needs the derived layer to be fresh. Fan-in/fan-out list each unordered pair
//   once (a_key < b_key for fan-in, b_key < c_key for fan-out).
//   rank=specificity (the default) scores the `candidates` most recurring motifs of each kind
//   (exact counts, found by the cut-offs above) by prompts x ln(N / graphs of the motif's most
//   common feature) and returns the best `limit`; raise `candidates` to reach rarer motifs. The
//   candidates leave out motifs through hubs (features active in more than max_share of their
//   scan's graphs), so hub motifs cannot crowd the specific ones out; hub motifs that reach the
//   cut-off are still returned and scored. rank=prompts orders by the raw count. See
//   docs/concepts/specificity.md.
// params:
//   kind: {type: str, default: "", help: "'feed_forward', 'fan_in', 'fan_out' ('' = all)"}
//   min_prompts: {type: int, default: 2, min: 2, help: "least prompts a motif must appear in"}
//   rank: {type: str, default: specificity, help: "order rows by 'specificity' (count x idf of the most common feature) or by raw 'prompts'"}
//   candidates: {type: int, default: 1000, min: 1, help: "with rank=specificity: how many of the most recurring motifs of each kind are scored (at least limit)"}
//   max_share: {type: float, default: 0.5, help: "with rank=specificity: motifs through a feature active in more than this share of its scan's graphs (a hub) are not among the candidates, though still returned when they reach the cut-off"}
//   limit: {type: int, default: 100, help: "most rows returned"}
// columns:
//   motif: feed_forward (a->b->c, a->c) | fan_in (a->c, b->c) | fan_out (a->b, a->c)
//   a_key: feature a
//   b_key: feature b
//   c_key: feature c
//   a_label: label of a
//   b_label: label of b
//   c_label: label of c
//   specificity: prompts x ln(1 / max_share); 0 when a feature of the motif is in every graph
//   prompts: prompts containing the whole motif
//   max_share: share of the scan's graphs where the motif's most common feature is active
//   common_member: that feature
//   prompt_ids: those prompts
// post: motifs
// examples:
//   - circuit-atlas query motifs --param kind=feed_forward --param min_prompts=5
//   - circuit-atlas query motifs --param rank=prompts
// @part let_cap
RETURN CASE WHEN $rank = 'prompts' OR $limit > $candidates THEN $limit + 0 * $candidates ELSE $candidates + 0 * $limit END AS cap,  // the sums type both branches alike (LadybugDB)
       CASE WHEN $rank = 'prompts' THEN $limit + 0 * 1000000000 ELSE 1000000000 + 0 * $limit END AS out_cap
// @part let_hubs
MATCH (p:Prompt)
WITH p.scan AS scan, count(*) AS n
MATCH (f:Feature)
WHERE f.prompts >= 2 AND $rank = 'specificity' AND f.scan = scan AND f.prompts > $max_share * n
WITH collect(f.key) AS hubs
RETURN CASE WHEN size(hubs) = 0 THEN [''] ELSE hubs END AS hub_keys
// @part let_c_ff when kind in ,feed_forward
MATCH (fa:Feature)-[l1:LINKS]->(fb:Feature)
WHERE l1.prompts >= $min_prompts AND NOT l1.source_key IN $hub_keys AND NOT l1.target_key IN $hub_keys
WITH fb, l1.source_key AS ka, l1.target_key AS kb, l1.prompts AS bound
ORDER BY bound DESC LIMIT $cap
MATCH (fb)-[l2:LINKS]->(:Feature)
WHERE l2.prompts >= $min_prompts AND NOT l2.source_key IN $hub_keys AND NOT l2.target_key IN $hub_keys
WITH ka, kb, l2.target_key AS kc, CASE WHEN l2.prompts < bound THEN l2.prompts ELSE bound END AS bound
MATCH ()-[l3:LINKS]->()
WHERE l3.source_key = ka AND l3.target_key = kc AND l3.prompts >= $min_prompts
WITH ka, kb, kc, CASE WHEN l3.prompts < bound THEN l3.prompts ELSE bound END AS bound
WITH ka, kb, kc, bound ORDER BY bound DESC LIMIT $cap
UNWIND [1] AS keep_order  // LadybugDB 0.22 drops an ORDER BY ... LIMIT that feeds an aggregation directly
WITH collect(DISTINCT ka) AS a, collect(DISTINCT kb) AS b, collect(DISTINCT kc) AS c
RETURN CASE WHEN size(a) = 0 THEN [''] ELSE a END AS c_ff_a, CASE WHEN size(b) = 0 THEN [''] ELSE b END AS c_ff_b,
       CASE WHEN size(c) = 0 THEN [''] ELSE c END AS c_ff_c
// @part let_cut_feed_forward when kind in ,feed_forward
MATCH (x:RActive)-[:REDGE]->(y:RActive)-[:REDGE]->(z:RActive), (x)-[:REDGE]->(z)
WHERE x.feature_key IN $c_ff_a AND y.feature_key IN $c_ff_b AND z.feature_key IN $c_ff_c
WITH DISTINCT x.feature_key AS ka, y.feature_key AS kb, z.feature_key AS kc, x.prompt_id AS pid
WITH ka, kb, kc, count(*) AS prompts
WHERE prompts >= $min_prompts
WITH prompts ORDER BY prompts DESC LIMIT $cap
UNWIND [1] AS keep_order  // LadybugDB 0.22 drops an ORDER BY ... LIMIT that feeds an aggregation directly
WITH count(*) AS k, min(prompts) AS m
RETURN CASE WHEN k < $cap THEN $min_prompts ELSE m END AS cut_feed_forward
// @part let_m_ff when kind in ,feed_forward
MATCH (fa:Feature)-[l1:LINKS]->(fb:Feature)
WHERE l1.prompts >= $cut_feed_forward
WITH fb, l1.source_key AS ka, l1.target_key AS kb, l1.prompts AS bound
MATCH (fb)-[l2:LINKS]->(:Feature)
WHERE l2.prompts >= $cut_feed_forward
WITH ka, kb, l2.target_key AS kc, CASE WHEN l2.prompts < bound THEN l2.prompts ELSE bound END AS bound
MATCH ()-[l3:LINKS]->()
WHERE l3.source_key = ka AND l3.target_key = kc AND l3.prompts >= $cut_feed_forward
WITH ka, kb, kc, CASE WHEN l3.prompts < bound THEN l3.prompts ELSE bound END AS bound
WITH collect(DISTINCT ka) AS a, collect(DISTINCT kb) AS b, collect(DISTINCT kc) AS c
RETURN CASE WHEN size(a) = 0 THEN [''] ELSE a END AS m_ff_a, CASE WHEN size(b) = 0 THEN [''] ELSE b END AS m_ff_b,
       CASE WHEN size(c) = 0 THEN [''] ELSE c END AS m_ff_c
// @part let_c_fi when kind in ,fan_in
MATCH ()-[l1:LINKS]->()
WHERE l1.prompts >= $min_prompts AND NOT l1.source_key IN $hub_keys AND NOT l1.target_key IN $hub_keys
WITH l1.source_key AS ka, l1.target_key AS kc, l1.prompts AS bound
ORDER BY bound DESC LIMIT $cap
MATCH ()-[l2:LINKS]->()
WHERE l2.target_key = kc AND l2.source_key > ka AND l2.prompts >= $min_prompts AND NOT l2.source_key IN $hub_keys AND NOT l2.target_key IN $hub_keys
WITH ka, l2.source_key AS kb, kc, CASE WHEN l2.prompts < bound THEN l2.prompts ELSE bound END AS bound
WITH ka, kb, kc, bound ORDER BY bound DESC LIMIT $cap
UNWIND [1] AS keep_order  // LadybugDB 0.22 drops an ORDER BY ... LIMIT that feeds an aggregation directly
WITH collect(DISTINCT ka) AS a, collect(DISTINCT kb) AS b, collect(DISTINCT kc) AS c
RETURN CASE WHEN size(a) = 0 THEN [''] ELSE a END AS c_fi_a, CASE WHEN size(b) = 0 THEN [''] ELSE b END AS c_fi_b,
       CASE WHEN size(c) = 0 THEN [''] ELSE c END AS c_fi_c
// @part let_cut_fan_in when kind in ,fan_in
MATCH (x:RActive)-[:REDGE]->(z:RActive)<-[:REDGE]-(y:RActive)
WHERE x.feature_key IN $c_fi_a AND y.feature_key IN $c_fi_b AND z.feature_key IN $c_fi_c AND x.feature_key < y.feature_key
WITH DISTINCT x.feature_key AS ka, y.feature_key AS kb, z.feature_key AS kc, x.prompt_id AS pid
WITH ka, kb, kc, count(*) AS prompts
WHERE prompts >= $min_prompts
WITH prompts ORDER BY prompts DESC LIMIT $cap
UNWIND [1] AS keep_order  // LadybugDB 0.22 drops an ORDER BY ... LIMIT that feeds an aggregation directly
WITH count(*) AS k, min(prompts) AS m
RETURN CASE WHEN k < $cap THEN $min_prompts ELSE m END AS cut_fan_in
// @part let_m_fi when kind in ,fan_in
MATCH ()-[l1:LINKS]->()
WHERE l1.prompts >= $cut_fan_in
WITH l1.source_key AS ka, l1.target_key AS kc, l1.prompts AS bound
MATCH ()-[l2:LINKS]->()
WHERE l2.target_key = kc AND l2.source_key > ka AND l2.prompts >= $cut_fan_in
WITH ka, l2.source_key AS kb, kc, CASE WHEN l2.prompts < bound THEN l2.prompts ELSE bound END AS bound
WITH collect(DISTINCT ka) AS a, collect(DISTINCT kb) AS b, collect(DISTINCT kc) AS c
RETURN CASE WHEN size(a) = 0 THEN [''] ELSE a END AS m_fi_a, CASE WHEN size(b) = 0 THEN [''] ELSE b END AS m_fi_b,
       CASE WHEN size(c) = 0 THEN [''] ELSE c END AS m_fi_c
// @part let_c_fo when kind in ,fan_out
MATCH ()-[l1:LINKS]->()
WHERE l1.prompts >= $min_prompts AND NOT l1.source_key IN $hub_keys AND NOT l1.target_key IN $hub_keys
WITH l1.source_key AS ka, l1.target_key AS kb, l1.prompts AS bound
ORDER BY bound DESC LIMIT $cap
MATCH ()-[l2:LINKS]->()
WHERE l2.source_key = ka AND l2.target_key > kb AND l2.prompts >= $min_prompts AND NOT l2.source_key IN $hub_keys AND NOT l2.target_key IN $hub_keys
WITH ka, kb, l2.target_key AS kc, CASE WHEN l2.prompts < bound THEN l2.prompts ELSE bound END AS bound
WITH ka, kb, kc, bound ORDER BY bound DESC LIMIT $cap
UNWIND [1] AS keep_order  // LadybugDB 0.22 drops an ORDER BY ... LIMIT that feeds an aggregation directly
WITH collect(DISTINCT ka) AS a, collect(DISTINCT kb) AS b, collect(DISTINCT kc) AS c
RETURN CASE WHEN size(a) = 0 THEN [''] ELSE a END AS c_fo_a, CASE WHEN size(b) = 0 THEN [''] ELSE b END AS c_fo_b,
       CASE WHEN size(c) = 0 THEN [''] ELSE c END AS c_fo_c
// @part let_cut_fan_out when kind in ,fan_out
MATCH (y:RActive)<-[:REDGE]-(x:RActive)-[:REDGE]->(z:RActive)
WHERE x.feature_key IN $c_fo_a AND y.feature_key IN $c_fo_b AND z.feature_key IN $c_fo_c AND y.feature_key < z.feature_key
WITH DISTINCT x.feature_key AS ka, y.feature_key AS kb, z.feature_key AS kc, x.prompt_id AS pid
WITH ka, kb, kc, count(*) AS prompts
WHERE prompts >= $min_prompts
WITH prompts ORDER BY prompts DESC LIMIT $cap
UNWIND [1] AS keep_order  // LadybugDB 0.22 drops an ORDER BY ... LIMIT that feeds an aggregation directly
WITH count(*) AS k, min(prompts) AS m
RETURN CASE WHEN k < $cap THEN $min_prompts ELSE m END AS cut_fan_out
// @part let_m_fo when kind in ,fan_out
MATCH ()-[l1:LINKS]->()
WHERE l1.prompts >= $cut_fan_out
WITH l1.source_key AS ka, l1.target_key AS kb, l1.prompts AS bound
MATCH ()-[l2:LINKS]->()
WHERE l2.source_key = ka AND l2.target_key > kb AND l2.prompts >= $cut_fan_out
WITH ka, kb, l2.target_key AS kc, CASE WHEN l2.prompts < bound THEN l2.prompts ELSE bound END AS bound
WITH collect(DISTINCT ka) AS a, collect(DISTINCT kb) AS b, collect(DISTINCT kc) AS c
RETURN CASE WHEN size(a) = 0 THEN [''] ELSE a END AS m_fo_a, CASE WHEN size(b) = 0 THEN [''] ELSE b END AS m_fo_b,
       CASE WHEN size(c) = 0 THEN [''] ELSE c END AS m_fo_c
// @part feed_forward when kind in ,feed_forward
MATCH (x:RActive)-[:REDGE]->(y:RActive)-[:REDGE]->(z:RActive), (x)-[:REDGE]->(z)
WHERE x.feature_key IN $m_ff_a AND y.feature_key IN $m_ff_b AND z.feature_key IN $m_ff_c
WITH DISTINCT x.feature_key AS ka, y.feature_key AS kb, z.feature_key AS kc, x.prompt_id AS pid
WITH ka, kb, kc, count(*) AS prompts, collect(pid) AS prompt_ids
WHERE prompts >= $cut_feed_forward
WITH ka, kb, kc, prompts, prompt_ids ORDER BY prompts DESC, ka, kb, kc LIMIT $out_cap
MATCH (fa:Feature {key: ka})
WITH fa, kb, kc, prompts, prompt_ids
MATCH (fb:Feature {key: kb})
WITH fa, fb, kc, prompts, prompt_ids
MATCH (fc:Feature {key: kc})
RETURN 'feed_forward' AS motif, fa.key AS a_key, fb.key AS b_key, fc.key AS c_key,
       fa.label AS a_label, fb.label AS b_label, fc.label AS c_label, prompts, prompt_ids, fa.prompts AS a_prompts,
       fb.prompts AS b_prompts, fc.prompts AS c_prompts
// @part fan_in when kind in ,fan_in
MATCH (x:RActive)-[:REDGE]->(z:RActive)<-[:REDGE]-(y:RActive)
WHERE x.feature_key IN $m_fi_a AND y.feature_key IN $m_fi_b AND z.feature_key IN $m_fi_c AND x.feature_key < y.feature_key
WITH DISTINCT x.feature_key AS ka, y.feature_key AS kb, z.feature_key AS kc, x.prompt_id AS pid
WITH ka, kb, kc, count(*) AS prompts, collect(pid) AS prompt_ids
WHERE prompts >= $cut_fan_in
WITH ka, kb, kc, prompts, prompt_ids ORDER BY prompts DESC, ka, kb, kc LIMIT $out_cap
MATCH (fa:Feature {key: ka})
WITH fa, kb, kc, prompts, prompt_ids
MATCH (fb:Feature {key: kb})
WITH fa, fb, kc, prompts, prompt_ids
MATCH (fc:Feature {key: kc})
RETURN 'fan_in' AS motif, fa.key AS a_key, fb.key AS b_key, fc.key AS c_key,
       fa.label AS a_label, fb.label AS b_label, fc.label AS c_label, prompts, prompt_ids, fa.prompts AS a_prompts,
       fb.prompts AS b_prompts, fc.prompts AS c_prompts
// @part fan_out when kind in ,fan_out
MATCH (y:RActive)<-[:REDGE]-(x:RActive)-[:REDGE]->(z:RActive)
WHERE x.feature_key IN $m_fo_a AND y.feature_key IN $m_fo_b AND z.feature_key IN $m_fo_c AND y.feature_key < z.feature_key
WITH DISTINCT x.feature_key AS ka, y.feature_key AS kb, z.feature_key AS kc, x.prompt_id AS pid
WITH ka, kb, kc, count(*) AS prompts, collect(pid) AS prompt_ids
WHERE prompts >= $cut_fan_out
WITH ka, kb, kc, prompts, prompt_ids ORDER BY prompts DESC, ka, kb, kc LIMIT $out_cap
MATCH (fa:Feature {key: ka})
WITH fa, kb, kc, prompts, prompt_ids
MATCH (fb:Feature {key: kb})
WITH fa, fb, kc, prompts, prompt_ids
MATCH (fc:Feature {key: kc})
RETURN 'fan_out' AS motif, fa.key AS a_key, fb.key AS b_key, fc.key AS c_key,
       fa.label AS a_label, fb.label AS b_label, fc.label AS c_label, prompts, prompt_ids, fa.prompts AS a_prompts,
       fb.prompts AS b_prompts, fc.prompts AS c_prompts
// @part graphs
MATCH (p:Prompt)
RETURN p.scan AS scan, count(*) AS graphs
