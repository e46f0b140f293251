// name: hubs
// needs: derived
// description: Features ranked by total influence, number of prompts, or number of recurring partners.
// uses_links: true
// notes: >
//   The `partners` column counts LINKS neighbours, i.e. features it shares an edge with in two or
//   more prompts (fresh after `rebuild_links`). Features are
//   counted from their active instances, ranked and cut to `limit` in the store (by influence or
//   prompts) before labels and partners are looked up; ranking by partners counts them for all.
//   With min_prompts >= 2 the instances come from the recurring subgraph (RActive: features active
//   in >= 2 prompts), which needs the derived layer to be fresh; below 2, from every instance.
// params:
//   by: {type: str, default: influence, help: "rank by 'influence' (total), 'prompts' or 'partners'"}
//   min_prompts: {type: int, default: 2, min: 0, help: "least prompts a feature must be active in"}
//   scan: {type: str, default: "", help: "only features of this transcoder set ('' = all)"}
//   limit: {type: int, default: 50, help: "most rows returned"}
// columns:
//   key: feature key
//   label: feature label
//   layer: its layer
//   prompts: prompts where it is active
//   occurrences: active instances (positions) over all prompts
//   total_influence: summed influence over instances
//   mean_activation: mean activation over instances
//   partners: distinct features it LINKS to or from
// post: hubs
// examples:
//   - circuit-atlas query hubs --param by=prompts --param limit=20
// @part let_cap
RETURN CASE WHEN $by = 'partners' THEN 1000000000 ELSE $limit END AS cap
// @part main when min_prompts not in 0,1
MATCH (a:RActive)
WHERE $scan = '' OR a.feature_key STARTS WITH ($scan + ':')
WITH a.feature_key AS key, count(*) AS occurrences, count(DISTINCT a.prompt_id) AS prompts,
     sum(a.influence) AS total_influence, avg(a.activation) AS mean_activation
WHERE prompts >= $min_prompts
WITH key, occurrences, prompts, total_influence, mean_activation
ORDER BY CASE WHEN $by = 'prompts' THEN prompts * 1.0 ELSE total_influence END DESC, prompts DESC, key LIMIT $cap
MATCH (f:Feature {key: key})
OPTIONAL MATCH (f)-[:LINKS]-(g:Feature)
RETURN f.key AS key, f.label AS label, f.layer AS layer, prompts, occurrences, total_influence, mean_activation,
       count(DISTINCT g.key) AS partners
// @part every when min_prompts in 0,1
MATCH (a:Active)
WHERE $scan = '' OR a.feature_key STARTS WITH ($scan + ':')
WITH a.feature_key AS key, count(*) AS occurrences, count(DISTINCT a.prompt_id) AS prompts,
     sum(a.influence) AS total_influence, avg(a.activation) AS mean_activation
WHERE prompts >= $min_prompts
WITH key, occurrences, prompts, total_influence, mean_activation
ORDER BY CASE WHEN $by = 'prompts' THEN prompts * 1.0 ELSE total_influence END DESC, prompts DESC, key LIMIT $cap
MATCH (f:Feature {key: key})
OPTIONAL MATCH (f)-[:LINKS]-(g:Feature)
RETURN f.key AS key, f.label AS label, f.layer AS layer, prompts, occurrences, total_influence, mean_activation,
       count(DISTINCT g.key) AS partners
