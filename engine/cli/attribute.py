"""`circuit-atlas attribute`: attribution graphs for one prompt or a file of prompts."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

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


class DirectionFileError(CircuitAtlasError, ValueError):
    """A --target-direction file that is missing, unreadable or holds no single vector."""


def read_direction(path: Path, d_model: int) -> "torch.Tensor":
    """A (d_model,) vector from a .npy file or a .safetensors file holding one tensor (or
    several, one of them named ``direction``); a (1, d_model) array is taken as the vector."""
    import numpy as np
    import torch

    if not path.is_file():
        raise DirectionFileError(f"{path}: no such direction file")
    try:
        if path.suffix == ".npy":
            arr = torch.from_numpy(np.load(path, allow_pickle=False).astype(np.float32))
        elif path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
            if len(tensors) == 1:
                arr = next(iter(tensors.values()))
            elif "direction" in tensors:
                arr = tensors["direction"]
            else:
                raise DirectionFileError(
                    f"{path}: holds {len(tensors)} tensors ({', '.join(sorted(tensors)[:5])}); keep one, or name it 'direction'"
                )
        else:
            raise DirectionFileError(f"{path}: expected a .npy or .safetensors file")
    except DirectionFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is the file's fault
        raise DirectionFileError(f"{path}: cannot read a vector ({exc})") from exc
    vec = arr.float().reshape(-1) if arr.dim() == 2 and arr.shape[0] == 1 else arr.float()
    if tuple(vec.shape) != (d_model,):
        raise DirectionFileError(f"{path}: vector of shape {tuple(arr.shape)}, but the model's d_model is {d_model}")
    return vec


def custom_targets_from_options(
    lm, diffs: list[tuple[str, str]], direction: Path | None, label: str | None, weight: float | None
) -> list:
    """The CustomTarget / TargetDiff list that --target-diff and --target-direction ask for."""
    import hashlib

    from circuit_atlas.engine.attribution.attribute import CustomTarget, TargetDiff

    if direction is None and (label is not None or weight is not None):
        raise typer.BadParameter("--target-label and --target-weight go with --target-direction")
    targets: list = [TargetDiff(a, b) for a, b in diffs]
    if direction is not None:
        vec = read_direction(direction, lm.d_model)
        if label is None:  # the file's name and content: one direction, one node, one Token
            label = f"{direction.stem}#{hashlib.sha256(vec.numpy().tobytes()).hexdigest()[:8]}"
        targets.append(CustomTarget(label, 1.0 if weight is None else float(weight), vec))
    return targets


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
    max_memory: Optional[str] = typer.Option(None, "--max-memory", help="Memory budget for the edge rows held during attribution, e.g. 2G or 512M: older rows spill to a temporary folder and long prompts take fewer targets per pass (same graph; default: no budget)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 or bfloat16 (edges are accumulated in float32)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (or cuda:N)."),
    target: Optional[List[str]] = typer.Option(
        None,
        "--target",
        help="Attribute to this output token instead of the most likely ones (repeatable; a single token's text, "
        "or its id as digits).",
    ),
    target_diff: Optional[tuple[str, str]] = typer.Option(
        None,
        "--target-diff",
        help="Attribute to logit(A) - logit(B) (two single tokens, text or id) instead of the top logits.",
    ),
    target_direction: Optional[Path] = typer.Option(
        None,
        "--target-direction",
        help="Attribute to a direction: a .npy or .safetensors d_model vector, read after the final norm at the last position.",
    ),
    target_label: Optional[str] = typer.Option(
        None, "--target-label", help="Label of the --target-direction node (default: file name and a content hash)."
    ),
    target_weight: Optional[float] = typer.Option(
        None, "--target-weight", help="Weight of the --target-direction target in influence and pruning (default 1)."
    ),
) -> None:
    """Compute attribution graphs and write them as graph directories (nodes/edges parquet + meta.json).

    With --target the graph's outputs are the named tokens; with --target-diff / --target-direction
    they are those custom targets (logit nodes labelled by the target), after any --target tokens;
    otherwise the most likely next tokens."""
    from circuit_atlas.engine.attribution.attribute import attribute
    from circuit_atlas.engine.models.loading import load_model
    from circuit_atlas.engine.attribution.pruning import parse_memory
    from circuit_atlas.engine.transcoders.transcoder_set import load_transcoders

    if (prompt is None) == (prompts is None):
        raise typer.BadParameter("give exactly one of --prompt or --prompts")
    if prompt is not None and not prompt.strip():
        raise typer.BadParameter("--prompt is empty: give the text to attribute")
    targets = [t for t in (target or [])]
    if any(t == "" for t in targets):
        raise typer.BadParameter("--target is empty: give a token's text or its id")
    if dtype not in ("float32", "bfloat16"):
        raise typer.BadParameter(f"--dtype must be float32 or bfloat16, got {dtype!r}")
    if target_direction is None and (target_label is not None or target_weight is not None):
        raise typer.BadParameter("--target-label and --target-weight go with --target-direction")
    if target_weight is not None and not target_weight >= 0:
        raise typer.BadParameter(f"--target-weight must be >= 0, got {target_weight}")
    try:  # a bad budget is said before the model loads
        parse_memory(max_memory)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--max-memory") from None
    if target_direction is not None and not target_direction.is_file():
        raise DirectionFileError(f"{target_direction}: no such direction file")
    texts = [prompt] if prompt is not None else read_prompts(prompts)  # type: ignore[arg-type]
    console = Console()
    lm = load_model(model, dtype=dtype, device=device)
    import torch

    tc = load_transcoders(transcoders, device=device, dtype=getattr(torch, dtype))
    tc.check_fits(lm.n_layers, lm.d_model, source=transcoders)
    custom = custom_targets_from_options(lm, [tuple(target_diff)] if target_diff else [], target_direction, target_label, target_weight)
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
            max_memory=max_memory,
            node_threshold=node_threshold,
            edge_threshold=edge_threshold,
            prune=not no_prune,
            progress=True,
            custom_targets=custom or None,
            logit_targets=targets or None,
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
