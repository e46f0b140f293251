"""Graph files: one attribution graph per directory, columnar so bulk loads are fast.

This is the contract between the engine (which writes them), ingest (which reads them and
converts other formats to them) and the store (which bulk-loads them). A directory holds:

- ``nodes.parquet``: one row per node, columns in ``NODE_SCHEMA``.
- ``edges.parquet``: COO edges ``source``, ``target`` (node ids) and ``weight`` (float32);
  an edge is the direct linear effect of ``source`` on ``target``.
- ``meta.json``: prompt, tokens, model, transcoder set (scan), settings, scores, version.

Node ids follow the Neuronpedia convention so import/export is lossless: feature
``{layer}_{feature}_{pos}``, error ``{layer}_-1_{pos}``, embedding ``E_{token_id}_{pos}``,
logit ``{n_layers+1}_{token_id}_{pos}``. A graph's id hashes its request key (model id, scan,
token ids, identity settings: ``request_key``) with its content (nodes and edges), so the same
graph read twice is one graph and two different graphs of one prompt are two.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from circuit_atlas import __version__
from circuit_atlas.errors import CircuitAtlasError

FORMAT_VERSION = 1
NODE_TYPES = ("embedding", "feature", "error", "logit")

# Column order and types of nodes.parquet. Columns that do not apply to a node type hold
# -1 (ints) or null (floats/strings): an embedding has no feature index, and so on.
NODE_SCHEMA = pa.schema(
    [
        ("node_id", pa.string()),
        ("type", pa.string()),  # one of NODE_TYPES
        ("layer", pa.int32()),  # embeddings: -1; logits: n_layers (the node id says n_layers+1)
        ("pos", pa.int32()),  # token position in the prompt
        ("feature", pa.int64()),  # feature index for features, else -1
        ("token_id", pa.int64()),  # embeddings and logits, else -1
        ("activation", pa.float32()),  # features: activation; others: null
        ("influence", pa.float32()),  # influence on the logits (pruning); null if not computed
        ("prob", pa.float32()),  # logits: the token's probability; others: null
        ("label", pa.string()),  # human label (clerp), optional
    ]
)
EDGE_SCHEMA = pa.schema([("source", pa.string()), ("target", pa.string()), ("weight", pa.float32())])

# Settings that change the graph and therefore its identity.
IDENTITY_SETTINGS = ("node_threshold", "edge_threshold", "max_feature_nodes", "pruned", "logit_targets")


class GraphFileError(CircuitAtlasError, ValueError):
    """A graph directory that is missing, corrupt or does not follow the format."""


def feature_node_id(layer: int, feature: int, pos: int) -> str:
    return f"{layer}_{feature}_{pos}"


def error_node_id(layer: int, pos: int) -> str:
    return f"{layer}_-1_{pos}"


def embedding_node_id(token_id: int, pos: int) -> str:
    return f"E_{token_id}_{pos}"


def logit_node_id(n_layers: int, token_id: int, pos: int) -> str:
    return f"{n_layers + 1}_{token_id}_{pos}"


def node_ids(n_layers: int, feat_layer: Any, feat_pos: Any, feat_index: Any, err_layer: Any, err_pos: Any,
             token_ids: Any, logit_ids: Any) -> list[str]:
    """Node ids in node order (features, errors, embeddings, logits), the order ``node_frame``
    writes them in; the logits sit at the last position."""
    n_pos = len(token_ids)
    return (
        [feature_node_id(int(a), int(f), int(p)) for a, p, f in zip(feat_layer, feat_pos, feat_index)]
        + [error_node_id(int(a), int(p)) for a, p in zip(err_layer, err_pos)]
        + [embedding_node_id(int(t), p) for p, t in enumerate(token_ids)]
        + [logit_node_id(n_layers, int(t), n_pos - 1) for t in logit_ids]
    )


def node_frame(ids: list[str], n_layers: int, feat_layer: Any, feat_pos: Any, feat_index: Any, activation: Any,
               err_layer: Any, err_pos: Any, token_ids: Any, logit_ids: Any, influence: Any, probs: Any,
               labels: list[str | None]) -> pd.DataFrame:
    """nodes.parquet rows for ``ids`` (from ``node_ids`` with the same arrays): the one place the
    engine's graphs and graphs read from circuit-tracer files fill the node columns. ``influence``
    may be None (not computed: null)."""
    n_feat, n_err, n_pos, k = len(feat_layer), len(err_layer), len(token_ids), len(logit_ids)
    tok = np.asarray(token_ids, dtype=np.int64)
    lid = np.asarray(logit_ids, dtype=np.int64)
    nan = np.float32("nan")
    return pd.DataFrame(
        {
            "node_id": ids,
            "type": ["feature"] * n_feat + ["error"] * n_err + ["embedding"] * n_pos + ["logit"] * k,
            "layer": np.concatenate([feat_layer, err_layer, np.full(n_pos, -1), np.full(k, n_layers)]).astype(np.int32),
            "pos": np.concatenate([feat_pos, err_pos, np.arange(n_pos), np.full(k, n_pos - 1)]).astype(np.int32),
            "feature": np.concatenate([feat_index, np.full(n_err + n_pos + k, -1)]).astype(np.int64),
            "token_id": np.concatenate([np.full(n_feat + n_err, -1), tok, lid]).astype(np.int64),
            "activation": np.concatenate([activation, np.full(n_err + n_pos + k, nan)]).astype(np.float32),
            "influence": (np.full(len(ids), nan) if influence is None else np.asarray(influence)).astype(np.float32),
            "prob": np.concatenate([np.full(n_feat + n_err + n_pos, nan), probs]).astype(np.float32),
            "label": pd.Series(labels, dtype=object),
        }
    )


def request_key(model: str, scan: str, token_ids: list[int], settings: dict[str, Any]) -> str:
    """Hash of what was asked for (model, transcoders, tokens, identity settings), known before any
    attribution: ingest skips a prompt whose request key is already stored. Two different graphs
    (e.g. made by other tools, or other runs) can share one request key; their graph ids differ."""
    ident = {k: settings.get(k) for k in IDENTITY_SETTINGS}
    payload = json.dumps(
        {"model": model, "scan": scan, "token_ids": [int(t) for t in token_ids], "settings": ident},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def _hash_strings(h: Any, arr: pa.Array) -> None:
    arr = pa.concat_arrays([arr.cast(pa.large_string())])  # one chunk, offset 0, 64-bit offsets
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset: arr.offset + len(arr) + 1]
    h.update((offsets - offsets[0]).tobytes())
    data = arr.buffers()[2]
    if data is not None:
        h.update(memoryview(data)[int(offsets[0]): int(offsets[-1])])


def _column(table: Any, name: str) -> pa.Array:
    col = table.column(name) if isinstance(table, pa.Table) else pa.array(table[name])
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


# A graph's identity hashes its weights and activations rounded to this many significant digits.
# The same prompt attributed twice differs by float noise (another thread count or batch split,
# another order of float32 sums): relative differences near 1e-6, three orders of magnitude
# below the rounding unit of 3 digits (1e-3 of the value), while a real change of the graph
# (other transcoders, settings, model weights) moves weights by far more. Rounding alone cannot
# settle a value that sits on a rounding boundary, so the importer also compares a graph with a
# stored one of the same structure value by value (``weights_close``).
WEIGHT_DIGITS = 3


def round_significant(values: Any, digits: int = WEIGHT_DIGITS) -> tuple[np.ndarray, np.ndarray]:
    """Values rounded to ``digits`` significant digits, as exact integers: (mantissa, exponent)
    with value ~= mantissa * 10**exponent; zero is (0, 0) and NaN (no value) is (0, -999)."""
    x = np.asarray(values, dtype=np.float64)
    nan = np.isnan(x)
    a = np.abs(np.where(nan, 0.0, x))
    nz = a > 0
    exp = np.zeros(x.shape, np.int64)
    exp[nz] = np.floor(np.log10(a[nz])).astype(np.int64) - (digits - 1)
    mant = np.zeros(x.shape, np.int64)
    mant[nz] = np.rint(x[nz] / np.power(10.0, exp[nz])).astype(np.int64)
    over = np.abs(mant) >= 10 ** digits  # 9.996 -> 10.0: one digit more, renormalise
    mant[over] = np.rint(mant[over] / 10).astype(np.int64)
    exp[over] += 1
    exp[~nz] = 0
    exp[nan] = -999
    return mant, exp


def weights_close(a: Any, b: Any, digits: int = WEIGHT_DIGITS) -> np.ndarray:
    """Where two arrays of values agree within one rounding unit at ``digits`` significant digits
    of the larger (NaN equals NaN): the test for "the same graph up to float noise"."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    both_nan = np.isnan(x) & np.isnan(y)
    big = np.maximum(np.abs(x), np.abs(y))
    with np.errstate(divide="ignore", invalid="ignore"):
        unit = np.where(big > 0, np.power(10.0, np.floor(np.log10(np.where(big > 0, big, 1.0))) - (digits - 1)), 0.0)
        close = np.abs(x - y) <= unit
    return both_nan | close


def _sorted_structure(nodes: Any, edges: Any) -> tuple[pa.Array, pa.Array, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Node ids sorted, their types, the permutation, and each edge's endpoints as positions in the
    sorted ids with the edge order sorted by (source, target, weight)."""
    ids = _column(nodes, "node_id").cast(pa.string())
    order = pc.sort_indices(ids)
    sids = pc.take(ids, order)
    types = pc.take(_column(nodes, "type").cast(pa.string()), order)
    src = pc.index_in(_column(edges, "source").cast(pa.string()), value_set=sids).fill_null(-1)
    dst = pc.index_in(_column(edges, "target").cast(pa.string()), value_set=sids).fill_null(-1)
    s = src.to_numpy(zero_copy_only=False).astype(np.int64)
    t = dst.to_numpy(zero_copy_only=False).astype(np.int64)
    w = _column(edges, "weight").cast(pa.float32()).fill_null(np.float32("nan")).to_numpy(zero_copy_only=False)
    eorder = np.lexsort((w, t, s))
    return sids, types, order.to_numpy(), s[eorder], t[eorder], w[eorder]


def content_digest(nodes: Any, edges: Any) -> str:
    """Digest of a graph's content: its structure (node ids and types, the pairs its edges join)
    with the node activations and edge weights rounded to WEIGHT_DIGITS significant digits, so
    float noise leaves it unchanged (see WEIGHT_DIGITS). Works on DataFrames or Arrow tables."""
    h = hashlib.sha256(f"content:2:{WEIGHT_DIGITS}".encode())
    sids, types, order, s, t, w = _sorted_structure(nodes, edges)
    _hash_strings(h, sids)
    _hash_strings(h, types)
    act = _column(nodes, "activation").cast(pa.float32()).fill_null(np.float32("nan")).to_numpy(zero_copy_only=False)
    for arr in (*round_significant(act[order]), s, t, *round_significant(w)):
        h.update(np.ascontiguousarray(arr, dtype=np.int64).tobytes())
    return h.hexdigest()


def graph_id(model: str, scan: str, token_ids: list[int], settings: dict[str, Any], nodes: Any = None,
             edges: Any = None) -> str:
    """Id of a graph: its request key and its content (``content_digest`` of ``nodes``/``edges``),
    so two different graphs of one prompt get two ids and the same graph read twice gets one.
    Without ``nodes``/``edges`` it is the request key alone: only for generators whose request
    fixes the content (store.synthetic)."""
    key = request_key(model, scan, token_ids, settings)
    if nodes is None and edges is None:
        return key
    if nodes is None or edges is None:
        raise GraphFileError("graph_id needs both the node and the edge table (or neither)")
    return hashlib.sha256(f"{key}:{content_digest(nodes, edges)}".encode()).hexdigest()[:20]


@dataclass
class GraphFile:
    """One attribution graph in memory: metadata plus node and edge tables.

    ``meta`` keys (all written to meta.json): ``graph_id``, ``prompt``, ``tokens`` (token
    strings), ``token_ids``, ``model``, ``scan``, ``n_layers``, ``settings`` (dict),
    ``scores`` (``replacement_score``, ``completeness_score``), ``prompt_props`` (free-form:
    ``corpus``, ``group``, ``tags``, ``expected``, ``external_id`` ... set by ingest),
    ``supernodes`` (list of ``[label, node_id, ...]``), ``format_version``,
    ``library_version``, ``created_at``.
    """

    meta: dict[str, Any]
    nodes: pd.DataFrame
    edges: pd.DataFrame = field(default_factory=lambda: EDGE_SCHEMA.empty_table().to_pandas())

    @property
    def graph_id(self) -> str:
        return self.meta["graph_id"]

    def nodes_table(self) -> pa.Table:
        return _to_table(self.nodes, NODE_SCHEMA, "nodes")

    def edges_table(self) -> pa.Table:
        return _to_table(self.edges, EDGE_SCHEMA, "edges")

    def validate(self, source: str | os.PathLike | None = None) -> None:
        """Check the invariants every reader relies on; raise GraphFileError if broken.
        ``source`` (the graph's directory, when read from one) is named in every error."""
        where = f"{source}: " if source is not None else ""
        validate_meta(self.meta, Path(source) / "meta.json" if source is not None else "meta.json")
        try:
            nodes = self.nodes_table()
            edges = self.edges_table()
        except GraphFileError as exc:
            raise GraphFileError(f"{where}{exc}") from None
        for table, what in ((nodes, "nodes"), (edges, "edges")):
            for name in _NOT_NULL[what]:
                n = table.column(name).null_count
                if n:
                    nan = " (NaN or null)" if pa.types.is_floating(table.schema.field(name).type) else ""
                    raise GraphFileError(f"{where}{what}.parquet: {n} null value(s){nan} in column '{name}', which needs a value")
        weights = edges.column("weight")
        if len(weights) and pc.any(pc.is_inf(weights)).as_py():
            raise GraphFileError(f"{where}edges.parquet: infinite value(s) in column 'weight' (weights must be finite)")
        bad_types = set(nodes.column("type").to_pylist()) - set(NODE_TYPES)
        if bad_types:
            raise GraphFileError(f"{where}unknown node types {sorted(bad_types)}; expected {NODE_TYPES}")
        ids = nodes.column("node_id").to_pylist()
        if len(set(ids)) != len(ids):
            raise GraphFileError(f"{where}node ids are not unique")
        known = set(ids)
        dangling = (set(edges.column("source").to_pylist()) | set(edges.column("target").to_pylist())) - known
        if dangling:
            raise GraphFileError(f"{where}edges refer to unknown nodes, e.g. {sorted(dangling)[:3]}")

    def save(self, directory: str | os.PathLike) -> Path:
        """Write atomically: files go to a temporary sibling directory that is renamed into place,
        so a crash never leaves a half-written graph under the final name."""
        self.validate()
        return _save(self.meta, self.nodes_table(), self.edges_table(), directory)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "GraphFile":
        path = Path(directory)
        meta = read_meta(path)
        try:
            nodes = pq.read_table(path / "nodes.parquet").to_pandas()
            edges = pq.read_table(path / "edges.parquet").to_pandas()
        except (pa.ArrowInvalid, OSError) as exc:
            raise GraphFileError(f"{path}: corrupt parquet file ({exc})") from exc
        graph = cls(meta=meta, nodes=nodes, edges=edges)
        graph.validate(source=path)
        return graph


def _save(meta: dict[str, Any], nodes: pa.Table, edges: pa.Table, directory: str | os.PathLike) -> Path:
    """Write a graph directory atomically (a temporary sibling renamed into place)."""
    final = Path(directory)
    final.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format_version": FORMAT_VERSION, "library_version": __version__, **meta}
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        pq.write_table(nodes, tmp / "nodes.parquet")
        pq.write_table(edges, tmp / "edges.parquet")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=_json_default))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


@dataclass
class GraphTables:
    """One graph as Arrow tables (NODE_SCHEMA, EDGE_SCHEMA) plus its meta: what a reader that
    builds columns directly hands to a store, with no pandas and no files in between (a store
    that loads from Arrow validates them as it does graph directories)."""

    meta: dict[str, Any]
    nodes: pa.Table
    edges: pa.Table
    source: str = ""  # the file it was read from (named in errors)

    @property
    def graph_id(self) -> str:
        return self.meta["graph_id"]

    @classmethod
    def of(cls, graph: "GraphFile", source: str = "") -> "GraphTables":
        return cls(graph.meta, graph.nodes_table(), graph.edges_table(), source)

    def to_graph_file(self) -> GraphFile:
        return GraphFile(meta=self.meta, nodes=self.nodes.to_pandas(), edges=self.edges.to_pandas())

    def save(self, directory: str | os.PathLike) -> Path:
        """Write as a graph directory (checked as GraphFile.save checks)."""
        self.to_graph_file().validate()
        return _save(self.meta, self.nodes, self.edges, directory)


def is_graph_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return (p / "meta.json").is_file() and (p / "nodes.parquet").is_file() and (p / "edges.parquet").is_file()


def _to_table(df: pd.DataFrame, schema: pa.Schema, what: str) -> pa.Table:
    missing = [name for name in schema.names if name not in df.columns]
    if missing:
        raise GraphFileError(f"{what} table lacks columns {missing}")
    try:
        return pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise GraphFileError(f"{what} table has wrongly typed columns: {exc}") from exc


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot write {type(obj).__name__} to meta.json")


def read_meta(directory: str | os.PathLike) -> dict:
    """meta.json of a graph directory, after checking the directory has all three files."""
    path = Path(directory)
    for name in ("meta.json", "nodes.parquet", "edges.parquet"):
        if not (path / name).is_file():
            raise GraphFileError(f"{path}: missing {name} (not a circuit-atlas graph directory)")
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GraphFileError(f"{path / 'meta.json'}: not valid JSON ({exc})") from exc
    return validate_meta(meta, path / "meta.json")


# Columns of nodes.parquet / edges.parquet that may not hold nulls: a node's id, type, place and
# indices (-1 where they do not apply), an edge's ends and weight.
_NOT_NULL = {"nodes": ("node_id", "type", "layer", "pos", "feature", "token_id"),
             "edges": ("source", "target", "weight")}


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple))


def _is_str_list(value: Any) -> bool:
    return _is_list(value) and all(isinstance(v, str) for v in value)


def _is_int_list(value: Any) -> bool:
    return _is_list(value) and all(_is_int(v) for v in value)


# meta.json fields: (check, what it must be). Required fields may not be null; optional ones
# may be absent or null.
_META_REQUIRED: dict[str, tuple[Any, str]] = {
    "graph_id": (lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string"),
    "prompt": (lambda v: isinstance(v, str), "a string"),
    "tokens": (_is_str_list, "a list of strings"),
    "token_ids": (_is_int_list, "a list of integers"),
    "model": (lambda v: isinstance(v, str), "a string"),
    "scan": (lambda v: isinstance(v, str), "a string"),
    "n_layers": (lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
}
_META_OPTIONAL: dict[str, tuple[Any, str]] = {
    "settings": (lambda v: isinstance(v, dict), "an object"),
    "scores": (lambda v: isinstance(v, dict) and all(x is None or _is_number(x) for x in v.values()),
               "an object of numbers (or nulls)"),
    "prompt_props": (lambda v: isinstance(v, dict), "an object"),
    "logit_tokens": (lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
                     "an object of strings"),
    "supernodes": (lambda v: _is_list(v) and all(_is_list(x) and all(isinstance(y, str) for y in x) for x in v),
                   "a list of lists of strings"),
    "supernode_records": (lambda v: _is_list(v) and all(isinstance(r, dict) and isinstance(r.get("key"), str) for r in v),
                          "a list of objects with a string 'key'"),
    "import_warnings": (_is_str_list, "a list of strings"),
    "format_version": (_is_int, "an integer"),
    "library_version": (lambda v: isinstance(v, str), "a string"),
    "created_at": (lambda v: isinstance(v, str), "a string"),
}
_PROPS_OPTIONAL: dict[str, tuple[Any, str]] = {
    "tags": (_is_str_list, "a list of strings"),
    "corpus": (lambda v: isinstance(v, str), "a string"),
    "group": (lambda v: isinstance(v, (str, int)) and not isinstance(v, bool), "a string"),
    "expected": (lambda v: isinstance(v, str), "a string"),
    "top_token": (lambda v: isinstance(v, str), "a string"),
    "external_id": (lambda v: isinstance(v, (str, int)) and not isinstance(v, bool), "a string"),
    "correct": (lambda v: isinstance(v, (bool, np.bool_)), "true or false"),
}


def _shown(value: Any) -> str:
    """A value as the user wrote it, cut to one short line."""
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    text = " ".join(text.split())
    return text if len(text) <= 60 else text[:57] + "..."


def validate_meta(meta: Any, source: str | os.PathLike = "meta.json") -> dict[str, Any]:
    """Check the type of every meta.json field a reader relies on and return ``meta``; a wrong one
    raises GraphFileError in one line naming ``source`` (the file) and the field, so a bad graph
    is reported instead of failing later, deep in a load, with a traceback."""
    if not isinstance(meta, dict):
        raise GraphFileError(f"{source}: must hold a JSON object, not {_shown(meta)}")

    def check(fields: dict[str, tuple[Any, str]], values: dict[str, Any], prefix: str, required: bool) -> None:
        for key, (ok, kind) in fields.items():
            if key not in values or (not required and values[key] is None):
                if required:
                    raise GraphFileError(f"{source}: lacks '{prefix}{key}' ({kind})")
                continue
            if not ok(values[key]):
                raise GraphFileError(f"{source}: '{prefix}{key}' must be {kind}, not {_shown(values[key])}")

    check(_META_REQUIRED, meta, "", required=True)
    if len(meta["tokens"]) != len(meta["token_ids"]):
        raise GraphFileError(f"{source}: 'tokens' ({len(meta['tokens'])}) and 'token_ids' "
                             f"({len(meta['token_ids'])}) must have the same length")
    check(_META_OPTIONAL, meta, "", required=False)
    check(_PROPS_OPTIONAL, meta.get("prompt_props") or {}, "prompt_props.", required=False)
    return meta
