// name: token_to_logit
// description: Paths from an input token (by text) through one or two features to an output token, across prompts.
// notes: >
//   rank=specificity (the default) orders rows by prompts x ln(N / graphs of the path's most common
//   part: a feature, or the output token), so paths through features active in every graph, or
//   into outputs among every graph's logits (" the"), come last; every path is scored (no
//   cut-off). rank=prompts orders by the raw count. See docs/concepts/specificity.md.
// params:
//   input_token: {type: str, help: "input token text, exactly as tokenised (e.g. ' capital')"}
//   output_token: {type: str, default: "", help: "output token text ('' = any logit)"}
//   min_prompts: {type: int, default: 2, help: "least number of prompts a path must appear in"}
//   rank: {type: str, default: specificity, help: "order rows by 'specificity' (count x idf of the most common part) or by raw 'prompts'"}
//   limit: {type: int, default: 100, help: "most rows returned"}
// columns:
//   hops: "edges on the path (2: token -> f1 -> logit, 3: token -> f1 -> f2 -> logit)"
//   input_token: the input token
//   f1_key: first feature
//   f1_label: its label
//   f2_key: second feature ('' on 2-hop paths)
//   f2_label: its label
//   output_token: the output token
//   specificity: prompts x ln(1 / max_share); 0 when a part of the path is in every graph
//   prompts: number of prompts with the path
//   mean_path_weight: mean over instances of the product of edge weights
//   max_share: share of the scan's graphs holding the path's most common part
//   common_member: that part (a feature key, or the quoted output token)
//   prompt_ids: prompts with the path
// post: token_to_logit
// examples:
//   - circuit-atlas query token_to_logit --param input_token=" capital" --param output_token=" Paris"
// @part let_cap
RETURN CASE WHEN $rank = 'prompts' THEN $limit + 0 * 1000000000 ELSE 1000000000 + 0 * $limit END AS cap
// @part main
MATCH (x:Embedding)-[e1:EDGE]->(a:Active)-[e2:EDGE]->(t:Logit)
WHERE x.token = $input_token AND ($output_token = '' OR t.token = $output_token)
WITH a.feature_key AS k1, t.token AS output_token, t.prompt_id AS pid, sum(e1.weight * e2.weight) AS s, count(*) AS n
WITH k1, output_token, count(*) AS prompts, sum(s) / sum(n) AS mean_path_weight, collect(pid) AS prompt_ids
WHERE prompts >= $min_prompts
WITH k1, output_token, prompts, mean_path_weight, prompt_ids ORDER BY prompts DESC, k1, output_token LIMIT $cap
MATCH (f1:Feature {key: k1})
RETURN 2 AS hops, k1 AS f1_key, f1.label AS f1_label, '' AS f2_key, '' AS f2_label, output_token,
       prompts, mean_path_weight, prompt_ids, f1.prompts AS f1_prompts, -1 AS f2_prompts
// @part three
MATCH (x:Embedding)-[e1:EDGE]->(a:Active)-[e2:EDGE]->(b:Active)-[e3:EDGE]->(t:Logit)
WHERE x.token = $input_token AND ($output_token = '' OR t.token = $output_token)
WITH a.feature_key AS k1, b.feature_key AS k2, t.token AS output_token, t.prompt_id AS pid,
     sum(e1.weight * e2.weight * e3.weight) AS s, count(*) AS n
WITH k1, k2, output_token, count(*) AS prompts, sum(s) / sum(n) AS mean_path_weight, collect(pid) AS prompt_ids
WHERE prompts >= $min_prompts
WITH k1, k2, output_token, prompts, mean_path_weight, prompt_ids ORDER BY prompts DESC, k1, k2, output_token LIMIT $cap
MATCH (f1:Feature {key: k1})
WITH f1, k2, output_token, prompts, mean_path_weight, prompt_ids
MATCH (f2:Feature {key: k2})
RETURN 3 AS hops, f1.key AS f1_key, f1.label AS f1_label, k2 AS f2_key, f2.label AS f2_label, output_token,
       prompts, mean_path_weight, prompt_ids, f1.prompts AS f1_prompts, f2.prompts AS f2_prompts
// @part graphs
MATCH (p:Prompt)
RETURN p.scan AS scan, count(*) AS graphs
// @part tokens
MATCH (p:Prompt)-[:HAS]->(t:Logit)
WHERE $output_token = '' OR t.token = $output_token
RETURN p.scan AS scan, t.token AS token, count(DISTINCT p.id) AS graphs
