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
//   Sensible groups: hubs (features active in more than max_share of their scan's graphs, 0.5 by
//   default) are left out before pairing, since a feature present in most prompts overlaps every
//   task's features and chains them into one component (the full demo gave one group of 1,141
//   features); their number is in `hubs_left_out`. A component larger than max_size (30) is split
//   into Louvain communities of its Jaccard-weighted pair graph (seeded, so the same store gives
//   the same groups), at rising resolution until every group fits or no split is found.
//   max_share=1 and max_size=0 give the connected components of all recurring features (the old
//   behaviour). See docs/concepts/specificity.md.
// params:
//   min_prompts: {type: int, default: 2, min: 2, help: "least prompts for a LINKS edge to a shared target"}
//   min_jaccard: {type: float, default: 0.5, help: "least Jaccard overlap of the two features' prompt sets"}
//   min_size: {type: int, default: 2, help: "smallest group returned"}
//   max_share: {type: float, default: 0.5, help: "leave out hubs: features active in more than this share of their scan's graphs (1 = keep all)"}
//   max_size: {type: int, default: 30, min: 0, help: "split groups larger than this into Louvain communities (0 = never split)"}
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
//   share: prompts / graphs of the member's scan
//   hubs_left_out: recurring features left out as hubs (share > max_share), the same on every row
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
// @part graphs
MATCH (p:Prompt)
RETURN p.scan AS scan, count(*) AS graphs
