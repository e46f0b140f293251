"""Causal LMs from Hugging Face and their per-architecture adapters (hook points, norms,
attention), behind one interface the replacement model uses."""

# `circuit_atlas.engine.models` was one module before the sub-packages: its names stay importable here.
from circuit_atlas.engine.models.loading import (  # noqa: F401
    DEMO_MODEL,
    DEMO_MODEL_ID,
    DEMO_PACKAGE,
    LoadedModel,
    ModelLoadError,
    PromptError,
    TINY_ARCHS,
    demo_gguf,
    load_model,
    load_model_and_transcoders,
    tiny_model,
    tiny_tokenizer,
    wrap,
)
