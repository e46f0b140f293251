// name: recurring_paths
// needs: derived
// uses_links: true
// notes: >
//   Paths are counted in the per-prompt graphs. A path's prompt count is at most the number of
//   prompts where its last feature feeds that token, and at most the LINKS count of each of its
//   feature pairs (for 3 hops: of its first pair and the exact count of its 2-hop tail). Each
//   length first counts exactly the paths of its `limit` most promising candidates; the limit-th
//   best of those counts is a cut-off no top row can fall below, and only the features and tokens
//   of candidates at or above it are matched, as list parameters, in one pattern that walks back
//   from the logits. Paths are matched in the recurring subgraph (RActive, REDGE: the instances of
//   features active in >= 2 prompts, and their edges), which holds every path seen in two or more
//   prompts and, on a large corpus of mostly one-off features, a small part of the graph. Exact;
//   needs the derived layer (LINKS, RActive, REDGE) to be fresh.
//   answer=expected (the default): only edges into each prompt's own answer count (its expected
//   token where the corpus gives one, else the model's top token; a graph with neither has no
//   answer and no path), and paths that reach the
//   answers of different prompts are one row (a capital circuit ending at " Paris" in one prompt
//   and " Rome" in another): `token` is that answer when they share it, '(answers)' when not, and
//   `answers` lists each prompt's. answer=any: every logit, one row per output token.
//   rank=specificity (the default) scores the `candidates` most recurring paths (exact counts,
//   found by the cut-offs above) by prompts x ln(N / graphs of the path's most common part: a
//   feature, or with answer=any the output token) and returns the best `limit` of them; raise
//   `candidates` to reach rarer paths. The candidates leave out paths through hubs (features
//   active in more than max_share of their scan's graphs: they score at most prompts x ln 2), so
//   hub paths cannot crowd the specific ones out; hub paths that reach the cut-off are still
//   returned and scored. rank=prompts ranks by the raw count. See docs/concepts/specificity.md.
// description: 2- and 3-hop paths feature -> feature (-> feature) -> logit token recurring across prompts.
// params:
//   token: {type: str, default: "", help: "only paths ending at this output token text ('' = any)"}
//   min_prompts: {type: int, default: 2, min: 2, help: "least number of prompts a path must appear in"}
//   min_weight: {type: float, default: 0.0, help: "least |weight| of every edge on the path"}
//   hops: {type: int, default: 0, help: "2 or 3 edges only (0 = both)"}
//   answer: {type: str, default: expected, help: "'expected': only paths into each prompt's answer (expected token, else its top token); 'any': every logit"}
//   rank: {type: str, default: specificity, help: "order rows by 'specificity' (count x idf of the most common part) or by raw 'prompts'"}
//   candidates: {type: int, default: 1000, min: 1, help: "with rank=specificity: how many of the most recurring paths are scored (at least limit)"}
//   max_share: {type: float, default: 0.5, help: "with rank=specificity: paths through a feature active in more than this share of its scan's graphs (a hub) are not among the candidates, though still returned when they reach the cut-off"}
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
//   specificity: prompts x ln(1 / max_share); 0 when a part of the path is in every graph
//   prompts: number of prompts with the path
//   mean_path_weight: mean over prompts of the product of edge weights along the path
//   max_share: share of the scan's graphs holding the path's most common part
//   common_member: that part (a feature key, or a quoted output token)
//   answers: the answer token of each prompt in prompt_ids (same order)
//   prompt_ids: prompts with the path
// post: recurring_paths
// examples:
//   - circuit-atlas query recurring_paths --param token=" Paris" --param min_prompts=3
//   - circuit-atlas query recurring_paths --param answer=any --param rank=prompts
// @part let_cap
RETURN CASE WHEN $rank = 'prompts' OR $limit > $candidates THEN $limit + 0 * $candidates ELSE $candidates + 0 * $limit END AS cap,  // the sums type both branches alike (LadybugDB)
       CASE WHEN $rank = 'prompts' THEN $limit + 0 * 1000000000 ELSE 1000000000 + 0 * $limit END AS out_cap
// @part let_hubs
MATCH (p:Prompt)
WITH p.scan AS scan, count(*) AS n
MATCH (f:Feature)
WHERE f.prompts >= 2 AND $rank = 'specificity' AND f.scan = scan AND f.prompts > $max_share * n
WITH collect(f.key) AS hubs
RETURN CASE WHEN size(hubs) = 0 THEN [''] ELSE hubs END AS hub_keys
// @part let_answers
MATCH (p:Prompt)-[:HAS]->(t:Logit)
WHERE $answer <> 'any' AND t.token = CASE WHEN p.expected IS NULL OR p.expected = '' THEN p.top_token ELSE p.expected END
WITH collect(t.id) AS ids
RETURN CASE WHEN size(ids) = 0 THEN [''] ELSE ids END AS answer_ids
// @part let_c2 when hops in 0,2
MATCH (d:RActive)-[e:REDGE]->(t:Logit)
WHERE abs(e.weight) >= $min_weight AND ($token = '' OR t.token = $token) AND ($answer = 'any' OR t.id IN $answer_ids) AND NOT d.feature_key IN $hub_keys
WITH d.feature_key AS kl, CASE WHEN $answer = 'any' THEN t.token ELSE '' END AS token, count(DISTINCT t.prompt_id) AS feeds
WHERE feeds >= $min_prompts
WITH kl, token, feeds ORDER BY feeds DESC LIMIT $cap
MATCH ()-[l:LINKS]->()
WHERE l.target_key = kl AND l.prompts >= $min_prompts AND NOT l.source_key IN $hub_keys
WITH l.source_key AS kf, kl, token, CASE WHEN l.prompts < feeds THEN l.prompts ELSE feeds END AS bound
WITH kf, kl, token, bound ORDER BY bound DESC LIMIT $cap
UNWIND [1] AS keep_order  // LadybugDB 0.22 drops an ORDER BY ... LIMIT that feeds an aggregation directly
WITH collect(DISTINCT kf) AS c2_k1, collect(DISTINCT kl) AS c2_k2, collect(DISTINCT token) AS c2_tok
RETURN CASE WHEN size(c2_k1) = 0 THEN [''] ELSE c2_k1 END AS c2_k1, CASE WHEN size(c2_k2) = 0 THEN [''] ELSE c2_k2 END AS c2_k2, CASE WHEN size(c2_tok) = 0 THEN [''] ELSE c2_tok END AS c2_tok
// @part let_cut2 when hops in 0,2
MATCH (a:RActive)-[e1:REDGE]->(b:RActive)-[e2:REDGE]->(t:Logit)
WHERE (CASE WHEN $answer = 'any' THEN t.token ELSE '' END) IN $c2_tok AND ($token = '' OR t.token = $token) AND ($answer = 'any' OR t.id IN $answer_ids)
  AND b.feature_key IN $c2_k2 AND a.feature_key IN $c2_k1
  AND abs(e1.weight) >= $min_weight AND abs(e2.weight) >= $min_weight
WITH a.feature_key AS k1, b.feature_key AS k2, CASE WHEN $answer = 'any' THEN t.token ELSE '' END AS token, count(DISTINCT t.prompt_id) AS prompts
WHERE prompts >= $min_prompts
WITH prompts ORDER BY prompts DESC LIMIT $cap
UNWIND [1] AS keep_order  // LadybugDB 0.22 drops an ORDER BY ... LIMIT that feeds an aggregation directly
WITH count(*) AS k, min(prompts) AS m
RETURN CASE WHEN k < $cap THEN $min_prompts ELSE m END AS cut2
// @part let_m2 when hops in 0,2
MATCH (d:RActive)-[e:REDGE]->(t:Logit)
WHERE abs(e.weight) >= $min_weight AND ($token = '' OR t.token = $token) AND ($answer = 'any' OR t.id IN $answer_ids)
WITH d.feature_key AS kl, CASE WHEN $answer = 'any' THEN t.token ELSE '' END AS token, count(DISTINCT t.prompt_id) AS feeds
WHERE feeds >= $cut2
MATCH ()-[l:LINKS]->()
WHERE l.target_key = kl AND l.prompts >= $cut2
WITH l.source_key AS kf, kl, token, CASE WHEN l.prompts < feeds THEN l.prompts ELSE feeds END AS bound
WITH collect(DISTINCT kf) AS m2_k1, collect(DISTINCT kl) AS m2_k2, collect(DISTINCT token) AS m2_tok
RETURN CASE WHEN size(m2_k1) = 0 THEN [''] ELSE m2_k1 END AS m2_k1, CASE WHEN size(m2_k2) = 0 THEN [''] ELSE m2_k2 END AS m2_k2, CASE WHEN size(m2_tok) = 0 THEN [''] ELSE m2_tok END AS m2_tok
// @part let_probe when hops in 0,3
RETURN $cap * 10 AS probe
// @part let_t3 when hops in 0,3
MATCH (d:RActive)-[e:REDGE]->(t:Logit)
WHERE abs(e.weight) >= $min_weight AND ($token = '' OR t.token = $token) AND ($answer = 'any' OR t.id IN $answer_ids) AND NOT d.feature_key IN $hub_keys
WITH d.feature_key AS kl, CASE WHEN $answer = 'any' THEN t.token ELSE '' END AS token, count(DISTINCT t.prompt_id) AS feeds
WHERE feeds >= $min_prompts
WITH kl, token, feeds ORDER BY feeds DESC LIMIT $probe
MATCH ()-[l:LINKS]->()
WHERE l.target_key = kl AND l.prompts >= $min_prompts AND NOT l.source_key IN $hub_keys
WITH l.source_key AS kf, kl, token, CASE WHEN l.prompts < feeds THEN l.prompts ELSE feeds END AS bound
WITH kf, kl, token, bound ORDER BY bound DESC LIMIT $probe
UNWIND [1] AS keep_order  // LadybugDB 0.22 drops an ORDER BY ... LIMIT that feeds an aggregation directly
WITH collect(DISTINCT kf) AS t3_k2, collect(DISTINCT kl) AS t3_k3, collect(DISTINCT token) AS t3_tok
RETURN CASE WHEN size(t3_k2) = 0 THEN [''] ELSE t3_k2 END AS t3_k2, CASE WHEN size(t3_k3) = 0 THEN [''] ELSE t3_k3 END AS t3_k3, CASE WHEN size(t3_tok) = 0 THEN [''] ELSE t3_tok END AS t3_tok
// @part let_h3 when hops in 0,3
MATCH (a:RActive)-[e1:REDGE]->(b:RActive)-[e2:REDGE]->(t:Logit)
WHERE (CASE WHEN $answer = 'any' THEN t.token ELSE '' END) IN $t3_tok AND ($token = '' OR t.token = $token) AND ($answer = 'any' OR t.id IN $answer_ids)
  AND b.feature_key IN $t3_k3 AND a.feature_key IN $t3_k2
  AND abs(e1.weight) >= $min_weight AND abs(e2.weight) >= $min_weight
WITH a.feature_key AS k2, b.feature_key AS k3, CASE WHEN $answer = 'any' THEN t.token ELSE '' END AS token, count(DISTINCT t.prompt_id) AS n2
WHERE n2 >= $min_prompts
WITH k2, k3, token, n2 ORDER BY n2 DESC LIMIT $probe
MATCH ()-[l:LINKS]->()
WHERE l.target_key = k2 AND l.prompts >= $min_prompts AND NOT l.source_key IN $hub_keys
WITH l.source_key AS k1, k2, k3, token, CASE WHEN l.prompts < n2 THEN l.prompts ELSE n2 END AS bound
WITH k1, k2, k3, token, bound ORDER BY bound DESC LIMIT $cap
UNWIND [1] AS keep_order  // LadybugDB 0.22 drops an ORDER BY ... LIMIT that feeds an aggregation directly
WITH collect(DISTINCT k1) AS h3_k1, collect(DISTINCT k2) AS h3_k2, collect(DISTINCT k3) AS h3_k3, collect(DISTINCT token) AS h3_tok
RETURN CASE WHEN size(h3_k1) = 0 THEN [''] ELSE h3_k1 END AS h3_k1, CASE WHEN size(h3_k2) = 0 THEN [''] ELSE h3_k2 END AS h3_k2, CASE WHEN size(h3_k3) = 0 THEN [''] ELSE h3_k3 END AS h3_k3, CASE WHEN size(h3_tok) = 0 THEN [''] ELSE h3_tok END AS h3_tok
// @part let_cut3 when hops in 0,3
MATCH (a:RActive)-[e1:REDGE]->(b:RActive)-[e2:REDGE]->(c:RActive)-[e3:REDGE]->(t:Logit)
WHERE (CASE WHEN $answer = 'any' THEN t.token ELSE '' END) IN $h3_tok AND ($token = '' OR t.token = $token) AND ($answer = 'any' OR t.id IN $answer_ids)
  AND c.feature_key IN $h3_k3 AND b.feature_key IN $h3_k2 AND a.feature_key IN $h3_k1
  AND abs(e1.weight) >= $min_weight AND abs(e2.weight) >= $min_weight AND abs(e3.weight) >= $min_weight
HINT (((((t JOIN e3) JOIN c) JOIN e2) JOIN b) JOIN e1) JOIN a
WITH a.feature_key AS k1, b.feature_key AS k2, c.feature_key AS k3, CASE WHEN $answer = 'any' THEN t.token ELSE '' END AS token, count(DISTINCT t.prompt_id) AS prompts
WHERE prompts >= $min_prompts
WITH prompts ORDER BY prompts DESC LIMIT $cap
UNWIND [1] AS keep_order  // LadybugDB 0.22 drops an ORDER BY ... LIMIT that feeds an aggregation directly
WITH count(*) AS k, min(prompts) AS m
RETURN CASE WHEN k < $cap THEN $min_prompts ELSE m END AS cut3
// @part let_m3 when hops in 0,3
MATCH (d:RActive)-[e:REDGE]->(t:Logit)
WHERE abs(e.weight) >= $min_weight AND ($token = '' OR t.token = $token) AND ($answer = 'any' OR t.id IN $answer_ids)
WITH d.feature_key AS kl, CASE WHEN $answer = 'any' THEN t.token ELSE '' END AS token, count(DISTINCT t.prompt_id) AS feeds
WHERE feeds >= $cut3
MATCH ()-[l:LINKS]->()
WHERE l.target_key = kl AND l.prompts >= $cut3
WITH l.source_key AS kf, kl, token, CASE WHEN l.prompts < feeds THEN l.prompts ELSE feeds END AS bound
WITH collect(DISTINCT kf) AS m3_k2, collect(DISTINCT kl) AS m3_k3, collect(DISTINCT token) AS m3_tok
RETURN CASE WHEN size(m3_k2) = 0 THEN [''] ELSE m3_k2 END AS m3_k2, CASE WHEN size(m3_k3) = 0 THEN [''] ELSE m3_k3 END AS m3_k3, CASE WHEN size(m3_tok) = 0 THEN [''] ELSE m3_tok END AS m3_tok
// @part let_mh3 when hops in 0,3
MATCH (a:RActive)-[e1:REDGE]->(b:RActive)-[e2:REDGE]->(t:Logit)
WHERE (CASE WHEN $answer = 'any' THEN t.token ELSE '' END) IN $m3_tok AND ($token = '' OR t.token = $token) AND ($answer = 'any' OR t.id IN $answer_ids)
  AND b.feature_key IN $m3_k3 AND a.feature_key IN $m3_k2
  AND abs(e1.weight) >= $min_weight AND abs(e2.weight) >= $min_weight
WITH a.feature_key AS k2, b.feature_key AS k3, CASE WHEN $answer = 'any' THEN t.token ELSE '' END AS token, count(DISTINCT t.prompt_id) AS n2
WHERE n2 >= $cut3
MATCH ()-[l:LINKS]->()
WHERE l.target_key = k2 AND l.prompts >= $cut3
WITH l.source_key AS k1, k2, k3, token, CASE WHEN l.prompts < n2 THEN l.prompts ELSE n2 END AS bound
WITH collect(DISTINCT k1) AS mh3_k1, collect(DISTINCT k2) AS mh3_k2, collect(DISTINCT k3) AS mh3_k3, collect(DISTINCT token) AS mh3_tok
RETURN CASE WHEN size(mh3_k1) = 0 THEN [''] ELSE mh3_k1 END AS mh3_k1, CASE WHEN size(mh3_k2) = 0 THEN [''] ELSE mh3_k2 END AS mh3_k2, CASE WHEN size(mh3_k3) = 0 THEN [''] ELSE mh3_k3 END AS mh3_k3, CASE WHEN size(mh3_tok) = 0 THEN [''] ELSE mh3_tok END AS mh3_tok
// @part main when hops in 0,2
MATCH (a:RActive)-[e1:REDGE]->(b:RActive)-[e2:REDGE]->(t:Logit)
WHERE (CASE WHEN $answer = 'any' THEN t.token ELSE '' END) IN $m2_tok AND ($token = '' OR t.token = $token) AND ($answer = 'any' OR t.id IN $answer_ids)
  AND b.feature_key IN $m2_k2 AND a.feature_key IN $m2_k1
  AND abs(e1.weight) >= $min_weight AND abs(e2.weight) >= $min_weight
WITH a.feature_key AS k1, b.feature_key AS k2, CASE WHEN $answer = 'any' THEN t.token ELSE '' END AS token, t.prompt_id AS pid, t.token AS answer, sum(e1.weight * e2.weight) AS s, count(*) AS n
WITH k1, k2, token, count(*) AS prompts, sum(s) / sum(n) AS mean_path_weight, collect(pid) AS prompt_ids, collect(answer) AS answers
WHERE prompts >= $cut2
WITH k1, k2, token, prompts, mean_path_weight, prompt_ids, answers ORDER BY prompts DESC, k1, k2, token LIMIT $out_cap
MATCH (f1:Feature {key: k1})
WITH f1, k2, token, prompts, mean_path_weight, prompt_ids, answers
MATCH (f2:Feature {key: k2})
RETURN 2 AS hops, f1.key AS f1_key, f1.label AS f1_label, f2.key AS f2_key, f2.label AS f2_label, '' AS f3_key, '' AS f3_label,
       token, prompts, mean_path_weight, prompt_ids, answers, f1.prompts AS f1_prompts, f2.prompts AS f2_prompts,
       -1 AS f3_prompts
// @part three when hops in 0,3
MATCH (a:RActive)-[e1:REDGE]->(b:RActive)-[e2:REDGE]->(c:RActive)-[e3:REDGE]->(t:Logit)
WHERE (CASE WHEN $answer = 'any' THEN t.token ELSE '' END) IN $mh3_tok AND ($token = '' OR t.token = $token) AND ($answer = 'any' OR t.id IN $answer_ids)
  AND c.feature_key IN $mh3_k3 AND b.feature_key IN $mh3_k2 AND a.feature_key IN $mh3_k1
  AND abs(e1.weight) >= $min_weight AND abs(e2.weight) >= $min_weight AND abs(e3.weight) >= $min_weight
HINT (((((t JOIN e3) JOIN c) JOIN e2) JOIN b) JOIN e1) JOIN a
WITH a.feature_key AS k1, b.feature_key AS k2, c.feature_key AS k3, CASE WHEN $answer = 'any' THEN t.token ELSE '' END AS token, t.prompt_id AS pid, t.token AS answer,
     sum(e1.weight * e2.weight * e3.weight) AS s, count(*) AS n
WITH k1, k2, k3, token, count(*) AS prompts, sum(s) / sum(n) AS mean_path_weight, collect(pid) AS prompt_ids, collect(answer) AS answers
WHERE prompts >= $cut3
WITH k1, k2, k3, token, prompts, mean_path_weight, prompt_ids, answers ORDER BY prompts DESC, k1, k2, k3, token LIMIT $out_cap
MATCH (f1:Feature {key: k1})
WITH f1, k2, k3, token, prompts, mean_path_weight, prompt_ids, answers
MATCH (f2:Feature {key: k2})
WITH f1, f2, k3, token, prompts, mean_path_weight, prompt_ids, answers
MATCH (f3:Feature {key: k3})
RETURN 3 AS hops, f1.key AS f1_key, f1.label AS f1_label, f2.key AS f2_key, f2.label AS f2_label, f3.key AS f3_key, f3.label AS f3_label,
       token, prompts, mean_path_weight, prompt_ids, answers, f1.prompts AS f1_prompts, f2.prompts AS f2_prompts,
       f3.prompts AS f3_prompts
// @part graphs
MATCH (p:Prompt)
RETURN p.scan AS scan, count(*) AS graphs
// @part tokens when answer in any
MATCH (p:Prompt)-[:HAS]->(t:Logit)
RETURN p.scan AS scan, t.token AS token, count(DISTINCT p.id) AS graphs
