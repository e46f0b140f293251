"""Is an incoming graph one the store already holds, up to float noise?

A graph's id hashes its structure with its weights rounded to ``WEIGHT_DIGITS`` significant
digits (engine/formats/graph_files.py), so the same prompt attributed again with float noise (another
thread count, passes split under --max-memory) usually gets the same id and is skipped. A value
that sits on a rounding boundary can still round the other way; so a graph whose id is new but
whose structure (node ids, edge pairs) matches a stored graph of the same prompt (or one read
earlier in the same import) is compared with it value by value: within one rounding unit
everywhere, it is the same graph (not written, said on the terminal); beyond it, a different
graph (written, and named beside the one it resembles).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from circuit_atlas.engine.formats import graph_files as gf

_SAME_PROMPT = ("MATCH (p:Prompt) WHERE p.text = $text AND p.model = $model AND p.scan = $scan "
                "RETURN p.id AS id, p.token_ids AS token_ids")
_STORED_NODES = "MATCH (p:Prompt {id: $id})-[:HAS]->(a) RETURN a.node_id AS node_id"
_STORED_EDGES = ("MATCH (p:Prompt {id: $id})-[:HAS]->(a)-[e:EDGE]->(b) "
                 "RETURN a.node_id AS source, b.node_id AS target, e.weight AS weight")
_STORED_ACTS = "MATCH (p:Prompt {id: $id})-[:HAS]->(a:Active) RETURN a.node_id AS node_id, a.activation AS activation"


@dataclass
class Comparison:
    """Two graphs of one structure, value by value."""

    values: int  # weights and activations compared
    differ: int  # of them, how many differ beyond one rounding unit
    max_rel: float  # the largest relative difference

    @property
    def same(self) -> bool:
        return self.differ == 0


def stored_of_same_prompt(store: Any, meta: dict[str, Any]) -> list[str]:
    """Ids of stored graphs of the same prompt (text, token ids, model, transcoders): the only
    ones that can equal a graph up to float noise."""
    df = store.read(_SAME_PROMPT, {"text": str(meta.get("prompt") or ""), "model": meta.get("model"),
                                   "scan": meta.get("scan")})
    want = [int(t) for t in meta.get("token_ids") or []]
    return sorted(str(i) for i, t in zip(df.get("id", []), df.get("token_ids", [])) if [int(x) for x in t] == want)


def same_structure(a_nodes: pa.Table, a_edges: pa.Table, b_node_ids: list[str], b_edges: pa.Table) -> bool:
    """Same node ids and the same edge pairs (with repeats)."""
    if a_nodes.num_rows != len(b_node_ids) or a_edges.num_rows != b_edges.num_rows:
        return False
    if sorted(a_nodes.column("node_id").to_pylist()) != sorted(b_node_ids):
        return False
    pairs = [pa.table({"s": e.column("source").cast(pa.string()), "t": e.column("target").cast(pa.string())})
             for e in (a_edges, b_edges)]
    pairs = [p.take(pc.sort_indices(p, [("s", "ascending"), ("t", "ascending")])) for p in pairs]
    return pairs[0].equals(pairs[1])


def _sorted_weights(edges: pa.Table) -> np.ndarray:
    t = pa.table({"s": edges.column("source").cast(pa.string()), "t": edges.column("target").cast(pa.string()),
                  "w": edges.column("weight").cast(pa.float64())})
    t = t.take(pc.sort_indices(t, [("s", "ascending"), ("t", "ascending"), ("w", "ascending")]))
    return t.column("w").to_numpy()


def _activations(nodes: pa.Table) -> dict[str, float]:
    feats = nodes.filter(pc.equal(nodes.column("type"), "feature")) if "type" in nodes.column_names else nodes
    acts = feats.column("activation").cast(pa.float64()).fill_null(float("nan")).to_numpy(zero_copy_only=False)
    return dict(zip(feats.column("node_id").to_pylist(), acts))


def compare(a_nodes: pa.Table, a_edges: pa.Table, b_nodes: pa.Table, b_edges: pa.Table) -> Comparison:
    """Compare two graphs of one structure: their edge weights (in (source, target, weight)
    order) and feature activations, each within one rounding unit at WEIGHT_DIGITS digits."""
    wa, wb = _sorted_weights(a_edges), _sorted_weights(b_edges)
    if len(wa) != len(wb):
        return Comparison(max(len(wa), len(wb)), max(len(wa), len(wb)), float("inf"))
    aa, ab = _activations(a_nodes), _activations(b_nodes)
    keys = sorted(aa)
    x = np.concatenate([wa, np.array([aa[k] for k in keys])])
    y = np.concatenate([wb, np.array([ab.get(k, np.nan) for k in keys])])
    close = gf.weights_close(x, y)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.abs(x - y) / np.maximum(np.abs(x), np.abs(y))
    rel = rel[np.isfinite(rel)]
    return Comparison(len(x), int((~close).sum()), float(rel.max()) if len(rel) else 0.0)


def stored_tables(store: Any, graph_id: str) -> tuple[list[str], pa.Table, pa.Table]:
    """A stored graph's node ids, feature activations and edges, for `same_structure`/`compare`."""
    ids = [str(i) for i in store.read(_STORED_NODES, {"id": graph_id}).get("node_id", [])]
    e = store.read(_STORED_EDGES, {"id": graph_id})
    n = store.read(_STORED_ACTS, {"id": graph_id})
    edges = pa.table({"source": pa.array(e["source"].astype(str).tolist() if len(e) else [], pa.string()),
                      "target": pa.array(e["target"].astype(str).tolist() if len(e) else [], pa.string()),
                      "weight": pa.array(e["weight"].to_numpy(dtype=np.float64) if len(e) else [], pa.float64())})
    nodes = pa.table({"node_id": pa.array(n["node_id"].astype(str).tolist() if len(n) else [], pa.string()),
                      "activation": pa.array(n["activation"].to_numpy(dtype=np.float64) if len(n) else [], pa.float64())})
    return ids, nodes, edges
