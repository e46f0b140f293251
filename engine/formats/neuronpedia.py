"""Neuronpedia graph JSON: export a GraphFile to it and import it back, losslessly.

This is the file circuit-tracer's ``create_graph_files`` writes and neuronpedia.org serves:
``metadata``, ``qParams`` (viewer state, incl. ``supernodes``), ``nodes`` and ``links``. See
docs/reference/formats.md for the field-by-field mapping. The reader takes every form found in the
wild (plain or gzip-compressed):

- a transcoder feature's ``feature`` field holds a Cantor pairing of (layer, index) in
  circuit-tracer's files and a global id in Anthropic's, so the index is read from ``node_id``
  (``{layer}_{index}_{pos}``);
- error nodes are ``{layer}_-1_{pos}`` (new), ``0_{layer}_{pos}`` (circuit-tracer) or
  ``0_{N}_{pos}`` with the layer only in the ``layer`` field (Anthropic); all become
  ``{layer}_-1_{pos}`` (links and supernodes follow). circuit-tracer's form can be the id of a
  layer-0 feature too; such links are assigned from the graph's structure (``_resolve_clashes``);
- the layer count comes from our metadata, else the logit layer when the nodes fit under it,
  else the nodes (Anthropic's logits sit right above the highest feature);
- embeddings have layer ``"E"`` and id ``E_{token_id}_{pos}``; logits ``{n_layers+1}_{token_id}_{pos}``;
- non-finite numbers are refused; whatever was decided is in ``meta["import_warnings"]``.

What a Neuronpedia file cannot carry natively (our token ids, model, settings, scores, graph
id, prompt properties) rides in ``metadata["circuit_atlas"]``, an extra key viewers ignore;
fields of the file we have no column for (slug, info, schema_version, pinnedIds, ...) ride
back in ``meta["neuronpedia"]`` so a re-export gives them back.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from circuit_atlas.engine.formats import graph_files as gf
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
    """A node value for JSON: NaN (the tables' "no value") and inf become null."""
    if v is None:
        return None
    f = float(v)
    return f if math.isfinite(f) else None


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
    bad = int((~np.isfinite(edges.column("weight").to_numpy(zero_copy_only=False))).sum())
    if bad:
        raise NeuronpediaFormatError(f"graph {meta.get('graph_id')}: {bad} edges have non-finite weights (NaN/inf); "
                                     "Neuronpedia JSON cannot hold them, nothing written")
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
    try:
        text = json.dumps(doc, default=gf._json_default, allow_nan=False)
    except ValueError as exc:  # a NaN/inf left in metadata: never write invalid JSON
        raise NeuronpediaFormatError(f"{target}: the graph holds a non-finite number ({exc}); nothing written") from exc
    tmp.write_text(text)
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


def _ints(node_id: str, where: str) -> tuple[int, int, int]:
    """The three numbers of ``{a}_{b}_{pos}`` (``E_{token}_{pos}`` gives ``(-1, token, pos)``)."""
    parts = node_id.split("_")
    try:
        if len(parts) != 3:
            raise ValueError
        if parts[0] == "E":
            return -1, int(parts[1]), int(parts[2])
        return int(parts[0]), int(parts[1]), int(parts[2])
    except ValueError:
        raise NeuronpediaFormatError(f"{where}: node_id {node_id!r} is not of the form expected for its feature_type") from None


def _float(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _layer_field(n: dict[str, Any]) -> int | None:
    try:
        return int(n.get("layer"))
    except (TypeError, ValueError):
        return None


@dataclass
class _Nodes:
    """The parsed node list: rows for the node table, the raw id of each row and what the ids say."""

    rows: list[dict[str, Any]]
    raw_ids: list[str]
    error_forms: dict[str, int]  # "new" / "old" / "anthropic" -> count
    warnings: list[str]


def _parse_nodes(items: list[Any], source: str) -> _Nodes:
    """One row per node, ids as in the file (errors are renamed later, once clashes are known).

    Error ids come in three forms: ``{layer}_-1_{pos}`` (new), ``0_{layer}_{pos}`` with the layer
    also in the ``layer`` field (circuit-tracer's), and ``0_{N}_{pos}`` whose ``layer`` field
    differs from N (Anthropic's published graphs: N is a global id, the field is the layer)."""
    rows: list[dict[str, Any]] = []
    raw_ids: list[str] = []
    forms = {"new": 0, "old": 0, "anthropic": 0}
    warnings: list[str] = []
    nonfinite: list[str] = []
    for i, n in enumerate(items):
        where = f"{source}: nodes[{i}]"
        try:
            nid = str(n["node_id"])
            kind = "embedding" if nid.startswith("E_") else _kind(n.get("feature_type", ""))
        except (KeyError, TypeError, AttributeError):
            raise NeuronpediaFormatError(f"{where}: lacks node_id") from None
        label = n.get("clerp")
        try:
            act, infl = _float(n.get("activation")), _float(n.get("influence"))
        except (TypeError, ValueError):
            raise NeuronpediaFormatError(f"{where}: activation/influence is not a number") from None
        for name, raw, v in (("activation", n.get("activation"), act), ("influence", n.get("influence"), infl)):
            if raw is not None and not math.isfinite(v):
                nonfinite.append(f"{nid}.{name}")
        row = {
            "node_id": nid, "type": kind, "layer": -1, "pos": -1, "feature": -1, "token_id": -1,
            "activation": act, "influence": infl, "prob": float("nan"),
            "label": None if label in (None, "") else str(label),
        }
        a, b, pos = _ints(nid, where)
        field_layer = _layer_field(n)
        if kind == "embedding":
            row.update(token_id=b, pos=pos)
        elif kind == "logit":
            prob = _float(n.get("token_prob"))
            if n.get("token_prob") is not None and not math.isfinite(prob):
                nonfinite.append(f"{nid}.token_prob")
            row.update(layer=a - 1, token_id=b, pos=pos, prob=prob)
        elif kind == "error":
            if b == -1:
                layer, form = a, "new"
            elif a == 0 and field_layer is not None and field_layer != b:
                layer, form = field_layer, "anthropic"
            elif a == 0:
                layer, form = b, "old"
            else:
                raise NeuronpediaFormatError(f"{where}: error node id {nid!r} is neither {{layer}}_-1_{{pos}} nor 0_{{layer}}_{{pos}}")
            forms[form] += 1
            row.update(layer=layer, pos=pos)
        else:
            if field_layer is not None and field_layer != a:
                warnings.append(f"feature {nid}: layer field {field_layer} differs from the id's layer {a}; kept the id's")
            row.update(layer=a, feature=b, pos=pos)
        if n.get("ctx_idx") is not None and int(n["ctx_idx"]) != row["pos"]:
            warnings.append(f"{nid}: ctx_idx {n['ctx_idx']} differs from the position in its id; kept the id's")
        rows.append(row)
        raw_ids.append(nid)
    if nonfinite:
        raise NeuronpediaFormatError(f"{source}: {len(nonfinite)} non-finite node values (NaN/inf), e.g. {nonfinite[0]}; refused")
    return _Nodes(rows, raw_ids, forms, warnings)


def _layer_count(rows: list[dict[str, Any]], ours: dict[str, Any], warnings: list[str]) -> int:
    """Layers of the model: our own export's ``n_layers``; else the logit layer minus one
    (circuit-tracer puts logits at n_layers + 1) when the features and errors fit under it;
    else the layers the features and errors reach (Anthropic's files put logits right above the
    highest feature, which says nothing about the model), with a warning."""
    inner = [r["layer"] for r in rows if r["type"] in ("feature", "error")]
    bound = max(inner) + 1 if inner else 0
    if "n_layers" in ours:
        return int(ours["n_layers"])
    logit_layers = sorted({r["layer"] + 1 for r in rows if r["type"] == "logit"})
    if len(logit_layers) > 1:
        warnings.append(f"logit nodes at several layers {logit_layers}; the highest is used")
    if logit_layers and logit_layers[-1] - 1 >= bound:
        return logit_layers[-1] - 1
    if logit_layers:
        warnings.append(
            f"logit nodes at layer {logit_layers[-1]} would mean {logit_layers[-1] - 1} layers, but features/errors reach "
            f"layer {bound - 1}: {bound} layers taken from the nodes; logit ids renumbered to {bound + 1}_{{token}}_{{pos}}"
        )
    return bound


def _resolve_clashes(clash: dict[str, tuple[int, str]], kinds: dict[str, tuple[str, int]], src: list[str],
                     tgt: list[str], warnings: list[str]) -> None:
    """Links naming an id that is both a layer-0 feature ``0_{L}_{p}`` and circuit-tracer's
    error ``0_{L}_{p}`` (``clash``: id -> (L, the error's new id)), decided from the graph:

    1. an error has no incoming links: a link *to* the id is the feature's;
    2. an error at layer L feeds only later layers: a link to a target at layer <= L is the
       feature's;
    3. the same (id, target) pair twice: one each; circuit-tracer writes a target's links in node
       order (features before errors), so the first is the feature's;
    4. else, within the target's links (in that order): a known error or embedding source before
       it means the error, a known feature after it means the feature.

    What is left is counted as ambiguous (given to the error) and reported. ``src`` is updated
    in place (error ends get the new id)."""
    n_links = len(src)
    involved = [i for i in range(n_links) if src[i] in clash or tgt[i] in clash]
    by_target: dict[str, list[int]] | None = None
    counts = {"incoming": 0, "layer": 0, "pair": 0, "order": 0, "ambiguous": 0}
    impossible = 0
    pair_seen: dict[tuple[str, str], int] = {}
    pairs: dict[tuple[str, str], int] = {}
    for i in involved:
        if src[i] in clash:
            pairs[(src[i], tgt[i])] = pairs.get((src[i], tgt[i]), 0) + 1
    ambiguous: list[str] = []
    for i in involved:
        s, t = src[i], tgt[i]
        if t in clash:
            counts["incoming"] += 1
            if s not in clash and kinds.get(s, ("", 0))[0] != "embedding":
                impossible += 1
        if s not in clash:
            continue
        err_layer, err_id = clash[s]
        t_kind, t_layer = ("feature", 0) if t in clash else kinds.get(t, ("feature", 0))
        if pairs[(s, t)] == 2:
            k = pair_seen.get((s, t), 0)
            pair_seen[(s, t)] = k + 1
            counts["pair"] += 1
            if k == 1:
                src[i] = err_id
            continue
        if t_layer <= err_layer and t_kind != "logit":
            counts["layer"] += 1  # the feature's
            continue
        if by_target is None:
            by_target = {}
            for j, tj in enumerate(tgt):
                by_target.setdefault(tj, []).append(j)
        block = by_target[t]
        at = block.index(i)
        before = {kinds.get(src[j], ("", 0))[0] for j in block[:at] if src[j] not in clash}
        after = {kinds.get(src[j], ("", 0))[0] for j in block[at + 1:] if src[j] not in clash}
        if before & {"error", "embedding"}:
            counts["order"] += 1
            src[i] = err_id
        elif "feature" in after:
            counts["order"] += 1
        else:
            counts["ambiguous"] += 1
            ambiguous.append(f"{s}->{t}")
            src[i] = err_id
    example = next(iter(clash))
    warnings.append(
        f"{len(clash)} node ids name both a layer-0 feature and an error (circuit-tracer's error ids 0_{{layer}}_{{pos}}), "
        f"e.g. {example}: the errors became {{layer}}_-1_{{pos}} ({clash[example][1]}); of {len(involved)} links naming "
        f"them, {counts['incoming']} are the feature's as targets (errors have no incoming links), {counts['layer']} by "
        f"the target's layer, {counts['pair']} by a repeated pair in circuit-tracer's link order, {counts['order']} by "
        f"link order within the target's links, {counts['ambiguous']} still ambiguous (given to the error)"
        + (f": {', '.join(ambiguous[:5])}" if ambiguous else "")
    )
    if impossible:
        warnings.append(f"{impossible} links into a clashing layer-0 feature come from non-embedding nodes (kept)")
    if any(v > 2 for v in pairs.values()):
        warnings.append("a clashing id and a target are linked more than twice; the extra links were given to the error")


def from_neuronpedia(doc: dict[str, Any], *, source: str = "<json>") -> gf.GraphFile:
    """A GraphFile from a Neuronpedia graph JSON document (any form found in the wild: see the
    module docstring). What it had to decide is in ``meta["import_warnings"]`` and, so the store
    keeps it on the Prompt, ``meta["settings"]["import_warnings"]``."""
    return tables_from_neuronpedia(doc, source=source).to_graph_file()


def tables_from_neuronpedia(doc: dict[str, Any], *, source: str = "<json>") -> gf.GraphTables:
    """`from_neuronpedia` as Arrow tables (what the importer hands the store: no pandas)."""
    if not isinstance(doc, dict):
        raise NeuronpediaFormatError(f"{source}: top level is {type(doc).__name__}, expected an object")
    for key in ("metadata", "nodes", "links"):
        if key not in doc:
            raise NeuronpediaFormatError(f"{source}: lacks '{key}' (not a Neuronpedia graph file)")
    if not isinstance(doc["nodes"], list) or not isinstance(doc["links"], list):
        raise NeuronpediaFormatError(f"{source}: 'nodes' and 'links' must be lists")
    md = doc["metadata"] or {}
    ours = dict(md.get("circuit_atlas") or {})
    parsed = _parse_nodes(doc["nodes"], source)
    rows, raw_ids, warnings = parsed.rows, parsed.raw_ids, parsed.warnings
    if parsed.error_forms["anthropic"]:
        warnings.append(f"{parsed.error_forms['anthropic']} error nodes in Anthropic's form 0_{{id}}_{{pos}}: layer taken "
                        "from each node's layer field")
    n_layers = _layer_count(rows, ours, warnings)
    bad = [r["node_id"] for r in rows if r["type"] in ("feature", "error") and not 0 <= r["layer"] < n_layers]
    if bad:
        raise NeuronpediaFormatError(f"{source}: node {bad[0]} lies outside the model's {n_layers} layers")

    # ids that name two nodes: a layer-0 feature and an old-form error are resolved, others refused
    seen: dict[str, list[int]] = {}
    for k, nid in enumerate(raw_ids):
        seen.setdefault(nid, []).append(k)
    clash: dict[str, tuple[int, str]] = {}
    for nid, ks in seen.items():
        if len(ks) == 1:
            continue
        types = sorted(rows[k]["type"] for k in ks)
        err = [k for k in ks if rows[k]["type"] == "error"]
        if types == ["error", "feature"] and rows[err[0]]["node_id"].startswith("0_"):
            clash[nid] = (rows[err[0]]["layer"], gf.error_node_id(rows[err[0]]["layer"], rows[err[0]]["pos"]))
        else:
            raise NeuronpediaFormatError(f"{source}: node id {nid!r} appears {len(ks)} times (as {', '.join(types)}); "
                                         "cannot tell which links belong to which")
    rename: dict[str, str] = {}
    for r in rows:
        old = r["node_id"]
        if r["type"] == "error":
            new = gf.error_node_id(r["layer"], r["pos"])
        elif r["type"] == "logit":
            new = gf.logit_node_id(n_layers, r["token_id"], r["pos"])
            r["layer"] = n_layers
        else:
            continue
        if new != old:
            r["node_id"] = new
            if old not in clash:
                rename[old] = new
    kinds = {nid: (rows[ks[0]]["type"], rows[ks[0]]["layer"]) for nid, ks in seen.items()}

    links = doc["links"]
    try:  # plain comprehensions: the fastest way through the link dicts (the bulk of a file)
        src = [x["source"] for x in links]
        tgt = [x["target"] for x in links]
        w64 = np.asarray([x["weight"] for x in links], dtype=np.float64)  # null -> NaN, refused below
    except (KeyError, TypeError, ValueError) as exc:
        raise NeuronpediaFormatError(f"{source}: a link lacks source/target/weight or has a non-numeric weight ({exc})") from None
    with np.errstate(over="ignore"):  # beyond float32 becomes inf, refused just below
        w = w64.astype(np.float32)
    finite = np.isfinite(w)
    if not finite.all():
        k = int(np.flatnonzero(~finite)[0])
        raise NeuronpediaFormatError(f"{source}: {int((~finite).sum())} links have non-finite weights (NaN/inf, or beyond "
                                     f"float32), e.g. {src[k]} -> {tgt[k]}: {w64[k]}; refused")
    known = pa.array(list(seen), pa.string())
    try:
        src_a, tgt_a = pa.array(src, pa.string()), pa.array(tgt, pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # a non-string id: unknown
        src_a = tgt_a = None
    if src_a is None or pc.index_in(src_a, value_set=known).null_count or pc.index_in(tgt_a, value_set=known).null_count:
        dangling = (set(map(_hashable, src)) | set(map(_hashable, tgt))) - seen.keys()
        raise NeuronpediaFormatError(f"{source}: links refer to unknown nodes, e.g. {sorted(map(repr, dangling))[:3]}")
    if clash:
        _resolve_clashes(clash, kinds, src, tgt, warnings)
        src_a = pa.array(src, pa.string())
    src_a, tgt_a = _renamed(src_a, rename), _renamed(tgt_a, rename)
    nodes = _node_table(rows)
    edges = pa.Table.from_arrays([src_a, tgt_a, pa.array(w, pa.float32())],
                                 schema=gf.EDGE_SCHEMA)

    tokens = [str(t) for t in md.get("prompt_tokens") or []]
    if "token_ids" in ours:
        token_ids = [int(t) for t in ours["token_ids"]]
    else:
        emb = [(r["pos"], r["token_id"]) for r in rows if r["type"] == "embedding"]
        n_pos = max([len(tokens)] + [p + 1 for p, _ in emb])
        token_ids = [-1] * n_pos
        for p, t in emb:
            token_ids[p] = t
    scan = str(md.get("scan") or ours.get("scan") or "")
    model = str(ours.get("model") or md.get("model") or scan)
    settings = dict(ours.get("settings") or {})
    if not settings:
        ps, gs = md.get("pruning_settings") or {}, md.get("generation_settings") or {}
        settings = {"node_threshold": md.get("node_threshold", ps.get("node_threshold")),
                    "edge_threshold": ps.get("edge_threshold"), "max_feature_nodes": gs.get("max_feature_nodes"),
                    "pruned": True, "logit_targets": None}
    if warnings:
        settings["import_warnings"] = list(warnings)
    q = dict(doc.get("qParams") or {})

    def fix(i: str) -> str:
        return rename.get(i, i)

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
    gid = str(ours["graph_id"]) if "graph_id" in ours else gf.graph_id(model, scan, token_ids, settings, nodes, edges)
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
        meta["import_warnings"] = list(warnings)
    # ids unique, types known, no dangling link: what GraphFile.validate checks, done above
    return gf.GraphTables(meta, nodes, edges)


def _hashable(x: Any) -> Any:
    return x if isinstance(x, (str, int, float)) or x is None else repr(x)


def _renamed(ids: pa.Array, rename: dict[str, str]) -> pa.Array:
    """``ids`` with every id that ``rename`` maps replaced (vectorised: no loop over links)."""
    if not rename:
        return ids
    idx = pc.index_in(ids, value_set=pa.array(list(rename), pa.string()))
    if idx.null_count == len(ids):
        return ids
    return pc.if_else(pc.is_null(idx), ids, pa.array(list(rename.values()), pa.string()).take(idx))


def _node_table(rows: list[dict[str, Any]]) -> pa.Table:
    """The node rows as a table of ``NODE_SCHEMA`` (NaN, the rows' "no value", becomes null as in
    a saved and loaded graph)."""
    cols = []
    for f in gf.NODE_SCHEMA:
        values = [r[f.name] for r in rows]
        if pa.types.is_floating(f.type):
            arr = np.asarray(values, dtype=np.float32)
            cols.append(pa.array(arr, f.type, mask=np.isnan(arr)))
        else:
            cols.append(pa.array(values, f.type))
    return pa.Table.from_arrays(cols, schema=gf.NODE_SCHEMA)


def _loads(raw: bytes, source: str) -> Any:
    """Parse JSON with orjson (several times faster than json); on a refusal, json (which also
    reads NaN/Infinity, so the value checks can name a non-finite number instead)."""
    try:
        import orjson

        return orjson.loads(raw)
    except ImportError:
        pass
    except ValueError:
        pass
    try:
        return json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NeuronpediaFormatError(f"{source}: not valid JSON ({exc})") from exc


def read_json_bytes(path: str | os.PathLike) -> bytes:
    """A file's bytes, gunzipped when it is gzip (``.json.gz``, or gzip's magic bytes)."""
    p = Path(path)
    if not p.is_file():
        raise NeuronpediaFormatError(f"{p}: no such file")
    raw = p.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise NeuronpediaFormatError(f"{p}: a broken gzip file ({exc})") from exc
    return raw


def read_neuronpedia(path: str | os.PathLike) -> gf.GraphFile:
    """One Neuronpedia graph JSON file (``.json`` or gzip-compressed ``.json.gz``)."""
    return read_neuronpedia_tables(path).to_graph_file()


def read_neuronpedia_tables(path: str | os.PathLike) -> gf.GraphTables:
    """`read_neuronpedia` as Arrow tables (the importer's path: no pandas)."""
    p = Path(path)
    return tables_from_neuronpedia(_loads(read_json_bytes(p), str(p)), source=str(p))


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
            if not f.is_file() and (d / f"{slug}.json.gz").is_file():
                f = d / f"{slug}.json.gz"
            if not f.is_file():
                raise NeuronpediaFormatError(f"{index}: lists {slug!r} but {f.name} is missing")
            files.append(f)
        return files
    return sorted(f for f in d.iterdir() if f.is_file() and f.name.endswith((".json", ".json.gz"))
                  and f.name != INDEX_NAME and not f.name.startswith("."))


def iter_neuronpedia_dir(directory: str | os.PathLike) -> Iterator[gf.GraphFile]:
    """Every graph in a directory of Neuronpedia graph files, one at a time."""
    for f in neuronpedia_files(directory):
        yield read_neuronpedia(f)


def is_neuronpedia_file(path: str | os.PathLike) -> bool:
    """Cheap sniff: a .json file whose first KB mentions the format's top-level keys."""
    p = Path(path)
    if not p.name.endswith((".json", ".json.gz")) or not p.is_file() or p.name == INDEX_NAME:
        return False
    if p.name.endswith(".gz"):
        with gzip.open(p, "rb") as f:
            try:
                head = f.read(4096)
            except (OSError, EOFError):
                return False
    else:
        head = p.open("rb").read(4096)
    return b'"metadata"' in head or b'"nodes"' in head
