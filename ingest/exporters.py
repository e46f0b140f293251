"""A stored prompt back to files: our graph directory or Neuronpedia graph JSON.

``read_stored_graph`` rebuilds a GraphFile from the store (read-only Cypher with parameters,
the same text on every backend): the Prompt node gives the metadata, the per-prompt nodes the
node table, ``EDGE`` the edges, ``Feature.label`` the labels and the prompt's supernodes come
along in ``meta.supernodes`` (``[label, node_id, ...]``, what Neuronpedia shows) and, in full,
in ``meta.supernode_records`` (what ``circuit-atlas import`` restores exactly). Importing the
export gives back an identical stored graph. What the store does not keep is not exported:
the influence of embedding and logit nodes and labels of non-feature nodes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from circuit_atlas.engine.formats import graph_files as gf
from circuit_atlas.errors import CircuitAtlasError

FORMATS = ("graph", "neuronpedia")


class ExportError(CircuitAtlasError, ValueError):
    """Unknown prompt id, unknown format, or an output path that cannot be used."""


_PROMPT = (
    "MATCH (p:Prompt {id: $id}) RETURN p.id AS id, p.text AS text, p.tokens AS tokens, p.token_ids AS token_ids, "
    "p.model AS model, p.scan AS scan, p.settings AS settings, p.replacement_score AS replacement_score, "
    "p.completeness_score AS completeness_score, p.corpus AS corpus, p.tags AS tags, p.prompt_group AS grp, "
    "p.expected AS expected, p.correct AS correct, p.top_token AS top_token, p.external_id AS external_id, "
    "p.created_at AS created_at, p.node_threshold AS node_threshold, p.edge_threshold AS edge_threshold"
)
_ACTIVE = (
    "MATCH (n:Active) WHERE n.prompt_id = $id RETURN n.node_id AS node_id, n.layer AS layer, n.pos AS pos, "
    "n.`index` AS feature, n.activation AS activation, n.influence AS influence, n.feature_key AS feature_key"
)
# Only a person's or an imported label becomes a clerp: an automatic one exported would come back
# as an imported label, which a recompute of the evidence could no longer replace.
_LABELS = ("MATCH (f:Feature) WHERE f.key IN $keys AND (f.label_source IS NULL OR f.label_source <> 'auto') "
           "RETURN f.key AS key, f.label AS label")
_EMBEDDING = (
    "MATCH (n:Embedding) WHERE n.prompt_id = $id RETURN n.node_id AS node_id, n.pos AS pos, n.token_id AS token_id"
)
_ERROR = (
    "MATCH (n:Error) WHERE n.prompt_id = $id RETURN n.node_id AS node_id, n.layer AS layer, n.pos AS pos, "
    "n.influence AS influence"
)
_LOGIT = (
    "MATCH (n:Logit) WHERE n.prompt_id = $id RETURN n.node_id AS node_id, n.pos AS pos, n.token_id AS token_id, "
    "n.token AS token, n.prob AS prob"
)
_EDGES = (
    "MATCH (p:Prompt {id: $id})-[:HAS]->(a)-[e:EDGE]->(b) "
    "RETURN a.node_id AS source, b.node_id AS target, e.weight AS weight"
)
_SUPERNODES = (
    "MATCH (s:Supernode) WHERE s.prompt_id = $id RETURN s.key AS key, s.label AS label, s.method AS method, "
    "s.score AS score, s.node_ids AS node_ids, s.scan AS scan"
)
_MEMBERS = "MATCH (s:Supernode)-[:CONTAINS]->(f:Feature) WHERE s.prompt_id = $id RETURN s.key AS key, f.key AS member"


def _none(v: Any) -> Any:
    """None for database nulls (None/NaN), plain Python scalars otherwise."""
    if v is None:
        return None
    if isinstance(v, (float, np.floating)) and np.isnan(v):
        return None
    return v.item() if hasattr(v, "item") else v


def _list(v: Any) -> list:
    v = _none(v) if not isinstance(v, (list, tuple, np.ndarray)) else v
    return [] if v is None else list(v)


def _floats(s: pd.Series) -> np.ndarray:
    return pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float32) if len(s) else np.zeros(0, np.float32)


def read_stored_graph(store: Any, prompt_id: str) -> gf.GraphFile:
    """The stored prompt ``prompt_id`` as a GraphFile (see the module docstring)."""
    p = store.read(_PROMPT, {"id": prompt_id})
    if p.empty:
        raise ExportError(f"no prompt {prompt_id!r} in {getattr(store, 'url', 'the store')} "
                          "(ids are graph ids; list them with: circuit-atlas query corpus_overview)")
    r = {k: _none(v) if not isinstance(v, (list, np.ndarray)) else v for k, v in p.iloc[0].to_dict().items()}
    active = store.read(_ACTIVE, {"id": prompt_id})
    emb = store.read(_EMBEDDING, {"id": prompt_id})
    err = store.read(_ERROR, {"id": prompt_id})
    logit = store.read(_LOGIT, {"id": prompt_id})
    edges = store.read(_EDGES, {"id": prompt_id})

    labels: dict[str, Any] = {}
    if len(active):
        lab = store.read(_LABELS, {"keys": sorted(set(active["feature_key"]))})
        labels = {k: _none(v) for k, v in zip(lab["key"], lab["label"])}

    n_layers = None
    if len(logit):
        n_layers = int(str(logit["node_id"].iloc[0]).split("_")[0]) - 1
    else:
        layers = [int(x) for x in list(active.get("layer", [])) + list(err.get("layer", []))]
        n_layers = max(layers) + 1 if layers else 0

    def frame(df: pd.DataFrame, typ: str, **cols: Any) -> pd.DataFrame:
        n = len(df)
        out = pd.DataFrame({
            "node_id": df["node_id"].astype(str).to_numpy() if n else np.zeros(0, dtype=object),
            "type": [typ] * n,
            "layer": np.asarray(cols.get("layer", np.full(n, -1)), dtype=np.int32),
            "pos": df["pos"].to_numpy(dtype=np.int32) if n else np.zeros(0, np.int32),
            "feature": np.asarray(cols.get("feature", np.full(n, -1)), dtype=np.int64),
            "token_id": np.asarray(cols.get("token_id", np.full(n, -1)), dtype=np.int64),
            "activation": np.asarray(cols.get("activation", np.full(n, np.nan)), dtype=np.float32),
            "influence": np.asarray(cols.get("influence", np.full(n, np.nan)), dtype=np.float32),
            "prob": np.asarray(cols.get("prob", np.full(n, np.nan)), dtype=np.float32),
            "label": pd.Series(cols.get("label", [None] * n), dtype=object),
        })
        return out

    parts = [
        frame(active, "feature", layer=active.get("layer", []), feature=active.get("feature", []),
              activation=_floats(active.get("activation", pd.Series(dtype=float))),
              influence=_floats(active.get("influence", pd.Series(dtype=float))),
              label=[labels.get(k) for k in active.get("feature_key", [])]),
        frame(err, "error", layer=err.get("layer", []), influence=_floats(err.get("influence", pd.Series(dtype=float)))),
        frame(emb, "embedding", token_id=emb.get("token_id", [])),
        frame(logit, "logit", layer=np.full(len(logit), n_layers), token_id=logit.get("token_id", []),
              prob=_floats(logit.get("prob", pd.Series(dtype=float)))),
    ]
    nodes = pd.concat(parts, ignore_index=True)
    order = {"feature": 0, "error": 1, "embedding": 2, "logit": 3}
    nodes = (nodes.assign(_k=nodes["type"].map(order))
             .sort_values(["_k", "layer", "pos", "feature", "token_id"], kind="stable")
             .drop(columns="_k").reset_index(drop=True))
    edges = pd.DataFrame({
        "source": edges["source"].astype(str).to_numpy() if len(edges) else np.zeros(0, dtype=object),
        "target": edges["target"].astype(str).to_numpy() if len(edges) else np.zeros(0, dtype=object),
        "weight": _floats(edges["weight"]) if len(edges) else np.zeros(0, np.float32),
    }).sort_values(["target", "source"], kind="stable").reset_index(drop=True)

    try:
        settings = json.loads(r["settings"]) if r.get("settings") else {}
    except json.JSONDecodeError:
        settings = {}
    settings.setdefault("node_threshold", r.get("node_threshold"))
    settings.setdefault("edge_threshold", r.get("edge_threshold"))
    props: dict[str, Any] = {"tags": [str(t) for t in _list(r.get("tags"))]}
    for key, col in (("corpus", "corpus"), ("group", "grp"), ("expected", "expected"), ("correct", "correct"),
                     ("top_token", "top_token"), ("external_id", "external_id")):
        if r.get(col) is not None:
            props[key] = bool(r[col]) if key == "correct" else r[col]
    meta: dict[str, Any] = {
        "graph_id": str(r["id"]),
        "prompt": r.get("text") or "",
        "tokens": [str(t) for t in _list(r.get("tokens"))],
        "token_ids": [int(t) for t in _list(r.get("token_ids"))],
        "model": r.get("model"),
        "scan": r.get("scan"),
        "n_layers": n_layers,
        "settings": settings,
        "scores": {"replacement_score": r.get("replacement_score"), "completeness_score": r.get("completeness_score")},
        "prompt_props": props,
        "logit_tokens": {str(int(t)): str(x) for t, x in zip(logit.get("token_id", []), logit.get("token", []))
                         if _none(x) is not None},
    }
    if r.get("created_at") is not None:
        meta["created_at"] = r["created_at"]
    sn = store.read(_SUPERNODES, {"id": prompt_id})
    if len(sn):
        mem = store.read(_MEMBERS, {"id": prompt_id})
        members: dict[str, list[str]] = {}
        for k, m in zip(mem.get("key", []), mem.get("member", [])):
            members.setdefault(str(k), []).append(str(m))
        records = []
        for row in sn.sort_values("key").to_dict("records"):
            records.append({"key": str(row["key"]), "label": _none(row["label"]), "method": _none(row["method"]),
                            "score": _none(row["score"]), "scan": _none(row["scan"]), "prompt_id": prompt_id,
                            "node_ids": [str(x) for x in _list(row["node_ids"])],
                            "members": sorted(members.get(str(row["key"]), []))})
        meta["supernodes"] = [[s["label"] or "", *s["node_ids"]] for s in records]
        meta["supernode_records"] = records
    graph = gf.GraphFile(meta=meta, nodes=nodes, edges=edges)
    graph.validate()
    return graph


def export_prompt(store: Any, prompt_id: str, fmt: str, out: str | os.PathLike) -> Path:
    """Write one stored prompt as ``fmt`` (graph: a graph directory at ``out``; neuronpedia:
    ``out`` if it ends in .json, else ``out/{prompt_id}.json`` plus the graph-metadata.json index)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    graph = read_stored_graph(store, prompt_id)
    out = Path(out)
    if fmt == "graph":
        if out.exists() and not out.is_dir():
            raise ExportError(f"{out}: exists and is not a directory")
        if out.is_dir() and any(out.iterdir()) and not gf.is_graph_dir(out):
            out = out / prompt_id  # an existing folder of graphs: put this one inside
        return graph.save(out)
    from circuit_atlas.engine.formats.neuronpedia import write_neuronpedia

    _logit_clerps(graph)
    return write_neuronpedia(graph, out)


def _logit_clerps(graph: gf.GraphFile) -> None:
    """Label logit nodes as circuit-tracer does (``Output " Paris" (p=0.771)``): what viewers show,
    and how the token text travels through Neuronpedia JSON (the import reads it back)."""
    n = graph.nodes
    texts = graph.meta.get("logit_tokens") or {}
    is_logit = (n["type"] == "logit") & n["label"].isna()
    labels = [None if str(int(t)) not in texts else f'Output "{texts[str(int(t))]}" (p={float(p):.3f})'
              for t, p in zip(n.loc[is_logit, "token_id"], n.loc[is_logit, "prob"].fillna(0.0))]
    n.loc[is_logit, "label"] = pd.Series(labels, index=n.index[is_logit], dtype=object)
