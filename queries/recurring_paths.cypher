// name: recurring_paths
// uses_links: true
// notes: >
//   Candidate feature pairs come from the LINKS layer (pairs in >= min_prompts prompts), then the
//   paths are counted in the per-prompt graphs, so it needs LINKS to be fresh.
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
MATCH (f1:Feature)-[l1:LINKS]->(f2:Feature)
WHERE ($hops = 0 OR $hops = 2) AND l1.prompts >= $min_prompts
WITH f1, f2.key AS k2, f2.label AS lb2
MATCH (f1)<-[:OF]-(a:Active)-[e1:EDGE]->(b:Active)
WHERE b.feature_key = k2
WITH f1, k2, lb2, b, e1.weight AS w1
WHERE abs(w1) >= $min_weight
MATCH (b)-[e2:EDGE]->(t:Logit)
WITH f1, k2, lb2, w1, e2.weight AS w2, t.token AS token, t.prompt_id AS pid
WHERE abs(w2) >= $min_weight AND ($token = '' OR token = $token)
RETURN 2 AS hops, f1.key AS f1_key, f1.label AS f1_label, k2 AS f2_key, lb2 AS f2_label, '' AS f3_key, '' AS f3_label,
       token, count(DISTINCT pid) AS prompts, avg(w1 * w2) AS mean_path_weight, collect(DISTINCT pid) AS prompt_ids
// @part three
MATCH (f1:Feature)-[l1:LINKS]->(f2:Feature)-[l2:LINKS]->(f3:Feature)
WHERE ($hops = 0 OR $hops = 3) AND l1.prompts >= $min_prompts AND l2.prompts >= $min_prompts
WITH f1, f2.key AS k2, f2.label AS lb2, f3.key AS k3, f3.label AS lb3
MATCH (f1)<-[:OF]-(a:Active)-[e1:EDGE]->(b:Active)
WHERE b.feature_key = k2
WITH f1, k2, lb2, k3, lb3, b, e1.weight AS w1
WHERE abs(w1) >= $min_weight
MATCH (b)-[e2:EDGE]->(c:Active)
WHERE c.feature_key = k3
WITH f1, k2, lb2, k3, lb3, c, w1, e2.weight AS w2
WHERE abs(w2) >= $min_weight
MATCH (c)-[e3:EDGE]->(t:Logit)
WITH f1, k2, lb2, k3, lb3, w1, w2, e3.weight AS w3, t.token AS token, t.prompt_id AS pid
WHERE abs(w3) >= $min_weight AND ($token = '' OR token = $token)
RETURN 3 AS hops, f1.key AS f1_key, f1.label AS f1_label, k2 AS f2_key, lb2 AS f2_label, k3 AS f3_key, lb3 AS f3_label,
       token, count(DISTINCT pid) AS prompts, avg(w1 * w2 * w3) AS mean_path_weight, collect(DISTINCT pid) AS prompt_ids
// @variant bolt
// ArcadeDB plans the two LINKS hops far better when they are staged through WITH.
MATCH (f1:Feature)-[l1:LINKS]->(f2:Feature)
WHERE ($hops = 0 OR $hops = 3) AND l1.prompts >= $min_prompts
WITH f1, f2
MATCH (f2)-[l2:LINKS]->(f3:Feature)
WHERE l2.prompts >= $min_prompts
WITH f1, f2.key AS k2, f2.label AS lb2, f3.key AS k3, f3.label AS lb3
MATCH (f1)<-[:OF]-(a:Active)-[e1:EDGE]->(b:Active)
WHERE b.feature_key = k2
WITH f1, k2, lb2, k3, lb3, b, e1.weight AS w1
WHERE abs(w1) >= $min_weight
MATCH (b)-[e2:EDGE]->(c:Active)
WHERE c.feature_key = k3
WITH f1, k2, lb2, k3, lb3, c, w1, e2.weight AS w2
WHERE abs(w2) >= $min_weight
MATCH (c)-[e3:EDGE]->(t:Logit)
WITH f1, k2, lb2, k3, lb3, w1, w2, e3.weight AS w3, t.token AS token, t.prompt_id AS pid
WHERE abs(w3) >= $min_weight AND ($token = '' OR token = $token)
RETURN 3 AS hops, f1.key AS f1_key, f1.label AS f1_label, k2 AS f2_key, lb2 AS f2_label, k3 AS f3_key, lb3 AS f3_label,
       token, count(DISTINCT pid) AS prompts, avg(w1 * w2 * w3) AS mean_path_weight, collect(DISTINCT pid) AS prompt_ids
