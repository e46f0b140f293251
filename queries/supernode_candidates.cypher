// name: supernode_candidates
// needs: derived
// description: "Groups of features that co-occur across prompts and feed the same targets: a starting point for supernodes."
// uses_links: true
// notes: >
//   Pairs of features that feed a common target feature (both LINKS in >= min_prompts prompts)
//   and whose prompt sets overlap with Jaccard >= min_jaccard are joined; each connected group
//   of such pairs is one candidate. The Cypher reads the LINKS pairs and the prompt sets of the
//   recurring features (derived); the pairs and their overlaps are then counted with sparse matrices (a pair
//   list would be quadratic in a target's sources on dense real graphs). Needs LINKS to be fresh. See also `circuit-atlas
//   supernodes`, which writes automatic supernodes with a richer similarity.
// params:
//   min_prompts: {type: int, default: 2, min: 2, help: "least prompts for a LINKS edge to a shared target"}
//   min_jaccard: {type: float, default: 0.5, help: "least Jaccard overlap of the two features' prompt sets"}
//   min_size: {type: int, default: 2, help: "smallest group returned"}
//   limit: {type: int, default: 50, help: "most groups returned"}
// columns:
//   candidate: group number (1 = largest)
//   size: features in the group
//   key: a member feature
//   label: its label
//   layer: its layer
//   prompts: prompts where the member is active
//   shared_targets: target features fed by this member and at least one other member
//   mean_jaccard: mean prompt-set Jaccard of the member's pairs inside the group
// post: supernode_candidates
// examples:
//   - circuit-atlas query supernode_candidates --param min_prompts=5 --param min_jaccard=0.6
MATCH ()-[l:LINKS]->()
WHERE l.prompts >= $min_prompts
RETURN l.source_key AS f_key, l.target_key AS t_key
// @part members
MATCH (f:Feature)
WHERE f.prompts >= 2 AND f.prompts >= $min_prompts  // the literal lets LadybugDB skip the chunks of one-off features
RETURN f.key AS key, f.label AS label, f.layer AS layer, f.prompt_ids AS prompt_ids
