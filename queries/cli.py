"""Commands of circuit_atlas.queries: `query` (the library) and `cypher` (ad-hoc, read-only)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Optional

import pandas as pd
import typer

from circuit_atlas.queries.runner import QueryError

FORMATS = ("table", "csv", "json", "parquet")
INT64 = (-(2**63), 2**63 - 1)


def checked_value(name: str, value: Any) -> Any:
    """A JSON parameter value the stores can take: integers within int64, finite numbers."""
    if isinstance(value, list):
        return [checked_value(name, v) for v in value]
    if isinstance(value, dict):
        return {k: checked_value(name, v) for k, v in value.items()}
    if isinstance(value, int) and not isinstance(value, bool) and not INT64[0] <= value <= INT64[1]:
        raise QueryError(f"parameter {name}: {value} is outside the 64-bit integer range")
    if isinstance(value, float) and not math.isfinite(value):
        raise QueryError(f"parameter {name}: {value} is not a finite number")
    return value


def parse_params(items: list[str], typed: bool) -> dict[str, Any]:
    """``k=v`` pairs into a dict. Library queries coerce by their declared types (typed=False
    keeps strings); ad-hoc Cypher reads a value as JSON when it parses (numbers, true, lists),
    and refuses integers outside int64 and non-finite numbers (the stores cannot take them)."""
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
                parsed = json.loads(value)
            except (json.JSONDecodeError, RecursionError):
                parsed = value
            out[name] = checked_value(name, parsed)
            continue
        out[name] = value
    return out


def refuse_writes(statement: str, command: str = "cypher") -> str:
    """The statement to run (without a final ';'), or ReadOnlyViolation (one line naming the
    refused token and where it stands) unless it is one pure read: see store/cypher_guard.py."""
    from circuit_atlas.store import cypher_guard

    cypher_guard.require_read(statement, f"`{command}` is read-only, refused")
    return cypher_guard.without_terminator(statement)


def prepare_out(out: Optional[Path]) -> None:
    """Make the folder of ``--out`` (before the query runs), or say in one line why it cannot be."""
    if out is None:
        return
    path = Path(out).expanduser()
    if path.is_dir():
        raise QueryError(f"--out {out}: is a directory; name a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise QueryError(f"--out {out}: cannot create its folder {path.parent} ({exc.strerror or exc})") from None


def _cell(v: Any) -> Any:
    if hasattr(v, "tolist") and not isinstance(v, str):
        v = v.tolist()
    return json.dumps(v, default=str) if isinstance(v, (list, dict, tuple)) else v


LONG_CELL = 200  # characters of a list or long text shown in a cell before "… (+N characters)"


def _text(v: Any) -> str:
    v = _cell(v)
    text = f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))
    return text if len(text) <= LONG_CELL else f"{text[:LONG_CELL]}… (+{len(text) - LONG_CELL} characters; --format json for all)"


def print_table(df: pd.DataFrame, title: str) -> None:
    """A table when its columns fit the terminal at their full width; otherwise one block of
    `field  value` lines per row (as psql's expanded display), so no key or number is ever cut."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    rows = [[_text(v) for v in row] for row in df.itertuples(index=False)]
    cols = [str(c) for c in df.columns]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]
    if sum(widths) + 3 * len(cols) + 1 <= console.width:
        table = Table(title=title or None)
        for c in cols:
            table.add_column(c, no_wrap=True)
        for r in rows:
            table.add_row(*r)
        console.print(table)
        return
    if title:
        console.print(f"[bold]{title}[/]", highlight=False)
    for n, r in enumerate(rows, start=1):
        block = Table.grid(padding=(0, 2))
        block.add_column(style="bold", no_wrap=True)
        block.add_column(overflow="fold")
        for c, v in zip(cols, r):
            block.add_row(c, v)
        console.rule(f"row {n}", align="left", style="dim")
        console.print(block, highlight=False)


def write_frame(df: pd.DataFrame, fmt: str, out: Optional[Path], title: str = "") -> None:
    """Print or save a result in one of FORMATS."""
    if fmt not in FORMATS:
        raise QueryError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "parquet":
        if out is None:
            raise QueryError("--format parquet needs --out FILE")
        prepare_out(out)
        try:
            df.to_parquet(Path(out).expanduser(), index=False)
        except OSError as exc:
            raise QueryError(f"--out {out}: cannot write ({exc.strerror or exc})") from None
        typer.echo(f"{len(df)} rows -> {out}", err=True)
        return
    if fmt == "table" and out is None:
        print_table(df, title)
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
        prepare_out(out)
        try:
            Path(out).expanduser().write_text(text)
        except OSError as exc:
            raise QueryError(f"--out {out}: cannot write ({exc.strerror or exc})") from None
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
        prepare_out(out)
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
        """Run one ad-hoc Cypher read; anything but one pure read is refused (exit 2); docs/guides/queries.md says what passes."""
        statement = refuse_writes(statement)
        params = parse_params(param, typed=True)
        if fmt not in FORMATS:
            raise QueryError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
        prepare_out(out)
        from circuit_atlas.store import open_store

        with open_store(store_url, read_only=True) as store:
            df = store.read(statement, params)
        write_frame(df, fmt, out)
