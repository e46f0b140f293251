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
//   measure=presence (the default) counts the prompts whose pruned graph holds the feature: a
//   feature can look enriched only because pruning kept it where it mattered. measure=activation
//   compares activations instead (feature rows only, of the features active in >= 2 graphs, whose
//   instances the derived layer keeps): a feature's value in a prompt is its largest
//   activation there, 0 where it is not active; where a graph pruned it away, the value is
//   recovered from another graph of the same model and scan that shares the tokens up to that
//   position (a causal model computes the same activation on the same prefix; `imputed` counts
//   these). Side A is compared with side B by Cohen's d (effect_size) and Welch's t-test (t_stat,
//   p_value). shared_prefix is the share of the enriched side's prompts whose activation sits on
//   a prefix that also begins a prompt of the other side: the feature fires on input both sides
//   contain (a feature on "The" when both sides start with "The"), so its difference says nothing
//   about the split; specific_effect = effect_size x (1 - shared_prefix) ranks the rows, and is 0
//   for such a feature. See docs/concepts/specificity.md.
// params:
//   field: {type: str, default: group, help: "what splits the prompts: 'group', 'tag', 'corpus' or 'correct' (values 'true'/'false')"}
//   a: {type: str, help: "the value that selects side A"}
//   b: {type: str, default: "", help: "the value that selects side B ('' = every prompt not in A)"}
//   min_prompts: {type: int, default: 2, min: 2, help: "least prompts (both sides together) for a row"}
//   alpha: {type: float, default: 0.5, help: "additive smoothing of the log-odds"}
//   kind: {type: str, default: "", help: "'feature' or 'edge' rows only ('' = both; 'feature' skips the edge statement)"}
//   enriched: {type: str, default: a, help: "which side's enriched rows come first: 'a' (highest log-odds, or specific_effect with measure=activation, first) or 'b' (lowest first); the limit cuts after this order, so each side gets its own top rows"}
//   measure: {type: str, default: presence, help: "'presence' (prompts whose pruned graph holds it) or 'activation' (activations compared, feature rows only)"}
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
//   mean_act_a: "mean activation over A's prompts, 0 where not active (measure=activation; else empty)"
//   mean_act_b: mean activation over B's prompts, likewise
//   effect_size: Cohen's d of the activations, A over B (pooled standard deviation)
//   t_stat: Welch's t of the activations, A over B
//   p_value: two-sided p-value of Welch's t-test
//   shared_prefix: share of the enriched side's prompts whose activation sits on a prefix that begins a prompt of the other side
//   specific_effect: effect_size x (1 - shared_prefix); the activation rows' order
//   imputed: prompts whose value comes from another graph sharing the prefix (pruned away in their own)
// post: contrastive
// examples:
//   - circuit-atlas query contrastive --param a=capitals
//   - circuit-atlas query contrastive --param field=correct --param a=true --param b=false
//   - circuit-atlas query contrastive --param a=capitals --param enriched=b
//   - circuit-atlas query contrastive --param a=capitals --param measure=activation
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
WHERE l.prompts >= $min_prompts AND $measure = 'presence'
UNWIND l.prompt_ids AS pid
WITH l, pid IN $ids_a AS in_a, pid IN $ids_b AS in_b
WITH l.source_key AS source_key, l.target_key AS target_key, sum(CASE WHEN in_a THEN 1 ELSE 0 END) AS count_a,
     sum(CASE WHEN in_b THEN 1 ELSE 0 END) AS count_b
WHERE count_a + count_b >= $min_prompts
RETURN source_key, target_key, count_a, count_b
// @part instances when measure in activation
MATCH (a:RActive)
RETURN a.feature_key AS key, a.prompt_id AS prompt_id, a.pos AS pos, a.activation AS activation
// @part prompt_tokens when measure in activation
MATCH (p:Prompt)
RETURN p.id AS prompt_id, p.token_ids AS token_ids, p.model AS model, p.scan AS scan
