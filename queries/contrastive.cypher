// name: contrastive
// needs: derived
// description: Features and edges enriched in one prompt group versus another (by group, tag, corpus or correctness), with counts, frequencies and a smoothed log-odds score.
// uses_links: true
// notes: >
//   log_odds = ln((a+alpha)/(n_a-a+alpha)) -
//   ln((b+alpha)/(n_b-b+alpha)), with a, b the prompts with the feature (edge) in each side.
//   Both kinds of row come from the derived layer, never from the per-prompt graphs: feature rows
//   from each recurring Feature's prompt ids, edge rows from LINKS (pairs in >= 2 prompts, with
//   the ids of those prompts); so rows need >= 2 prompts, and the derived layer must be fresh
//   (rebuild-links). An edge row's label is its source feature's.
// params:
//   field: {type: str, default: group, help: "what splits the prompts: 'group', 'tag', 'corpus' or 'correct' (values 'true'/'false')"}
//   a: {type: str, help: "the value that selects side A"}
//   b: {type: str, default: "", help: "the value that selects side B ('' = every prompt not in A)"}
//   min_prompts: {type: int, default: 2, min: 2, help: "least prompts (both sides together) for a row"}
//   alpha: {type: float, default: 0.5, help: "additive smoothing of the log-odds"}
//   kind: {type: str, default: "", help: "'feature' or 'edge' rows only ('' = both; 'feature' skips the edge statement)"}
//   enriched: {type: str, default: a, help: "which side's enriched rows come first: 'a' (highest log-odds first) or 'b' (lowest first); the limit cuts after this order, so each side gets its own top rows"}
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
//   - circuit-atlas query contrastive --param a=capitals --param enriched=b
// @part features
MATCH (f:Feature)
WHERE f.prompts >= 2 AND f.prompts >= $min_prompts  // the literal lets LadybugDB skip the chunks of one-off features
UNWIND f.prompt_ids AS pid
WITH f, pid IN $ids_a AS in_a, pid IN $ids_b AS in_b
WITH f, sum(CASE WHEN in_a THEN 1 ELSE 0 END) AS count_a, sum(CASE WHEN in_b THEN 1 ELSE 0 END) AS count_b
WHERE count_a + count_b >= $min_prompts
RETURN f.key AS key, f.label AS label, count_a, count_b
// @part let_sides
MATCH (p:Prompt)
WITH p, CASE WHEN $field = 'tag' THEN $a IN p.tags WHEN $field = 'corpus' THEN p.corpus = $a WHEN $field = 'correct' THEN (CASE WHEN p.correct THEN 'true' ELSE 'false' END) = $a ELSE p.prompt_group = $a END AS in_a, CASE WHEN $b = '' THEN NOT (CASE WHEN $field = 'tag' THEN $a IN p.tags WHEN $field = 'corpus' THEN p.corpus = $a WHEN $field = 'correct' THEN (CASE WHEN p.correct THEN 'true' ELSE 'false' END) = $a ELSE p.prompt_group = $a END) WHEN $field = 'tag' THEN $b IN p.tags WHEN $field = 'corpus' THEN p.corpus = $b WHEN $field = 'correct' THEN (CASE WHEN p.correct THEN 'true' ELSE 'false' END) = $b ELSE p.prompt_group = $b END AS in_b
RETURN collect(CASE WHEN in_a THEN p.id END) AS ids_a, collect(CASE WHEN in_b THEN p.id END) AS ids_b
// @part edges when kind in ,edge
MATCH ()-[l:LINKS]->()
WHERE l.prompts >= $min_prompts
UNWIND l.prompt_ids AS pid
WITH l, pid IN $ids_a AS in_a, pid IN $ids_b AS in_b
WITH l.source_key AS source_key, l.target_key AS target_key, sum(CASE WHEN in_a THEN 1 ELSE 0 END) AS count_a,
     sum(CASE WHEN in_b THEN 1 ELSE 0 END) AS count_b
WHERE count_a + count_b >= $min_prompts
RETURN source_key, target_key, count_a, count_b
