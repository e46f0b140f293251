// name: similar_prompts
// description: Prompts sharing the most features with a given prompt, by weighted Jaccard of their feature activations.
// notes: >
//   A prompt's weight for a feature is its largest activation over positions; similarity =
//   sum of min(weights) / sum of max(weights) over the union of both prompts' features.
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
// @part shared
MATCH (p:Prompt)-[:HAS]->(a:Active)-[:OF]->(f:Feature)<-[:OF]-(b:Active)
WHERE p.id = $prompt_id AND b.prompt_id <> $prompt_id
RETURN b.prompt_id AS prompt_id, f.key AS key, max(b.activation) AS weight
// @part totals
MATCH (p:Prompt)-[:HAS]->(a:Active)-[:OF]->(f:Feature)<-[:OF]-(b:Active)
WHERE p.id = $prompt_id AND b.prompt_id <> $prompt_id
WITH DISTINCT b.prompt_id AS other
MATCH (q:Prompt)-[:HAS]->(c:Active)
WHERE q.id = other
WITH q, c.feature_key AS key, max(c.activation) AS weight
RETURN q.id AS prompt_id, q.text AS text, q.prompt_group AS grp, sum(weight) AS total
