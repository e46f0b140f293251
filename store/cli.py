"""Commands of circuit_atlas.store (registered on the main CLI by circuit_atlas.cli):
`circuit-atlas doctor` and `circuit-atlas store stats|delete-prompt|rebuild-links|export-csv|init`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

STORE_HELP = "Store URL: embedded:PATH, bolt://host:port or neo4j://host:port (default: $CIRCUIT_ATLAS_STORE or ~/.circuit-atlas/store)."

store_app = typer.Typer(help="Inspect and maintain the graph store.", no_args_is_help=True)


def _open(url: Optional[str], read_only: bool = False):
    from circuit_atlas.store import open_store

    return open_store(url, read_only=read_only)


def doctor(
    store: Optional[str] = typer.Option(None, "--store", help=STORE_HELP),
    model: Optional[str] = typer.Option(None, "--model", help="Also load this model (HF id, directory or GGUF) to check it."),
    transcoders: Optional[str] = typer.Option(None, "--transcoders", help="Also load this transcoder set to check it."),
) -> None:
    """Check the store (backend, schema version, counts) and optionally a model and transcoders."""
    from circuit_atlas.store.connect import default_url

    url = store or default_url()
    with _open(url, read_only=True) as s:  # a check reads: it never creates or changes a store
        st = s.stats()
        typer.echo(f"store: {url} (backend {st['backend']}, schema version {st['schema_version']})")
        typer.echo("counts: " + ", ".join(f"{k} {v}" for k, v in st.items() if k not in ("backend", "url", "schema_version")))
        if s.derived_stale():
            typer.echo(f"derived layer: stale (a write was interrupted or is running): `circuit-atlas store rebuild-links "
                       f"--store {url}` rebuilds it")
        else:
            typer.echo("derived layer: fresh")
    if model:
        from circuit_atlas.engine.models.loading import load_model

        m = load_model(model)
        typer.echo(f"model: {model} loaded ({type(m).__name__})")
    if transcoders:
        from circuit_atlas.engine.transcoders.transcoder_set import load_transcoders

        t = load_transcoders(transcoders)
        typer.echo(f"transcoders: {transcoders} loaded ({type(t).__name__})")
    typer.echo("ok")


@store_app.command("stats")
def stats(
    store: Optional[str] = typer.Option(None, "--store", help=STORE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Counts of every node and relationship type (read-only: never creates or changes a store)."""
    with _open(store, read_only=True) as s:
        st = s.stats()
    typer.echo(json.dumps(st) if as_json else "\n".join(f"{k}: {v}" for k, v in st.items()))


@store_app.command("init")
def init(store: Optional[str] = typer.Option(None, "--store", help=STORE_HELP)) -> None:
    """Create the schema (tables or constraints) in an empty store; harmless if it exists."""
    with _open(store) as s:
        s.init_schema()
        typer.echo(f"schema version {s.schema_version()} at {s.url}")


@store_app.command("load")
def load(
    graphs: list[Path] = typer.Argument(..., help="Graph directories (nodes.parquet, edges.parquet, meta.json)."),
    store: Optional[str] = typer.Option(None, "--store", help=STORE_HELP),
) -> None:
    """Bulk-load graph directories; graphs already stored are skipped, bad ones listed (exit 2)
    after the good ones are written; the derived layer is rebuilt before it returns."""
    from circuit_atlas.store import StoreError

    with _open(store) as s:
        rep = s.write_graphs(graphs, progress=True)
    typer.echo(f"written {len(rep.written)}, skipped {len(rep.skipped)}, failed {len(rep.failed)}, {rep.nodes} nodes, "
               f"{rep.edges} edges in {rep.seconds:.1f}s")
    for directory, reason in rep.failed:
        typer.echo(f"failed: {directory}: {reason}", err=True)
    if rep.failed:
        raise StoreError(f"{len(rep.failed)} of {len(graphs)} graph directories could not be loaded (listed above); "
                         "the others were written")


@store_app.command("delete-prompt")
def delete_prompt(
    prompt_id: str = typer.Argument(..., help="The prompt's graph id."),
    store: Optional[str] = typer.Option(None, "--store", help=STORE_HELP),
) -> None:
    """Remove one prompt with all its nodes and edges."""
    from circuit_atlas.store import StoreError

    with _open(store) as s:
        if not s.delete_prompt(prompt_id):
            raise StoreError(f"no prompt {prompt_id!r} in {s.url}")
    typer.echo(f"deleted {prompt_id}")


@store_app.command("rebuild-links")
def rebuild_links(store: Optional[str] = typer.Option(None, "--store", help=STORE_HELP)) -> None:
    """Recompute the derived layer (recurring features, recurring subgraph, Feature-[:LINKS]->Feature)."""
    with _open(store) as s:
        n = s.rebuild_links(progress=True)
    typer.echo(f"{n} links")


@store_app.command("export-csv")
def export_csv_cmd(
    directory: Path = typer.Argument(..., help="Output directory for neo4j-admin import CSV files."),
    store: Optional[str] = typer.Option(None, "--store", help=STORE_HELP),
) -> None:
    """Write `neo4j-admin database import full` CSV files (docs/guides/neo4j.md has the command)."""
    from circuit_atlas.store.export_csv import export_csv

    with _open(store, read_only=True) as s:
        files = export_csv(s, directory)
    typer.echo(f"{len(files)} files in {directory}")


def register(app: typer.Typer) -> None:
    """Add this sub-package's commands to the main CLI."""
    app.command("doctor")(doctor)
    app.add_typer(store_app, name="store")
