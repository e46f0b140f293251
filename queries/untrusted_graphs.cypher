// name: untrusted_graphs
// description: "Prompts whose error nodes carry the most influence (and low replacement/completeness scores): graphs not to trust."
// notes: >
//   error_share = error influence / (error + feature influence). Ranked by error_share, then
//   by lowest replacement score.
// params:
//   min_error_share: {type: float, default: 0.0, help: "only prompts with at least this error share"}
//   limit: {type: int, default: 20, help: "most rows returned"}
// columns:
//   prompt_id: the prompt
//   text: its text
//   group: its group (prompt_props.group)
//   error_influence: summed influence of its error nodes
//   feature_influence: summed influence of its feature nodes
//   error_share: error_influence / (error_influence + feature_influence)
//   replacement_score: stored replacement score
//   completeness_score: stored completeness score
// post: untrusted_graphs
// examples:
//   - circuit-atlas query untrusted_graphs --param limit=10
MATCH (p:Prompt)-[:HAS]->(e:Error)
RETURN p.id AS prompt_id, sum(e.influence) AS error_influence
// @part features
MATCH (a:Active)
RETURN a.prompt_id AS prompt_id, sum(a.influence) AS feature_influence
// @part prompts
MATCH (p:Prompt)
RETURN p.id AS prompt_id, p.text AS text, p.prompt_group AS grp, p.replacement_score AS replacement_score,
       p.completeness_score AS completeness_score
