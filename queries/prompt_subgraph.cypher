// name: prompt_subgraph
// description: One prompt's nodes and edges above thresholds, for drawing.
// notes: >
//   One frame: node rows (`kind` = embedding | feature | error | logit) then edge rows
//   (`kind` = edge, with source/target/weight). Features and errors below min_influence are
//   dropped (embeddings and logits are always kept), and so are edges touching a dropped node
//   or with |weight| < min_weight.
// params:
//   prompt_id: {type: str, help: "id of the prompt"}
//   min_influence: {type: float, default: 0.0, help: "least influence of a feature or error node"}
//   min_weight: {type: float, default: 0.0, help: "least |weight| of an edge"}
// columns:
//   kind: embedding | feature | error | logit | edge
//   node_id: node id (Neuronpedia convention), '' on edge rows
//   layer: layer (nodes)
//   pos: position (nodes)
//   feature_key: global feature key (features)
//   label: feature label, or the token text (embeddings, logits)
//   activation: activation (features)
//   influence: influence (features, errors)
//   prob: probability (logits)
//   source: edge source node id
//   target: edge target node id
//   weight: edge weight
// post: prompt_subgraph
// examples:
//   - circuit-atlas query prompt_subgraph --param prompt_id=3f2a... --param min_influence=0.01 --format json
MATCH (p:Prompt)-[:HAS]->(a:Active)-[:OF]->(f:Feature)
WHERE p.id = $prompt_id AND a.influence >= $min_influence
RETURN a.node_id AS node_id, a.layer AS layer, a.pos AS pos, f.key AS feature_key, f.label AS label,
       a.activation AS activation, a.influence AS influence
// @part errors
MATCH (p:Prompt)-[:HAS]->(e:Error)
WHERE p.id = $prompt_id AND e.influence >= $min_influence
RETURN e.node_id AS node_id, e.layer AS layer, e.pos AS pos, e.influence AS influence
// @part embeddings
MATCH (p:Prompt)-[:HAS]->(e:Embedding)
WHERE p.id = $prompt_id
RETURN e.node_id AS node_id, e.pos AS pos, e.token AS label
// @part logits
MATCH (p:Prompt)-[:HAS]->(l:Logit)
WHERE p.id = $prompt_id
RETURN l.node_id AS node_id, l.pos AS pos, l.token AS label, l.prob AS prob
// @part edges
MATCH (p:Prompt)-[:HAS]->(s)-[e:EDGE]->(t)
WHERE p.id = $prompt_id AND abs(e.weight) >= $min_weight
RETURN s.node_id AS source, t.node_id AS target, e.weight AS weight
