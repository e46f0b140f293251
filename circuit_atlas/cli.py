"""The one command line, `circuit-atlas`.

Each sub-package owns its commands in its own `cli.py` and adds them here through
`register(app)`, so the CLI and the library share one core and no module grows into a
grab-bag of every command.
"""

from __future__ import annotations

import importlib

import click
import typer

from circuit_atlas import __version__
from circuit_atlas.errors import CircuitAtlasError

app = typer.Typer(
    name="circuit-atlas",
    help="Attribution graphs for a whole corpus of prompts, kept in a graph database.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)

_COMMAND_MODULES = (
    "circuit_atlas.engine.cli",
    "circuit_atlas.store.cli",
    "circuit_atlas.ingest.cli",
    "circuit_atlas.queries.cli",
    "circuit_atlas.queries.supernodes_cli",
    "circuit_atlas.app.cli",
    "circuit_atlas.demo",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"circuit-atlas {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Attribution graphs for a whole corpus of prompts, kept in a graph database."""


for _name in _COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def main() -> None:
    """Entry point: user-facing errors become a one-line message and a non-zero exit."""
    from rich.console import Console

    try:
        app(standalone_mode=False)
    except CircuitAtlasError as exc:
        from rich.markup import escape

        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, markup=True)
        raise SystemExit(exc.exit_code) from None
    except click.exceptions.Abort:
        raise SystemExit(130) from None
    except click.exceptions.ClickException as exc:
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except click.exceptions.Exit as exc:
        raise SystemExit(exc.exit_code) from None


if __name__ == "__main__":
    main()
