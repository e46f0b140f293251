// name: prompt_texts
// description: Prompt texts with the number of stored graphs of each; several graphs of one text come from other settings, other tools or other runs.
// notes: >
//   A graph's id hashes its request (model, scan, token ids, settings) and its content (nodes and
//   edges), so two different graphs of one prompt are both stored; this lists where that
//   happened. Recurrence queries (recurring_edges, recurring_paths, hubs, motifs ...) count
//   graphs: a text with three graphs counts three times. To count distinct texts instead, map
//   their prompt_ids to texts with this query (graph_ids) and count the distinct texts.
// params:
//   min_graphs: {type: int, default: 1, min: 1, help: "only texts with at least this many stored graphs"}
//   limit: {type: int, default: 100, help: "most rows returned"}
// columns:
//   text: the prompt text
//   graphs: stored graphs (Prompt nodes) with this text
//   scans: transcoder sets of those graphs
//   graph_ids: their ids
// post: prompt_texts
// examples:
//   - circuit-atlas query prompt_texts --param min_graphs=2
MATCH (p:Prompt)
RETURN p.text AS text, count(*) AS graphs, collect(DISTINCT p.scan) AS scans, collect(p.id) AS graph_ids
