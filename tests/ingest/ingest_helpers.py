"""Helpers for the ingest tests: a snapshot of everything stored for a prompt (or a whole
store) that two stores can be compared on, and the real command line in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd

from circuit_atlas.store import open_store

PROMPT_COLS = ("id", "text", "tokens", "token_ids", "model", "scan", "node_threshold", "edge_threshold",
               "replacement_score", "completeness_score", "corpus", "tags", "prompt_group", "expected", "correct",
               "top_token", "external_id", "n_nodes", "n_edges", "settings", "created_at")
NODE_QUERIES = {
    "Active": "n.node_id AS node_id, n.layer AS layer, n.pos AS pos, n.`index` AS idx, n.feature_key AS fk, "
              "n.activation AS activation, n.influence AS influence",
    "Embedding": "n.node_id AS node_id, n.pos AS pos, n.token_id AS token_id, n.token AS token",
    "Error": "n.node_id AS node_id, n.layer AS layer, n.pos AS pos, n.influence AS influence",
    "Logit": "n.node_id AS node_id, n.pos AS pos, n.token_id AS token_id, n.token AS token, n.prob AS prob",
}


def _frame(df: pd.DataFrame, by: list[str]) -> list[dict]:
    """Rows as plain dicts in a fixed order (lists stay lists, NaN becomes None)."""
    if df.empty:  # Bolt gives an empty frame without columns
        return []
    df = df.sort_values(by, kind="stable").reset_index(drop=True)
    out = []
    for rec in df.to_dict("records"):
        out.append({k: (None if isinstance(v, float) and v != v else (list(v) if hasattr(v, "__len__") and not isinstance(v, str) else v))
                    for k, v in rec.items()})
    return out


def snapshot(store, prompt_id: str, *, supernode_keys: bool = True) -> dict:
    """Everything the store holds for one prompt, comparable with ==."""
    cols = ", ".join(f"p.{c} AS {c}" for c in PROMPT_COLS)
    snap = {"prompt": _frame(store.read(f"MATCH (p:Prompt {{id: $id}}) RETURN {cols}", {"id": prompt_id}), ["id"])}
    for table, ret in NODE_QUERIES.items():
        df = store.read(f"MATCH (p:Prompt {{id: $id}})-[:HAS]->(n:{table}) RETURN {ret}", {"id": prompt_id})
        snap[table] = _frame(df, ["node_id"])
    edges = store.read("MATCH (p:Prompt {id: $id})-[:HAS]->(a)-[e:EDGE]->(b) RETURN a.node_id AS s, b.node_id AS t, "
                       "e.weight AS w", {"id": prompt_id})
    snap["edges"] = _frame(edges, ["s", "t"])
    feats = store.read("MATCH (p:Prompt {id: $id})-[:HAS]->(n:Active)-[:OF]->(f:Feature) RETURN DISTINCT f.key AS key, "
                       "f.label AS label, f.layer AS layer, f.`index` AS idx, f.scan AS scan", {"id": prompt_id})
    snap["features"] = _frame(feats, ["key"])
    toks = store.read("MATCH (p:Prompt {id: $id})-[:HAS]->(n:Embedding)-[:OF]->(t:Token) RETURN DISTINCT t.key AS key, "
                      "t.text AS text", {"id": prompt_id})
    snap["tokens"] = _frame(toks, ["key"])
    sn = store.read("MATCH (s:Supernode) WHERE s.prompt_id = $id RETURN s.key AS key, s.label AS label, "
                    "s.method AS method, s.node_ids AS node_ids", {"id": prompt_id})
    mem = store.read("MATCH (s:Supernode)-[:CONTAINS]->(f:Feature) WHERE s.prompt_id = $id RETURN s.label AS label, "
                     "f.key AS member", {"id": prompt_id})
    sns = _frame(sn, ["label"])
    if not supernode_keys:
        sns = [{k: v for k, v in s.items() if k not in ("key", "method")} for s in sns]
    snap["supernodes"] = sns
    snap["members"] = _frame(mem, ["label", "member"])
    return snap


def store_state(url: str) -> dict:
    """Counts of everything plus a snapshot of every prompt, read-only."""
    with open_store(url, read_only=True) as s:
        stats = {k: v for k, v in s.stats().items() if k not in ("url",)}
        ids = sorted(s.prompt_ids())
        prompts = {}
        for pid in ids:
            snap = snapshot(s, pid)
            for row in snap["prompt"]:
                row.pop("created_at", None)  # the one field that differs between two runs
            prompts[pid] = snap
    return {"stats": stats, "prompts": prompts}


def run_cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """The real `circuit-atlas` command line in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "circuit_atlas.cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout)



def assert_close(a, b, rel: float = 1e-4, abs_: float = 1e-6, path: str = "state") -> None:
    """Equal structure and non-float values, floats within a tolerance: for states computed with
    different thread counts (process pools), where float sums differ in the last bits."""
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)), f"{path}: {a!r} != {b!r}"
        assert abs(a - b) <= max(abs_, rel * max(abs(a), abs(b))), f"{path}: {a} != {b}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys differ"
        for k in a:
            assert_close(a[k], b[k], rel, abs_, f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{path}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, rel, abs_, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"
