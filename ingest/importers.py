"""Graphs made elsewhere into the store: our graph directories, circuit-tracer ``.pt`` graphs and
Neuronpedia graph JSON (one file, or a directory of them with or without graph-metadata.json).

Conversion is the engine's (``engine.neuronpedia``, ``engine.circuit_tracer_io``); this module
finds the graphs under a path, converts what is not ours into graph directories, bulk-loads
them (``store.write_graphs``: whole or nothing per prompt, present ids skipped) and keeps what
the formats carry besides the graph:

- labels (Neuronpedia ``clerp``s) become ``Feature.label`` — filling empty labels by default,
  replacing existing ones with ``overwrite_labels`` (``store.set_feature_labels``);
- supernodes (``qParams.supernodes``, or ``meta.supernodes``) become ``Supernode`` nodes with
  method ``import``, CONTAINS their member features; supernodes our own exporter wrote in full
  (``meta.supernode_records``) come back with their keys and methods.

A file that cannot be read is reported and skipped; the rest are still imported.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from circuit_atlas.engine import graph_files as gf
from circuit_atlas.errors import CircuitAtlasError

KINDS = ("graph", "neuronpedia", "circuit-tracer")
_OUTPUT_CLERP = re.compile(r'^Output "(.*)" \(p=[-+0-9.eE]+\)$', re.S)


class GraphImportError(CircuitAtlasError, ValueError):
    """A path with nothing importable in it, or files that could not be imported."""


@dataclass
class Source:
    kind: str  # one of KINDS
    path: Path


@dataclass
class ImportSummary:
    found: int = 0
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    nodes: int = 0
    edges: int = 0
    labels: int = 0
    supernodes: int = 0
    seconds: float = 0.0


def discover(path: str | os.PathLike) -> list[Source]:
    """Every importable graph under ``path`` (not recursive beyond one directory level)."""
    from circuit_atlas.engine.neuronpedia import INDEX_NAME, neuronpedia_files

    p = Path(path).expanduser()
    if not p.exists():
        raise GraphImportError(f"{p}: no such file or directory")
    if p.is_dir():
        if gf.is_graph_dir(p):
            return [Source("graph", p)]
        if (p / INDEX_NAME).is_file():
            return [Source("neuronpedia", f) for f in neuronpedia_files(p)]
        out: list[Source] = []
        for child in sorted(p.iterdir()):
            if child.name.startswith("."):
                continue
            if child.is_dir() and gf.is_graph_dir(child):
                out.append(Source("graph", child))
            elif child.is_file() and child.suffix == ".json" and child.name != INDEX_NAME:
                out.append(Source("neuronpedia", child))
            elif child.is_file() and child.suffix == ".pt":
                out.append(Source("circuit-tracer", child))
        if not out:
            raise GraphImportError(f"{p}: no graphs here (expected graph directories with meta.json, nodes.parquet and "
                               "edges.parquet, Neuronpedia .json files or circuit-tracer .pt files)")
        return out
    if p.suffix == ".json":
        return [Source("neuronpedia", p)]
    if p.suffix == ".pt":
        return [Source("circuit-tracer", p)]
    raise GraphImportError(f"{p}: unknown graph format (expected a graph directory, a Neuronpedia .json file or a "
                       "circuit-tracer .pt file)")


def _feature_keys(graph: gf.GraphFile) -> dict[str, str]:
    """node id -> Feature key for the graph's feature nodes."""
    n = graph.nodes
    feats = n[n["type"] == "feature"]
    scan = graph.meta["scan"]
    return {str(i): f"{scan}:{int(l)}:{int(f)}" for i, l, f in zip(feats["node_id"], feats["layer"], feats["feature"])}


def supernode_records(graph: gf.GraphFile) -> list[dict[str, Any]]:
    """The graph's supernodes as records for ``store.write_supernodes``."""
    if graph.meta.get("supernode_records"):
        return [dict(r) for r in graph.meta["supernode_records"]]
    keys = _feature_keys(graph)
    out = []
    for s in graph.meta.get("supernodes") or []:
        if not s:
            continue
        label, node_ids = str(s[0]), [str(x) for x in s[1:]]
        digest = hashlib.sha1("\x1f".join([label, *node_ids]).encode()).hexdigest()[:12]
        out.append({
            "key": f"{graph.graph_id}:import:{digest}", "scan": graph.meta["scan"], "label": label, "method": "import",
            "score": None, "prompt_id": graph.graph_id, "node_ids": node_ids,
            "members": sorted({keys[i] for i in node_ids if i in keys}),
        })
    return out


def feature_labels(graph: gf.GraphFile) -> dict[str, str]:
    """Feature key -> label for every labelled feature node of the graph."""
    keys = _feature_keys(graph)
    n = graph.nodes
    out = {}
    for nid, label in zip(n["node_id"], n["label"]):
        if isinstance(label, str) and label and str(nid) in keys:
            out[keys[str(nid)]] = label
    return out


def _logit_tokens_from_clerps(graph: gf.GraphFile) -> None:
    """Neuronpedia logit clerps read ``Output " Paris" (p=0.771)``: keep the token text."""
    if graph.meta.get("logit_tokens"):
        return
    n = graph.nodes
    found = {}
    for tid, label in zip(n.loc[n["type"] == "logit", "token_id"], n.loc[n["type"] == "logit", "label"]):
        m = _OUTPUT_CLERP.match(label) if isinstance(label, str) else None
        if m:
            found[str(int(tid))] = m.group(1)
    if found:
        graph.meta["logit_tokens"] = found


def read_source(src: Source, **pt_options: Any) -> gf.GraphFile:
    """Load one source as a GraphFile (raises the engine's format error naming the file)."""
    if src.kind == "graph":
        return gf.GraphFile.load(src.path)
    if src.kind == "neuronpedia":
        from circuit_atlas.engine.neuronpedia import read_neuronpedia

        graph = read_neuronpedia(src.path)
        _logit_tokens_from_clerps(graph)
        return graph
    from circuit_atlas.engine.circuit_tracer_io import read_circuit_tracer_pt

    graph = read_circuit_tracer_pt(src.path, **pt_options)
    _logit_tokens_from_clerps(graph)
    return graph


def import_path(
    path: str | os.PathLike,
    store: Any,
    *,
    graphs_dir: str | os.PathLike | None = None,
    overwrite_labels: bool = False,
    progress: bool = True,
    prune: bool = True,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    tokenizer: Any = None,
    model: str | None = None,
    scan: str | None = None,
) -> ImportSummary:
    """Import every graph under ``path`` into ``store``. Converted graphs (.pt, .json) are written
    as graph directories into ``graphs_dir`` (kept), or a temporary directory (removed).
    ``prune``/thresholds/``tokenizer``/``model``/``scan`` apply to circuit-tracer .pt files."""
    import time

    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    sources = discover(path)
    summary = ImportSummary(found=len(sources))
    tmp = None
    if graphs_dir is None:
        tmp = Path(tempfile.mkdtemp(prefix="circuit-atlas-import-"))
        out_dir = tmp
    else:
        out_dir = Path(graphs_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
    pt_options = {"prune": prune, "node_threshold": node_threshold, "edge_threshold": edge_threshold,
                  "tokenizer": tokenizer, "model": model, "scan": scan}
    try:
        dirs: list[Path] = []
        graphs: dict[str, tuple[list[dict], dict[str, str]]] = {}
        for src in tqdm(sources, desc="reading graphs", unit="graph", disable=not progress):
            try:
                graph = read_source(src, **pt_options)
            except CircuitAtlasError as exc:
                summary.failed.append((str(src.path), str(exc)))
                continue
            graphs[graph.graph_id] = (supernode_records(graph), feature_labels(graph))
            dirs.append(src.path if src.kind == "graph" else graph.save(out_dir / graph.graph_id))
        report = store.write_graphs(dirs, progress=progress)
        summary.written, summary.skipped = list(report.written), list(report.skipped)
        summary.nodes, summary.edges = report.nodes, report.edges
        records = [r for gid in report.written for r in graphs[gid][0]]
        if records:
            store.write_supernodes(records)
            summary.supernodes = len(records)
        if overwrite_labels:
            labels: dict[str, str] = {}
            for _, lab in graphs.values():
                labels.update(lab)
            if labels:
                store.set_feature_labels(labels)
            summary.labels = len(labels)
        else:
            summary.labels = len({k for gid in report.written for k in graphs[gid][1]})
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    summary.seconds = time.perf_counter() - t0
    return summary

