"""Benchmark: one attribution graph with circuit-atlas vs circuit-tracer 0.5.0, same run.

For each model size (tiny, mid, and the demo model when present) the script builds a random
Llama-style model and random PLT transcoders, saves both to disk (model with save_pretrained,
transcoders in circuit-tracer's format), and attributes the same token ids with the same
settings in separate subprocesses, so peak memory (RSS) of each is measured on its own:

- ours: ``circuit_atlas.engine.attribution.attribute`` (pruning and scores included);
- circuit-tracer 0.5.0 (TransformerLens backend) in its own virtualenv (it pins
  transformers<=4.57.3), run offline on the identical weights: ``attribute`` + ``prune_graph``
  + ``compute_graph_scores``.

Prints a table and ends with one JSON line holding every figure, including
``time_ratio_vs_circuit_tracer`` and ``memory_ratio_vs_circuit_tracer`` per size (ours / theirs;
below 1 is better). Usage: ``python bench/attribution.py [--sizes tiny,mid,demo] [--repeat 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ct_env import CT_VERSION, ensure_venv  # noqa: E402 - the one maker of circuit-tracer's venv

PROMPT = "The capital of the state containing Dallas is Austin, and the capital of France is"

SIZES = {
    # name: model config, transcoder width, batch size, max_feature_nodes
    "tiny": dict(n_layers=2, d_model=64, vocab_size=300, heads=4, kv_heads=2, d_mlp=128, d_tc=128, batch=64, max_feat=None),
    "mid": dict(n_layers=6, d_model=256, vocab_size=2000, heads=8, kv_heads=4, d_mlp=768, d_tc=512, batch=64, max_feat=2048),
    "demo": dict(d_tc=1024, batch=64, max_feat=1024),
}


# ----------------------------------------------------------------------------- memory helpers
def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    """Reset VmHWM so the peak measured afterwards is the attribution's own (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _memory_report(base_kib: int) -> dict:
    peak = _rss_kib("VmHWM")
    return {
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "attribution_peak_rss_mib": peak / 1024,
        "attribution_extra_rss_mib": max(0, peak - base_kib) / 1024,
    }


# ----------------------------------------------------------------------------- workers
def worker_ours(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from circuit_atlas.engine.attribution import attribute
    from circuit_atlas.engine.models import load_model
    from circuit_atlas.engine.transcoders import load_transcoders

    lm = load_model(args.model_dir, dtype="float32", device="cpu")
    tc = load_transcoders(args.tc_dir, device="cpu", dtype=torch.float32)
    ids = json.loads(args.ids)
    times = []
    base = _rss_kib("VmRSS")
    _reset_peak()
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        graph = attribute(lm, tc, ids, batch_size=args.batch, max_feature_nodes=args.max_feat)
        times.append(time.perf_counter() - t0)
    nodes = graph.nodes
    return {
        "time_s": min(times),
        "times_s": times,
        **_memory_report(base),
        "n_features_visited": int((nodes["type"] == "feature").sum()) if graph.meta["settings"]["pruned"] is False else None,
        "nodes_after_pruning": len(nodes),
        "edges_after_pruning": len(graph.edges),
        "scores": graph.meta["scores"],
    }


def _tl_config(model_dir: Path):
    """HookedTransformerConfig for a saved Llama-style model (TransformerLens cannot resolve a
    local directory to an official model name, so the config is built from config.json)."""
    import torch
    from transformer_lens import HookedTransformerConfig

    c = json.loads((model_dir / "config.json").read_text())
    theta = c.get("rope_theta") or (c.get("rope_parameters") or {}).get("rope_theta") or 10000.0
    heads, kv = c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"])
    d_head = c.get("head_dim") or c["hidden_size"] // heads
    return HookedTransformerConfig(
        d_model=c["hidden_size"],
        d_head=d_head,
        n_heads=heads,
        d_mlp=c["intermediate_size"],
        n_layers=c["num_hidden_layers"],
        n_ctx=min(int(c.get("max_position_embeddings", 2048)), 2048),
        eps=c["rms_norm_eps"],
        d_vocab=c["vocab_size"],
        act_fn=c.get("hidden_act", "silu"),
        n_key_value_heads=kv if kv != heads else None,
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_adjacent_pairs=False,
        rotary_dim=d_head,
        rotary_base=float(theta),
        final_rms=True,
        gated_mlp=True,
        original_architecture="LlamaForCausalLM",
        tokenizer_prepends_bos=True,
        default_prepend_bos=True,
        device="cpu",
        dtype=torch.float32,
    )


def _ct_tokenizer(model_dir: Path, auto):
    """Tokenizer under transformers 4.x: files saved by transformers 5 name a tokenizer class
    4.x lacks, so fall back to the fast tokenizer built from tokenizer.json."""
    try:
        return auto.from_pretrained(model_dir)
    except (ValueError, OSError):
        from transformers import PreTrainedTokenizerFast

        conf = json.loads((model_dir / "tokenizer_config.json").read_text())
        special = {k: conf[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token") if isinstance(conf.get(k), str)}
        return PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"), **special)


def worker_ct(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from circuit_tracer.attribution.attribute import attribute
    from circuit_tracer.graph import compute_graph_scores, prune_graph
    from circuit_tracer.replacement_model.replacement_model_transformerlens import TransformerLensReplacementModel
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir, tc_dir = Path(args.model_dir), Path(args.tc_dir)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    tok = _ct_tokenizer(model_dir, AutoTokenizer)
    cfg = _tl_config(model_dir)
    model = TransformerLensReplacementModel(cfg)
    model.load_and_process_state_dict(
        convert_llama_weights(hf, cfg),
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    ids = json.loads(args.ids)
    x = torch.tensor([ids])
    with torch.no_grad():
        diff = float((model(x) - hf(x).logits).abs().max())
    del hf
    paths = {i: str(tc_dir / f"layer_{i}.safetensors") for i in range(cfg.n_layers)}
    tcs = load_transcoder_set(
        paths, scan="bench", feature_input_hook="mlp.hook_in", feature_output_hook="mlp.hook_out",
        device=torch.device("cpu"), dtype=torch.float32, lazy_encoder=False, lazy_decoder=False,
    )
    model._configure_replacement_model(tcs)
    model.tokenizer = tok  # set_tokenizer would re-load it by hub name (offline: fails)
    times = []
    base = _rss_kib("VmRSS")
    _reset_peak()
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        graph = attribute(x[0], model, batch_size=args.batch, max_feature_nodes=args.max_feat)
        result = prune_graph(graph, 0.8, 0.98)
        replacement, completeness = compute_graph_scores(graph)
        times.append(time.perf_counter() - t0)
    return {
        "time_s": min(times),
        "times_s": times,
        **_memory_report(base),
        "tl_vs_hf_max_logit_diff": diff,
        "nodes_after_pruning": int(result.node_mask.sum()),
        "edges_after_pruning": int(result.edge_mask.sum()),
        "scores": {"replacement_score": replacement, "completeness_score": completeness},
    }


# ----------------------------------------------------------------------------- driver
def build(size: str, spec: dict, root: Path) -> tuple[Path, Path, list[int]] | None:
    """Save the model (save_pretrained + tokenizer) and transcoders; return their dirs and ids."""
    import torch

    from circuit_atlas.engine.models import load_model, tiny_model
    from circuit_atlas.engine.transcoders import random_transcoders

    if size == "demo":
        try:
            lm = load_model("demo", dtype="float32")
        except Exception as exc:  # noqa: BLE001 - the demo model is optional here
            print(f"demo model not available: {exc}", file=sys.stderr)
            return None
    else:
        lm = tiny_model(
            "llama",
            n_layers=spec["n_layers"],
            d_model=spec["d_model"],
            vocab_size=spec["vocab_size"],
            seed=0,
            num_attention_heads=spec["heads"],
            num_key_value_heads=spec["kv_heads"],
            intermediate_size=spec["d_mlp"],
        )
    model_dir, tc_dir = root / size / "model", root / size / "transcoders"
    lm.model.save_pretrained(model_dir, safe_serialization=True)
    lm.tokenizer.save_pretrained(model_dir)
    tc = random_transcoders(lm.n_layers, lm.d_model, spec["d_tc"], kind="plt", activation="relu", seed=0, scan=f"bench-{size}")
    tc.save(tc_dir)
    ids = lm.tokenize(PROMPT)
    del lm, tc
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return model_dir, tc_dir, ids


def run_worker(python: str, which: str, model_dir: Path, tc_dir: Path, ids: list[int], spec: dict, args) -> dict:
    cmd = [
        python, __file__, "--worker", which, "--model-dir", str(model_dir), "--tc-dir", str(tc_dir),
        "--ids", json.dumps(ids), "--batch", str(spec["batch"]), "--repeat", str(args.repeat),
        "--threads", str(args.threads),
    ]
    if spec["max_feat"]:
        cmd += ["--max-feat", str(spec["max_feat"])]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"], "returncode": proc.returncode}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,mid,demo")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=1800)
    parser.add_argument("--no-circuit-tracer", action="store_true", help="time ours only")
    parser.add_argument("--worker", choices=["ours", "ct"], help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--tc-dir", help=argparse.SUPPRESS)
    parser.add_argument("--ids", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=64, help=argparse.SUPPRESS)
    parser.add_argument("--max-feat", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = worker_ours(args) if args.worker == "ours" else worker_ct(args)
        print(json.dumps(result))
        return

    ct_python = None
    if not args.no_circuit_tracer:
        try:
            ct_python = str(ensure_venv())
        except (subprocess.CalledProcessError, OSError) as exc:
            print(f"circuit-tracer could not be installed: {exc}", file=sys.stderr)
    figures: dict = {"circuit_tracer_version": CT_VERSION, "prompt": PROMPT, "threads": args.threads, "sizes": {}}
    with tempfile.TemporaryDirectory(prefix="ca-bench-") as tmp:
        for size in args.sizes.split(","):
            spec = SIZES[size]
            built = build(size, spec, Path(tmp))
            if built is None:
                figures["sizes"][size] = {"skipped": "demo model not installed"}
                continue
            model_dir, tc_dir, ids = built
            entry: dict = {"n_tokens": len(ids), "d_transcoder": spec["d_tc"], "batch_size": spec["batch"],
                           "max_feature_nodes": spec["max_feat"]}
            entry["ours"] = run_worker(sys.executable, "ours", model_dir, tc_dir, ids, spec, args)
            if ct_python:
                entry["circuit_tracer"] = run_worker(ct_python, "ct", model_dir, tc_dir, ids, spec, args)
            else:
                entry["circuit_tracer"] = {"error": "circuit-tracer not run"}
            ours, theirs = entry["ours"], entry["circuit_tracer"]
            if "error" not in ours and "error" not in theirs:
                entry["time_ratio_vs_circuit_tracer"] = ours["time_s"] / theirs["time_s"]
                entry["memory_ratio_vs_circuit_tracer"] = ours["peak_rss_mib"] / theirs["peak_rss_mib"]
                entry["attribution_memory_ratio_vs_circuit_tracer"] = ours["attribution_extra_rss_mib"] / max(
                    theirs["attribution_extra_rss_mib"], 1e-9
                )
            else:
                entry["time_ratio_vs_circuit_tracer"] = None
                entry["memory_ratio_vs_circuit_tracer"] = None
            figures["sizes"][size] = entry
            o, t = entry["ours"], entry["circuit_tracer"]
            print(
                f"{size:5s} T={len(ids):3d}  ours {o.get('time_s', float('nan')):8.2f}s {o.get('peak_rss_mib', float('nan')):8.0f}MiB"
                f"   circuit-tracer {t.get('time_s', float('nan')):8.2f}s {t.get('peak_rss_mib', float('nan')):8.0f}MiB"
                f"   time x{entry['time_ratio_vs_circuit_tracer'] or float('nan'):.3f}"
                f"   memory x{entry['memory_ratio_vs_circuit_tracer'] or float('nan'):.3f}",
                flush=True,
            )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
