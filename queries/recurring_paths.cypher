// name: recurring_paths
// uses_links: false
// notes: >
//   Paths are counted in the per-prompt graphs, backwards from the logits: a path's prompt count
//   is at most the prompt count of its last feature feeding that token (and of its 2-hop tail),
//   so only features and tails at or above a cut-off are expanded. Each length first counts
//   exactly the paths through its `limit` strongest feeders (a let_ part); the limit-th best of
//   those counts is the cut-off, which no top row can fall below. Exact, does not need LINKS,
//   and fast on dense real graphs.
// description: 2- and 3-hop paths feature -> feature (-> feature) -> logit token recurring across prompts.
// params:
//   token: {type: str, default: "", help: "only paths ending at this output token text ('' = any)"}
//   min_prompts: {type: int, default: 2, help: "least number of prompts a path must appear in"}
//   min_weight: {type: float, default: 0.0, help: "least |weight| of every edge on the path"}
//   hops: {type: int, default: 0, help: "2 or 3 edges only (0 = both)"}
//   limit: {type: int, default: 100, help: "most rows returned"}
// columns:
//   hops: edges on the path (2 or 3)
//   f1_key: first feature
//   f1_label: its label
//   f2_key: second feature
//   f2_label: its label
//   f3_key: third feature ('' on 2-hop paths)
//   f3_label: its label
//   token: output token the path ends at
//   prompts: number of prompts with the path
//   mean_path_weight: mean over prompts of the product of edge weights along the path
//   prompt_ids: prompts with the path
// post: recurring_paths
// examples:
//   - circuit-atlas query recurring_paths --param token=" Paris" --param min_prompts=3
// @part let_cut2
MATCH (d:Active)-[e:EDGE]->(t:Logit)
WHERE ($hops = 0 OR $hops = 2) AND abs(e.weight) >= $min_weight AND ($token = '' OR t.token = $token)
WITH d.feature_key AS kl, t.token AS token, count(DISTINCT t.prompt_id) AS feeds
WHERE feeds >= $min_prompts
WITH kl, token, feeds ORDER BY feeds DESC LIMIT $limit
MATCH (c:Active)-[e3:EDGE]->(t:Logit)
WHERE c.feature_key = kl AND t.token = token AND abs(e3.weight) >= $min_weight
WITH c, t, e3.weight AS w3
MATCH (b:Active)-[e2:EDGE]->(c)
WHERE abs(e2.weight) >= $min_weight
WITH b.feature_key AS k1, c.feature_key AS k2, t.token AS token, count(DISTINCT t.prompt_id) AS prompts
WHERE prompts >= $min_prompts
WITH prompts ORDER BY prompts DESC LIMIT $limit
UNWIND [1] AS keep_order  // LadybugDB 0.22 drops an ORDER BY ... LIMIT that feeds an aggregation directly
WITH count(*) AS k, min(prompts) AS m
RETURN CASE WHEN k < $limit THEN $min_prompts ELSE m END AS cut2
// @part let_cut3
MATCH (d:Active)-[e:EDGE]->(t:Logit)
WHERE ($hops = 0 OR $hops = 3) AND abs(e.weight) >= $min_weight AND ($token = '' OR t.token = $token)
WITH d.feature_key AS kl, t.token AS token, count(DISTINCT t.prompt_id) AS feeds
WHERE feeds >= $min_prompts
WITH kl, token, feeds ORDER BY feeds DESC LIMIT $limit
MATCH (c:Active)-[e3:EDGE]->(t:Logit)
WHERE c.feature_key = kl AND t.token = token AND abs(e3.weight) >= $min_weight
WITH c, t, e3.weight AS w3
MATCH (b:Active)-[e2:EDGE]->(c)
WHERE abs(e2.weight) >= $min_weight
WITH b.feature_key AS k2, c.feature_key AS k3, t.token AS token, count(DISTINCT t.prompt_id) AS n2,
     collect({b: b.id, w: e2.weight * w3, p: t.prompt_id}) AS tails
WHERE n2 >= $min_prompts
WITH k2, k3, token, n2, tails ORDER BY n2 DESC LIMIT $limit
UNWIND tails AS tail
WITH k2, k3, token, tail.b AS bid, tail.w AS w23, tail.p AS pid
MATCH (a:Active)-[e1:EDGE]->(b:Active {id: bid})
WHERE abs(e1.weight) >= $min_weight
WITH a.feature_key AS k1, k2, k3, token, count(DISTINCT pid) AS prompts
WHERE prompts >= $min_prompts
WITH prompts ORDER BY prompts DESC LIMIT $limit
UNWIND [1] AS keep_order  // LadybugDB 0.22 drops an ORDER BY ... LIMIT that feeds an aggregation directly
WITH count(*) AS k, min(prompts) AS m
RETURN CASE WHEN k < $limit THEN $min_prompts ELSE m END AS cut3
// @part main
MATCH (d:Active)-[e:EDGE]->(t:Logit)
WHERE ($hops = 0 OR $hops = 2) AND abs(e.weight) >= $min_weight AND ($token = '' OR t.token = $token)
WITH d.feature_key AS kl, t.token AS token, count(DISTINCT t.prompt_id) AS feeds
WHERE feeds >= $cut2
WITH kl, token
MATCH (c:Active)-[e3:EDGE]->(t:Logit)
WHERE c.feature_key = kl AND t.token = token AND abs(e3.weight) >= $min_weight
WITH c, t, e3.weight AS w3
MATCH (b:Active)-[e2:EDGE]->(c)
WHERE abs(e2.weight) >= $min_weight
WITH b.feature_key AS k1, c.feature_key AS k2, t.token AS token, count(DISTINCT t.prompt_id) AS prompts,
     avg(e2.weight * w3) AS mean_path_weight, collect(DISTINCT t.prompt_id) AS prompt_ids
WHERE prompts >= $cut2
MATCH (f1:Feature {key: k1})
WITH f1, k2, token, prompts, mean_path_weight, prompt_ids
MATCH (f2:Feature {key: k2})
RETURN 2 AS hops, f1.key AS f1_key, f1.label AS f1_label, k2 AS f2_key, f2.label AS f2_label, '' AS f3_key, '' AS f3_label,
       token, prompts, mean_path_weight, prompt_ids
// @part three
MATCH (d:Active)-[e:EDGE]->(t:Logit)
WHERE ($hops = 0 OR $hops = 3) AND abs(e.weight) >= $min_weight AND ($token = '' OR t.token = $token)
WITH d.feature_key AS kl, t.token AS token, count(DISTINCT t.prompt_id) AS feeds
WHERE feeds >= $cut3
WITH kl, token
MATCH (c:Active)-[e3:EDGE]->(t:Logit)
WHERE c.feature_key = kl AND t.token = token AND abs(e3.weight) >= $min_weight
WITH c, t, e3.weight AS w3
MATCH (b:Active)-[e2:EDGE]->(c)
WHERE abs(e2.weight) >= $min_weight
WITH b.feature_key AS k2, c.feature_key AS k3, t.token AS token, count(DISTINCT t.prompt_id) AS n2,
     collect({b: b.id, w: e2.weight * w3, p: t.prompt_id}) AS tails
WHERE n2 >= $cut3
UNWIND tails AS tail
WITH k2, k3, token, tail.b AS bid, tail.w AS w23, tail.p AS pid
MATCH (a:Active)-[e1:EDGE]->(b:Active {id: bid})
WHERE abs(e1.weight) >= $min_weight
WITH a.feature_key AS k1, k2, k3, token, count(DISTINCT pid) AS prompts, avg(e1.weight * w23) AS mean_path_weight,
     collect(DISTINCT pid) AS prompt_ids
WHERE prompts >= $cut3
MATCH (f1:Feature {key: k1})
WITH f1, k2, k3, token, prompts, mean_path_weight, prompt_ids
MATCH (f2:Feature {key: k2})
WITH f1, f2, k3, token, prompts, mean_path_weight, prompt_ids
MATCH (f3:Feature {key: k3})
RETURN 3 AS hops, f1.key AS f1_key, f1.label AS f1_label, f2.key AS f2_key, f2.label AS f2_label, k3 AS f3_key, f3.label AS f3_label,
       token, prompts, mean_path_weight, prompt_ids
