// name: hubs
// description: Features ranked by total influence, number of prompts, or number of recurring partners.
// uses_links: true
// notes: the `partners` column counts LINKS neighbours (fresh after `rebuild_links`).
// params:
//   by: {type: str, default: influence, help: "rank by 'influence' (total), 'prompts' or 'partners'"}
//   min_prompts: {type: int, default: 2, help: "least prompts a feature must be active in"}
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
MATCH (f:Feature)<-[:OF]-(a:Active)
WHERE $scan = '' OR f.scan = $scan
WITH f, count(*) AS occurrences
WHERE occurrences >= $min_prompts
MATCH (f)<-[:OF]-(a:Active)
WITH f, occurrences, count(DISTINCT a.prompt_id) AS prompts, sum(a.influence) AS total_influence,
     avg(a.activation) AS mean_activation
WHERE prompts >= $min_prompts
OPTIONAL MATCH (f)-[:LINKS]-(g:Feature)
RETURN f.key AS key, f.label AS label, f.layer AS layer, prompts, occurrences, total_influence, mean_activation,
       count(DISTINCT g.key) AS partners
