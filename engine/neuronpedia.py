"""Neuronpedia graph JSON: export a GraphFile to it and import it back, losslessly.

This is the file circuit-tracer's ``create_graph_files`` writes and neuronpedia.org serves:
``metadata``, ``qParams`` (viewer state, incl. ``supernodes``), ``nodes`` and ``links``. See
README.md ("Formats") for the field-by-field mapping. The quirks handled here:

- a transcoder feature's ``feature`` field holds a Cantor pairing of (layer, index), so the
  index is read from ``node_id`` (``{layer}_{index}_{pos}``);
- error nodes are ``{layer}_-1_{pos}`` in new files and ``0_{layer}_{pos}`` in old ones (which
  collides with layer-0 feature ids); ``feature_type`` tells them apart, and old ids are
  rewritten to the new form (links and supernodes follow);
- embeddings have layer ``"E"`` and id ``E_{token_id}_{pos}``; logits ``{n_layers+1}_{token_id}_{pos}``.

What a Neuronpedia file cannot carry natively (our token ids, model, settings, scores, graph
id, prompt properties) rides in ``metadata["circuit_atlas"]``, an extra key viewers ignore;
fields of the file we have no column for (slug, info, schema_version, pinnedIds, ...) ride
back in ``meta["neuronpedia"]`` so a re-export gives them back.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from circuit_atlas.engine import graph_files as gf
from circuit_atlas.errors import CircuitAtlasError

INDEX_NAME = "graph-metadata.json"
FEATURE_TYPE = "cross layer transcoder"
ERROR_TYPE = "mlp reconstruction error"
_OUR_META = ("graph_id", "token_ids", "model", "n_layers", "settings", "scores", "prompt_props", "created_at", "tokens")


class NeuronpediaFormatError(CircuitAtlasError, ValueError):
    """A Neuronpedia graph JSON file that is unreadable or breaks the format; names file and field."""


def cantor_pair(x: int, y: int) -> int:
    """The pairing circuit-tracer writes into a feature node's ``feature`` field."""
    return (x + y) * (x + y + 1) // 2 + y


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------


def _num(v: Any) -> float | None:
    if v is None:
        return None
    f = float(v)
    return None if math.isnan(f) else f


def to_neuronpedia(graph: gf.GraphFile, *, slug: str | None = None) -> dict[str, Any]:
    """The graph as a Neuronpedia graph JSON document (a dict ready for json.dump)."""
    meta = graph.meta
    extra = dict(meta.get("neuronpedia") or {})
    nodes = graph.nodes_table().to_pandas()
    logits = nodes[nodes["type"] == "logit"]
    top_logit = logits["node_id"].iloc[int(np.nanargmax(logits["prob"].to_numpy()))] if len(logits) and logits["prob"].notna().any() else None
    out_nodes = []
    for row in nodes.itertuples(index=False):
        layer, pos, feat, tok = int(row.layer), int(row.pos), int(row.feature), int(row.token_id)
        label = row.label
        node: dict[str, Any] = {"node_id": row.node_id}
        if row.type == "feature":
            node.update(feature=cantor_pair(layer, feat), layer=str(layer), feature_type=FEATURE_TYPE, jsNodeId=f"{layer}_{feat}-0")
        elif row.type == "error":
            node.update(feature=-1, layer=str(layer), feature_type=ERROR_TYPE, jsNodeId=f"{layer}_-1-{pos}")
        elif row.type == "embedding":
            node.update(feature=pos, layer="E", feature_type="embedding", jsNodeId=f"E_{tok}-{pos}")
        else:
            node.update(feature=tok, layer=str(layer + 1), feature_type="logit", jsNodeId=f"L_{tok}-{pos}")
        prob = _num(row.prob)
        node.update(
            ctx_idx=pos,
            token_prob=prob if (row.type == "logit" and prob is not None) else 0.0,
            is_target_logit=bool(row.node_id == top_logit),
            run_idx=0,
            reverse_ctx_idx=0,
            clerp="" if label is None or pd.isna(label) else str(label),
            influence=_num(row.influence),
            activation=_num(row.activation),
        )
        out_nodes.append(node)
    edges = graph.edges_table()
    links = [
        {"source": s, "target": t, "weight": float(w)}
        for s, t, w in zip(edges.column("source").to_pylist(), edges.column("target").to_pylist(), edges.column("weight").to_numpy())
    ]
    settings = meta.get("settings") or {}
    q = dict(extra.get("qParams") or {})
    q.update(supernodes=[list(s) for s in meta.get("supernodes") or []])
    q.setdefault("pinnedIds", [])
    q.setdefault("linkType", "both")
    q.setdefault("clickedId", "")
    q.setdefault("sg_pos", "")
    metadata: dict[str, Any] = {
        "slug": slug or extra.get("slug") or str(meta["graph_id"]),
        "scan": meta["scan"],
        "transcoder_list": extra.get("transcoder_list", []),
        "prompt_tokens": list(meta["tokens"]),
        "prompt": meta["prompt"],
        "node_threshold": settings.get("node_threshold"),
        "schema_version": extra.get("schema_version", 1),
    }
    for k, v in (extra.get("metadata_extra") or {}).items():
        metadata.setdefault(k, v)
    metadata["circuit_atlas"] = {k: meta[k] for k in _OUR_META if k in meta}
    metadata["circuit_atlas"]["format_version"] = gf.FORMAT_VERSION
    if "supernodes" not in meta:
        metadata["circuit_atlas"]["no_supernodes"] = True
    doc = {"metadata": metadata, "qParams": q, "nodes": out_nodes, "links": links}
    for k, v in (extra.get("top_extra") or {}).items():
        doc.setdefault(k, v)
    return doc


def write_neuronpedia(graph: gf.GraphFile, path: str | os.PathLike, *, slug: str | None = None) -> Path:
    """Write ``{slug}.json`` into a directory (and update its graph-metadata.json index), or to
    ``path`` itself when it ends in .json. Returns the file written."""
    doc = to_neuronpedia(graph, slug=slug)
    p = Path(path)
    if p.suffix == ".json":
        target = p
        p.parent.mkdir(parents=True, exist_ok=True)
    else:
        p.mkdir(parents=True, exist_ok=True)
        target = p / f"{doc['metadata']['slug']}.json"
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(doc, default=gf._json_default))
    os.replace(tmp, target)
    if p.suffix != ".json":
        _update_index(p, {k: v for k, v in doc["metadata"].items() if k != "circuit_atlas"})
    return target


def _update_index(directory: Path, entry: dict[str, Any]) -> None:
    index = directory / INDEX_NAME
    graphs: list[dict[str, Any]] = []
    if index.is_file():
        try:
            loaded = json.loads(index.read_text())
            graphs = list(loaded.get("graphs", []) if isinstance(loaded, dict) else loaded)
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            graphs = []
    graphs = [g for g in graphs if not (isinstance(g, dict) and g.get("slug") == entry["slug"])] + [entry]
    index.write_text(json.dumps({"graphs": graphs}, default=gf._json_default))


# ---------------------------------------------------------------------------------------------
# Import
# ---------------------------------------------------------------------------------------------


def _kind(feature_type: str) -> str:
    ft = (feature_type or "").lower()
    if "error" in ft:
        return "error"
    if "embedding" in ft:
        return "embedding"
    if "logit" in ft:
        return "logit"
    return "feature"


def _ints(node_id: str, n: int, where: str) -> list[int]:
    parts = node_id.split("_")
    try:
        if len(parts) != n:
            raise ValueError
        return [int(x) for x in parts[-(n - 1):]] if parts[0] == "E" else [int(x) for x in parts]
    except ValueError:
        raise NeuronpediaFormatError(f"{where}: node_id {node_id!r} is not of the form expected for its feature_type") from None


def _float(v: Any) -> float:
    return float("nan") if v is None else float(v)


def from_neuronpedia(doc: dict[str, Any], *, source: str = "<json>") -> gf.GraphFile:
    """A GraphFile from a Neuronpedia graph JSON document."""
    if not isinstance(doc, dict):
        raise NeuronpediaFormatError(f"{source}: top level is {type(doc).__name__}, expected an object")
    for key in ("metadata", "nodes", "links"):
        if key not in doc:
            raise NeuronpediaFormatError(f"{source}: lacks '{key}' (not a Neuronpedia graph file)")
    md = doc["metadata"] or {}
    ours = dict(md.get("circuit_atlas") or {})
    rows: list[dict[str, Any]] = []
    rename: dict[str, str] = {}
    warnings: list[str] = []
    logit_layers: set[int] = set()
    for i, n in enumerate(doc["nodes"]):
        where = f"{source}: nodes[{i}]"
        try:
            nid = str(n["node_id"])
            kind = "embedding" if nid.startswith("E_") else _kind(n.get("feature_type", ""))
        except (KeyError, TypeError):
            raise NeuronpediaFormatError(f"{where}: lacks node_id") from None
        label = n.get("clerp")
        row = {
            "node_id": nid, "type": kind, "layer": -1, "pos": -1, "feature": -1, "token_id": -1,
            "activation": _float(n.get("activation")), "influence": _float(n.get("influence")),
            "prob": float("nan"), "label": None if label in (None, "") else str(label),
        }
        if kind == "embedding":
            tok, pos = _ints(nid, 3, where)
            row.update(token_id=tok, pos=pos)
        elif kind == "logit":
            lay, tok, pos = _ints(nid, 3, where)
            logit_layers.add(lay)
            row.update(layer=lay - 1, token_id=tok, pos=pos, prob=_float(n.get("token_prob")))
        elif kind == "error":
            a, b, pos = _ints(nid, 3, where)
            layer = a if b == -1 else b  # new {layer}_-1_{pos}; old 0_{layer}_{pos}
            new = gf.error_node_id(layer, pos)
            if new != nid:
                rename.setdefault(nid, new)
                row["node_id"] = new
            row.update(layer=layer, pos=pos)
        else:
            layer, feat, pos = _ints(nid, 3, where)
            row.update(layer=layer, feature=feat, pos=pos)
        if "ctx_idx" in n and n["ctx_idx"] is not None and int(n["ctx_idx"]) != row["pos"]:
            warnings.append(f"{nid}: ctx_idx {n['ctx_idx']} differs from the position in its id; kept the id's")
        rows.append(row)
    nodes = pd.DataFrame(rows, columns=gf.NODE_SCHEMA.names)
    dup = nodes["node_id"][nodes["node_id"].duplicated()]
    if len(dup):
        raise NeuronpediaFormatError(f"{source}: node ids repeat, e.g. {dup.iloc[0]!r}")

    def fix(i: str) -> str:
        return rename.get(i, i)

    try:
        src = [fix(str(l["source"])) for l in doc["links"]]
        tgt = [fix(str(l["target"])) for l in doc["links"]]
        w = np.asarray([float(l["weight"]) for l in doc["links"]], dtype=np.float32)
    except (KeyError, TypeError, ValueError) as exc:
        raise NeuronpediaFormatError(f"{source}: a link lacks source/target/weight ({exc})") from None
    edges = pd.DataFrame({"source": pd.Series(src, dtype=object), "target": pd.Series(tgt, dtype=object), "weight": w})
    # old files: an id "0_{l}_{p}" in links could be a renamed error or a layer-0 feature of that id
    clash = [old for old in rename if old in set(nodes["node_id"])]
    if clash:
        warnings.append(f"old-style error ids collide with feature ids {clash[:3]}; links to them were taken as errors")

    if "n_layers" in ours:
        n_layers = int(ours["n_layers"])
    elif logit_layers:
        n_layers = max(logit_layers) - 1
    else:
        layers = nodes.loc[nodes["type"].isin(["feature", "error"]), "layer"]
        n_layers = int(layers.max()) + 1 if len(layers) else 0
    tokens = [str(t) for t in md.get("prompt_tokens") or []]
    if "token_ids" in ours:
        token_ids = [int(t) for t in ours["token_ids"]]
    else:
        emb = nodes[nodes["type"] == "embedding"]
        n_pos = max(len(tokens), int(emb["pos"].max()) + 1 if len(emb) else 0)
        token_ids = [-1] * n_pos
        for p, t in zip(emb["pos"], emb["token_id"]):
            token_ids[int(p)] = int(t)
    scan = str(md.get("scan") or ours.get("scan") or "")
    model = str(ours.get("model") or md.get("model") or scan)
    settings = ours.get("settings")
    if settings is None:
        settings = {"node_threshold": md.get("node_threshold"), "edge_threshold": None, "pruned": True}
    if "graph_id" in ours:
        gid = str(ours["graph_id"])
    elif token_ids and -1 not in token_ids:
        gid = gf.graph_id(model, scan, token_ids, settings)
    else:  # token ids unknown: identify by the token strings and prompt instead
        payload = json.dumps({"model": model, "scan": scan, "tokens": tokens, "prompt": md.get("prompt")}, sort_keys=True)
        gid = hashlib.sha256(payload.encode()).hexdigest()[:20]
    q = dict(doc.get("qParams") or {})
    supernodes = [[str(s[0]), *[fix(str(x)) for x in s[1:]]] for s in q.pop("supernodes", None) or [] if s]
    std_md = {"slug", "scan", "transcoder_list", "prompt_tokens", "prompt", "node_threshold", "schema_version", "circuit_atlas"}
    np_extra: dict[str, Any] = {
        "slug": md.get("slug"),
        "schema_version": md.get("schema_version", 1),
        "transcoder_list": md.get("transcoder_list", []),
        "qParams": q,
        "metadata_extra": {k: v for k, v in md.items() if k not in std_md},
        "top_extra": {k: v for k, v in doc.items() if k not in ("metadata", "qParams", "nodes", "links")},
    }
    meta: dict[str, Any] = {
        "graph_id": gid,
        "prompt": str(md.get("prompt") or ""),
        "tokens": tokens if tokens else [str(t) for t in token_ids],
        "token_ids": token_ids,
        "model": model,
        "scan": scan,
        "n_layers": n_layers,
        "settings": settings,
        "scores": ours.get("scores") or {"replacement_score": None, "completeness_score": None},
        "prompt_props": ours.get("prompt_props") or {},
        "neuronpedia": np_extra,
    }
    if supernodes or not ours.get("no_supernodes"):
        meta["supernodes"] = supernodes
    if "created_at" in ours:
        meta["created_at"] = ours["created_at"]
    if warnings:
        meta["import_warnings"] = warnings
    graph = gf.GraphFile(meta=meta, nodes=nodes, edges=edges)
    try:
        graph.validate()
        graph.nodes = graph.nodes_table().to_pandas()  # the schema's dtypes (float32 values, int ids)
        graph.edges = graph.edges_table().to_pandas()
    except gf.GraphFileError as exc:
        raise NeuronpediaFormatError(f"{source}: {exc}") from exc
    return graph


def read_neuronpedia(path: str | os.PathLike) -> gf.GraphFile:
    """One Neuronpedia graph JSON file."""
    p = Path(path)
    if not p.is_file():
        raise NeuronpediaFormatError(f"{p}: no such file")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NeuronpediaFormatError(f"{p}: not valid JSON ({exc})") from exc
    return from_neuronpedia(doc, source=str(p))


def neuronpedia_files(directory: str | os.PathLike) -> list[Path]:
    """The graph files of a directory: those graph-metadata.json lists (by slug) when it exists
    and names files that are there, else every ``*.json`` but the index."""
    d = Path(directory)
    index = d / INDEX_NAME
    if index.is_file():
        try:
            loaded = json.loads(index.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise NeuronpediaFormatError(f"{index}: not valid JSON ({exc})") from exc
        graphs = loaded.get("graphs", []) if isinstance(loaded, dict) else loaded
        files = []
        for g in graphs:
            slug = g.get("slug") if isinstance(g, dict) else None
            if slug is None:
                raise NeuronpediaFormatError(f"{index}: an entry lacks 'slug'")
            f = d / f"{slug}.json"
            if not f.is_file():
                raise NeuronpediaFormatError(f"{index}: lists {slug!r} but {f.name} is missing")
            files.append(f)
        return files
    return sorted(f for f in d.glob("*.json") if f.name != INDEX_NAME and not f.name.startswith("."))


def iter_neuronpedia_dir(directory: str | os.PathLike) -> Iterator[gf.GraphFile]:
    """Every graph in a directory of Neuronpedia graph files, one at a time."""
    for f in neuronpedia_files(directory):
        yield read_neuronpedia(f)


def is_neuronpedia_file(path: str | os.PathLike) -> bool:
    """Cheap sniff: a .json file whose first KB mentions the format's top-level keys."""
    p = Path(path)
    if p.suffix != ".json" or not p.is_file() or p.name == INDEX_NAME:
        return False
    head = p.open("rb").read(4096)
    return b'"metadata"' in head or b'"nodes"' in head
