"""Commands of circuit_atlas.ingest (registered on the main CLI by circuit_atlas.cli)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this sub-package's commands to the main CLI."""
