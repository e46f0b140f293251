"""Commands of circuit_atlas.engine, one module per job so each stays small."""

from __future__ import annotations

import importlib

import typer

_MODULES = (
    "circuit_atlas.engine.cli.attribute",  # attribute
    "circuit_atlas.engine.cli.train",  # train, evaluate-transcoders
    "circuit_atlas.engine.cli.intervene",  # intervene, validate-circuit
    "circuit_atlas.engine.cli.heads",  # heads
)


def register(app: typer.Typer) -> None:
    """Add the engine's commands to the main CLI."""
    for name in _MODULES:
        importlib.import_module(name).register(app)
