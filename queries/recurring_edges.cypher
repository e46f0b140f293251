// name: recurring_edges
// needs: derived
// description: Feature->feature edges (through their global features) present in at least min_prompts prompts with |weight| >= min_weight.
// uses_links: true
// notes: >
//   Starts from the derived LINKS layer (pairs already seen in >= min_prompts prompts) and then
//   reads the per-prompt edges of those pairs in the recurring subgraph (REDGE), so it needs the
//   derived layer to be fresh: run `circuit-atlas store rebuild-links` after ingesting, or pairs
//   added since are missed. With min_weight 0 a pair's prompt count is its LINKS count, so only
//   the pairs that can make the top `limit` are expanded (LINKS prompts >= the limit-th largest,
//   found first): exact, and fast on dense real graphs and large corpora alike. Ranked by
//   specificity (rank=specificity, the default: prompts x ln(N / graphs of the edge's more common
//   feature), see docs/concepts/specificity.md) the same holds: with min_weight 0 each LINKS
//   pair's score is known before expanding it (its prompts, and its features' graph counts), so
//   only the pairs scoring at least the limit-th best are expanded (the Cypher orders by the same
//   score in log10, which orders alike); hub edges (a feature active in every graph) score 0 and
//   sink to the bottom. rank=prompts ranks by the raw count.
// params:
//   min_prompts: {type: int, default: 2, min: 2, help: "least number of prompts an edge must appear in"}
//   min_weight: {type: float, default: 0.0, help: "least |weight| of an edge instance to count"}
//   scan: {type: str, default: "", help: "only features of this transcoder set ('' = all)"}
//   rank: {type: str, default: specificity, help: "order rows by 'specificity' (count x idf of the most common feature) or by raw 'prompts'"}
//   limit: {type: int, default: 100, help: "most rows returned"}
// columns:
//   source_key: upstream feature key
//   source_label: upstream feature label
//   target_key: downstream feature key
//   target_label: downstream feature label
//   specificity: prompts x ln(1 / max_share); 0 when a feature of the edge is active in every graph
//   prompts: number of prompts with the edge
//   edges: number of edge instances (a pair can occur at several positions in one prompt)
//   mean_weight: mean weight over instances
//   median_weight: median weight over instances
//   mean_abs_weight: mean |weight| over instances
//   sign_consistency: share of instances carrying the majority sign (1 = always the same sign)
//   max_share: share of the scan's graphs where the edge's more common feature is active
//   common_member: that feature
//   source_prompts: graphs where the source feature is active
//   target_prompts: graphs where the target feature is active
//   prompt_ids: prompts with the edge
// post: recurring_edges
// examples:
//   - circuit-atlas query recurring_edges --param min_prompts=5 --param min_weight=0.1
//   - circuit-atlas query recurring_edges --param rank=prompts
// @part let_cutoff when rank in prompts
MATCH ()-[l0:LINKS]->()
WHERE l0.prompts >= $min_prompts AND ($scan = '' OR l0.source_key STARTS WITH ($scan + ':'))
RETURN l0.prompts AS cutoff, -1.0 AS score_cut ORDER BY cutoff DESC LIMIT $limit
// @part let_score_cut when rank not in prompts
MATCH (p:Prompt)
WITH p.scan AS scan, count(*) AS n
MATCH (fa:Feature)-[l:LINKS]->(fb:Feature)
WHERE l.prompts >= $min_prompts AND fa.scan = scan AND ($scan = '' OR l.source_key STARTS WITH ($scan + ':'))
RETURN l.prompts * log10(n * 1.0 / CASE WHEN fa.prompts > fb.prompts THEN fa.prompts ELSE fb.prompts END) AS score_cut, $min_prompts AS cutoff ORDER BY score_cut DESC LIMIT $limit
// @part let_pairs when rank in prompts
MATCH ()-[l:LINKS]->()
WHERE l.prompts >= $min_prompts AND ($min_weight > 0 OR l.prompts >= $cutoff)
  AND ($scan = '' OR l.source_key STARTS WITH ($scan + ':'))
WITH collect(DISTINCT l.source_key) AS sources, collect(DISTINCT l.target_key) AS targets
RETURN CASE WHEN size(sources) = 0 THEN [''] ELSE sources END AS sources,
       CASE WHEN size(targets) = 0 THEN [''] ELSE targets END AS targets
// @part let_scored_pairs when rank not in prompts
MATCH (p:Prompt)
WITH p.scan AS scan, count(*) AS n
MATCH (fa:Feature)-[l:LINKS]->(fb:Feature)
WHERE l.prompts >= $min_prompts AND fa.scan = scan AND ($scan = '' OR l.source_key STARTS WITH ($scan + ':'))
WITH l, l.prompts * log10(n * 1.0 / CASE WHEN fa.prompts > fb.prompts THEN fa.prompts ELSE fb.prompts END) AS score
WHERE $min_weight > 0 OR score >= $score_cut
WITH collect(DISTINCT l.source_key) AS sources, collect(DISTINCT l.target_key) AS targets
RETURN CASE WHEN size(sources) = 0 THEN [''] ELSE sources END AS sources,
       CASE WHEN size(targets) = 0 THEN [''] ELSE targets END AS targets
// @part main
MATCH (a:RActive)-[e:REDGE]->(b:RActive)
WHERE a.feature_key IN $sources AND b.feature_key IN $targets AND abs(e.weight) >= $min_weight
WITH a.feature_key AS sk, b.feature_key AS tk, a.prompt_id AS pid, e.weight AS w
WITH sk, tk, count(DISTINCT pid) AS prompts, count(*) AS edges, avg(w) AS mean_weight, avg(abs(w)) AS mean_abs_weight,
     sum(CASE WHEN w > 0 THEN 1 ELSE 0 END) AS positive, collect(w) AS weights, collect(DISTINCT pid) AS prompt_ids
WHERE prompts >= $min_prompts
MATCH (fa:Feature {key: sk})
WITH fa, tk, prompts, edges, mean_weight, mean_abs_weight, positive, weights, prompt_ids
MATCH (fb:Feature {key: tk})
RETURN fa.key AS source_key, fa.label AS source_label, fb.key AS target_key, fb.label AS target_label,
       prompts, edges, mean_weight, mean_abs_weight, positive, weights, prompt_ids, fa.prompts AS source_prompts,
       fb.prompts AS target_prompts
// @part graphs
MATCH (p:Prompt)
RETURN p.scan AS scan, count(*) AS graphs
