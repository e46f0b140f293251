"""Commands of circuit_atlas.engine, one module per job so each stays small."""

from __future__ import annotations

import importlib

import typer

_MODULES = (
    "circuit_atlas.engine.attribute_cli",  # attribute
    "circuit_atlas.engine.train_cli",  # train, evaluate-transcoders
    "circuit_atlas.engine.intervene_cli",  # intervene, validate-circuit
    "circuit_atlas.engine.heads_cli",  # heads
)


def register(app: typer.Typer) -> None:
    """Add the engine's commands to the main CLI."""
    for name in _MODULES:
        importlib.import_module(name).register(app)
