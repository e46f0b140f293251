"""Import circuit-tracer ``.pt`` graphs (what its ``Graph.to_pt`` saves) as GraphFiles.

The file is a pickled dict: ``input_string``, ``input_tokens`` (n_pos), ``active_features``
(n_active, 3: layer, pos, feature), ``selected_features`` (indices into active_features, one
per feature node), ``activation_values``, ``adjacency_matrix`` (N, N; rows are targets, columns
sources, nodes ordered [selected features, errors (layer-major, n_layers * n_pos), tokens
(n_pos), logits]), ``logit_targets`` (records with ``vocab_idx`` and ``token_str``; older files:
a tensor of token ids, or ``logit_tokens``), ``logit_probabilities``, ``cfg`` (the model config:
``n_layers``, ``model_name``, ``tokenizer_name`` ...), ``scan_name`` (older: ``scan``),
``vocab_size``. See docs/reference/formats.md.

Loading is safe: ``torch.load(weights_only=True)``, with circuit-tracer's own classes (config,
LogitTarget) mapped to inert stand-ins that only record their fields, so no code from the file
runs and circuit-tracer need not be installed.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from circuit_atlas.engine.formats import graph_files as gf
from circuit_atlas.engine.attribution import pruning
from circuit_atlas.errors import CircuitAtlasError


class CircuitTracerFormatError(CircuitAtlasError, ValueError):
    """A .pt file that is not a readable circuit-tracer graph; names the file and the problem."""


class _StandIn:
    """Inert replacement for a class pickled in the file: keeps positional args and state."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "_StandIn":
        obj = object.__new__(cls)
        obj.__dict__["_args"] = args
        obj.__dict__.update(kwargs)
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and (state[0] is None or isinstance(state[0], dict)):
            state = {**(state[0] or {}), **(state[1] or {})}  # (dict, slots) form
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_state"] = state

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.__dict__}>"


def _safe_load(path: Path) -> Any:
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as exc:
        raise CircuitTracerFormatError(f"{path}: not a readable torch file ({exc})") from exc
    stand_ins = [(type(name.rsplit(".", 1)[-1], (_StandIn,), {}), name) for name in unsafe]
    try:
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(str(path), weights_only=True, map_location="cpu")
    except Exception as exc:
        raise CircuitTracerFormatError(f"{path}: could not be loaded safely ({type(exc).__name__}: {exc})") from exc


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _logit_ids(d: dict[str, Any], path: Path) -> tuple[list[int], list[str | None]]:
    lt = d.get("logit_targets", d.get("logit_tokens"))
    if lt is None:
        raise CircuitTracerFormatError(f"{path}: lacks 'logit_targets' (or the older 'logit_tokens')")
    if isinstance(lt, torch.Tensor):
        return [int(t) for t in lt.tolist()], [None] * lt.numel()
    ids, strs = [], []
    for t in lt:
        if isinstance(t, (int, np.integer)):
            ids.append(int(t))
            strs.append(None)
            continue
        vid = _get(t, "vocab_idx")
        tok = _get(t, "token_str")
        args = getattr(t, "_args", None) or (tuple(t) if isinstance(t, tuple) else ())
        if vid is None and len(args) >= 2:  # a NamedTuple LogitTarget(token_str, vocab_idx)
            tok, vid = args[0], args[1]
        if vid is None:
            raise CircuitTracerFormatError(f"{path}: a logit target has no vocab_idx ({t!r})")
        ids.append(int(vid))
        strs.append(str(tok) if tok not in (None, "") else None)
    return ids, strs


def _custom_target_ids(ids: list[int], strs: list[str | None], vocab_size: Any, path: Path) -> list[int]:
    """circuit-tracer names a custom target (``CustomTarget``) by a virtual index, vocab size plus
    its position among the targets, so every graph's first custom target would be one Token in the
    store whatever it is; ours by a hash of its label (``attribution.custom_target_id``), the id
    our own graph of the same target carries. Without the model's vocabulary size nothing is
    renamed (a real token past the tokenizer's vocabulary must keep its id)."""
    if vocab_size is None:
        return ids
    from circuit_atlas.engine.attribution.attribute import custom_target_id

    out = []
    for i, label in zip(ids, strs):
        if i >= int(vocab_size):
            if not label:
                raise CircuitTracerFormatError(f"{path}: logit target {i} lies past the vocabulary ({vocab_size}) and has no label")
            i = custom_target_id(label, int(vocab_size))
        out.append(i)
    return out


def read_circuit_tracer_pt(
    path: str | os.PathLike,
    *,
    prune: bool = True,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    tokenizer: Any = None,
    model: str | None = None,
    scan: str | None = None,
) -> gf.GraphFile:
    """A GraphFile from a circuit-tracer ``.pt`` graph, pruned like ``create_graph_files``
    (node/edge thresholds) unless ``prune=False`` (then every nonzero edge is kept).

    ``tokenizer`` (a Hugging Face tokenizer) decodes the token strings; without it they are
    written as ``[id]``. ``model``/``scan`` override the names found in the file."""
    p = Path(path)
    if not p.is_file():
        raise CircuitTracerFormatError(f"{p}: no such file")
    d = _safe_load(p)
    if not isinstance(d, dict):
        d = dict(getattr(d, "__dict__", {}))  # a whole pickled Graph object
    for key in ("input_tokens", "adjacency_matrix", "active_features", "selected_features", "activation_values", "logit_probabilities"):
        if key not in d:
            raise CircuitTracerFormatError(f"{p}: lacks '{key}' (not a circuit-tracer graph)")
    tokens = torch.as_tensor(d["input_tokens"]).long().reshape(-1)
    A = torch.as_tensor(d["adjacency_matrix"]).to(torch.float32)
    active = torch.as_tensor(d["active_features"]).long()
    selected = torch.as_tensor(d["selected_features"]).long().reshape(-1)
    act_vals = torch.as_tensor(d["activation_values"]).to(torch.float32).reshape(-1)
    probs = torch.as_tensor(d["logit_probabilities"]).to(torch.float32).reshape(-1)
    logit_ids, logit_strs = _logit_ids(d, p)
    cfg = d.get("cfg")
    # virtual ids start at the logits' size (cfg.d_vocab); the file's own vocab_size is the
    # tokenizer's, smaller on models with added tokens, whose real targets would look virtual
    logit_ids = _custom_target_ids(logit_ids, logit_strs, _get(cfg, "d_vocab"), p)
    n_pos, n_feat, n_logit = int(tokens.numel()), int(selected.numel()), len(logit_ids)
    N = int(A.shape[0]) if A.dim() == 2 else -1
    if A.dim() != 2 or A.shape[0] != A.shape[1]:
        raise CircuitTracerFormatError(f"{p}: adjacency_matrix has shape {tuple(A.shape)}, expected square (N, N)")
    if active.dim() != 2 or active.shape[1] != 3:
        raise CircuitTracerFormatError(f"{p}: active_features has shape {tuple(active.shape)}, expected (n, 3)")
    if probs.numel() != n_logit:
        raise CircuitTracerFormatError(f"{p}: {n_logit} logit targets but {probs.numel()} logit probabilities")
    for name, t in (("adjacency_matrix", A), ("activation_values", act_vals), ("logit_probabilities", probs)):
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise CircuitTracerFormatError(f"{p}: {name} holds {bad} non-finite values (NaN/inf); refused")
    n_err = N - n_feat - n_pos - n_logit
    n_layers = _get(cfg, "n_layers")
    if n_layers is None:
        n_layers = n_err // n_pos if n_pos else 0
    n_layers = int(n_layers)
    if n_err != n_layers * n_pos or n_err < 0:
        raise CircuitTracerFormatError(
            f"{p}: adjacency_matrix is {N} x {N}, but {n_feat} features + {n_layers} layers x {n_pos} positions of errors "
            f"+ {n_pos} tokens + {n_logit} logits = {n_feat + n_layers * n_pos + n_pos + n_logit}"
        )
    if n_feat and int(selected.max()) >= active.shape[0]:
        raise CircuitTracerFormatError(f"{p}: selected_features points past active_features ({active.shape[0]} rows)")
    feats = active[selected] if n_feat else torch.zeros(0, 3, dtype=torch.long)
    if act_vals.numel() == active.shape[0]:
        acts = act_vals[selected] if n_feat else act_vals[:0]
    elif act_vals.numel() == n_feat:
        acts = act_vals
    else:
        raise CircuitTracerFormatError(
            f"{p}: activation_values has {act_vals.numel()} values; expected {active.shape[0]} (active) or {n_feat} (selected)"
        )

    fl, fp, ff = (feats[:, i].numpy() for i in range(3))
    err_layer = np.repeat(np.arange(n_layers), n_pos)
    err_pos = np.tile(np.arange(n_pos), n_layers)
    tok = tokens.numpy()
    lid = np.asarray(logit_ids, dtype=np.int64)
    ids = gf.node_ids(n_layers, fl, fp, ff, err_layer, err_pos, tok, lid)
    if len(set(ids)) != len(ids):
        raise CircuitTracerFormatError(f"{p}: node ids repeat (the same feature selected twice, or repeated logit targets)")
    kinds = torch.tensor(
        [pruning.FEATURE] * n_feat + [pruning.ERROR] * n_err + [pruning.EMBEDDING] * n_pos + [pruning.LOGIT] * n_logit
    )
    weights = torch.zeros(N)
    weights[N - n_logit :] = probs
    row_nodes = torch.arange(N)
    replacement, completeness = pruning.graph_scores(A, row_nodes, kinds, weights)
    if prune:
        res = pruning.prune(A, row_nodes, kinds, weights, node_threshold, edge_threshold)
        infl, node_mask, edge_mask = res.node_influence, res.node_mask, res.edge_mask
    else:
        infl = pruning.node_influence(A, row_nodes, weights)
        node_mask, edge_mask = torch.ones(N, dtype=torch.bool), A != 0
    labels: list[str | None] = [None] * (N - n_logit) + [
        None if s is None else f'Output "{s}" (p={float(pr):.3f})' for s, pr in zip(logit_strs, probs.tolist())
    ]
    nodes = gf.node_frame(ids, n_layers, fl, fp, ff, acts.numpy(), err_layer, err_pos, tok, lid, infl.numpy(),
                          probs.numpy(), labels)
    t_idx, s_idx = torch.nonzero(edge_mask, as_tuple=True)
    id_arr = np.asarray(ids, dtype=object)
    edges = pd.DataFrame(
        {
            "source": id_arr[s_idx.numpy()],
            "target": id_arr[t_idx.numpy()],
            "weight": A[t_idx, s_idx].numpy().astype(np.float32),
        }
    )
    nodes = nodes[node_mask.numpy()].reset_index(drop=True)

    scan_name = scan or d.get("scan_name", d.get("scan"))
    if isinstance(scan_name, (list, tuple)):
        scan_name = "custom-" + hashlib.sha256("-".join(map(str, scan_name)).encode()).hexdigest()[:12]
    scan_name = str(scan_name or "unknown")
    model_id = model or _get(cfg, "model_name") or _get(cfg, "tokenizer_name") or "unknown"
    token_ids = [int(t) for t in tok]
    if tokenizer is not None:
        token_strs = [tokenizer.decode([t]) for t in token_ids]
    else:
        token_strs = [f"[{t}]" for t in token_ids]
    settings = {
        "node_threshold": float(node_threshold) if prune else None,
        "edge_threshold": float(edge_threshold) if prune else None,
        "max_feature_nodes": None,
        "pruned": bool(prune),
        "logit_targets": None,
    }
    meta = {
        "graph_id": gf.graph_id(str(model_id), scan_name, token_ids, settings, nodes, edges),
        "prompt": str(d.get("input_string", "")),
        "tokens": token_strs,
        "token_ids": token_ids,
        "model": str(model_id),
        "scan": scan_name,
        "n_layers": n_layers,
        "settings": settings,
        "scores": {"replacement_score": replacement, "completeness_score": completeness},
        "prompt_props": {},
        "import": {"format": "circuit-tracer-pt", "file": p.name, "vocab_size": d.get("vocab_size")},
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    graph = gf.GraphFile(meta=meta, nodes=nodes, edges=edges)
    graph.validate()
    return graph


def is_circuit_tracer_pt(path: str | os.PathLike) -> bool:
    """A ``.pt`` file (the import command's way to tell formats apart)."""
    q = Path(path)
    return q.is_file() and q.suffix == ".pt"
