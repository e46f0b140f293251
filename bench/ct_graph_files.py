"""circuit-tracer 0.5.0's own graph files for a tiny model, made once and cached; and a check
that a Neuronpedia JSON file loads with circuit-tracer's own graph model.

Why: our importer must read what circuit-tracer itself writes, including its error ids
``0_{layer}_{pos}`` that clash with layer-0 feature ids. The tests and ``bench/import_real.py``
use the files this makes; nothing here is copied from circuit-tracer.

- ``python bench/ct_graph_files.py`` builds a random 4-layer Llama model and 8-feature PLT
  transcoders (small indices, so feature ``0_{i}_{pos}`` and error ``0_{layer}_{pos}`` collide
  often), runs circuit-tracer's ``attribute`` in the benchmark's virtualenv
  (``bench/ct_env.py``), saves ``graph.pt`` (``Graph.to_pt``) and the
  JSON of ``create_graph_files`` (node 0.8 / edge 0.98) under
  ``~/.cache/circuit-atlas/ct-graph-files/v1`` ($CIRCUIT_ATLAS_CT_FILES), and prints one JSON
  line with the paths. A second run only prints them.
- ``python bench/ct_graph_files.py --check-json FILE`` (run by the venv's python) validates FILE
  with ``circuit_tracer.frontend.graph_models.Model`` and prints its node and link counts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("CIRCUIT_ATLAS_CT_FILES", Path.home() / ".cache/circuit-atlas/ct-graph-files/v1"))
SLUG = "ct-tiny"
SCAN = "bench-ct-tiny"
SPEC = dict(n_layers=4, d_model=32, vocab_size=300, heads=4, kv_heads=2, d_mlp=64, d_tc=8)


def _bench_attribution():
    sys.path.insert(0, str(HERE))
    import attribution  # bench/attribution.py: the model/transcoder builders

    return attribution


_NEEDS = ("import circuit_tracer.utils.create_graph_files, circuit_tracer.frontend.graph_models; "
          "from circuit_tracer.replacement_model.replacement_model_transformerlens import TransformerLensReplacementModel")


def ct_python() -> Path:
    """The python of circuit-tracer's cached venv (``bench/ct_env.py`` makes it). Only the
    TransformerLens backend and the graph-file code are needed here, so a venv whose nnsight
    backend does not import (what ``ensure_venv`` also checks) still serves."""
    sys.path.insert(0, str(HERE))
    from ct_env import ensure_venv, venv_python

    python = venv_python()
    if python.exists() and subprocess.run([str(python), "-c", _NEEDS], capture_output=True).returncode == 0:
        return python
    try:
        return ensure_venv()
    except (OSError, subprocess.CalledProcessError) as exc:
        python = venv_python()
        if python.exists() and subprocess.run([str(python), "-c", _NEEDS], capture_output=True).returncode == 0:
            return python
        raise OSError(f"circuit-tracer's venv cannot be made: {exc}") from exc


def worker_make(model_dir: Path, tc_dir: Path, ids: list[int], out: Path) -> dict:
    """In the venv: attribute with circuit-tracer, save the .pt and its create_graph_files JSON."""
    import torch

    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import importlib

    cgf = importlib.import_module("circuit_tracer.utils.create_graph_files")  # the package re-exports a same-named function
    from circuit_tracer.attribution.attribute import attribute
    from circuit_tracer.replacement_model.replacement_model_transformerlens import TransformerLensReplacementModel
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ba = _bench_attribution()
    hf = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    tok = ba._ct_tokenizer(model_dir, AutoTokenizer)
    cfg = ba._tl_config(model_dir)
    model = TransformerLensReplacementModel(cfg)
    model.load_and_process_state_dict(
        convert_llama_weights(hf, cfg), fold_ln=False, center_writing_weights=False, center_unembed=False,
        fold_value_biases=False, refactor_factored_attn_matrices=False,
    )
    del hf
    paths = {i: str(tc_dir / f"layer_{i}.safetensors") for i in range(cfg.n_layers)}
    tcs = load_transcoder_set(
        paths, scan=SCAN, feature_input_hook="mlp.hook_in", feature_output_hook="mlp.hook_out",
        device=torch.device("cpu"), dtype=torch.float32, lazy_encoder=False, lazy_decoder=False,
    )
    model._configure_replacement_model(tcs)
    model.tokenizer = tok
    graph = attribute(torch.tensor(ids), model, batch_size=64)
    graph.scan = SCAN
    graph.cfg.tokenizer_name = str(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    graph.to_pt(str(out / "graph.pt"))

    class _LocalTokenizer:  # create_graph_files loads the tokenizer by name; ours is a local folder
        @staticmethod
        def from_pretrained(name: str, *a, **k):
            return ba._ct_tokenizer(Path(name), AutoTokenizer)

    cgf.AutoTokenizer = _LocalTokenizer
    cgf.create_graph_files(graph, slug=SLUG, output_path=str(out), scan=SCAN, node_threshold=0.8, edge_threshold=0.98)
    return {"pt": str(out / "graph.pt"), "json": str(out / f"{SLUG}.json")}


def check_json(path: Path) -> dict:
    """In the venv: circuit-tracer's own pydantic model of a graph file accepts it."""
    from circuit_tracer.frontend.graph_models import Model

    model = Model.model_validate_json(path.read_bytes())
    return {"nodes": len(model.nodes), "links": len(model.links), "node_ids_unique": len({n.node_id for n in model.nodes}) == len(model.nodes)}


def make(force: bool = False) -> dict:
    """Paths of the cached files, making them first when absent (needs the benchmark's venv)."""
    done = CACHE / "done.json"
    if done.is_file() and not force:
        return json.loads(done.read_text())
    ba = _bench_attribution()
    python = ct_python()
    work = CACHE.parent / (CACHE.name + ".build")
    shutil.rmtree(work, ignore_errors=True)
    model_dir, tc_dir, ids = ba.build("ct-tiny", SPEC, work)
    out = work / "files"
    cmd = [str(python), __file__, "--worker", "--model-dir", str(model_dir), "--tc-dir", str(tc_dir),
           "--ids", json.dumps(ids), "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"circuit-tracer run failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    shutil.rmtree(CACHE, ignore_errors=True)
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    os.replace(out, CACHE)
    shutil.rmtree(work, ignore_errors=True)
    paths = {"pt": str(CACHE / "graph.pt"), "json": str(CACHE / f"{SLUG}.json"), "venv_python": str(python)}
    done.write_text(json.dumps(paths))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="make the files again")
    parser.add_argument("--check-json", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tc-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ids", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.check_json:
        print(json.dumps(check_json(a.check_json)))
    elif a.worker:
        print(json.dumps(worker_make(a.model_dir, a.tc_dir, json.loads(a.ids), a.out)))
    else:
        print(json.dumps(make(a.force)))


if __name__ == "__main__":
    main()
