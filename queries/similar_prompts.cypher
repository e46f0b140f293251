// name: similar_prompts
// needs: derived
// description: Prompts sharing the most features with a given prompt, by weighted Jaccard of their feature activations.
// notes: >
//   A prompt's weight for a feature is its largest activation over positions; similarity =
//   sum of min(weights) / sum of max(weights) over the union of both prompts' features. A shared
//   feature is active in two prompts, so shared features are read from the recurring subgraph
//   (RActive; the derived layer must be fresh), and each prompt's whole mass from
//   Prompt.feature_weight (set at load).
// params:
//   prompt_id: {type: str, help: "id of the prompt to compare with"}
//   limit: {type: int, default: 10, help: "most rows returned"}
// columns:
//   prompt_id: a similar prompt
//   text: its text
//   group: its group (prompt_props.group)
//   shared_features: features active in both
//   weighted_jaccard: similarity in [0, 1]
// post: similar_prompts
// examples:
//   - circuit-atlas query similar_prompts --param prompt_id=3f2a... --param limit=5
MATCH (p:Prompt)-[:HAS]->(a:Active)
WHERE p.id = $prompt_id
RETURN a.feature_key AS key, max(a.activation) AS weight
// @part let_mine
MATCH (a:RActive)
WHERE a.prompt_id = $prompt_id
WITH collect(DISTINCT a.feature_key) AS mine
RETURN CASE WHEN size(mine) = 0 THEN [''] ELSE mine END AS mine
// @part shared
MATCH (b:RActive)
WHERE b.feature_key IN $mine AND b.prompt_id <> $prompt_id
RETURN b.prompt_id AS prompt_id, b.feature_key AS key, max(b.activation) AS weight
// @part totals
MATCH (q:Prompt)
WHERE q.id <> $prompt_id
RETURN q.id AS prompt_id, q.text AS text, q.prompt_group AS grp, q.feature_weight AS total
