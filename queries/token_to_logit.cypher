// name: token_to_logit
// description: Paths from an input token (by text) through one or two features to an output token, across prompts.
// params:
//   input_token: {type: str, help: "input token text, exactly as tokenised (e.g. ' capital')"}
//   output_token: {type: str, default: "", help: "output token text ('' = any logit)"}
//   min_prompts: {type: int, default: 2, help: "least number of prompts a path must appear in"}
//   limit: {type: int, default: 100, help: "most rows returned"}
// columns:
//   hops: "edges on the path (2: token -> f1 -> logit, 3: token -> f1 -> f2 -> logit)"
//   input_token: the input token
//   f1_key: first feature
//   f1_label: its label
//   f2_key: second feature ('' on 2-hop paths)
//   f2_label: its label
//   output_token: the output token
//   prompts: number of prompts with the path
//   mean_path_weight: mean over instances of the product of edge weights
//   prompt_ids: prompts with the path
// post: token_to_logit
// examples:
//   - circuit-atlas query token_to_logit --param input_token=" capital" --param output_token=" Paris"
MATCH (x:Embedding)-[e1:EDGE]->(a:Active)-[e2:EDGE]->(t:Logit)
WHERE x.token = $input_token AND ($output_token = '' OR t.token = $output_token)
WITH a.feature_key AS k1, t.token AS output_token, t.prompt_id AS pid, sum(e1.weight * e2.weight) AS s, count(*) AS n
WITH k1, output_token, count(*) AS prompts, sum(s) / sum(n) AS mean_path_weight, collect(pid) AS prompt_ids
WHERE prompts >= $min_prompts
WITH k1, output_token, prompts, mean_path_weight, prompt_ids ORDER BY prompts DESC, k1, output_token LIMIT $limit
MATCH (f1:Feature {key: k1})
RETURN 2 AS hops, k1 AS f1_key, f1.label AS f1_label, '' AS f2_key, '' AS f2_label, output_token,
       prompts, mean_path_weight, prompt_ids
// @part three
MATCH (x:Embedding)-[e1:EDGE]->(a:Active)-[e2:EDGE]->(b:Active)-[e3:EDGE]->(t:Logit)
WHERE x.token = $input_token AND ($output_token = '' OR t.token = $output_token)
WITH a.feature_key AS k1, b.feature_key AS k2, t.token AS output_token, t.prompt_id AS pid,
     sum(e1.weight * e2.weight * e3.weight) AS s, count(*) AS n
WITH k1, k2, output_token, count(*) AS prompts, sum(s) / sum(n) AS mean_path_weight, collect(pid) AS prompt_ids
WHERE prompts >= $min_prompts
WITH k1, k2, output_token, prompts, mean_path_weight, prompt_ids ORDER BY prompts DESC, k1, k2, output_token LIMIT $limit
MATCH (f1:Feature {key: k1})
WITH f1, k2, output_token, prompts, mean_path_weight, prompt_ids
MATCH (f2:Feature {key: k2})
RETURN 3 AS hops, f1.key AS f1_key, f1.label AS f1_label, k2 AS f2_key, f2.label AS f2_label, output_token,
       prompts, mean_path_weight, prompt_ids
