// name: contrastive
// description: Features and edges enriched in one prompt group versus another (by group, tag, corpus or correctness), with counts, frequencies and a smoothed log-odds score.
// uses_links: true
// notes: >
//   log_odds = ln((a+alpha)/(n_a-a+alpha)) -
//   ln((b+alpha)/(n_b-b+alpha)), with a, b the prompts with the feature (edge) in each side.
//   Features are first cut to those with >= min_prompts active instances (a cheap necessary
//   condition), which keeps one-off noise features out of the per-prompt join. Edge rows come from
//   the LINKS layer (pairs in >= min_prompts prompts, with the ids of those prompts), so they
//   need LINKS to be fresh; an edge row's label is its source feature's.
// params:
//   field: {type: str, default: group, help: "what splits the prompts: 'group', 'tag', 'corpus' or 'correct' (values 'true'/'false')"}
//   a: {type: str, help: "the value that selects side A"}
//   b: {type: str, default: "", help: "the value that selects side B ('' = every prompt not in A)"}
//   min_prompts: {type: int, default: 2, help: "least prompts (both sides together) for a row"}
//   alpha: {type: float, default: 0.5, help: "additive smoothing of the log-odds"}
//   kind: {type: str, default: "", help: "'feature' or 'edge' rows only ('' = both; 'feature' skips the edge statement)"}
//   limit: {type: int, default: 100, help: "most rows returned"}
// columns:
//   kind: feature | edge
//   key: feature key, or 'source->target' for an edge
//   source_key: the feature (feature rows) or the edge's source
//   target_key: "'' (feature rows) or the edge's target"
//   label: feature label (source label for edges)
//   count_a: prompts in A with it
//   count_b: prompts in B with it
//   n_a: prompts in A
//   n_b: prompts in B
//   freq_a: count_a / n_a
//   freq_b: count_b / n_b
//   log_odds: smoothed log-odds ratio, A over B (positive = enriched in A)
// post: contrastive
// examples:
//   - circuit-atlas query contrastive --param a=capitals
//   - circuit-atlas query contrastive --param field=correct --param a=true --param b=false
// @part features
MATCH (f:Feature)<-[:OF]-(x:Active)
WITH f, count(*) AS occurrences
WHERE occurrences >= $min_prompts
MATCH (f)<-[:OF]-(x:Active)<-[:HAS]-(p:Prompt)
WITH DISTINCT f, p
WITH f, CASE WHEN $field = 'tag' THEN $a IN p.tags WHEN $field = 'corpus' THEN p.corpus = $a WHEN $field = 'correct' THEN (CASE WHEN p.correct THEN 'true' ELSE 'false' END) = $a ELSE p.prompt_group = $a END AS in_a, CASE WHEN $b = '' THEN NOT (CASE WHEN $field = 'tag' THEN $a IN p.tags WHEN $field = 'corpus' THEN p.corpus = $a WHEN $field = 'correct' THEN (CASE WHEN p.correct THEN 'true' ELSE 'false' END) = $a ELSE p.prompt_group = $a END) WHEN $field = 'tag' THEN $b IN p.tags WHEN $field = 'corpus' THEN p.corpus = $b WHEN $field = 'correct' THEN (CASE WHEN p.correct THEN 'true' ELSE 'false' END) = $b ELSE p.prompt_group = $b END AS in_b
WITH f, sum(CASE WHEN in_a THEN 1 ELSE 0 END) AS count_a, sum(CASE WHEN in_b THEN 1 ELSE 0 END) AS count_b
WHERE count_a + count_b >= $min_prompts
RETURN f.key AS key, f.label AS label, count_a, count_b
// @part let_sides
MATCH (p:Prompt)
WITH p, CASE WHEN $field = 'tag' THEN $a IN p.tags WHEN $field = 'corpus' THEN p.corpus = $a WHEN $field = 'correct' THEN (CASE WHEN p.correct THEN 'true' ELSE 'false' END) = $a ELSE p.prompt_group = $a END AS in_a, CASE WHEN $b = '' THEN NOT (CASE WHEN $field = 'tag' THEN $a IN p.tags WHEN $field = 'corpus' THEN p.corpus = $a WHEN $field = 'correct' THEN (CASE WHEN p.correct THEN 'true' ELSE 'false' END) = $a ELSE p.prompt_group = $a END) WHEN $field = 'tag' THEN $b IN p.tags WHEN $field = 'corpus' THEN p.corpus = $b WHEN $field = 'correct' THEN (CASE WHEN p.correct THEN 'true' ELSE 'false' END) = $b ELSE p.prompt_group = $b END AS in_b
RETURN collect(CASE WHEN in_a THEN p.id END) AS ids_a, collect(CASE WHEN in_b THEN p.id END) AS ids_b
// @part edges when kind in ,edge
MATCH (fa:Feature)-[l:LINKS]->(fb:Feature)
WHERE l.prompts >= $min_prompts
WITH fa, fb, l.prompt_ids AS ids, $ids_a AS ids_a, $ids_b AS ids_b
WITH fa.key AS source_key, fb.key AS target_key, size(list_filter(ids, x -> x IN ids_a)) AS count_a,
     size(list_filter(ids, x -> x IN ids_b)) AS count_b
WHERE count_a + count_b >= $min_prompts
RETURN source_key, target_key, count_a, count_b
// @variant bolt
MATCH (fa:Feature)-[l:LINKS]->(fb:Feature)
WHERE l.prompts >= $min_prompts
WITH fa.key AS source_key, fb.key AS target_key, size([x IN l.prompt_ids WHERE x IN $ids_a]) AS count_a,
     size([x IN l.prompt_ids WHERE x IN $ids_b]) AS count_b
WHERE count_a + count_b >= $min_prompts
RETURN source_key, target_key, count_a, count_b
