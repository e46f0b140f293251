// name: feature_profile
// needs: derived
// description: Where a feature is active (prompts, positions, tokens), activation/influence stats, its recurring upstream and downstream partners, and the logits it feeds.
// uses_links: true
// notes: >
//   Upstream and downstream partners come from the LINKS layer (fresh after
//   `rebuild_links`), which keeps pairs seen in two or more prompts, so a partner is listed from
//   2 prompts up whatever min_prompts says; occurrences and logits are read from the per-prompt
//   graphs.
//   Partners and logits are ordered by specificity (rank=specificity, the default): prompts x
//   ln(N / graphs of the partner feature, or graphs with that token among their logits), so hub
//   partners and generic outputs (" the") come after the specific ones; rank=prompts orders by the
//   raw count. See docs/concepts/specificity.md.
//   One frame with a `section` column: 'summary' (one row), 'occurrence' (one row per active
//   instance), 'upstream' / 'downstream' (partner features), 'logit' (output tokens it feeds).
// params:
//   key: {type: str, help: "feature key '{scan}:{layer}:{index}'"}
//   min_prompts: {type: int, default: 1, help: "least prompts for a partner or logit to be listed"}
//   limit: {type: int, default: 50, help: "most rows per section (occurrences are all listed)"}
//   rank: {type: str, default: specificity, help: "order partners and logits by 'specificity' (count x idf of the partner or token) or by raw 'prompts'"}
// columns:
//   section: summary | occurrence | upstream | downstream | logit
//   key: the feature (summary), or the partner feature (upstream/downstream)
//   label: label of that feature
//   prompt_id: the prompt (occurrence)
//   pos: position (occurrence)
//   token: input token at that position (occurrence) or the output token (logit)
//   activation: activation (occurrence) or mean activation (summary)
//   influence: influence (occurrence) or mean influence (summary)
//   prompts: "prompts (summary: where active; partners/logits: with the edge)"
//   weight: mean edge weight (partners, logits); max activation (summary)
//   specificity: partners and logits, prompts x ln(N / graphs holding the partner or the token); empty elsewhere
// post: feature_profile
// examples:
//   - circuit-atlas query feature_profile --param key=my-scan:3:1234
MATCH (f:Feature)<-[:OF]-(a:Active), (p:Prompt)-[:HAS]->(a)
WHERE f.key = $key
RETURN f.key AS key, f.label AS label, a.prompt_id AS prompt_id, a.pos AS pos, p.tokens AS tokens,
       a.activation AS activation, a.influence AS influence
// @part upstream
MATCH (g:Feature)-[l:LINKS]->(f:Feature)
WHERE f.key = $key AND l.prompts >= $min_prompts
RETURN g.key AS key, g.label AS label, l.prompts AS prompts, l.mean_weight AS weight, g.prompts AS partner_prompts
// @part downstream
MATCH (f:Feature)-[l:LINKS]->(g:Feature)
WHERE f.key = $key AND l.prompts >= $min_prompts
RETURN g.key AS key, g.label AS label, l.prompts AS prompts, l.mean_weight AS weight, g.prompts AS partner_prompts
// @part logits
MATCH (f:Feature)<-[:OF]-(a:Active)-[e:EDGE]->(t:Logit)
WHERE f.key = $key
RETURN t.token AS token, count(DISTINCT t.prompt_id) AS prompts, avg(e.weight) AS weight
// @part graphs
MATCH (p:Prompt)
RETURN p.scan AS scan, count(*) AS graphs
// @part tokens
MATCH (p:Prompt)-[:HAS]->(t:Logit)
RETURN p.scan AS scan, t.token AS token, count(DISTINCT p.id) AS graphs
