// name: motifs
// description: "Recurring small motifs among features counted across prompts: feed-forward loops (A->B->C with A->C), fan-in (A->C, B->C) and fan-out (A->B, A->C)."
// uses_links: true
// notes: >
//   Motifs are counted in the per-prompt graphs (all edges of a motif among the same nodes of
//   one prompt). A motif's prompt count is at most the LINKS count of each of its feature pairs,
//   so each kind first counts exactly the motifs of its `limit` strongest LINKS candidates (a
//   let_ part); the limit-th best of those counts is a cut-off no top row can fall below, and
//   only candidates whose LINKS pairs all reach it are followed in the per-prompt graphs,
//   forward from their first feature. Exact, and fast on dense real graphs and on large sparse
//   corpora alike; needs LINKS to be fresh. Fan-in/fan-out list each unordered pair
//   once (a_key < b_key for fan-in, b_key < c_key for fan-out).
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
// @part let_cut_feed_forward when kind in ,feed_forward
MATCH (fa:Feature)-[l:LINKS]->(fb:Feature)
WHERE ($kind = '' OR $kind = 'feed_forward') AND l.prompts >= $min_prompts
WITH fa, fb, l.prompts AS bound
ORDER BY bound DESC LIMIT $limit
MATCH (fb)-[l:LINKS]->(fc:Feature)
WHERE l.prompts >= $min_prompts
WITH fa, fb, fc, CASE WHEN l.prompts < bound THEN l.prompts ELSE bound END AS bound2
MATCH (fa)-[l:LINKS]->(fc)
WHERE l.prompts >= $min_prompts
WITH fa, fb, fc, CASE WHEN l.prompts < bound2 THEN l.prompts ELSE bound2 END AS bound3
ORDER BY bound3 DESC LIMIT $limit
WITH fa, fb.key AS kb, fc.key AS kc
MATCH (fa)<-[:OF]-(x:Active)-[:EDGE]->(y:Active)
WHERE y.feature_key = kb
WITH fa, kb, kc, x, y
MATCH (y)-[:EDGE]->(z:Active)
WHERE z.feature_key = kc
WITH fa, kb, kc, x, z.id AS zid
MATCH (x)-[:EDGE]->(z2:Active)
WHERE z2.id = zid  // walk forward from x: an edge between two bound nodes is planned as a scan of all edges
WITH DISTINCT fa.key AS ka, kb, kc, x.prompt_id AS pid
WITH ka, kb, kc, count(*) AS prompts
WHERE prompts >= $min_prompts
WITH prompts ORDER BY prompts DESC LIMIT $limit
UNWIND [1] AS keep_order  // LadybugDB 0.22 drops an ORDER BY ... LIMIT that feeds an aggregation directly
WITH count(*) AS k, min(prompts) AS m
RETURN CASE WHEN k < $limit THEN $min_prompts ELSE m END AS cut_feed_forward
// @part let_cut_fan_in when kind in ,fan_in
MATCH (fa:Feature)-[l:LINKS]->(fb:Feature)
WHERE ($kind = '' OR $kind = 'fan_in') AND l.prompts >= $min_prompts
WITH fa, fb, l.prompts AS bound
ORDER BY bound DESC LIMIT $limit
MATCH (fo:Feature)-[l:LINKS]->(g:Feature {key: fb.key})
WHERE l.prompts >= $min_prompts AND fo.key > fa.key
WITH fa, fo, fb.key AS kc, CASE WHEN l.prompts < bound THEN l.prompts ELSE bound END AS bound2
ORDER BY bound2 DESC LIMIT $limit
MATCH (fa)<-[:OF]-(x:Active)-[:EDGE]->(y:Active)
WHERE y.feature_key = kc
WITH fa, fo, kc, y.id AS yid
MATCH (fo)<-[:OF]-(w:Active)-[:EDGE]->(y2:Active)
WHERE y2.id = yid  // forward from fo's instances: walking into a bound node scans all edges
WITH DISTINCT fa.key AS ka, fo.key AS kb, kc, y2.prompt_id AS pid
WITH ka, kb, kc, count(*) AS prompts
WHERE prompts >= $min_prompts
WITH prompts ORDER BY prompts DESC LIMIT $limit
UNWIND [1] AS keep_order  // LadybugDB 0.22 drops an ORDER BY ... LIMIT that feeds an aggregation directly
WITH count(*) AS k, min(prompts) AS m
RETURN CASE WHEN k < $limit THEN $min_prompts ELSE m END AS cut_fan_in
// @part let_cut_fan_out when kind in ,fan_out
MATCH (fa:Feature)-[l:LINKS]->(fb:Feature)
WHERE ($kind = '' OR $kind = 'fan_out') AND l.prompts >= $min_prompts
WITH fa, fb, l.prompts AS bound
ORDER BY bound DESC LIMIT $limit
MATCH (fa)-[l:LINKS]->(fc:Feature)
WHERE l.prompts >= $min_prompts AND fc.key > fb.key
WITH fa, fb, fc, CASE WHEN l.prompts < bound THEN l.prompts ELSE bound END AS bound2
ORDER BY bound2 DESC LIMIT $limit
WITH fa, fb.key AS kb, fc.key AS kc
MATCH (fa)<-[:OF]-(x:Active)-[:EDGE]->(y:Active)
WHERE y.feature_key = kb
WITH fa, kb, kc, x
MATCH (x)-[:EDGE]->(z:Active)
WHERE z.feature_key = kc
WITH DISTINCT fa.key AS ka, kb, kc, x.prompt_id AS pid
WITH ka, kb, kc, count(*) AS prompts
WHERE prompts >= $min_prompts
WITH prompts ORDER BY prompts DESC LIMIT $limit
UNWIND [1] AS keep_order  // LadybugDB 0.22 drops an ORDER BY ... LIMIT that feeds an aggregation directly
WITH count(*) AS k, min(prompts) AS m
RETURN CASE WHEN k < $limit THEN $min_prompts ELSE m END AS cut_fan_out
// @part feed_forward when kind in ,feed_forward
MATCH (fa:Feature)-[l:LINKS]->(fb:Feature)
WHERE ($kind = '' OR $kind = 'feed_forward') AND l.prompts >= $cut_feed_forward
WITH fa, fb, l.prompts AS bound
MATCH (fb)-[l:LINKS]->(fc:Feature)
WHERE l.prompts >= $cut_feed_forward
WITH fa, fb, fc, CASE WHEN l.prompts < bound THEN l.prompts ELSE bound END AS bound2
MATCH (fa)-[l:LINKS]->(fc)
WHERE l.prompts >= $cut_feed_forward
WITH fa, fb.key AS kb, fc.key AS kc
MATCH (fa)<-[:OF]-(x:Active)-[:EDGE]->(y:Active)
WHERE y.feature_key = kb
WITH fa, kb, kc, x, y
MATCH (y)-[:EDGE]->(z:Active)
WHERE z.feature_key = kc
WITH fa, kb, kc, x, z.id AS zid
MATCH (x)-[:EDGE]->(z2:Active)
WHERE z2.id = zid  // walk forward from x: an edge between two bound nodes is planned as a scan of all edges
WITH DISTINCT fa.key AS ka, kb, kc, x.prompt_id AS pid
WITH ka, kb, kc, count(*) AS prompts, collect(pid) AS prompt_ids
WHERE prompts >= $cut_feed_forward
WITH ka, kb, kc, prompts, prompt_ids ORDER BY prompts DESC, ka, kb, kc LIMIT $limit
MATCH (fa:Feature {key: ka})
WITH fa, kb, kc, prompts, prompt_ids
MATCH (fb:Feature {key: kb})
WITH fa, fb, kc, prompts, prompt_ids
MATCH (fc:Feature {key: kc})
RETURN 'feed_forward' AS motif, fa.key AS a_key, fb.key AS b_key, fc.key AS c_key,
       fa.label AS a_label, fb.label AS b_label, fc.label AS c_label, prompts, prompt_ids
// @part fan_in when kind in ,fan_in
MATCH (fa:Feature)-[l:LINKS]->(fb:Feature)
WHERE ($kind = '' OR $kind = 'fan_in') AND l.prompts >= $cut_fan_in
WITH fa, fb, l.prompts AS bound
MATCH (fo:Feature)-[l:LINKS]->(g:Feature {key: fb.key})
WHERE l.prompts >= $cut_fan_in AND fo.key > fa.key
WITH fa, fo, fb.key AS kc, CASE WHEN l.prompts < bound THEN l.prompts ELSE bound END AS bound2
MATCH (fa)<-[:OF]-(x:Active)-[:EDGE]->(y:Active)
WHERE y.feature_key = kc
WITH fa, fo, kc, y.id AS yid
MATCH (fo)<-[:OF]-(w:Active)-[:EDGE]->(y2:Active)
WHERE y2.id = yid  // forward from fo's instances: walking into a bound node scans all edges
WITH DISTINCT fa.key AS ka, fo.key AS kb, kc, y2.prompt_id AS pid
WITH ka, kb, kc, count(*) AS prompts, collect(pid) AS prompt_ids
WHERE prompts >= $cut_fan_in
WITH ka, kb, kc, prompts, prompt_ids ORDER BY prompts DESC, ka, kb, kc LIMIT $limit
MATCH (fa:Feature {key: ka})
WITH fa, kb, kc, prompts, prompt_ids
MATCH (fb:Feature {key: kb})
WITH fa, fb, kc, prompts, prompt_ids
MATCH (fc:Feature {key: kc})
RETURN 'fan_in' AS motif, fa.key AS a_key, fb.key AS b_key, fc.key AS c_key,
       fa.label AS a_label, fb.label AS b_label, fc.label AS c_label, prompts, prompt_ids
// @part fan_out when kind in ,fan_out
MATCH (fa:Feature)-[l:LINKS]->(fb:Feature)
WHERE ($kind = '' OR $kind = 'fan_out') AND l.prompts >= $cut_fan_out
WITH fa, fb, l.prompts AS bound
MATCH (fa)-[l:LINKS]->(fc:Feature)
WHERE l.prompts >= $cut_fan_out AND fc.key > fb.key
WITH fa, fb, fc, CASE WHEN l.prompts < bound THEN l.prompts ELSE bound END AS bound2
WITH fa, fb.key AS kb, fc.key AS kc
MATCH (fa)<-[:OF]-(x:Active)-[:EDGE]->(y:Active)
WHERE y.feature_key = kb
WITH fa, kb, kc, x
MATCH (x)-[:EDGE]->(z:Active)
WHERE z.feature_key = kc
WITH DISTINCT fa.key AS ka, kb, kc, x.prompt_id AS pid
WITH ka, kb, kc, count(*) AS prompts, collect(pid) AS prompt_ids
WHERE prompts >= $cut_fan_out
WITH ka, kb, kc, prompts, prompt_ids ORDER BY prompts DESC, ka, kb, kc LIMIT $limit
MATCH (fa:Feature {key: ka})
WITH fa, kb, kc, prompts, prompt_ids
MATCH (fb:Feature {key: kb})
WITH fa, fb, kc, prompts, prompt_ids
MATCH (fc:Feature {key: kc})
RETURN 'fan_out' AS motif, fa.key AS a_key, fb.key AS b_key, fc.key AS c_key,
       fa.label AS a_label, fb.label AS b_label, fc.label AS c_label, prompts, prompt_ids
