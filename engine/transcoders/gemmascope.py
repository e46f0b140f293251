"""GemmaScope transcoders (``params.npz``) into a per-layer TranscoderSet.

GemmaScope ships one ``params.npz`` per layer with ``W_enc`` stored (d_model, d_tc) - the
transpose of circuit-tracer's layout - plus ``W_dec`` (d_tc, d_model), ``b_enc``, ``b_dec`` and
``threshold`` (JumpReLU). Layers are found from a ``layer_{i}`` part of each file's path (the
layout of google/gemma-scope-*-transcoders: ``layer_3/width_16k/average_l0_76/params.npz``), or
from config.yaml's ``transcoders`` list, in order.
"""

from __future__ import annotations

import re
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from circuit_atlas.engine.transcoders.transcoder_set import (
    TranscoderFileError,
    TranscoderMismatchError,
    TranscoderSet,
)

REQUIRED = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
# GemmaScope's Gemma-2 transcoders read the pre-MLP residual divided by the RMSNorm scale, before
# the norm's weight, and write what joins the residual (circuit-tracer's config for them)
GEMMASCOPE_HOOKS = ("ln2.hook_normalized", "hook_mlp_out")
_LAYER = re.compile(r"layer_(\d+)")


def read_npz(path: Path) -> dict[str, torch.Tensor]:
    """One GemmaScope layer in our orientation: W_enc (d_tc, d_model) etc."""
    if not path.is_file():
        raise TranscoderFileError(f"{path}: missing")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise TranscoderFileError(f"{path}: not a readable .npz file ({exc})") from exc
    missing = [k for k in REQUIRED if k not in arrays]
    if missing:
        raise TranscoderFileError(f"{path}: lacks {missing} (has {sorted(arrays)}); not a GemmaScope params.npz")
    w_enc = arrays["W_enc"]
    if w_enc.ndim != 2:
        raise TranscoderMismatchError(f"{path}: W_enc has shape {w_enc.shape}, expected (d_model, d_transcoder)")
    d_model, d_tc = w_enc.shape
    want = {"W_dec": (d_tc, d_model), "b_enc": (d_tc,), "b_dec": (d_model,), "threshold": (d_tc,)}
    for k, shape in want.items():
        if tuple(arrays[k].shape) != shape:
            raise TranscoderMismatchError(f"{path}: {k} has shape {tuple(arrays[k].shape)}, expected {shape} (W_enc is {w_enc.shape})")
    out = {k: torch.from_numpy(np.ascontiguousarray(arrays[k])) for k in REQUIRED}
    out["W_enc"] = out["W_enc"].T.contiguous()
    return out


def find_npz_layers(directory: Path) -> list[Path]:
    """The params.npz of every layer under ``directory``, ordered by the ``layer_{i}`` in its path."""
    found: dict[int, Path] = {}
    for p in sorted(directory.rglob("*.npz")):
        m = _LAYER.findall(str(p.relative_to(directory)))
        if not m:
            raise TranscoderFileError(f"{p}: cannot tell its layer (no 'layer_N' in the path)")
        layer = int(m[-1])
        if layer in found:
            raise TranscoderFileError(f"{directory}: two files for layer {layer}: {found[layer]} and {p}")
        found[layer] = p
    if not found:
        raise TranscoderFileError(f"{directory}: no .npz files")
    for i in range(max(found) + 1):
        if i not in found:
            raise TranscoderFileError(f"{directory}: no .npz file for layer {i} (layers 0..{max(found)} expected)")
    return [found[i] for i in range(len(found))]


def load_gemmascope_files(
    files: list[Path], *, cfg: dict[str, Any] | None = None, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> TranscoderSet:
    """A JumpReLU PLT from one params.npz per layer (layer i = files[i])."""
    cfg = cfg or {}
    if not cfg.get("feature_input_hook") or not cfg.get("feature_output_hook"):
        print(
            f"note: {files[0]}: no feature_input_hook/feature_output_hook given; assuming GemmaScope's "
            f"{GEMMASCOPE_HOOKS[0]} -> {GEMMASCOPE_HOOKS[1]} (recorded in the set's config.yaml when saved)",
            file=sys.stderr,
        )
    layers = [read_npz(Path(f)) for f in files]
    d_tc, d_model = layers[0]["W_enc"].shape
    with torch.device("meta"):
        tc = TranscoderSet(
            "plt", len(files), d_model, d_tc, activation="jumprelu",
            feature_input_hook=cfg.get("feature_input_hook") or GEMMASCOPE_HOOKS[0],
            feature_output_hook=cfg.get("feature_output_hook") or GEMMASCOPE_HOOKS[1],
            model_name=cfg.get("model_name"),
        )
    for l, (f, d) in enumerate(zip(files, layers)):
        if tuple(d["W_enc"].shape) != (d_tc, d_model):
            raise TranscoderMismatchError(
                f"{f}: W_enc has shape {tuple(d['W_enc'].shape[::-1])} (d_model, d_tc), layer 0 has {(d_model, d_tc)}"
            )
        for name, key in (("W_enc", "W_enc"), ("W_dec", "W_dec"), ("b_enc", "b_enc"), ("b_dec", "b_dec"), ("threshold", "threshold")):
            getattr(tc, name)[l] = torch.nn.Parameter(d[key])
    tc.source_files = [str(f) for f in files]
    first = Path(files[0])
    tc.scan = str(cfg.get("scan") or cfg.get("scan_name") or f"gemmascope:{first.parent.name if len(files) > 1 else first.stem}")
    return tc.to(device=device, dtype=dtype)


def load_gemmascope(source: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> TranscoderSet:
    """A file (one layer) or a directory holding one params.npz per layer."""
    path = Path(source)
    files = [path] if path.is_file() else find_npz_layers(path)
    return load_gemmascope_files(files, device=device, dtype=dtype)
