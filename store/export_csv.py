"""Export a store to `neo4j-admin database import full` CSV files, for corpora too big for Bolt.

One header+data CSV per node label and relationship type; ids are the store's global ids
(`:ID(Group)` spaces keep per-prompt ids, feature keys and token keys apart).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from circuit_atlas.store.base import Store

# label -> (id property, id space, other properties with neo4j-admin types)
NODES = {
    "Feature": ("key", "Feature", {"scan": "string", "layer": "long", "index": "long", "label": "string",
                                   "frequency": "double", "max_activation": "double", "contexts": "string", "logit_effects": "string",
                                   "prompts": "long", "prompt_ids": "string[]",
                                   # where the label came from (user | import | auto) and the automatic label
                                   "label_source": "string", "auto_label": "string"}),
    "Token": ("key", "Token", {"model": "string", "token_id": "long", "text": "string"}),
    "Prompt": ("id", "Prompt", {"text": "string", "model": "string", "scan": "string", "corpus": "string",
                                "prompt_group": "string", "expected": "string", "correct": "boolean", "top_token": "string",
                                "external_id": "string", "n_nodes": "long", "n_edges": "long", "node_threshold": "double",
                                "edge_threshold": "double", "replacement_score": "double", "completeness_score": "double",
                                "settings": "string", "created_at": "string", "complete": "boolean", "feature_weight": "double"}),
    "Active": ("id", "Node", {"prompt_id": "string", "node_id": "string", "layer": "long", "pos": "long", "index": "long",
                              "feature_key": "string", "activation": "double", "influence": "double"}),
    "Embedding": ("id", "Node", {"prompt_id": "string", "node_id": "string", "pos": "long", "token_id": "long", "token": "string"}),
    "Error": ("id", "Node", {"prompt_id": "string", "node_id": "string", "layer": "long", "pos": "long", "influence": "double"}),
    "Logit": ("id", "Node", {"prompt_id": "string", "node_id": "string", "pos": "long", "token_id": "long",
                             "token": "string", "prob": "double"}),
}
RELS = {
    "HAS": ("MATCH (a:Prompt)-[r:HAS]->(b) RETURN a.id AS s, b.id AS t", "Prompt", "Node", {}),
    "OF_FEATURE": ("MATCH (a:Active)-[r:OF]->(b:Feature) RETURN a.id AS s, b.key AS t", "Node", "Feature", {}),
    "OF_TOKEN": ("MATCH (a)-[r:OF]->(b:Token) RETURN a.id AS s, b.key AS t", "Node", "Token", {}),
    "EDGE": ("MATCH (a)-[r:EDGE]->(b) RETURN a.id AS s, b.id AS t, r.weight AS weight", "Node", "Node", {"weight": "float"}),
    "LINKS": ("MATCH (a:Feature)-[r:LINKS]->(b:Feature) RETURN a.key AS s, b.key AS t, r.prompts AS prompts, "
              "r.mean_weight AS mean_weight, r.mean_abs_weight AS mean_abs_weight, r.prompt_ids AS prompt_ids, "
              "r.source_key AS source_key, r.target_key AS target_key", "Feature", "Feature",
              {"prompts": "long", "mean_weight": "double", "mean_abs_weight": "double", "prompt_ids": "string[]",
               "source_key": "string", "target_key": "string"}),
}


def export_csv(store: Store, directory: str | Path) -> list[Path]:
    """Write the CSV files; returns their paths (docs/guides/neo4j.md has the import command)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for label, (key, space, props) in NODES.items():
        cols = ", ".join(f"n.`{p}` AS `{p}`" for p in props)
        df = store.read(f"MATCH (n:{label}) RETURN n.`{key}` AS `{key}`, {cols}")
        df = _typed(df if not df.empty else pd.DataFrame(columns=[key, *props]), props)
        df.columns = [f"{key}:ID({space})", *[f"{p}:{t}" for p, t in props.items()]]
        path = out / f"{label}.csv"
        df.to_csv(path, index=False)
        written.append(path)
    for name, (cypher, sspace, tspace, props) in RELS.items():
        df = store.read(cypher)
        df = _typed(df if not df.empty else pd.DataFrame(columns=["s", "t", *props]), props)
        df.columns = [f":START_ID({sspace})", f":END_ID({tspace})", *[f"{p}:{t}" for p, t in props.items()]]
        path = out / f"{name}.csv"
        df.to_csv(path, index=False)
        written.append(path)
    return written


def _typed(df: pd.DataFrame, props: dict[str, str]) -> pd.DataFrame:
    """Columns as neo4j-admin reads them: arrays joined by its default delimiter (prompt ids never
    hold it), longs without the '.0' pandas gives an integer column with nulls."""
    df = df.copy()
    for p, kind in props.items():
        if kind.endswith("[]"):
            df[p] = df[p].map(lambda v: ";".join(map(str, v)) if v is not None and not isinstance(v, float) else "")
        elif kind == "long":
            df[p] = pd.to_numeric(df[p]).astype("Int64")
    return df
