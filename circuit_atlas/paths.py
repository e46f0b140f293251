"""Where circuit-atlas keeps its caches: one place, so every part agrees."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """``$CIRCUIT_ATLAS_HOME``, default ``~/.circuit-atlas`` (models, transcoders, corpora, the
    default store and graph files live under it). Read at call time, so tests can point it elsewhere."""
    return Path(os.environ.get("CIRCUIT_ATLAS_HOME", Path.home() / ".circuit-atlas"))
