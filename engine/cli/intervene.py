"""`circuit-atlas intervene` and `circuit-atlas validate-circuit` (docs/guides/interventions.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console
from rich.table import Table

MODEL_HELP = "Model: 'demo', a local HF directory, a .gguf file or a hub id (default: $CIRCUIT_ATLAS_MODEL)."
TC_HELP = "Transcoders: a directory in circuit-tracer format, GemmaScope .npz, or a hub id (default: $CIRCUIT_ATLAS_TRANSCODERS)."
LAYERS_HELP = ("Constrain layers A..B-1 (A:B, stop exclusive; 0:N constrains all N): features there keep their clean "
               "activations. Default: iterative (every feature re-encoded from the modified residual stream).")
FREEZE_HELP = "Replay the clean run's attention patterns and norm scales (default), or recompute them."


def parse_layers(text: Optional[str]) -> tuple[int, int] | None:
    """``A:B`` -> (A, B); None stays None."""
    if text is None or text == "":
        return None
    parts = text.split(":")
    if len(parts) != 2:
        raise typer.BadParameter(f"--layers {text!r}: expected A:B (stop exclusive)")
    try:
        return int(parts[0]), int(parts[1])
    except ValueError:
        raise typer.BadParameter(f"--layers {text!r}: A and B must be integers") from None


def _load(model: Optional[str], transcoders: Optional[str], device: str, dtype: str):
    from circuit_atlas.engine.models.loading import load_model_and_transcoders

    if not model or not transcoders:
        raise typer.BadParameter("give --model and --transcoders (or set $CIRCUIT_ATLAS_MODEL and $CIRCUIT_ATLAS_TRANSCODERS)")
    return load_model_and_transcoders(model, transcoders, dtype=dtype, device=device)


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if hasattr(v, "item"):
        return _jsonable(v.item())
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def _describe(iv) -> str:
    where = "all positions" if iv.pos is None else f"pos {iv.pos}"
    what = "error node" if iv.feature == -1 else f"feature {iv.feature}"
    how = {"zero": "zero", "scale": f"x{iv.value:g}", "clamp": f"= {iv.value:g}"}[iv.mode]
    return f"L{iv.layer} {what} @ {where}: {how}"


def intervene_command(
    model: Optional[str] = typer.Option(None, "--model", "-m", envvar="CIRCUIT_ATLAS_MODEL", help=MODEL_HELP),
    transcoders: Optional[str] = typer.Option(None, "--transcoders", "-t", envvar="CIRCUIT_ATLAS_TRANSCODERS", help=TC_HELP),
    prompt: str = typer.Option(..., "--prompt", "-p", help="The prompt (BOS is prepended)."),
    set_: List[str] = typer.Option(
        [], "--set", "-s",
        help="LAYER:FEATURE[@POS]=VALUE (clamp; =0 zeroes) or LAYER:FEATURE[@POS]=xSCALE (scale). Without @POS: every "
             "position after BOS; negative POS counts from the end; FEATURE -1 is the layer's error node. Repeatable.",
    ),
    freeze_attention: bool = typer.Option(True, "--freeze-attention/--no-freeze-attention", help=FREEZE_HELP),
    layers: Optional[str] = typer.Option(None, "--layers", help=LAYERS_HELP),
    generate: int = typer.Option(0, "--generate", "-g", help="Also generate up to N tokens greedily, with and without the intervention."),
    top_k: int = typer.Option(10, "--top-k", "-k", help="Top tokens to show."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON instead of tables."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 or bfloat16."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (or cuda:N)."),
) -> None:
    """Set transcoder features to values (clamp, scale, zero) and compare the top next tokens before and after."""
    from circuit_atlas.engine.interventions.ablation import intervene, parse_intervention

    if not prompt.strip():  # inputs that need no model are checked before it loads
        raise typer.BadParameter("--prompt is empty: give the text to intervene on")
    ivs = [parse_intervention(s) for s in set_]
    layer_range = parse_layers(layers)
    lm, tc = _load(model, transcoders, device, dtype)
    res = intervene(lm, tc, prompt, ivs, freeze_attention=freeze_attention, layer_range=layer_range, top_k=top_k,
                    generate=generate)
    if as_json:
        typer.echo(json.dumps(_jsonable(res.to_dict()), ensure_ascii=False))
        return
    console = Console()
    mode = "iterative" if layer_range is None else f"constrained layers {layer_range[0]}..{layer_range[1] - 1}"
    attn = "frozen" if freeze_attention else "live"
    console.print(f"prompt: {prompt!r} ({len(res.token_ids)} tokens with BOS) · {mode} · attention {attn}", highlight=False)
    for iv in ivs:
        console.print(f"  {_describe(iv)}", highlight=False)
    if not ivs:
        console.print("  (no interventions: after = before)")
    table = Table(title=f"top tokens at the last position (KL before‖after = {res.kl:.4g})")
    for col in ("#", "before", "p", "after", "p", "p before", "change"):
        table.add_column(col, justify="right" if col in ("#", "p", "p before", "change") else "left")
    n = max(len(res.before), len(res.after))
    for i in range(n):
        b = res.before.iloc[i] if i < len(res.before) else None
        a = res.after.iloc[i] if i < len(res.after) else None
        table.add_row(
            str(i + 1),
            repr(b["token"]) if b is not None else "",
            f"{b['prob']:.4f}" if b is not None else "",
            repr(a["token"]) if a is not None else "",
            f"{a['prob']:.4f}" if a is not None else "",
            f"{a['prob_before']:.4f}" if a is not None else "",
            f"{a['change']:+.4f}" if a is not None else "",
        )
    console.print(table)
    if res.generated is not None:
        console.print(f"generated before: {res.generated_before!r}", highlight=False)
        console.print(f"generated after:  {res.generated!r}", highlight=False)


VALIDATION_FORMATS = {"p clean": ".4f", "p after": ".4f", "Δp": "+.4f", "controls Δp": "+.4f", "sd": ".4f", "p-value": ".2f"}


def validation_table(result: Any, n_features: int) -> "pd.DataFrame":
    """validate-circuit's table (one row per prompt): the CLI prints it, the app shows it."""
    import pandas as pd

    t = result.table
    return pd.DataFrame({
        "prompt": t["text"].astype(str), "expected": [repr(e) for e in t["expected"]], "p clean": t["p_clean"],
        "p after": t["p_after"], "Δp": t["delta"], "controls Δp": t["control_delta_mean"], "sd": t["control_delta_std"],
        "p-value": t["p_value"], "active": [f"{a}/{n_features}" for a in t["features_active"]],
    })


def _cell(v: Any, col: str) -> str:
    spec = VALIDATION_FORMATS.get(col)
    if spec is None:
        return str(v)
    return "" if v != v else format(v, spec)  # NaN (no controls) -> blank


def validation_summary(sm: dict[str, Any]) -> str:
    """validate-circuit's one-line summary under the table."""

    def fmt(v: Any) -> str:
        return "n/a" if v is None else (f"{v:+.4f}" if isinstance(v, float) else str(v))

    beats = sm["frac_beating_all_controls"]
    beats_text = "n/a" if beats is None else f"{beats:.0%}"
    return (f"{sm['n_prompts']} prompts · mean Δp {fmt(sm['mean_delta'])} · controls {fmt(sm['mean_control_delta'])} · "
            f"effect vs controls {fmt(sm['mean_effect_vs_control'])} · beats every control on {beats_text} of prompts")


def validate_circuit_command(
    prompt_group: str = typer.Option(..., "--prompt-group", "-g", help="Validate on every prompt of this group in the store."),
    features: str = typer.Option(..., "--features", "-f", help="Comma-separated feature keys SCAN:LAYER:INDEX (the circuit)."),
    store: Optional[str] = typer.Option(None, "--store", help="Store URL: embedded:PATH, bolt://host:port or neo4j://host:port "
                                        "(default: $CIRCUIT_ATLAS_STORE or ~/.circuit-atlas/store)."),
    mode: str = typer.Option("zero", "--mode", help="zero (ablate) or flip (multiply the activations by -1)."),
    controls: int = typer.Option(5, "--controls", help="Random control sets of matched activation per prompt."),
    seed: int = typer.Option(0, "--seed", help="Seed of the control draws."),
    positions: str = typer.Option("all", "--positions", help="all (every position after BOS) or active (where the feature "
                                  "is active in the clean run)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", envvar="CIRCUIT_ATLAS_MODEL", help=MODEL_HELP),
    transcoders: Optional[str] = typer.Option(None, "--transcoders", "-t", envvar="CIRCUIT_ATLAS_TRANSCODERS", help=TC_HELP),
    freeze_attention: bool = typer.Option(True, "--freeze-attention/--no-freeze-attention", help=FREEZE_HELP),
    layers: Optional[str] = typer.Option(None, "--layers", help=LAYERS_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the per-prompt rows, controls and summary as JSON."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the per-prompt table to this CSV file."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 or bfloat16."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (or cuda:N)."),
) -> None:
    """Ablate or sign-flip a circuit's features in every prompt of a group and compare the change in the
    expected token's probability with random features of matched activation."""
    from circuit_atlas.engine.interventions.ablation import prompts_from_store, validate_circuit
    from circuit_atlas.store import open_store

    keys = [k.strip() for k in features.split(",") if k.strip()]
    if not keys:
        raise typer.BadParameter("--features: give at least one feature key SCAN:LAYER:INDEX")
    if mode not in ("zero", "flip"):
        raise typer.BadParameter(f"--mode must be zero or flip, got {mode!r}")
    layer_range = parse_layers(layers)
    with open_store(store, read_only=True) as s:
        prompts = prompts_from_store(s, prompt_group)
    lm, tc = _load(model, transcoders, device, dtype)
    result = validate_circuit(lm, tc, prompts, keys, mode=mode, controls=controls, seed=seed, positions=positions,
                              freeze_attention=freeze_attention, layer_range=layer_range, progress=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        result.table.to_csv(out, index=False)
    if as_json:
        typer.echo(json.dumps(_jsonable(result.to_dict()), ensure_ascii=False))
        return
    console = Console()
    if console.width < 120:  # the numbers matter more than a narrow pipe's wrapping
        console = Console(width=120)
    table = Table(title=f"validate-circuit: {mode} {len(keys)} features on group {prompt_group!r}")
    rows = validation_table(result, len(keys))
    for col in rows.columns:
        table.add_column(col, justify="left" if col in ("prompt", "expected") else "right", no_wrap=True,
                         overflow="ellipsis", max_width=32 if col == "prompt" else None)
    for r in rows.itertuples(index=False):
        text = str(r[0])
        table.add_row(text if len(text) <= 32 else text[:31] + "…", *(_cell(v, c) for v, c in zip(r[1:], rows.columns[1:])))
    console.print(table)
    console.print(validation_summary(result.summary), highlight=False)
    if out is not None:
        console.print(f"wrote {out}")


def register(app: typer.Typer) -> None:
    """Add these commands to the main CLI."""
    app.command("intervene")(intervene_command)
    app.command("validate-circuit")(validate_circuit_command)
