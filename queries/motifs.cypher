// name: motifs
// description: "Recurring small motifs among features counted across prompts: feed-forward loops (A->B->C with A->C), fan-in (A->C, B->C) and fan-out (A->B, A->C)."
// uses_links: true
// notes: >
//   Candidate motifs are assembled from LINKS pairs seen in >= min_prompts prompts, then
//   counted in the per-prompt graphs (all edges of a motif in the same prompt), so it needs
//   LINKS to be fresh. Fan-in/fan-out list each unordered pair once (a_key < b_key).
// params:
//   kind: {type: str, default: "", help: "'feed_forward', 'fan_in', 'fan_out' ('' = all)"}
//   min_prompts: {type: int, default: 2, help: "least prompts a motif must appear in"}
//   limit: {type: int, default: 100, help: "most rows returned"}
// columns:
//   motif: feed_forward (a->b->c, a->c) | fan_in (a->c, b->c) | fan_out (a->b, a->c)
//   a_key: feature a
//   b_key: feature b
//   c_key: feature c
//   a_label: label of a
//   b_label: label of b
//   c_label: label of c
//   prompts: prompts containing the whole motif
//   prompt_ids: those prompts
// post: motifs
// examples:
//   - circuit-atlas query motifs --param kind=feed_forward --param min_prompts=5
MATCH (fa:Feature)-[l1:LINKS]->(fb:Feature)
WHERE ($kind = '' OR $kind = 'feed_forward') AND l1.prompts >= $min_prompts
WITH fa, fb
MATCH (fb)-[l2:LINKS]->(fc:Feature)
WHERE l2.prompts >= $min_prompts
WITH fa, fb, fc
MATCH (fa)-[l3:LINKS]->(fc)
WHERE l3.prompts >= $min_prompts
WITH fa, fb.key AS kb, fb.label AS lb, fc.key AS kc, fc.label AS lc
MATCH (fa)<-[:OF]-(a:Active)-[:EDGE]->(b:Active)
WHERE b.feature_key = kb
WITH fa, kb, lb, kc, lc, a, b
MATCH (b)-[:EDGE]->(c:Active)
WHERE c.feature_key = kc
WITH fa, kb, lb, kc, lc, a, c
MATCH (a)-[:EDGE]->(c)
RETURN 'feed_forward' AS motif, fa.key AS a_key, kb AS b_key, kc AS c_key,
       fa.label AS a_label, lb AS b_label, lc AS c_label,
       count(DISTINCT a.prompt_id) AS prompts, collect(DISTINCT a.prompt_id) AS prompt_ids
// @part fan_in
MATCH (fa:Feature)-[l1:LINKS]->(fc:Feature)
WHERE ($kind = '' OR $kind = 'fan_in') AND l1.prompts >= $min_prompts
WITH fa, fc
MATCH (fb:Feature)-[l2:LINKS]->(fc)
WHERE l2.prompts >= $min_prompts AND fa.key < fb.key
WITH fa, fb.key AS kb, fb.label AS lb, fc.key AS kc, fc.label AS lc
MATCH (fa)<-[:OF]-(a:Active)-[:EDGE]->(c:Active)
WHERE c.feature_key = kc
WITH fa, kb, lb, kc, lc, c
MATCH (b:Active)-[:EDGE]->(c)
WHERE b.feature_key = kb
RETURN 'fan_in' AS motif, fa.key AS a_key, kb AS b_key, kc AS c_key,
       fa.label AS a_label, lb AS b_label, lc AS c_label,
       count(DISTINCT c.prompt_id) AS prompts, collect(DISTINCT c.prompt_id) AS prompt_ids
// @part fan_out
MATCH (fa:Feature)-[l1:LINKS]->(fb:Feature)
WHERE ($kind = '' OR $kind = 'fan_out') AND l1.prompts >= $min_prompts
WITH fa, fb
MATCH (fa)-[l2:LINKS]->(fc:Feature)
WHERE l2.prompts >= $min_prompts AND fb.key < fc.key
WITH fa, fb.key AS kb, fb.label AS lb, fc.key AS kc, fc.label AS lc
MATCH (fa)<-[:OF]-(a:Active)-[:EDGE]->(b:Active)
WHERE b.feature_key = kb
WITH fa, kb, lb, kc, lc, a
MATCH (a)-[:EDGE]->(c:Active)
WHERE c.feature_key = kc
RETURN 'fan_out' AS motif, fa.key AS a_key, kb AS b_key, kc AS c_key,
       fa.label AS a_label, lb AS b_label, lc AS c_label,
       count(DISTINCT a.prompt_id) AS prompts, collect(DISTINCT a.prompt_id) AS prompt_ids
