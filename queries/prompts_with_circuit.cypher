// name: prompts_with_circuit
// description: Prompts containing a given set of features (and the edges among them), with coverage fraction.
// params:
//   keys: {type: "list[str]", help: "feature keys of the circuit (comma-separated or a JSON list)"}
//   min_coverage: {type: float, default: 0.0, help: "least fraction of the features a prompt must contain"}
//   limit: {type: int, default: 100, help: "most rows returned"}
// columns:
//   prompt_id: the prompt
//   text: its text
//   group: its group (prompt_props.group)
//   features_present: how many of the features are active in it
//   coverage: features_present / number of features asked for
//   edges_present: distinct feature->feature edges among the features found in it
//   missing_keys: the features it lacks
// post: prompts_with_circuit
// examples:
//   - circuit-atlas query prompts_with_circuit --param keys=scan:0:10,scan:1:11,scan:2:12 --param min_coverage=0.5
MATCH (f:Feature)<-[:OF]-(a:Active), (p:Prompt)-[:HAS]->(a)
WHERE f.key IN $keys
RETURN p.id AS prompt_id, p.text AS text, p.prompt_group AS grp, collect(DISTINCT f.key) AS present
// @part edges
MATCH (f1:Feature)<-[:OF]-(a:Active)-[:EDGE]->(b:Active)-[:OF]->(f2:Feature)
WHERE f1.key IN $keys AND f2.key IN $keys
RETURN DISTINCT a.prompt_id AS prompt_id, f1.key AS source_key, f2.key AS target_key
