// name: corpus_overview
// description: Prompts, nodes and edges by type, and score distributions, per group, tag or corpus.
// notes: >
//   Feature nodes and feature -> feature edges are counted as each prompt's stored totals
//   (n_nodes, n_edges) less the other types, which are few, so no statement scans every feature
//   or every edge.
// params:
//   by: {type: str, default: group, help: "bucket prompts by 'group', 'tag' (a prompt counts once per tag), 'corpus' or 'all'"}
// columns:
//   bucket: the group, tag or corpus value ('*' for by=all)
//   prompts: prompts in the bucket
//   correct: prompts whose top token is the expected one
//   features: active-feature nodes
//   errors: error nodes
//   embeddings: embedding nodes
//   logits: logit nodes
//   nodes: all per-prompt nodes
//   edges: attribution edges
//   edges_feature_feature: edges feature -> feature
//   edges_embedding_feature: edges embedding -> feature
//   edges_error_feature: edges error -> feature
//   edges_feature_logit: edges feature -> logit
//   edges_embedding_logit: edges embedding -> logit
//   edges_error_logit: edges error -> logit
//   replacement_mean: mean replacement score
//   replacement_min: lowest replacement score
//   replacement_max: highest replacement score
//   completeness_mean: mean completeness score
//   completeness_min: lowest completeness score
//   completeness_max: highest completeness score
//   prompt_ids: ids of the prompts in the bucket
// post: corpus_overview
// examples:
//   - circuit-atlas query corpus_overview
//   - circuit-atlas query corpus_overview --param by=tag
MATCH (p:Prompt)
RETURN p.id AS prompt_id, p.prompt_group AS grp, p.tags AS tags, p.corpus AS corpus, p.correct AS correct,
       p.n_nodes AS nodes, p.n_edges AS edges,
       p.replacement_score AS replacement_score, p.completeness_score AS completeness_score
// @part errors
MATCH (p:Prompt)-[:HAS]->(e:Error)
RETURN p.id AS prompt_id, 'errors' AS kind, count(*) AS n
// @part embeddings
MATCH (p:Prompt)-[:HAS]->(e:Embedding)
RETURN p.id AS prompt_id, 'embeddings' AS kind, count(*) AS n
// @part logits
MATCH (p:Prompt)-[:HAS]->(l:Logit)
RETURN p.id AS prompt_id, 'logits' AS kind, count(*) AS n
// @part edges_embedding_feature
MATCH (s:Embedding)-[:EDGE]->(t:Active)
RETURN s.prompt_id AS prompt_id, 'edges_embedding_feature' AS kind, count(*) AS n
// @part edges_error_feature
MATCH (s:Error)-[:EDGE]->(t:Active)
RETURN s.prompt_id AS prompt_id, 'edges_error_feature' AS kind, count(*) AS n
// @part edges_feature_logit
MATCH (s:Active)-[:EDGE]->(t:Logit)
RETURN s.prompt_id AS prompt_id, 'edges_feature_logit' AS kind, count(*) AS n
// @part edges_embedding_logit
MATCH (s:Embedding)-[:EDGE]->(t:Logit)
RETURN s.prompt_id AS prompt_id, 'edges_embedding_logit' AS kind, count(*) AS n
// @part edges_error_logit
MATCH (s:Error)-[:EDGE]->(t:Logit)
RETURN s.prompt_id AS prompt_id, 'edges_error_logit' AS kind, count(*) AS n
