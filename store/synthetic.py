"""Synthetic attribution graphs in the graph-file format, for store tests and benchmarks.

Shapes look like real graphs (embeddings, features over layers/positions, errors, a few logits,
edges pointing forward) so loads and cross-prompt queries exercise realistic joins.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from circuit_atlas.engine.formats.graph_files import (
    GraphFile,
    embedding_node_id,
    error_node_id,
    feature_node_id,
    graph_id,
    logit_node_id,
)


def synthetic_graph(
    prompt_idx: int,
    n_nodes: int = 200,
    n_edges: int = 2000,
    n_features_vocab: int = 500,
    seed: int = 0,
    scan: str = "synthetic-scan",
    *,
    n_layers: int = 4,
    n_pos: int = 8,
    model: str = "synthetic-model",
    text: str | None = None,
    prompt_props: dict | None = None,
) -> GraphFile:
    """One random graph; the same arguments give the same graph (and graph id)."""
    rng = np.random.default_rng([seed, prompt_idx])
    token_ids = [int(t) for t in rng.integers(0, 1000, n_pos)]
    rows: list[tuple] = []
    for p, t in enumerate(token_ids):
        rows.append((embedding_node_id(t, p), "embedding", -1, p, -1, t, None, None, None, None))
    for layer in range(n_layers):
        for p in range(1, n_pos):
            rows.append((error_node_id(layer, p), "error", layer, p, -1, -1, None, float(rng.random()), None, None))
    n_logits = 3
    for k, t in enumerate(rng.choice(1000, n_logits, replace=False)):
        rows.append((logit_node_id(n_layers, int(t), n_pos - 1), "logit", n_layers, n_pos - 1, -1, int(t), None, None, float(0.5 / (k + 1)), None))
    n_feat = max(0, n_nodes - len(rows))
    seen: set[str] = set()
    layers = rng.integers(0, n_layers, n_feat * 2)
    poss = rng.integers(1, n_pos, n_feat * 2)
    feats = rng.zipf(1.3, n_feat * 2) % n_features_vocab
    for layer, p, f in zip(layers, poss, feats):
        nid = feature_node_id(int(layer), int(f), int(p))
        if nid in seen:
            continue
        seen.add(nid)
        label = f"feature {f}" if f % 7 == 0 else None
        rows.append((nid, "feature", int(layer), int(p), int(f), -1, float(rng.random() * 10), float(rng.random()), None, label))
        if len(seen) >= n_feat:
            break
    nodes = pd.DataFrame(rows, columns=["node_id", "type", "layer", "pos", "feature", "token_id", "activation", "influence", "prob", "label"])
    ids = nodes["node_id"].to_numpy()
    n = len(ids)
    src = rng.integers(0, n, n_edges)
    dst = rng.integers(0, n, n_edges)
    pair = np.unique(src.astype(np.int64) * n + dst)
    pair = pair[(pair // n) != (pair % n)]
    edges = pd.DataFrame({"source": ids[pair // n], "target": ids[pair % n], "weight": rng.normal(size=len(pair)).astype(np.float32)})
    settings = {"node_threshold": 0.8, "edge_threshold": 0.98, "synthetic_idx": prompt_idx}
    token_ids_for_id = token_ids + [prompt_idx, seed]  # distinct prompts -> distinct ids
    meta = {
        "graph_id": graph_id(model, scan, token_ids_for_id, {**settings, "logit_targets": [seed, prompt_idx]}),
        "prompt": text if text is not None else f"synthetic prompt {prompt_idx}",
        "tokens": [f"tok{t}" for t in token_ids],
        "token_ids": token_ids,
        "model": model,
        "scan": scan,
        "n_layers": n_layers,
        "settings": settings,
        "scores": {"replacement_score": float(rng.random()), "completeness_score": float(rng.random())},
        "prompt_props": prompt_props if prompt_props is not None else {
            "corpus": "synthetic", "group": f"g{prompt_idx % 3}", "tags": ["synthetic"],
            "expected": "tok1", "correct": bool(prompt_idx % 2), "top_token": "tok1", "external_id": str(prompt_idx),
        },
        "created_at": "2026-01-01T00:00:00Z",
    }
    return GraphFile(meta=meta, nodes=nodes, edges=edges)


def write_synthetic_corpus(directory: str | os.PathLike, n_prompts: int, progress: bool = False, **kwargs) -> list[Path]:
    """Write `n_prompts` synthetic graphs under `directory` (one sub-directory each)."""
    out = Path(directory)
    paths = []
    for i in tqdm(range(n_prompts), desc="synthetic graphs", disable=not progress):
        g = synthetic_graph(i, **kwargs)
        paths.append(g.save(out / f"g{i:05d}"))
    return paths
