"""`circuit-atlas attribute`: attribution graphs for one prompt or a file of prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from circuit_atlas.errors import CircuitAtlasError


class PromptFileError(CircuitAtlasError, ValueError):
    """A --prompts file that is missing, unreadable or holds no prompt."""


def read_prompts(path: Path) -> list[str]:
    """One prompt per line; blank lines are skipped (prompts keep their inner spacing)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptFileError(f"{path}: cannot read prompts ({exc})") from exc
    prompts = [line.rstrip("\r\n") for line in text.splitlines() if line.strip()]
    if not prompts:
        raise PromptFileError(f"{path}: no prompts (expected one prompt per line)")
    return prompts


def attribute_command(
    model: str = typer.Option(..., "--model", "-m", help="Model: 'demo', a local HF directory, a .gguf file or a hub id."),
    transcoders: str = typer.Option(
        ..., "--transcoders", "-t", help="Transcoders: a directory in circuit-tracer format, GemmaScope .npz, or a hub id."
    ),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="One prompt to attribute."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="A text file with one prompt per line."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder; each graph is written to OUT/<graph_id>/."),
    node_threshold: float = typer.Option(0.8, "--node-threshold", help="Keep nodes up to this share of cumulative influence."),
    edge_threshold: float = typer.Option(0.98, "--edge-threshold", help="Keep edges up to this share of cumulative edge influence."),
    no_prune: bool = typer.Option(False, "--no-prune", help="Write the full graph with every computed edge."),
    max_feature_nodes: Optional[int] = typer.Option(
        None, "--max-feature-nodes", help="Visit at most this many features, most influential first (default: all)."
    ),
    batch_size: int = typer.Option(64, "--batch-size", help="Targets per backward pass (more is faster, uses more memory)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 or bfloat16 (edges are accumulated in float32)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (or cuda:N)."),
) -> None:
    """Compute attribution graphs and write them as graph directories (nodes/edges parquet + meta.json)."""
    from circuit_atlas.engine.attribution import attribute
    from circuit_atlas.engine.models import load_model
    from circuit_atlas.engine.transcoders import load_transcoders

    if (prompt is None) == (prompts is None):
        raise typer.BadParameter("give exactly one of --prompt or --prompts")
    if dtype not in ("float32", "bfloat16"):
        raise typer.BadParameter(f"--dtype must be float32 or bfloat16, got {dtype!r}")
    texts = [prompt] if prompt is not None else read_prompts(prompts)  # type: ignore[arg-type]
    console = Console()
    lm = load_model(model, dtype=dtype, device=device)
    import torch

    tc = load_transcoders(transcoders, device=device, dtype=getattr(torch, dtype))
    tc.check_fits(lm.n_layers, lm.d_model, source=transcoders)
    table = Table(title="attribution graphs")
    for col in ("graph", "nodes", "edges", "replacement", "completeness"):
        table.add_column(col)
    for i, text in enumerate(texts):
        if len(texts) > 1:
            console.print(f"[{i + 1}/{len(texts)}] {text!r}")
        graph = attribute(
            lm,
            tc,
            text,
            max_feature_nodes=max_feature_nodes,
            batch_size=batch_size,
            node_threshold=node_threshold,
            edge_threshold=edge_threshold,
            prune=not no_prune,
            progress=True,
        )
        path = graph.save(out / graph.graph_id)
        scores = graph.meta["scores"]
        table.add_row(
            str(path),
            str(len(graph.nodes)),
            str(len(graph.edges)),
            f"{scores['replacement_score']:.4f}",
            f"{scores['completeness_score']:.4f}",
        )
        print(path)
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add these commands to the main CLI."""
    app.command("attribute")(attribute_command)
