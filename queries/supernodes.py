"""Automatic supernodes: groups of features that play one role across the corpus.

The paper's authors grouped features by hand, one graph at a time. With every graph in the
store we can propose groups from three signals measured over the whole corpus:

- *co-occurrence*: Jaccard similarity of the sets of prompts in which two features are active;
- *shared targets*: cosine similarity of the features' signed outgoing-edge profiles (to other
  features, via the derived LINKS layer, and to output tokens), so two features only group
  when they push the same targets in the same direction;
- *logit effects*: cosine similarity of their direct logit effects (decoder . unembedding),
  when the feature-context step has stored them.

The combined similarity graph is split into communities with Louvain (networkx). Groups are
written as ``(:Supernode {method: 'auto'})-[:CONTAINS]->(:Feature)``; users may rename or edit
them in the app. Re-running replaces the previous automatic groups of the same scan.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import networkx as nx
import numpy as np
import pandas as pd

from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.store.base import Store


class SupernodeError(CircuitAtlasError, ValueError):
    """Bad parameters, or a store with nothing to group."""


@dataclass(frozen=True)
class SupernodeSettings:
    """Knobs of the proposal; the defaults suit corpora of tens to thousands of prompts."""

    min_prompts: int = 2  # a feature must be active in at least this many prompts
    resolution: float = 1.0  # Louvain resolution: higher -> smaller groups
    min_similarity: float = 0.25  # similarity-graph edges below this are dropped
    min_size: int = 2  # smaller communities are not supernodes
    target_weight: float = 1.0  # weight of the shared-targets signal
    logit_weight: float = 0.5  # weight of the stored logit-effects signal (when present)
    seed: int = 0

    def check(self) -> None:
        if self.min_prompts < 1:
            raise SupernodeError("min_prompts must be at least 1")
        if self.resolution <= 0:
            raise SupernodeError("resolution must be positive")
        if not 0 <= self.min_similarity <= 1:
            raise SupernodeError("min_similarity must lie in [0, 1]")
        if self.min_size < 2:
            raise SupernodeError("min_size must be at least 2")


_OCCURRENCES = """
MATCH (a:Active)-[:OF]->(f:Feature)
WHERE f.scan = $scan
RETURN f.key AS key, f.layer AS layer, f.label AS label, a.prompt_id AS prompt_id
"""

_LINKS = """
MATCH (a:Feature)-[l:LINKS]->(b:Feature)
WHERE a.scan = $scan
RETURN a.key AS source, b.key AS target, l.prompts AS prompts, l.mean_weight AS mean_weight
"""

_LOGIT_EDGES = """
MATCH (s:Active)-[e:EDGE]->(t:Logit)-[:OF]->(k:Token)
WHERE s.feature_key STARTS WITH $prefix
RETURN s.feature_key AS source, t.token_id AS token, k.text AS text, count(*) AS prompts, sum(e.weight) AS total_weight
"""

_LOGIT_EFFECTS = """
MATCH (f:Feature)
WHERE f.scan = $scan AND f.logit_effects IS NOT NULL
RETURN f.key AS key, f.logit_effects AS logit_effects
"""


def feature_similarity(store: Store, scan: str, settings: SupernodeSettings = SupernodeSettings()) -> tuple[nx.Graph, pd.DataFrame]:
    """The weighted feature-similarity graph over features active in >= min_prompts prompts,
    and a table of those features (key, layer, label, n_prompts)."""
    settings.check()
    occ = store.read(_OCCURRENCES, {"scan": scan})
    if occ.empty:
        raise SupernodeError(f"no active features of scan '{scan}' in the store {store.url}; ingest graphs first")
    occ = occ.drop_duplicates(["key", "prompt_id"])
    counts = occ.groupby("key").prompt_id.nunique()
    keep = counts[counts >= settings.min_prompts].index
    features = (
        occ[occ.key.isin(keep)]
        .groupby("key")
        .agg(layer=("layer", "first"), label=("label", "first"), n_prompts=("prompt_id", "nunique"))
        .reset_index()
        .sort_values("key")
        .reset_index(drop=True)
    )
    graph = nx.Graph()
    graph.add_nodes_from(features.key)
    if len(features) < 2:
        return graph, features

    index = {k: i for i, k in enumerate(features.key)}
    cooc = _jaccard(occ[occ.key.isin(keep)], index)
    targets = _cosine(_target_profiles(store, scan, index))
    logit = _logit_effect_similarity(store, scan, index)

    w_t, w_l = settings.target_weight, settings.logit_weight if logit is not None else 0.0
    role = (w_t * np.clip(targets, 0, None) + (w_l * np.clip(logit, 0, None) if logit is not None else 0.0)) / (w_t + w_l)
    sim = cooc * role
    np.fill_diagonal(sim, 0.0)
    rows, cols = np.nonzero(np.triu(sim >= settings.min_similarity))
    keys = features.key.to_numpy()
    graph.add_weighted_edges_from((keys[i], keys[j], float(sim[i, j])) for i, j in zip(rows, cols))
    return graph, features


def propose_supernodes(store: Store, scan: str, settings: SupernodeSettings = SupernodeSettings()) -> list[dict[str, Any]]:
    """Communities of the similarity graph, as supernode records ready for store.write_supernodes."""
    graph, features = feature_similarity(store, scan, settings)
    if graph.number_of_edges() == 0:
        return []
    communities = nx.community.louvain_communities(graph, weight="weight", resolution=settings.resolution, seed=settings.seed)
    labels = dict(zip(features.key, features.label))
    logit_names = _top_logit_tokens(store, scan)
    out = []
    for members in communities:
        if len(members) < settings.min_size:
            continue
        members = sorted(members)
        sub = graph.subgraph(members)
        possible = len(members) * (len(members) - 1) / 2
        score = sum(d["weight"] for _, _, d in sub.edges(data=True)) / possible
        digest = hashlib.sha1("|".join(members).encode()).hexdigest()[:12]
        out.append(
            {
                "key": f"{scan}:auto:{digest}",
                "scan": scan,
                "label": _auto_label(members, labels, logit_names),
                "method": "auto",
                "score": round(float(score), 6),
                "members": members,
                "prompt_id": None,
                "node_ids": None,
            }
        )
    out.sort(key=lambda s: (-s["score"], s["key"]))
    return out


def write_auto_supernodes(store: Store, scan: str, settings: SupernodeSettings = SupernodeSettings()) -> list[dict[str, Any]]:
    """Replace this scan's automatic supernodes with a fresh proposal; user-made ones stay."""
    proposal = propose_supernodes(store, scan, settings)
    store.write_supernodes(proposal, replace=("auto", scan))  # old set out, new set in: one transaction
    return proposal


def supernode_graph(nodes: pd.DataFrame, edges: pd.DataFrame, supernodes: list[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Collapse a prompt's graph onto supernodes: member feature nodes become one node per
    supernode, edges between groups are summed, edges inside a group are dropped.

    ``nodes`` needs ``node_id`` and ``feature_key`` (None for non-features); ``edges`` needs
    ``source``, ``target``, ``weight``. Prompt-specific groupings (with ``node_ids``) win over
    corpus-wide ones (``members`` by feature key).
    """
    group_of: dict[str, tuple[str, str]] = {}
    by_feature: dict[str, tuple[str, str]] = {}
    for sn in supernodes:
        if sn.get("node_ids"):
            for nid in sn["node_ids"]:
                group_of.setdefault(nid, (sn["key"], sn["label"]))
        for key in sn.get("members") or []:
            by_feature.setdefault(key, (sn["key"], sn["label"]))
    mapping: dict[str, str] = {}
    collapsed_label: dict[str, str] = {}
    for nid, fkey in zip(nodes.node_id, nodes.get("feature_key", pd.Series([None] * len(nodes)))):
        hit = group_of.get(nid) or (by_feature.get(fkey) if isinstance(fkey, str) else None)
        if hit:
            mapping[nid] = hit[0]
            collapsed_label[hit[0]] = hit[1]
    new_nodes = nodes[~nodes.node_id.isin(mapping)].copy()
    new_nodes["members"] = 1
    if mapping:
        grouped = pd.DataFrame({"node_id": list(mapping), "group": list(mapping.values())})
        merged = grouped.merge(nodes, on="node_id")
        agg = merged.groupby("group").agg(
            members=("node_id", "count"),
            layer=("layer", "mean") if "layer" in merged else ("node_id", "count"),
            pos=("pos", "max") if "pos" in merged else ("node_id", "count"),
            influence=("influence", "sum") if "influence" in merged else ("node_id", "count"),
        )
        agg = agg.reset_index().rename(columns={"group": "node_id"})
        agg["type"] = "supernode"
        agg["label"] = agg.node_id.map(collapsed_label)
        new_nodes = pd.concat([new_nodes, agg], ignore_index=True)
    e = edges.copy()
    e["source"] = e.source.map(lambda s: mapping.get(s, s))
    e["target"] = e.target.map(lambda t: mapping.get(t, t))
    e = e[e.source != e.target]
    e = e.groupby(["source", "target"], as_index=False).weight.sum()
    return new_nodes.reset_index(drop=True), e.reset_index(drop=True)


def _jaccard(occ: pd.DataFrame, index: dict[str, int]) -> np.ndarray:
    prompts = {p: i for i, p in enumerate(sorted(occ.prompt_id.unique()))}
    m = np.zeros((len(index), len(prompts)), dtype=np.float32)
    m[occ.key.map(index).to_numpy(), occ.prompt_id.map(prompts).to_numpy()] = 1.0
    inter = m @ m.T
    sizes = m.sum(1)
    union = sizes[:, None] + sizes[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _target_profiles(store: Store, scan: str, index: dict[str, int]) -> np.ndarray:
    """Rows: features; columns: downstream targets (features and output tokens); values: the
    typical signed edge weight times the fraction of the feature's prompts with that edge."""
    links = store.read(_LINKS, {"scan": scan})
    logits = store.read(_LOGIT_EDGES, {"prefix": f"{scan}:"})
    parts = []
    if not links.empty:
        parts.append(pd.DataFrame({"source": links.source, "target": "f:" + links.target, "value": links.mean_weight * links.prompts}))
    if not logits.empty:
        parts.append(pd.DataFrame({"source": logits.source, "target": "t:" + logits.token.astype(str), "value": logits.total_weight}))
    if not parts:
        return np.zeros((len(index), 1), dtype=np.float32)
    prof = pd.concat(parts)
    prof = prof[prof.source.isin(index)]
    cols = {t: i for i, t in enumerate(sorted(prof.target.unique()))}
    m = np.zeros((len(index), max(len(cols), 1)), dtype=np.float32)
    np.add.at(m, (prof.source.map(index).to_numpy(), prof.target.map(cols).to_numpy()), prof.value.to_numpy(dtype=np.float32))
    return m


def _logit_effect_similarity(store: Store, scan: str, index: dict[str, int]) -> np.ndarray | None:
    try:
        df = store.read(_LOGIT_EFFECTS, {"scan": scan})
    except CircuitAtlasError:
        return None
    df = df[df.key.isin(index)]
    if df.empty:
        return None
    vocab: dict[str, int] = {}
    entries = []
    for key, raw in zip(df.key, df.logit_effects):
        try:
            eff = json.loads(raw) if isinstance(raw, str) else raw
        except json.JSONDecodeError:
            continue
        for sign, name in ((1.0, "promoted"), (-1.0, "suppressed")):
            for token, value in (eff or {}).get(name, []):
                entries.append((index[key], vocab.setdefault(str(token), len(vocab)), sign * abs(float(value))))
    if not entries:
        return None
    m = np.zeros((len(index), len(vocab)), dtype=np.float32)
    for i, j, v in entries:
        m[i, j] = v
    return _cosine(m)


def _cosine(m: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(m, axis=1)
    unit = np.divide(m, norms[:, None], out=np.zeros_like(m), where=norms[:, None] > 0)
    return unit @ unit.T


def _top_logit_tokens(store: Store, scan: str) -> dict[str, list[str]]:
    df = store.read(_LOGIT_EDGES, {"prefix": f"{scan}:"})
    out: dict[str, list[str]] = {}
    for source, grp in df[df.total_weight > 0].sort_values("total_weight", ascending=False).groupby("source", sort=False):
        names = grp.text.where(grp.text.notna(), grp.token.astype(str))
        out[source] = list(names.astype(str).head(3))
    return out


def _auto_label(members: list[str], labels: dict[str, Any], logit_names: dict[str, list[str]]) -> str:
    """A readable name: the members' own labels when they agree, else the output tokens they
    push, else their layer span."""
    named = [labels[m] for m in members if isinstance(labels.get(m), str) and labels[m]]
    if named and len(named) * 2 >= len(members):
        return max(set(named), key=named.count)
    tally: dict[str, float] = {}
    for m in members:
        for rank, tok in enumerate(logit_names.get(m, [])):
            tally[tok] = tally.get(tok, 0.0) + 1.0 / (rank + 1)
    if tally:
        best = sorted(tally, key=lambda t: -tally[t])[:2]
        return "say " + " / ".join(repr(t) for t in best)
    layers = sorted(int(m.rsplit(":", 2)[1]) for m in members)
    return f"{len(members)} features, layers {layers[0]}-{layers[-1]}" if not math.isnan(layers[0]) else f"{len(members)} features"
