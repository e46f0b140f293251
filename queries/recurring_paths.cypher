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
WITH f1, f2
MATCH (f1)<-[:OF]-(a:Active)-[e1:EDGE]->(b:Active)-[e2:EDGE]->(t:Logit)
WHERE b.feature_key = f2.key AND ($token = '' OR t.token = $token) AND abs(e1.weight) >= $min_weight AND abs(e2.weight) >= $min_weight
RETURN 2 AS hops, f1.key AS f1_key, f1.label AS f1_label, f2.key AS f2_key, f2.label AS f2_label, '' AS f3_key, '' AS f3_label,
       t.token AS token, count(DISTINCT t.prompt_id) AS prompts, avg(e1.weight * e2.weight) AS mean_path_weight,
       collect(DISTINCT t.prompt_id) AS prompt_ids
// @part three
MATCH (f1:Feature)-[l1:LINKS]->(f2:Feature)-[l2:LINKS]->(f3:Feature)
WHERE ($hops = 0 OR $hops = 3) AND l1.prompts >= $min_prompts AND l2.prompts >= $min_prompts
WITH f1, f2, f3
MATCH (f1)<-[:OF]-(a:Active)-[e1:EDGE]->(b:Active)-[e2:EDGE]->(c:Active)-[e3:EDGE]->(t:Logit)
WHERE b.feature_key = f2.key AND c.feature_key = f3.key AND ($token = '' OR t.token = $token)
  AND abs(e1.weight) >= $min_weight AND abs(e2.weight) >= $min_weight AND abs(e3.weight) >= $min_weight
RETURN 3 AS hops, f1.key AS f1_key, f1.label AS f1_label, f2.key AS f2_key, f2.label AS f2_label, f3.key AS f3_key, f3.label AS f3_label,
       t.token AS token, count(DISTINCT t.prompt_id) AS prompts, avg(e1.weight * e2.weight * e3.weight) AS mean_path_weight,
       collect(DISTINCT t.prompt_id) AS prompt_ids
