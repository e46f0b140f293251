// name: recurring_paths
// uses_links: true
// notes: >
//   Paths are counted in the per-prompt graphs. A path's prompt count is at most the number of
//   prompts where its last feature feeds that token, and at most the LINKS count of each of its
//   feature pairs, so only candidates at or above a cut-off on all of these are followed, forward
//   from their first feature. Each length first counts exactly the paths of its `limit` most
//   promising candidates (a let_ part); the limit-th best of those counts is the cut-off, which
//   no top row can fall below. Exact; needs LINKS to be fresh; fast on dense real graphs and
//   on large sparse corpora alike.
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
// @part let_cut2 when hops in 0,2
MATCH (d:Active)-[e:EDGE]->(t:Logit)
WHERE ($hops = 0 OR $hops = 2) AND abs(e.weight) >= $min_weight AND ($token = '' OR t.token = $token)
WITH d.feature_key AS kl, t.token AS token, count(DISTINCT t.prompt_id) AS feeds
WHERE feeds >= $min_prompts
WITH kl, token, feeds ORDER BY feeds DESC LIMIT $limit
MATCH (f1:Feature)-[l:LINKS]->(g:Feature {key: kl})
WHERE l.prompts >= $min_prompts
WITH f1, kl AS k2, token, CASE WHEN l.prompts < feeds THEN l.prompts ELSE feeds END AS bound
ORDER BY bound DESC LIMIT $limit
MATCH (f1)<-[:OF]-(a:Active)-[e1:EDGE]->(b:Active)
WHERE b.feature_key = k2 AND abs(e1.weight) >= $min_weight
WITH f1, k2, token, b, e1.weight AS w1
MATCH (b)-[e2:EDGE]->(t:Logit)
WHERE t.token = token AND abs(e2.weight) >= $min_weight
WITH f1.key AS k1, k2, token, t.prompt_id AS pid, sum(w1 * e2.weight) AS s, count(*) AS n
WITH k1, k2, token, count(*) AS prompts
WHERE prompts >= $min_prompts
WITH prompts ORDER BY prompts DESC LIMIT $limit
UNWIND [1] AS keep_order  // LadybugDB 0.22 drops an ORDER BY ... LIMIT that feeds an aggregation directly
WITH count(*) AS k, min(prompts) AS m
RETURN CASE WHEN k < $limit THEN $min_prompts ELSE m END AS cut2
// @part let_probe when hops in 0,3
RETURN $limit * 10 AS probe
// @part let_cut3 when hops in 0,3
MATCH (d:Active)-[e:EDGE]->(t:Logit)
WHERE ($hops = 0 OR $hops = 3) AND abs(e.weight) >= $min_weight AND ($token = '' OR t.token = $token)
WITH d.feature_key AS kl, t.token AS token, count(DISTINCT t.prompt_id) AS feeds
WHERE feeds >= $min_prompts
WITH kl, token, feeds ORDER BY feeds DESC LIMIT $probe
MATCH (f2:Feature)-[l:LINKS]->(g:Feature {key: kl})
WHERE l.prompts >= $min_prompts
WITH f2, kl AS k3, token, CASE WHEN l.prompts < feeds THEN l.prompts ELSE feeds END AS bound
ORDER BY bound DESC LIMIT $probe
MATCH (f2)<-[:OF]-(b:Active)-[e2:EDGE]->(c:Active)
WHERE c.feature_key = k3 AND abs(e2.weight) >= $min_weight
WITH f2, k3, token, c
MATCH (c)-[e3:EDGE]->(t:Logit)
WHERE t.token = token AND abs(e3.weight) >= $min_weight
WITH f2, k3, token, count(DISTINCT t.prompt_id) AS n2
WHERE n2 >= $min_prompts
WITH f2, k3, token, n2 ORDER BY n2 DESC LIMIT $probe
MATCH (f1:Feature)-[l:LINKS]->(f2)
WHERE l.prompts >= $min_prompts
WITH f1, f2.key AS k2, k3, token, CASE WHEN l.prompts < n2 THEN l.prompts ELSE n2 END AS bound
ORDER BY bound DESC LIMIT $probe
MATCH (f1)<-[:OF]-(a:Active)-[e1:EDGE]->(b:Active)
WHERE b.feature_key = k2 AND abs(e1.weight) >= $min_weight
WITH f1, k2, k3, token, b, e1.weight AS w1
MATCH (b)-[e2:EDGE]->(c:Active)
WHERE c.feature_key = k3 AND abs(e2.weight) >= $min_weight
WITH f1, k2, k3, token, c, w1 * e2.weight AS w12
MATCH (c)-[e3:EDGE]->(t:Logit)
WHERE t.token = token AND abs(e3.weight) >= $min_weight
WITH f1.key AS k1, k2, k3, token, t.prompt_id AS pid, sum(w12 * e3.weight) AS s, count(*) AS n
WITH k1, k2, k3, token, count(*) AS prompts
WHERE prompts >= $min_prompts
WITH prompts ORDER BY prompts DESC LIMIT $limit
UNWIND [1] AS keep_order  // LadybugDB 0.22 drops an ORDER BY ... LIMIT that feeds an aggregation directly
WITH count(*) AS k, min(prompts) AS m
RETURN CASE WHEN k < $limit THEN $min_prompts ELSE m END AS cut3
// @part main when hops in 0,2
MATCH (d:Active)-[e:EDGE]->(t:Logit)
WHERE ($hops = 0 OR $hops = 2) AND abs(e.weight) >= $min_weight AND ($token = '' OR t.token = $token)
WITH d.feature_key AS kl, t.token AS token, count(DISTINCT t.prompt_id) AS feeds
WHERE feeds >= $cut2
MATCH (f1:Feature)-[l:LINKS]->(g:Feature {key: kl})
WHERE l.prompts >= $cut2
WITH f1, kl AS k2, token, CASE WHEN l.prompts < feeds THEN l.prompts ELSE feeds END AS bound
MATCH (f1)<-[:OF]-(a:Active)-[e1:EDGE]->(b:Active)
WHERE b.feature_key = k2 AND abs(e1.weight) >= $min_weight
WITH f1, k2, token, b, e1.weight AS w1
MATCH (b)-[e2:EDGE]->(t:Logit)
WHERE t.token = token AND abs(e2.weight) >= $min_weight
WITH f1.key AS k1, k2, token, t.prompt_id AS pid, sum(w1 * e2.weight) AS s, count(*) AS n
WITH k1, k2, token, count(*) AS prompts, sum(s) / sum(n) AS mean_path_weight, collect(pid) AS prompt_ids
WHERE prompts >= $cut2
WITH k1, k2, token, prompts, mean_path_weight, prompt_ids ORDER BY prompts DESC, k1, k2, token LIMIT $limit
MATCH (f1:Feature {key: k1})
WITH f1, k2, token, prompts, mean_path_weight, prompt_ids
MATCH (f2:Feature {key: k2})
RETURN 2 AS hops, f1.key AS f1_key, f1.label AS f1_label, f2.key AS f2_key, f2.label AS f2_label, '' AS f3_key, '' AS f3_label,
       token, prompts, mean_path_weight, prompt_ids
// @part three when hops in 0,3
MATCH (d:Active)-[e:EDGE]->(t:Logit)
WHERE ($hops = 0 OR $hops = 3) AND abs(e.weight) >= $min_weight AND ($token = '' OR t.token = $token)
WITH d.feature_key AS kl, t.token AS token, count(DISTINCT t.prompt_id) AS feeds
WHERE feeds >= $cut3
MATCH (f2:Feature)-[l:LINKS]->(g:Feature {key: kl})
WHERE l.prompts >= $cut3
WITH f2, kl AS k3, token
MATCH (f2)<-[:OF]-(b:Active)-[e2:EDGE]->(c:Active)
WHERE c.feature_key = k3 AND abs(e2.weight) >= $min_weight
WITH f2, k3, token, c
MATCH (c)-[e3:EDGE]->(t:Logit)
WHERE t.token = token AND abs(e3.weight) >= $min_weight
WITH f2, k3, token, count(DISTINCT t.prompt_id) AS n2
WHERE n2 >= $cut3
MATCH (f1:Feature)-[l:LINKS]->(f2)
WHERE l.prompts >= $cut3
WITH f1, f2.key AS k2, k3, token, CASE WHEN l.prompts < n2 THEN l.prompts ELSE n2 END AS bound
MATCH (f1)<-[:OF]-(a:Active)-[e1:EDGE]->(b:Active)
WHERE b.feature_key = k2 AND abs(e1.weight) >= $min_weight
WITH f1, k2, k3, token, b, e1.weight AS w1
MATCH (b)-[e2:EDGE]->(c:Active)
WHERE c.feature_key = k3 AND abs(e2.weight) >= $min_weight
WITH f1, k2, k3, token, c, w1 * e2.weight AS w12
MATCH (c)-[e3:EDGE]->(t:Logit)
WHERE t.token = token AND abs(e3.weight) >= $min_weight
WITH f1.key AS k1, k2, k3, token, t.prompt_id AS pid, sum(w12 * e3.weight) AS s, count(*) AS n
WITH k1, k2, k3, token, count(*) AS prompts, sum(s) / sum(n) AS mean_path_weight, collect(pid) AS prompt_ids
WHERE prompts >= $cut3
WITH k1, k2, k3, token, prompts, mean_path_weight, prompt_ids ORDER BY prompts DESC, k1, k2, k3, token LIMIT $limit
MATCH (f1:Feature {key: k1})
WITH f1, k2, k3, token, prompts, mean_path_weight, prompt_ids
MATCH (f2:Feature {key: k2})
WITH f1, f2, k3, token, prompts, mean_path_weight, prompt_ids
MATCH (f3:Feature {key: k3})
RETURN 3 AS hops, f1.key AS f1_key, f1.label AS f1_label, f2.key AS f2_key, f2.label AS f2_label, f3.key AS f3_key, f3.label AS f3_label,
       token, prompts, mean_path_weight, prompt_ids
