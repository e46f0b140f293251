"""Graphs made elsewhere into the store: our graph directories, circuit-tracer ``.pt`` graphs and
Neuronpedia graph JSON (one file, or a directory of them with or without graph-metadata.json).

Conversion is the engine's (``engine.formats.neuronpedia``, ``engine.formats.circuit_tracer``); this module
finds the graphs under a path, converts what is not ours into graph directories, bulk-loads
them (``store.write_graphs``: whole or nothing per prompt, present ids skipped) and keeps what
the formats carry besides the graph:

- labels (Neuronpedia ``clerp``s) become ``Feature.label`` — filling empty labels by default,
  replacing existing ones with ``overwrite_labels`` (``store.set_feature_labels``);
- supernodes (``qParams.supernodes``, or ``meta.supernodes``) become ``Supernode`` nodes with
  method ``import``, CONTAINS their member features; supernodes our own exporter wrote in full
  (``meta.supernode_records``) come back with their keys and methods.

Each graph's supernode records ride in its meta.json (``supernode_records``), so the store
writes them in the graph's own transaction; for graphs already stored, missing supernodes are
written by key (a re-run after a kill restores what was lost). A file that cannot be read, or
a graph the store refuses, is listed (one line each, naming the file, also in a failures file)
and skipped; the rest are still imported. What a reader decided (``import_warnings``) and which
imported graphs share a prompt text with another stored graph are in the summary.
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

import pyarrow.compute as pc

from circuit_atlas.engine.formats import graph_files as gf
from circuit_atlas.ingest import identity
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
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (path, what the reader decided)
    shared_texts: list[dict[str, Any]] = field(default_factory=list)  # {"text", "graph_ids"} with >= 2 stored graphs
    # same structure as a stored (or earlier) graph: {"path", "graph_id", "stored", "values", "differ", "max_rel"};
    # same_up_to_noise: not written (differ == 0); variants: written, a different graph (differ > 0)
    same_up_to_noise: list[dict[str, Any]] = field(default_factory=list)
    variants: list[dict[str, Any]] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # graph id -> the file it came from
    nodes: int = 0
    edges: int = 0
    labels: int = 0
    supernodes: int = 0
    supernodes_restored: int = 0
    failures_path: str | None = None
    seconds: float = 0.0
    read_seconds: float = 0.0  # of which reading and converting the files
    store_seconds: float = 0.0  # of which the store's write (with its derived-layer update)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def discover(path: str | os.PathLike) -> list[Source]:
    """Every importable graph under ``path`` (not recursive beyond one directory level)."""
    from circuit_atlas.engine.formats.neuronpedia import INDEX_NAME, neuronpedia_files

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
            elif child.is_file() and child.name.endswith((".json", ".json.gz")) and child.name != INDEX_NAME:
                out.append(Source("neuronpedia", child))
            elif child.is_file() and child.suffix == ".pt":
                out.append(Source("circuit-tracer", child))
        if not out:
            raise GraphImportError(f"{p}: no graphs here (expected graph directories with meta.json, nodes.parquet and "
                               "edges.parquet, Neuronpedia .json files or circuit-tracer .pt files)")
        return out
    if p.name.endswith((".json", ".json.gz")):
        return [Source("neuronpedia", p)]
    if p.suffix == ".pt":
        return [Source("circuit-tracer", p)]
    raise GraphImportError(f"{p}: unknown graph format (expected a graph directory, a Neuronpedia .json file or a "
                       "circuit-tracer .pt file)")


def _feature_keys(graph: gf.GraphTables) -> dict[str, str]:
    """node id -> Feature key for the graph's feature nodes."""
    n = graph.nodes
    feats = n.filter(pc.equal(n.column("type"), "feature"))
    scan = graph.meta["scan"]
    return {str(i): f"{scan}:{int(l)}:{int(f)}" for i, l, f in zip(
        feats.column("node_id").to_pylist(), feats.column("layer").to_pylist(), feats.column("feature").to_pylist())}


def supernode_records(graph: gf.GraphTables) -> list[dict[str, Any]]:
    """The graph's supernodes as records for ``store.write_supernodes``."""
    if graph.meta.get("supernode_records"):
        return [dict(r) for r in graph.meta["supernode_records"]]
    if not any(graph.meta.get("supernodes") or []):
        return []
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


def feature_labels(graph: gf.GraphTables) -> dict[str, str]:
    """Feature key -> label for every labelled feature node of the graph."""
    n = graph.nodes
    labelled = n.filter(pc.and_(pc.equal(n.column("type"), "feature"),
                                pc.fill_null(pc.not_equal(n.column("label"), ""), False)))
    scan = graph.meta["scan"]
    return {f"{scan}:{int(l)}:{int(f)}": lab for l, f, lab in zip(
        labelled.column("layer").to_pylist(), labelled.column("feature").to_pylist(), labelled.column("label").to_pylist())}


def _logit_tokens_from_clerps(graph: gf.GraphTables) -> None:
    """Neuronpedia logit clerps read ``Output " Paris" (p=0.771)``: keep the token text."""
    if graph.meta.get("logit_tokens"):
        return
    n = graph.nodes
    logits = n.filter(pc.equal(n.column("type"), "logit"))
    found = {}
    for tid, label in zip(logits.column("token_id").to_pylist(), logits.column("label").to_pylist()):
        m = _OUTPUT_CLERP.match(label) if isinstance(label, str) else None
        if m:
            found[str(int(tid))] = m.group(1)
    if found:
        graph.meta["logit_tokens"] = found


def read_source(src: Source, **pt_options: Any) -> gf.GraphTables:
    """Load one source as Arrow tables (raises the engine's format error naming the file)."""
    if src.kind == "graph":  # our own directory: taken as it is
        return gf.GraphTables.of(gf.GraphFile.load(src.path), str(src.path))
    if src.kind == "neuronpedia":
        from circuit_atlas.engine.formats.neuronpedia import read_neuronpedia_tables

        graph = read_neuronpedia_tables(src.path)
        graph.source = str(src.path)
    else:
        from circuit_atlas.engine.formats.circuit_tracer import read_circuit_tracer_pt

        graph = gf.GraphTables.of(read_circuit_tracer_pt(src.path, **pt_options), str(src.path))
    _logit_tokens_from_clerps(graph)  # Neuronpedia and circuit-tracer files: token text from the clerps
    return graph


_SUPERNODE_KEYS = "MATCH (s:Supernode) WHERE s.key IN $keys RETURN s.key AS key"
_TEXTS = "MATCH (p:Prompt) WHERE p.text IN $texts RETURN p.text AS text, p.id AS id"


def _missing_supernodes(store: Any, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not records:
        return []
    have = store.read(_SUPERNODE_KEYS, {"keys": sorted({r["key"] for r in records})})
    present = set(have["key"]) if len(have) else set()
    return [r for r in records if r["key"] not in present]


def _shared_texts(store: Any, texts: list[str]) -> list[dict[str, Any]]:
    """Prompt texts (of ``texts``) that more than one stored graph has, with those graphs' ids."""
    if not texts:
        return []
    df = store.read(_TEXTS, {"texts": sorted(set(texts))})
    by_text: dict[str, list[str]] = {}
    for t, i in zip(df.get("text", []), df.get("id", [])):
        by_text.setdefault(str(t), []).append(str(i))
    return [{"text": t, "graph_ids": sorted(ids)} for t, ids in sorted(by_text.items()) if len(ids) > 1]


def write_failures(path: str | os.PathLike, failed: list[tuple[str, str]]) -> Path:
    """The failed files as JSON lines ``{"path", "reason"}`` (replaced on every run)."""
    import json

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("".join(json.dumps({"path": f, "reason": r}) + "\n" for f, r in failed))
    return p


def _same_up_to_noise(store: Any, graph: gf.GraphTables, read: dict[str, gf.GraphTables], summary: ImportSummary) -> bool:
    """Whether a graph whose id is new equals a stored graph of the same prompt (or one read
    earlier in this import) with its structure, up to float noise: then it is recorded in
    summary.same_up_to_noise and not written. A same-structure graph that differs beyond the
    noise is recorded in summary.variants (and written)."""
    earlier = [g for g in read.values() if g.meta.get("prompt") == graph.meta.get("prompt")
               and g.meta.get("token_ids") == graph.meta.get("token_ids") and g.meta.get("scan") == graph.meta.get("scan")]
    candidates: list[tuple[str, list[str], Any, Any]] = [
        (g.graph_id, g.nodes.column("node_id").to_pylist(), g.nodes, g.edges) for g in earlier]
    for gid in identity.stored_of_same_prompt(store, graph.meta):
        candidates.append((gid, *identity.stored_tables(store, gid)))
    for other_id, node_ids, nodes, edges in candidates:
        if not identity.same_structure(graph.nodes, graph.edges, node_ids, edges):
            continue
        cmp = identity.compare(graph.nodes, graph.edges, nodes, edges)
        row = {"path": graph.source, "graph_id": graph.graph_id, "stored": other_id, "values": cmp.values,
               "differ": cmp.differ, "max_rel": cmp.max_rel}
        if cmp.same:
            summary.same_up_to_noise.append(row)
            summary.skipped.append(graph.graph_id)
            return True
        summary.variants.append(row)
    return False


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
    failures_path: str | os.PathLike | None = None,
) -> ImportSummary:
    """Import every graph under ``path`` into ``store``. Converted graphs (.pt, .json) are written
    as graph directories into ``graphs_dir`` (kept), or a temporary directory (removed).
    ``prune``/thresholds/``tokenizer``/``model``/``scan`` apply to circuit-tracer .pt files.
    Files that fail are listed in ``summary.failed`` and, when ``failures_path`` is given,
    written there (JSON lines)."""
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
        items: list[Any] = []  # what the store loads: in-memory graphs where it takes them, else directories
        origin: dict[str, str] = {}  # what was handed to the store -> source file
        graphs: dict[str, tuple[list[dict], dict[str, str], str]] = {}
        read: dict[str, gf.GraphTables] = {}  # this import's graphs, by id
        present = store.prompt_ids()
        in_memory = getattr(store, "accepts_tables", False)
        for src in tqdm(sources, desc="reading graphs", unit="graph", disable=not progress):
            try:
                graph = read_source(src, **pt_options)
                if graph.graph_id in graphs:  # the same graph twice in this import
                    summary.skipped.append(graph.graph_id)
                    continue
                if graph.graph_id not in present and _same_up_to_noise(store, graph, read, summary):
                    continue
                records = supernode_records(graph)
                graphs[graph.graph_id] = (records, feature_labels(graph), str(graph.meta.get("prompt") or ""))
                read[graph.graph_id] = graph
                for w in graph.meta.get("import_warnings") or []:
                    summary.warnings.append((str(src.path), str(w)))
                as_is = src.kind == "graph" and (not records or graph.meta.get("supernode_records"))
                if records:  # the records go into meta.json: the store writes them with the graph
                    graph.meta["supernode_records"] = records
                saved = graph.save(out_dir / graph.graph_id) if graphs_dir is not None and src.kind != "graph" else None
                if in_memory:  # no files in between
                    item: Any = graph
                elif as_is:
                    item = src.path
                else:
                    item = saved or graph.save(out_dir / graph.graph_id)
            except CircuitAtlasError as exc:
                summary.failed.append((str(src.path), str(exc)))
                continue
            summary.sources[graph.graph_id] = str(src.path)
            origin[str(item) if not isinstance(item, gf.GraphTables) else item.source] = str(src.path)
            items.append(item)
        summary.read_seconds = time.perf_counter() - t0
        report = store.write_graphs(items, progress=progress)
        summary.store_seconds = report.seconds
        for d, reason in getattr(report, "failed", []) or []:
            summary.failed.append((origin.get(str(d), str(d)), str(reason)))
        summary.written, summary.skipped = list(report.written), summary.skipped + list(report.skipped)
        summary.nodes, summary.edges = report.nodes, report.edges
        summary.variants = [v for v in summary.variants if v["graph_id"] in report.written]
        # supernodes: in the graph's own transaction where the store supports it; any still
        # missing (an older store, or graphs stored by a run that lost them) are written by key
        written = [r for gid in report.written for r in graphs[gid][0]]
        present_records = [r for gid in report.skipped if gid in graphs for r in graphs[gid][0]]
        missing_new = _missing_supernodes(store, written)
        missing_old = _missing_supernodes(store, present_records)
        if missing_new or missing_old:
            store.write_supernodes(missing_new + missing_old)
        summary.supernodes = len(written)
        summary.supernodes_restored = len(missing_old)
        if overwrite_labels:
            labels: dict[str, str] = {}
            for _, lab, _ in graphs.values():
                labels.update(lab)
            if labels:
                store.set_feature_labels(labels, source="import")
            summary.labels = len(labels)
        else:
            summary.labels = len({k for gid in report.written for k in graphs[gid][1]})
        summary.shared_texts = _shared_texts(store, [graphs[g][2] for g in report.written if graphs[g][2]])
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if summary.failed and failures_path is not None:
        summary.failures_path = str(write_failures(failures_path, summary.failed))
    summary.seconds = time.perf_counter() - t0
    return summary
