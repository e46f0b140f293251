"""Commands of circuit_atlas.queries: `query` (the library) and `cypher` (ad-hoc, read-only)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

import pandas as pd
import typer

from circuit_atlas.queries.runner import QueryError

FORMATS = ("table", "csv", "json", "parquet")
# Clauses that write or change the schema; refused before anything reaches the store (which
# refuses them too, in a read-only transaction).
_WRITE = re.compile(r"\b(CREATE|MERGE|DELETE|DETACH|SET|REMOVE|DROP|ALTER|COPY|INSTALL|LOAD\s+EXTENSION|IMPORT|EXPORT)\b", re.I)
_STRINGS = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|`[^`]*`")


def parse_params(items: list[str], typed: bool) -> dict[str, Any]:
    """``k=v`` pairs into a dict. Library queries coerce by their declared types (typed=False
    keeps strings); ad-hoc Cypher reads a value as JSON when it parses (numbers, true, lists)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise QueryError(f"--param {item!r}: expected NAME=VALUE")
        name, value = item.split("=", 1)
        name = name.strip()
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise QueryError(f"--param {item!r}: {name!r} is not a parameter name")
        if typed:
            try:
                out[name] = json.loads(value)
                continue
            except json.JSONDecodeError:
                pass
        out[name] = value
    return out


def refuse_writes(statement: str) -> None:
    """Raise ReadOnlyViolation when a statement (outside string literals) has a write clause."""
    from circuit_atlas.store.base import ReadOnlyViolation

    m = _WRITE.search(_STRINGS.sub("''", statement))
    if m:
        raise ReadOnlyViolation(f"`cypher` is read-only: the statement contains {m.group(1).upper()}; writes go through ingest and the store commands")


def _cell(v: Any) -> Any:
    if hasattr(v, "tolist") and not isinstance(v, str):
        v = v.tolist()
    return json.dumps(v, default=str) if isinstance(v, (list, dict, tuple)) else v


def write_frame(df: pd.DataFrame, fmt: str, out: Optional[Path], title: str = "") -> None:
    """Print or save a result in one of FORMATS."""
    if fmt not in FORMATS:
        raise QueryError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "parquet":
        if out is None:
            raise QueryError("--format parquet needs --out FILE")
        df.to_parquet(out, index=False)
        typer.echo(f"{len(df)} rows -> {out}", err=True)
        return
    if fmt == "table" and out is None:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title or None)
        for c in df.columns:
            table.add_column(str(c))
        for row in df.itertuples(index=False):
            cells = []
            for v in row:
                v = _cell(v)
                text = f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))
                cells.append(text if len(text) <= 60 else text[:57] + "...")
            table.add_row(*cells)
        Console().print(table)
        typer.echo(f"{len(df)} rows", err=True)
        return
    flat = df.copy()
    for c in flat.columns:
        flat[c] = flat[c].map(_cell) if flat[c].dtype == object else flat[c]
    if fmt == "json":
        text = df.to_json(orient="records", default_handler=str)
    else:
        text = flat.to_csv(index=False, sep="\t" if fmt == "table" else ",")
    if out is None:
        typer.echo(text)
    else:
        Path(out).write_text(text)
        typer.echo(f"{len(df)} rows -> {out}", err=True)


def list_text() -> str:
    """Every query with its description, parameters and columns (for `query --list`)."""
    from circuit_atlas.queries.runner import list_queries

    lines = []
    for q in list_queries():
        lines.append(f"{q.name}{'  [uses LINKS]' if q.uses_links else ''}\n  {q.description}")
        for p in q.params.values():
            default = "required" if p.required else f"default {json.dumps(p.default)}"
            least = "" if p.min is None else f", at least {p.min:g}"
            lines.append(f"    --param {p.name}=<{p.type}>  ({default}{least}) {p.help}")
        lines.append(f"  columns: {', '.join(q.columns)}")
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    """Add `query` and `cypher` to the main CLI."""

    @app.command("query")
    def query(
        name: Optional[str] = typer.Argument(None, help="Library query to run (see --list)."),
        param: list[str] = typer.Option([], "--param", "-p", help="Parameter NAME=VALUE; repeat for several. Lists: a,b,c or a JSON list."),
        fmt: str = typer.Option("table", "--format", "-f", help="Output: table, csv, json or parquet (parquet needs --out)."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the result to this file instead of the terminal."),
        store_url: Optional[str] = typer.Option(None, "--store", help="Store URL (embedded:PATH | bolt://... | neo4j://...); default CIRCUIT_ATLAS_STORE or the embedded default."),
        list_: bool = typer.Option(False, "--list", "-l", help="List the library's queries, their parameters and columns, and exit."),
    ) -> None:
        """Run a query of the Cypher library (read-only) and print or save its rows."""
        if list_:
            typer.echo(list_text())
            return
        if not name:
            raise QueryError("name a query (see `circuit-atlas query --list`)")
        from circuit_atlas.queries.runner import load_query, run_query

        q = load_query(name)
        params = q.validate(parse_params(param, typed=False))  # fail before opening the store
        if fmt not in FORMATS:
            raise QueryError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
        from circuit_atlas.store import open_store

        with open_store(store_url, read_only=True) as store:
            df = run_query(store, name, params)
        write_frame(df, fmt, out, title=name)

    @app.command("cypher")
    def cypher(
        statement: str = typer.Argument(..., help="One read-only Cypher statement, e.g. \"MATCH (p:Prompt) RETURN count(*) AS n\"."),
        param: list[str] = typer.Option([], "--param", "-p", help="Parameter NAME=VALUE (JSON values: numbers, true/false, lists); use as $NAME."),
        fmt: str = typer.Option("table", "--format", "-f", help="Output: table, csv, json or parquet (parquet needs --out)."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the result to this file instead of the terminal."),
        store_url: Optional[str] = typer.Option(None, "--store", help="Store URL (embedded:PATH | bolt://... | neo4j://...); default CIRCUIT_ATLAS_STORE or the embedded default."),
    ) -> None:
        """Run ad-hoc Cypher read-only; statements that write are refused with a non-zero exit."""
        refuse_writes(statement)
        params = parse_params(param, typed=True)
        from circuit_atlas.store import open_store

        with open_store(store_url, read_only=True) as store:
            df = store.read(statement, params)
        write_frame(df, fmt, out)
