// name: corpus_overview
// description: Prompts, nodes and edges by type, and score distributions, per group, tag or corpus.
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
RETURN p.id AS prompt_id, p.grp AS grp, p.tags AS tags, p.corpus AS corpus, p.correct AS correct,
       p.n_nodes AS nodes, p.n_edges AS edges,
       p.replacement_score AS replacement_score, p.completeness_score AS completeness_score
// @part types
MATCH (p:Prompt)-[:HAS]->(a:Active)
RETURN p.id AS prompt_id, 'features' AS kind, count(*) AS n
// @part errors
MATCH (p:Prompt)-[:HAS]->(e:Error)
RETURN p.id AS prompt_id, 'errors' AS kind, count(*) AS n
// @part embeddings
MATCH (p:Prompt)-[:HAS]->(e:Embedding)
RETURN p.id AS prompt_id, 'embeddings' AS kind, count(*) AS n
// @part logits
MATCH (p:Prompt)-[:HAS]->(l:Logit)
RETURN p.id AS prompt_id, 'logits' AS kind, count(*) AS n
