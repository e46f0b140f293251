"""Ingest pipeline benchmark: attribution and store loads overlapped vs one after the other.

Runs the same corpus three ways in one process, each into a fresh embedded store:

- baseline: attribute every prompt, write its graph file, then load all files at the end;
- pipeline: ``ingest_corpus`` (loads of batch k overlap the attribution of batch k+1);
- re-run: ``ingest_corpus`` again on the full store (everything skipped before attributing);
- ``--workers N`` local processes (default 2; 0 skips);
- ``--ray-workers N`` Ray actors on a local Ray started for the run (default 2; 0 skips; skipped
  with a note when Ray is not installed: ``pip install 'circuit-atlas[scale]'``).

Prints prompts/s for each (1 process, N local workers, Ray) and the ratios against the
baseline. Worker and actor start-up (each loads its own model) is inside the timed runs.
Ends with one JSON line.

    python bench/ingest_pipeline.py                          # tiny random model, 40 prompts
    python bench/ingest_pipeline.py --model demo --transcoders ~/.circuit-atlas/transcoders/demo-quick --prompts 20
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

SUBJECTS = ["cat", "dog", "bird", "fish", "horse", "mouse", "lion", "bear", "wolf", "fox", "owl", "frog"]


def corpus(path: Path, n: int) -> Path:
    rows = [{"id": f"p{i}", "prompt": f"The {SUBJECTS[i % len(SUBJECTS)]} number {i} sat on the", "group": f"g{i % 3}"}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=40)
    ap.add_argument("--model", default=None, help="load_model spec (default: a tiny random Llama)")
    ap.add_argument("--transcoders", default=None)
    ap.add_argument("--load-batch", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2, help="also run with this many local worker processes (0: no)")
    ap.add_argument("--ray-workers", type=int, default=2, help="also run with this many Ray actors (0: no)")
    ap.add_argument("--workdir", type=Path, default=None)
    a = ap.parse_args()

    from circuit_atlas.engine.models.loading import load_model, tiny_model
    from circuit_atlas.engine.transcoders.transcoder_set import load_transcoders, random_transcoders
    from circuit_atlas.ingest.jobs import AttributionJob, AttributionSettings, expected_graph_id, run_job
    from circuit_atlas.ingest.pipeline import ingest_corpus
    from circuit_atlas.store import open_store

    if a.model:
        lm = load_model(a.model)
        tc = load_transcoders(a.transcoders, dtype=lm.dtype)
        label = a.model
    else:
        lm = tiny_model("llama", n_layers=4, d_model=64, vocab_size=211, seed=0)
        tc = random_transcoders(lm.n_layers, lm.d_model, 256, kind="clt", activation="relu", seed=1, scan="bench-clt")
        label = "tiny llama 4x64, CLT 256/layer"
    work = a.workdir or Path(tempfile.mkdtemp(prefix="bench-ingest-pipeline-"))
    src = corpus(work / "corpus.jsonl", a.prompts)
    settings = AttributionSettings(batch_size=64)
    result: dict = {"model": label, "prompts": a.prompts, "load_batch": a.load_batch}

    # baseline: attribute all, then load all (torch on the threads the 1-process pipeline uses,
    # so that the two differ only in how loads and attribution are arranged)
    import torch

    from circuit_atlas.ingest.scaleout import in_process_threads

    threads = torch.get_num_threads()
    torch.set_num_threads(in_process_threads())
    t = time.perf_counter()
    dirs = []
    for i, line in enumerate(src.read_text().splitlines()):
        text = json.loads(line)["prompt"]
        ids = lm.tokenize(text)
        job = AttributionJob(i, i + 1, None, text, ids, expected_graph_id(lm.model_id, tc.scan, ids, settings))
        res = run_job(lm, tc, job, settings)
        dirs.append(res.graph.save(work / "base-graphs" / res.graph.graph_id))
    t_attr = time.perf_counter() - t
    with open_store(f"embedded:{work / 'base-store'}") as s:
        t2 = time.perf_counter()
        s.write_graphs(dirs)
        t_load = time.perf_counter() - t2
    base = time.perf_counter() - t
    torch.set_num_threads(threads)
    result.update(baseline_s=base, baseline_attribute_s=t_attr, baseline_load_s=t_load,
                  baseline_prompts_per_s=a.prompts / base)
    print(f"baseline: {base:.1f}s (attribute {t_attr:.1f}s + load {t_load:.1f}s)", flush=True)

    url = f"embedded:{work / 'store'}"
    with open_store(url) as s:
        t = time.perf_counter()
        summ = ingest_corpus(src, lm, tc, s, graphs_dir=work / "graphs", load_batch=a.load_batch, progress=False)
        pipe = time.perf_counter() - t
        assert summ.succeeded == a.prompts, summ
        t = time.perf_counter()
        again = ingest_corpus(src, lm, tc, s, graphs_dir=work / "graphs", progress=False)
        rerun = time.perf_counter() - t
        assert again.skipped == a.prompts, again
    result.update(pipeline_s=pipe, pipeline_prompts_per_s=a.prompts / pipe, speedup_vs_baseline=base / pipe,
                  rerun_s=rerun, rerun_prompts_per_s=a.prompts / rerun)
    print(f"pipeline: {pipe:.1f}s ({base / pipe:.2f}x the baseline); re-run with everything stored: {rerun:.2f}s", flush=True)

    if a.workers > 1:
        with open_store(f"embedded:{work / 'store-workers'}") as s:
            t = time.perf_counter()
            summ = ingest_corpus(src, lm, tc, s, graphs_dir=work / "graphs-workers", workers=a.workers,
                                 load_batch=a.load_batch, progress=False)
            tw = time.perf_counter() - t
            assert summ.succeeded == a.prompts, summ
        result.update(workers=a.workers, workers_s=tw, workers_prompts_per_s=a.prompts / tw,
                      workers_speedup_vs_pipeline=pipe / tw)
        print(f"{a.workers} local workers: {tw:.1f}s ({pipe / tw:.2f}x the one-process pipeline, incl. worker start)")
    if a.ray_workers > 0:
        try:
            import ray  # noqa: F401 - only to know whether the Ray run can happen
        except ImportError:
            result["ray"] = "not installed (pip install 'circuit-atlas[scale]')"
            print("ray: not installed, skipped", flush=True)
        else:
            with open_store(f"embedded:{work / 'store-ray'}") as s:
                t = time.perf_counter()
                summ = ingest_corpus(src, lm, tc, s, graphs_dir=work / "graphs-ray", backend="ray",
                                     workers=a.ray_workers, load_batch=a.load_batch, progress=False)
                tr = time.perf_counter() - t
                assert summ.succeeded == a.prompts, summ
            result.update(ray_workers=a.ray_workers, ray_s=tr, ray_prompts_per_s=a.prompts / tr,
                          ray_speedup_vs_pipeline=pipe / tr)
            print(f"Ray, {a.ray_workers} actors (local Ray started by the run): {tr:.1f}s"
                  f" ({pipe / tr:.2f}x the one-process pipeline, incl. Ray and actor start)", flush=True)
    print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items()}))


if __name__ == "__main__":
    main()
