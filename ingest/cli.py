"""Commands of circuit_atlas.ingest (registered on the main CLI by circuit_atlas.cli):
`ingest`, `import`, `export`, `features`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

STORE_HELP = "Store URL: embedded:PATH, bolt://host:port or neo4j://host:port (default: $CIRCUIT_ATLAS_STORE or ~/.circuit-atlas/store)."
MODEL_HELP = "Model: 'demo', a local HF directory, a .gguf file or a hub id."
TC_HELP = "Transcoders: a directory in circuit-tracer format, GemmaScope .npz, or a hub id."


def _load(model: str, transcoders: str, dtype: str, device: str):
    from circuit_atlas.engine.models.loading import load_model_and_transcoders

    return load_model_and_transcoders(model, transcoders, dtype=dtype, device=device)


def _auto(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_memory(value: Optional[str]) -> None:
    """A bad --max-memory is said before the model loads."""
    from circuit_atlas.engine.attribution.pruning import parse_memory

    try:
        parse_memory(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--max-memory") from None


def _split(values: list[str]) -> list[str]:
    return [t.strip() for v in values for t in v.split(",") if t.strip()]


def ingest_command(
    corpus: Path = typer.Argument(..., help="Prompts: .txt (one per line), or .jsonl/.csv/.parquet with a 'prompt' column and optional id, tags, expected, group."),
    model: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    transcoders: str = typer.Option(..., "--transcoders", "-t", help=TC_HELP),
    store: Optional[str] = typer.Option(None, "--store", help=STORE_HELP),
    graphs_dir: Optional[Path] = typer.Option(None, "--graphs-dir", help="Where graph files go, one folder per request key (model, scan, tokens, settings; default ~/.circuit-atlas/graphs). Kept: a re-run reuses them."),
    node_threshold: float = typer.Option(0.8, "--node-threshold", help="Keep nodes up to this share of cumulative influence."),
    edge_threshold: float = typer.Option(0.98, "--edge-threshold", help="Keep edges up to this share of cumulative edge influence."),
    max_feature_nodes: Optional[int] = typer.Option(None, "--max-feature-nodes", help="Visit at most this many features per prompt, most influential first (default: all)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Attribution targets per backward pass (more is faster, uses more memory)."),
    max_memory: Optional[str] = typer.Option(None, "--max-memory", help="Memory budget for the edge rows held during attribution, e.g. 2G or 512M: older rows spill to a temporary folder and long prompts take fewer targets per pass (same graph; default: no budget)."),
    workers: int = typer.Option(1, "--workers", help="Attribution workers: 1 = in this process; N = N processes (local) or N Ray actors (ray; 0 = one per GPU)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Torch threads per attribution worker (default: with --workers 1, the cores less one, left to the store loader thread; with N workers, cores / N). More than the default pays only where cores are spare: threads that share a core with the loader stall each other."),
    backend: str = typer.Option("local", "--backend", help="local (this machine) or ray (a Ray cluster; pip install 'circuit-atlas\\[scale]')."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster to join ('auto' for the one started with `ray start`); default: a local Ray."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Read at most this many rows of the corpus."),
    tags: list[str] = typer.Option([], "--tags", help="Tags added to every prompt (repeat or comma-separate)."),
    fail_fast: bool = typer.Option(False, "--fail-fast", help="Stop at the first bad row or failed prompt instead of recording it and going on."),
    field: str = typer.Option("prompt", "--field", help="Column holding the prompt text (.jsonl/.csv/.parquet)."),
    corpus_name: Optional[str] = typer.Option(None, "--corpus-name", help="Name stored as Prompt.corpus (default: the corpus file's name without suffix)."),
    failures: Optional[Path] = typer.Option(None, "--failures", help="Failures file, JSON lines: row, id, reason, raw (default: GRAPHS_DIR/failures-<corpus>.jsonl)."),
    load_batch: int = typer.Option(16, "--load-batch", help="Graphs per store load; loads overlap with the next batch's attribution."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 or bfloat16 (edges are accumulated in float32)."),
    device: str = typer.Option("auto", "--device", help="auto (a GPU when there is one, else cpu), cpu, cuda or cuda:N; with several workers, auto gives each its own GPU."),
    as_json: bool = typer.Option(False, "--json", help="Also print the summary as one JSON line."),
) -> None:
    """Attribute every prompt of a corpus and load the graphs into the store; resumable (a re-run skips what is done)."""
    from rich.console import Console

    from circuit_atlas.ingest.pipeline import ingest_corpus
    from circuit_atlas.ingest.scaleout import ModelSpec
    from circuit_atlas.store import open_store

    from circuit_atlas.ingest.prompts import check_corpus

    check_corpus(corpus, field_name=field)  # a missing or unreadable corpus is said before the model loads
    _check_memory(max_memory)
    if threads is not None and threads < 1:
        raise typer.BadParameter(f"must be >= 1, got {threads}", param_hint="--threads")
    distributed = backend == "ray" or workers > 1
    lm, tc = _load(model, transcoders, dtype, "cpu" if distributed else _auto(device))
    spec = ModelSpec(model=model, transcoders=transcoders, dtype=dtype, device=device) if distributed else None
    with open_store(store) as s:
        summary = ingest_corpus(
            corpus, lm, tc, s, graphs_dir=graphs_dir, node_threshold=node_threshold, edge_threshold=edge_threshold,
            max_feature_nodes=max_feature_nodes, batch_size=batch_size, max_memory=max_memory, workers=workers,
            backend=backend,
            limit=limit, tags=_split(tags), fail_fast=fail_fast, progress=True, field_name=field,
            corpus_name=corpus_name, failures_path=failures, load_batch=load_batch, model_spec=spec,
            ray_address=ray_address, threads=threads,
        )
    Console().print(summary.table())
    if as_json:
        print(json.dumps(summary.to_dict(), default=str))


def import_command(
    path: Path = typer.Argument(..., help="A graph directory, a folder of them, a Neuronpedia .json/.json.gz file or folder (graph-metadata.json), or circuit-tracer .pt file(s)."),
    store: Optional[str] = typer.Option(None, "--store", help=STORE_HELP),
    graphs_dir: Optional[Path] = typer.Option(None, "--graphs-dir", help="Keep the converted graph directories here (default: a temporary folder, removed)."),
    overwrite_labels: bool = typer.Option(False, "--overwrite-labels", help="Imported labels (clerps) replace existing feature labels (default: fill empty ones only)."),
    no_prune: bool = typer.Option(False, "--no-prune", help=".pt files: keep every edge instead of pruning."),
    node_threshold: float = typer.Option(0.8, "--node-threshold", help=".pt files: node pruning threshold."),
    edge_threshold: float = typer.Option(0.98, "--edge-threshold", help=".pt files: edge pruning threshold."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help=".pt files: a Hugging Face tokenizer (directory or hub id) to decode token strings."),
    model_name: Optional[str] = typer.Option(None, "--model-name", help=".pt files: the model id to record (default: from the file)."),
    scan: Optional[str] = typer.Option(None, "--scan", help=".pt files: the transcoder set id to record (default: from the file)."),
    failures: Optional[Path] = typer.Option(None, "--failures", help="Where to list files that failed, JSON lines path, reason (default: GRAPHS_DIR/import-failures.jsonl, else ~/.circuit-atlas/import-failures.jsonl)."),
    as_json: bool = typer.Option(False, "--json", help="Also print the summary as one JSON line."),
) -> None:
    """Import graphs made elsewhere, with their labels and supernodes. Bad files are listed and skipped (exit 2 after the good ones are stored)."""
    from circuit_atlas.engine.formats.graph_files import WEIGHT_DIGITS
    from circuit_atlas.ingest.importers import GraphImportError, import_path
    from circuit_atlas.paths import home
    from circuit_atlas.store import open_store

    tok = None
    if tokenizer:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(tokenizer)
        except (OSError, ValueError) as exc:
            raise GraphImportError(f"--tokenizer {tokenizer}: cannot load ({exc})") from exc
    fpath = failures or (graphs_dir / "import-failures.jsonl" if graphs_dir else home() / "import-failures.jsonl")
    with open_store(store) as s:
        rep = import_path(path, s, graphs_dir=graphs_dir, overwrite_labels=overwrite_labels, prune=not no_prune,
                          node_threshold=node_threshold, edge_threshold=edge_threshold, tokenizer=tok,
                          model=model_name, scan=scan, failures_path=fpath)
    typer.echo(f"found {rep.found}, written {len(rep.written)}, skipped {len(rep.skipped)} (already stored"
               f"{f', {len(rep.same_up_to_noise)} of them up to float noise' if rep.same_up_to_noise else ''}), "
               f"failed {len(rep.failed)}; {rep.nodes} nodes, {rep.edges} edges, {rep.labels} labels, "
               f"{rep.supernodes} supernodes ({rep.supernodes_restored} restored) in {rep.seconds:.1f}s")
    for gid in rep.written:
        typer.echo(f"{gid}  {rep.sources.get(gid, '')}")
    for src, warning in rep.warnings:
        typer.echo(f"warning: {src}: {warning}", err=True)
    digits = WEIGHT_DIGITS
    for row in rep.same_up_to_noise:
        typer.echo(f"same graph: {row['path']} is stored graph {row['stored']} up to float noise (its {row['values']} "
                   f"weights and activations agree within {digits} significant digits, largest relative difference "
                   f"{row['max_rel']:.1e}); not written")
    for row in rep.variants:
        typer.echo(f"{row['path']}: written as {row['graph_id']}, a different graph with the structure of stored graph "
                   f"{row['stored']}: {row['differ']} of its {row['values']} weights and activations differ beyond "
                   f"{digits} significant digits (largest relative difference {row['max_rel']:.1e})")
    for shared in rep.shared_texts:
        typer.echo(f"{len(shared['graph_ids'])} stored graphs share the prompt text {shared['text']!r}: "
                   f"{', '.join(shared['graph_ids'])} (see: circuit-atlas query prompt_texts)")
    if as_json:
        print(json.dumps(rep.to_dict(), default=str))
    if rep.failed:
        for src, reason in rep.failed:
            line = reason.splitlines()[0] if reason else ""
            # a reader's message usually starts with the file it names: say the path once
            typer.echo(f"failed: {line}" if line.startswith(str(src)) else f"failed: {src}: {line}", err=True)
        rest = len(rep.written) + len(rep.skipped)
        after = (f"the other {rest} were imported or already stored" if rest else "none was imported")
        raise GraphImportError(f"{len(rep.failed)} of {rep.found} graphs could not be imported (listed above and in "
                               f"{rep.failures_path}); {after}")


def export_command(
    prompt_id: str = typer.Argument(..., help="The stored prompt's id (its graph id)."),
    fmt: str = typer.Option("graph", "--format", "-f", help="graph (our graph directory) or neuronpedia (graph JSON)."),
    out: Path = typer.Option(..., "--out", "-o", help="graph: the directory to write; neuronpedia: a .json file, or a folder (gets <id>.json + graph-metadata.json)."),
    store: Optional[str] = typer.Option(None, "--store", help=STORE_HELP),
) -> None:
    """Write a stored prompt's graph back to files (for circuit-tracer's viewer, Neuronpedia, or another store)."""
    from circuit_atlas.ingest.exporters import export_prompt
    from circuit_atlas.store import open_store

    with open_store(store, read_only=True) as s:
        path = export_prompt(s, prompt_id, fmt, out)
    typer.echo(str(path))


def features_command(
    corpus: str = typer.Argument("default", help="Text corpus: .txt/.jsonl/.csv/.parquet, hf:NAME[:CONFIG][@SPLIT], 'default' (the pinned Brown corpus plus the demo prompts: the same on every machine) or 'docs' (the installed packages' documentation; differs by machine)."),
    model: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    transcoders: str = typer.Option(..., "--transcoders", "-t", help=TC_HELP),
    store: Optional[str] = typer.Option(None, "--store", help=STORE_HELP),
    top_k: int = typer.Option(20, "--top-k", help="Top-activating contexts kept per feature."),
    tokens: int = typer.Option(100_000, "--tokens", help="Tokens of the corpus to run over."),
    context_window: int = typer.Option(8, "--context-window", help="Tokens shown each side of the activating token."),
    seq_len: int = typer.Option(64, "--seq-len", help="Tokens per window (incl. BOS) fed to the model."),
    batch_size: int = typer.Option(16, "--batch-size", help="Windows per forward pass."),
    logit_tokens: int = typer.Option(10, "--logit-tokens", help="Promoted and suppressed tokens kept per feature."),
    field: str = typer.Option("text", "--field", help="Text column of .jsonl/.csv/.parquet corpora."),
    include_dead: bool = typer.Option(False, "--include-dead", help="Also store features that never fired (frequency 0, no contexts)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 or bfloat16."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
) -> None:
    """Top-activating contexts, activation frequency, direct logit effects and an automatic label of every feature, into the store.

    Automatic labels are read from that evidence (top-activating tokens -> promoted logits) and
    marked as automatic; a user's or an imported label is never replaced."""
    from circuit_atlas.ingest.features import compute_feature_contexts
    from circuit_atlas.store import open_store

    from circuit_atlas.engine.training.corpus import DEFAULT_SOURCES, DOCS_SOURCES

    if corpus not in DEFAULT_SOURCES + DOCS_SOURCES and not corpus.startswith("hf:"):  # said before the model loads
        from circuit_atlas.engine.training.corpus import iter_records

        next(iter(iter_records(corpus, field)), None)
    lm, tc = _load(model, transcoders, dtype, device)
    with open_store(store) as s:
        rep = compute_feature_contexts(None if corpus in ("default", "docs") else corpus, lm, tc, s, top_k=top_k,
                                       max_tokens=tokens, seq_len=seq_len, batch_size=batch_size,
                                       context_window=context_window, n_logit_tokens=logit_tokens, field_name=field,
                                       include_dead=include_dead, progress=True)
    typer.echo(f"{rep.tokens} tokens in {rep.windows} windows; {rep.stored} of {rep.features} features stored "
               f"({rep.dead} never fired) in {rep.seconds:.1f}s")


def register(app: typer.Typer) -> None:
    """Add this sub-package's commands to the main CLI."""
    app.command("ingest")(ingest_command)
    app.command("import")(import_command)
    app.command("export")(export_command)
    app.command("features")(features_command)
