"""Benchmark: one attribution graph with circuit-atlas vs circuit-tracer 0.5.0, same run.

For each model size (tiny, mid, and the demo model when present) the script builds a random
Llama-style model and random PLT transcoders, saves both to disk (model with save_pretrained,
transcoders in circuit-tracer's format), and attributes the same token ids with the same
settings in separate subprocesses, so peak memory (RSS) of each is measured on its own:

- ours: ``circuit_atlas.engine.attribution.attribute.attribute`` (pruning and scores included);
- circuit-tracer 0.5.0 (TransformerLens backend) in its own virtualenv (it pins
  transformers<=4.57.3), run offline on the identical weights: ``attribute`` + ``prune_graph``
  + ``compute_graph_scores``.

Prints a table and ends with one JSON line holding every figure, including
``time_ratio_vs_circuit_tracer`` and ``memory_ratio_vs_circuit_tracer`` per size (ours / theirs;
below 1 is better), and ``attribution_memory_ratio_vs_circuit_tracer``: the ratio of
``attribution_extra_rss_mib``, the peak RSS during the attributions minus the RSS just before
them. Before that baseline is taken, each side reads its weights once (``page_in``): ours are
memory-mapped from their safetensors files and would otherwise be paged in by the first
forward pass and counted as the attribution's memory (``weights_paged_in_mib`` says how much
that was). Usage: ``python bench/attribution.py [--sizes tiny,mid,demo] [--repeat 2]``.

``--device cuda --dtype bfloat16`` (or float32) runs both sides on a GPU; each side then also
reports ``cuda_peak_mib``/``cuda_extra_mib`` (torch's peak allocation). CUDA is untested: no
GPU was available where this was written.

Prompt-length axis: ``--lengths 64,512,2048,4096`` runs the ``long`` preset (a small random
model, so a 4,096-token graph completes on a laptop CPU) at each length, both sides with the
same ``max_feature_nodes`` and batch size, once each. ``--memory-cap-gb G`` caps each side's
process: a watchdog in this process reads the worker's resident memory every 20 ms and kills it
past the cap (RLIMIT_AS would count torch's reserved address space, not memory used), so the
longest prompt each side completes under the cap is found. The JSON line then carries
``lengths`` (per length: ``ours_peak_mib``, ``ct_peak_mib``, ``ours_s``, ``ct_s``,
``ours_completed``, ``ct_completed``) and ``longest_under_cap``; a side that failed at one
length is not run at longer ones.
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
    # the prompt-length axis (--lengths): small enough that 4,096 tokens complete on 2 cores
    "long": dict(n_layers=4, d_model=128, vocab_size=512, heads=4, kv_heads=2, d_mlp=256, d_tc=64, batch=64, max_feat=256),
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


def _memory_report(base_kib: int, device: str = "cpu", cuda_base: int = 0) -> dict:
    peak = _rss_kib("VmHWM")
    out = {
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "attribution_peak_rss_mib": peak / 1024,
        "attribution_extra_rss_mib": max(0, peak - base_kib) / 1024,
    }
    if device.startswith("cuda"):  # on a GPU the device's memory is the one that runs out
        import torch

        cuda_peak = torch.cuda.max_memory_allocated()
        out["cuda_peak_mib"] = cuda_peak / 2**20
        out["cuda_extra_mib"] = max(0, cuda_peak - cuda_base) / 2**20
    return out


def _cuda_start(device: str) -> int:
    """On CUDA: reset the device's peak counter; the bytes allocated now (the baseline)."""
    if not device.startswith("cuda"):
        return 0
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    return int(torch.cuda.memory_allocated())


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def page_in(*modules) -> float:
    """Read every parameter and buffer of ``modules`` once, so weights that are memory-mapped
    from their files (our models and transcoders are, through safetensors) are resident before
    the baseline RSS is taken, as a copied model's are from the start (circuit-tracer's
    TransformerLens weights). Otherwise the first forward pass's page faults on the weights
    (561 MiB on the demo model) would count as memory the attribution adds. Returns the MiB
    this added (the figure is reported as ``weights_paged_in_mib``)."""
    import torch

    before = _rss_kib("VmRSS")
    with torch.no_grad():
        for module in modules:
            for t in [*module.parameters(), *module.buffers()]:
                if t.numel():
                    t.reshape(-1)[:: max(1, 4096 // t.element_size())].sum()  # one read per 4 KiB page
    return max(0, _rss_kib("VmRSS") - before) / 1024


# ----------------------------------------------------------------------------- workers
def worker_ours(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from circuit_atlas.engine.attribution.attribute import attribute
    from circuit_atlas.engine.models.loading import load_model
    from circuit_atlas.engine.transcoders.transcoder_set import load_transcoders

    dtype = getattr(torch, args.dtype)
    lm = load_model(args.model_dir, dtype=args.dtype, device=args.device)
    tc = load_transcoders(args.tc_dir, device=args.device, dtype=dtype)
    ids = json.loads(args.ids)
    paged = page_in(lm.model, tc)
    times = []
    base = _rss_kib("VmRSS")
    cuda_base = _cuda_start(args.device)
    _reset_peak()
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        budget = {"max_memory": args.max_memory} if args.max_memory else {}
        graph = attribute(lm, tc, ids, batch_size=args.batch, max_feature_nodes=args.max_feat, **budget)
        _sync(args.device)
        times.append(time.perf_counter() - t0)
    nodes = graph.nodes
    return {
        "time_s": min(times),
        "times_s": times,
        **_memory_report(base, args.device, cuda_base),
        "weights_paged_in_mib": paged,
        "n_features_visited": int((nodes["type"] == "feature").sum()) if graph.meta["settings"]["pruned"] is False else None,
        "nodes_after_pruning": len(nodes),
        "edges_after_pruning": len(graph.edges),
        "scores": graph.meta["scores"],
    }


def _tl_config(model_dir: Path, n_ctx: int = 2048, device: str = "cpu", dtype: str = "float32"):
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
        n_ctx=min(int(c.get("max_position_embeddings", 2048)), max(2048, n_ctx)),
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
        device=device,
        dtype=getattr(torch, dtype),
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
    hf = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=getattr(torch, args.dtype))
    tok = _ct_tokenizer(model_dir, AutoTokenizer)
    cfg = _tl_config(model_dir, len(json.loads(args.ids)), args.device, args.dtype)
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
    x = torch.tensor([ids], device=args.device)
    with torch.no_grad():
        diff = float((model(x).float().cpu() - hf(x.cpu()).logits.float()).abs().max())
    del hf
    paths = {i: str(tc_dir / f"layer_{i}.safetensors") for i in range(cfg.n_layers)}
    tcs = load_transcoder_set(
        paths, scan="bench", feature_input_hook="mlp.hook_in", feature_output_hook="mlp.hook_out",
        device=torch.device(args.device), dtype=getattr(torch, args.dtype), lazy_encoder=False, lazy_decoder=False,
    )
    model._configure_replacement_model(tcs)
    model.tokenizer = tok  # set_tokenizer would re-load it by hub name (offline: fails)
    paged = page_in(model)  # (its weights are copies, resident already: the same treatment as ours)
    times = []
    base = _rss_kib("VmRSS")
    cuda_base = _cuda_start(args.device)
    _reset_peak()
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        graph = attribute(x[0], model, batch_size=args.batch, max_feature_nodes=args.max_feat)
        result = prune_graph(graph, 0.8, 0.98)
        replacement, completeness = compute_graph_scores(graph)
        _sync(args.device)
        times.append(time.perf_counter() - t0)
    return {
        "time_s": min(times),
        "times_s": times,
        **_memory_report(base, args.device, cuda_base),
        "weights_paged_in_mib": paged,
        "tl_vs_hf_max_logit_diff": diff,
        "nodes_after_pruning": int(result.node_mask.sum()),
        "edges_after_pruning": int(result.edge_mask.sum()),
        "scores": {"replacement_score": replacement, "completeness_score": completeness},
    }


# ----------------------------------------------------------------------------- driver
def build(size: str, spec: dict, root: Path, max_context: int = 128) -> tuple[Path, Path, list[int]] | None:
    """Save the model (save_pretrained + tokenizer) and transcoders; return their dirs and ids."""
    import torch

    from circuit_atlas.engine.models.loading import load_model, tiny_model
    from circuit_atlas.engine.transcoders.transcoder_set import random_transcoders

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
            max_context=max_context,
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


def _rss_of(pid: int) -> int:
    """Resident memory (KiB) of a running process, 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_worker(python: str, which: str, model_dir: Path, tc_dir: Path, ids: list[int], spec: dict, args,
               cap_mib: float | None = None) -> dict:
    """One worker subprocess; with ``cap_mib`` a watchdog kills it once its resident memory
    passes the cap (the result then says ``killed_over_cap`` and the highest RSS seen)."""
    import threading

    cmd = [
        python, __file__, "--worker", which, "--model-dir", str(model_dir), "--tc-dir", str(tc_dir),
        "--ids", json.dumps(ids), "--batch", str(spec["batch"]), "--repeat", str(args.repeat),
        "--threads", str(args.threads), "--device", args.device, "--dtype", args.dtype,
    ]
    if spec["max_feat"]:
        cmd += ["--max-feat", str(spec["max_feat"])]
    if which == "ours" and getattr(args, "ours_max_memory", None):
        cmd += ["--max-memory", str(args.ours_max_memory)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1"}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env)
        seen = {"max_kib": 0, "killed": False}
        done = threading.Event()

        def watch() -> None:
            while not done.wait(0.02):
                kib = _rss_of(proc.pid)
                seen["max_kib"] = max(seen["max_kib"], kib)
                if cap_mib is not None and kib > cap_mib * 1024:
                    seen["killed"] = True
                    proc.kill()
                    return

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            proc.wait(timeout=args.timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            timed_out = True
        done.set()
        watcher.join()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    watched = {"watchdog_max_rss_mib": seen["max_kib"] / 1024}
    if seen["killed"]:
        return {"error": f"killed over the {cap_mib / 1024:g} GiB cap", "killed_over_cap": True, **watched}
    if timed_out:
        return {"error": f"timed out after {args.timeout}s", "timed_out": True, **watched}
    lines = [l for l in stdout.splitlines() if l.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (stderr or stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": tail, "returncode": proc.returncode, **watched}
    return {**json.loads(lines[-1]), **watched}


def length_ids(n: int, vocab: int) -> list[int]:
    """n deterministic token ids (BOS, then a fixed pseudo-random sequence): the same prompt
    for both sides at every length, each shorter one a prefix of the longer ones."""
    import random

    rng = random.Random(0)
    return [0] + [rng.randrange(2, vocab) for _ in range(n - 1)]


def run_lengths(args, ct_python: str | None, root: Path) -> dict:
    """The ``long`` preset at each prompt length, both sides under the same cap."""
    lengths = sorted(int(x) for x in args.lengths.split(","))
    spec = SIZES["long"]
    built = build("long", spec, root, max_context=max(lengths + [128]))
    assert built is not None
    model_dir, tc_dir, _ = built
    cap_mib = args.memory_cap_gb * 1024 if args.memory_cap_gb else None
    sides = {"ours": sys.executable, "ct": ct_python}
    failed = {"ours": False, "ct": ct_python is None}
    table: dict = {}
    runs: dict = {}
    for n in lengths:
        ids = length_ids(n, spec["vocab_size"])
        row: dict = {}
        for side, python in sides.items():
            if failed[side] or python is None:
                result = {"error": "not run (failed at a shorter length)" if python else "circuit-tracer not run"}
            else:
                result = run_worker(python, "ours" if side == "ours" else "ct", model_dir, tc_dir, ids, spec, args, cap_mib)
            ok = "error" not in result
            failed[side] = failed[side] or not ok
            peak = result.get("peak_rss_mib") if ok else result.get("watchdog_max_rss_mib")
            row[f"{side}_peak_mib"] = peak
            row[f"{side}_s"] = result.get("time_s")
            row[f"{side}_completed"] = ok
            row[f"{side}_extra_mib"] = result.get("attribution_extra_rss_mib")
            runs.setdefault(str(n), {})[side] = result
        table[str(n)] = row
        print(
            f"long T={n:5d}  ours {row['ours_s'] or float('nan'):8.1f}s {row['ours_peak_mib'] or float('nan'):7.0f}MiB"
            f" {'ok' if row['ours_completed'] else 'FAILED'}   circuit-tracer {row['ct_s'] or float('nan'):8.1f}s"
            f" {row['ct_peak_mib'] or float('nan'):7.0f}MiB {'ok' if row['ct_completed'] else 'FAILED'}",
            flush=True,
        )

    def longest(side: str) -> int | None:
        done = [int(n) for n, r in table.items() if r[f"{side}_completed"]]
        return max(done) if done else None

    return {
        "d_transcoder": spec["d_tc"], "batch_size": spec["batch"], "max_feature_nodes": spec["max_feat"],
        "model": {k: spec[k] for k in ("n_layers", "d_model", "vocab_size", "d_mlp")},
        "lengths": table,
        "longest_under_cap": {"ours": longest("ours"), "ct": longest("ct"), "cap_gb": args.memory_cap_gb},
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,mid,demo")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=1800)
    parser.add_argument("--no-circuit-tracer", action="store_true", help="time ours only")
    parser.add_argument("--lengths", help="prompt lengths for the 'long' preset, e.g. 64,512,2048,4096")
    parser.add_argument("--memory-cap-gb", type=float, default=None, help="kill a side's process past this RSS")
    parser.add_argument("--ours-max-memory", default=None, help="our --max-memory budget (e.g. 1G) in the length runs")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N for both sides (CUDA is untested)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="both sides' model dtype")
    parser.add_argument("--max-memory", default=None, help=argparse.SUPPRESS)
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
    figures: dict = {"circuit_tracer_version": CT_VERSION, "prompt": PROMPT, "threads": args.threads,
                     "device": args.device, "dtype": args.dtype, "sizes": {}}
    if args.lengths:
        with tempfile.TemporaryDirectory(prefix="ca-bench-") as tmp:
            long = run_lengths(args, ct_python, Path(tmp))
        figures["sizes"]["long"] = long
        figures["lengths"] = long["lengths"]
        figures["longest_under_cap"] = long["longest_under_cap"]
        print(json.dumps(figures))
        return
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
                if "cuda_extra_mib" in ours and "cuda_extra_mib" in theirs:
                    entry["cuda_memory_ratio_vs_circuit_tracer"] = ours["cuda_extra_mib"] / max(theirs["cuda_extra_mib"], 1e-9)
            else:
                entry["time_ratio_vs_circuit_tracer"] = None
                entry["memory_ratio_vs_circuit_tracer"] = None
            figures["sizes"][size] = entry
            o, t = entry["ours"], entry["circuit_tracer"]
            print(
                f"{size:5s} T={len(ids):3d}  ours {o.get('time_s', float('nan')):8.2f}s {o.get('peak_rss_mib', float('nan')):8.0f}MiB"
                f"   circuit-tracer {t.get('time_s', float('nan')):8.2f}s {t.get('peak_rss_mib', float('nan')):8.0f}MiB"
                f"   time x{entry['time_ratio_vs_circuit_tracer'] or float('nan'):.3f}"
                f"   memory x{entry['memory_ratio_vs_circuit_tracer'] or float('nan'):.3f}"
                f"   attribution's own memory {o.get('attribution_extra_rss_mib', float('nan')):.0f}"
                f" / {t.get('attribution_extra_rss_mib', float('nan')):.0f} MiB"
                f" x{entry.get('attribution_memory_ratio_vs_circuit_tracer') or float('nan'):.3f}",
                flush=True,
            )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
