"""Transcoders (per-layer, cross-layer, skip) and the files they come in: our safetensors,
circuit-tracer's format, GemmaScope's params.npz."""

# `circuit_atlas.engine.transcoders` was one module before the sub-packages: its names stay importable here.
from circuit_atlas.engine.transcoders.transcoder_set import (  # noqa: F401
    ACTIVATIONS,
    CONFIG_NAME,
    FORMAT,
    KINDS,
    MODEL_KINDS,
    TranscoderFileError,
    TranscoderMismatchError,
    TranscoderSet,
    load_transcoders,
    random_transcoders,
)
