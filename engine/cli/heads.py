"""`circuit-atlas heads`: split one edge of a graph across the attention heads of a layer."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table


def heads_command(
    graph: str = typer.Argument(..., help="A graph directory, or with --store the id of a stored prompt."),
    source: str = typer.Argument(..., help="Source node id, e.g. 2_113_5 (feature), 1_-1_4 (error), E_40_3 (embedding)."),
    target: str = typer.Argument(..., help="Target node id: a feature or a logit (custom targets included)."),
    model: str = typer.Option(..., "--model", "-m", help="The model the graph was made with (as for `attribute`)."),
    transcoders: str = typer.Option(..., "--transcoders", "-t", help="The transcoders the graph was made with."),
    layer: Optional[list[int]] = typer.Option(
        None, "--layer", "-l", help="Attention layer to split at; repeatable (default: every layer between source and target)."
    ),
    store: Optional[str] = typer.Option(
        None, "--store", help="Read GRAPH as a prompt id from this store (embedded:PATH, bolt://host:port)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the parts as JSON rows instead of tables."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (or cuda:N)."),
) -> None:
    """Per-head split of an edge (exact under the graph's frozen patterns and norms): what passes
    through each head of the layer's attention, and what bypasses it; the parts sum to the edge.

    Runs in float32 (the split is checked against the edge to float32 rounding)."""
    from circuit_atlas.engine.attribution import head_loadings as hl
    from circuit_atlas.engine.formats.graph_files import GraphFile
    from circuit_atlas.engine.models.loading import load_model
    from circuit_atlas.engine.transcoders.transcoder_set import load_transcoders

    import torch

    if store is None and not Path(graph).is_dir():
        raise hl.HeadLoadingError(f"{graph}: no such graph directory (give --store to read a stored prompt id)")
    lm = load_model(model, dtype="float32", device=device)
    tc = load_transcoders(transcoders, device=device, dtype=torch.float32)
    tc.check_fits(lm.n_layers, lm.d_model, source=transcoders)
    if store is None:
        results = hl.graph_head_loadings(lm, tc, GraphFile.load(graph), source, target, layer)
    else:
        from circuit_atlas.store import open_store

        with open_store(store, read_only=True) as s:
            results = hl.stored_head_loadings(lm, tc, s, graph, source, target, layer)
    if as_json:
        print(json.dumps([_summary(r) for r in results], indent=1))
        return
    console = Console()
    for r in results:
        table = Table(title=f"{source} -> {target}, attention layer {r.layer}")
        for col in ("part", "value", "share of edge"):
            table.add_column(col, justify="right" if col != "part" else "left")
        for row in r.rows():
            table.add_row(row["part"], f"{row['value']:+.6g}", _pct(row["share"]))
        table.add_row("sum of parts", f"{r.total:+.6g}", _pct(r.total / r.edge if r.edge else float("nan")))
        console.print(table)
        stored = "pruned from the graph" if r.stored_weight is None else f"{r.stored_weight:+.6g}"
        console.print(f"edge recomputed {r.edge:+.6g}; in the graph {stored}; "
                      f"parts - edge = {r.total - r.edge:+.3g}")


def _pct(x: float) -> str:
    return "" if math.isnan(x) else f"{100 * x:.1f}%"


def _summary(r) -> dict:
    return {
        "source": r.source,
        "target": r.target,
        "layer": r.layer,
        "heads": [float(v) for v in r.heads.tolist()],
        "bypass": r.bypass,
        "sum": r.total,
        "edge": r.edge,
        "stored_weight": r.stored_weight,
    }


def register(app: typer.Typer) -> None:
    """Add these commands to the main CLI."""
    app.command("heads")(heads_command)
