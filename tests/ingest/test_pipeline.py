"""End to end on a tiny real model and tiny random transcoders saved to disk: a corpus of 20
prompts into a real embedded store, counts against the graph files, re-runs, SIGKILL and
resume, bad rows, several workers, Ray (only where it is installed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ingest_helpers import assert_close, store_state

from circuit_atlas.engine.formats import graph_files as gf
from circuit_atlas.ingest.jobs import AttributionSettings, request_key
from circuit_atlas.ingest.pipeline import ingest_corpus
from circuit_atlas.ingest.prompts import PromptRowError, read_failures
from circuit_atlas.store import open_store

models = pytest.importorskip("circuit_atlas.engine.models.loading", reason="engine.models.loading not in the tree yet")
pytest.importorskip("circuit_atlas.engine.attribution.replacement", reason="engine.attribution.replacement not in the tree yet")
from circuit_atlas.engine.transcoders.transcoder_set import load_transcoders, random_transcoders  # noqa: E402

SUBJECTS = ["cat", "dog", "bird", "fish", "horse", "mouse", "lion", "bear", "wolf", "fox"]
SETTINGS = dict(node_threshold=0.8, edge_threshold=0.98, batch_size=32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(lm, tc, model_dir, tc_dir): the model and transcoders, and the same saved to disk for the CLI."""
    root = tmp_path_factory.mktemp("tiny")
    lm = models.tiny_model("llama", n_layers=2, d_model=32, vocab_size=97, seed=0)
    tc = random_transcoders(lm.n_layers, lm.d_model, 48, kind="clt", activation="relu", seed=1, scan="tiny-clt")
    tc_dir = tc.save(root / "tc")
    model_dir = root / "model"
    lm.model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    return lm, load_transcoders(tc_dir), model_dir, tc_dir


def write_corpus(path: Path, n: int = 20) -> Path:
    rows = []
    for i in range(n):
        subject = SUBJECTS[i % len(SUBJECTS)]
        rows.append({"id": f"p{i:02d}", "prompt": f"The {subject} number {i} sat on the", "group": f"g{i % 3}",
                     "tags": ["animals"], "expected": " mat"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


DERIVED = ("MATCH (f:Feature) WHERE f.prompts IS NOT NULL RETURN f.key AS k, f.prompts AS n, f.prompt_ids AS ps ORDER BY k",
           "MATCH (a:RActive)-[e:REDGE]->(b) RETURN a.id AS s, b.id AS t, e.weight AS w ORDER BY s, t, w",
           "MATCH (a:Feature)-[l:LINKS]->(b:Feature) RETURN a.key AS s, b.key AS t, l.prompts AS n, l.prompt_ids AS ps, "
           "l.mean_weight AS mw, l.mean_abs_weight AS maw ORDER BY s, t")


def derived_layer(url: str) -> list[dict]:
    """The derived layer (recurring features, the recurring subgraph's edges, LINKS), read-only."""
    with open_store(url, read_only=True) as s:
        return [{k: [list(x) if hasattr(x, "__len__") and not isinstance(x, str) else x for x in v]
                 for k, v in s.read(q).to_dict("list").items()} for q in DERIVED]


def test_corpus_of_20_prompts_into_the_store(tmp_path, tiny):
    lm, tc, _, _ = tiny
    corpus = write_corpus(tmp_path / "animals.jsonl")
    url = f"embedded:{tmp_path / 'store'}"
    gdir = tmp_path / "graphs"
    with open_store(url) as s:
        s.delta_min = 100  # every batch updates the derived layer incrementally (checked below)
        summary = ingest_corpus(corpus, lm, tc, s, graphs_dir=gdir, tags=["run1"], progress=False, load_batch=6,
                                **SETTINGS)
    assert (summary.rows, summary.succeeded, summary.skipped, summary.failed) == (20, 20, 0, 0)
    assert summary.computed == 20 and summary.reused == 0
    dirs = [d for d in sorted(gdir.iterdir()) if gf.is_graph_dir(d)]
    graphs = [gf.GraphFile.load(d) for d in dirs]
    assert len(graphs) == 20
    settings = AttributionSettings(SETTINGS["node_threshold"], SETTINGS["edge_threshold"], None, SETTINGS["batch_size"])
    for d, g in zip(dirs, graphs):  # the request key predicted before attributing names the folder
        key = request_key(lm.model_id, tc.scan, g.meta["token_ids"], settings)
        assert d.name == key == gf.request_key(g.meta["model"], g.meta["scan"], g.meta["token_ids"], g.meta["settings"])
        # the graph id hashes the content too: the same request with other edges is another graph
        assert g.graph_id == gf.graph_id(g.meta["model"], g.meta["scan"], g.meta["token_ids"], g.meta["settings"], g.nodes, g.edges)
        assert g.graph_id != gf.graph_id(g.meta["model"], g.meta["scan"], g.meta["token_ids"], g.meta["settings"], g.nodes,
                                         g.edges.assign(weight=g.edges["weight"] * 2))
    n_feat = sum(int((g.nodes["type"] == "feature").sum()) for g in graphs)
    n_nodes = sum(len(g.nodes) for g in graphs)
    n_edges = sum(len(g.edges) for g in graphs)
    assert (summary.nodes, summary.edges) == (n_nodes, n_edges)
    rep = [g.meta["scores"]["replacement_score"] for g in graphs]
    assert summary.mean_replacement_score == pytest.approx(sum(rep) / len(rep))
    with open_store(url, read_only=True) as s:
        st = s.stats()
        assert s.prompt_ids() == {g.graph_id for g in graphs} == set(summary.prompt_ids)
        assert (st["Prompt"], st["Active"], st["EDGE"]) == (20, n_feat, n_edges)
        assert st["Active"] + st["Embedding"] + st["Error"] + st["Logit"] == n_nodes
        props = s.read("MATCH (p:Prompt) RETURN p.id AS id, p.corpus AS corpus, p.prompt_group AS grp, p.tags AS tags, "
                       "p.expected AS expected, p.top_token AS top, p.correct AS correct, p.external_id AS ext, "
                       "p.n_nodes AS n_nodes, p.n_edges AS n_edges")
    by_id = {g.graph_id: g for g in graphs}
    for r in props.itertuples(index=False):
        g = by_id[r.id]
        assert (r.n_nodes, r.n_edges) == (len(g.nodes), len(g.edges))
        i = int(r.ext[1:])
        assert (r.corpus, r.grp, list(r.tags), r.expected) == ("animals", f"g{i % 3}", ["animals", "run1"], " mat")
        logits = g.nodes[g.nodes["type"] == "logit"]
        top = int(logits.loc[logits["prob"].idxmax(), "token_id"])
        assert r.top == lm.tokenizer.decode([top])
        assert bool(r.correct) == (r.top.strip() == "mat")

    # the loads kept the derived layer fresh batch by batch (incrementally): it equals a full rebuild
    incremental = derived_layer(url)
    assert incremental[2]["n"], "the corpus has recurring pairs"
    with open_store(url) as s:
        s.rebuild_links()
    assert_close(derived_layer(url), incremental)

    # a re-run adds nothing and computes nothing
    before = store_state(url)
    with open_store(url) as s:
        again = ingest_corpus(corpus, lm, tc, s, graphs_dir=gdir, tags=["run1"], progress=False, **SETTINGS)
    assert (again.succeeded, again.skipped, again.skipped_present, again.computed) == (0, 20, 20, 0)
    assert store_state(url) == before


def test_bad_rows_are_reported_and_the_run_goes_on(tmp_path, tiny):
    lm, tc, _, _ = tiny
    corpus = tmp_path / "mixed.jsonl"
    long_prompt = " ".join(["word"] * (lm.max_context + 5))
    with open(corpus, "wb") as f:
        f.write((json.dumps({"id": "good1", "prompt": "The cat sat on the"}) + "\n").encode())
        f.write((json.dumps({"id": "empty", "prompt": "   "}) + "\n").encode())
        f.write((json.dumps({"id": "long", "prompt": long_prompt}) + "\n").encode())
        f.write((json.dumps({"id": "number", "prompt": 12}) + "\n").encode())
        f.write(b'{"id": "bytes", "prompt": "caf\xe9"}\n')
        f.write((json.dumps({"id": "good2", "prompt": "The dog sat on the"}) + "\n").encode())
        f.write((json.dumps({"id": "again", "prompt": "The cat sat on the"}) + "\n").encode())
    url = f"embedded:{tmp_path / 'store'}"
    failures = tmp_path / "failures.jsonl"
    with open_store(url) as s:
        summary = ingest_corpus(corpus, lm, tc, s, graphs_dir=tmp_path / "g", failures_path=failures,
                                progress=False, **SETTINGS)
        assert len(s.prompt_ids()) == 2
    assert (summary.rows, summary.succeeded, summary.skipped, summary.failed) == (7, 2, 1, 4)
    assert summary.skipped_duplicate == 1
    got = {(f["row"], f["id"]): f["reason"] for f in read_failures(failures)}
    assert set(got) == {(2, "empty"), (3, "long"), (4, "number"), (5, None)}
    assert got[(2, "empty")] == "prompt is empty"
    assert str(lm.max_context) in got[(3, "long")]
    assert got[(4, "number")] == "prompt is int, not text"
    assert got[(5, None)] == "not valid UTF-8"
    with open_store(f"embedded:{tmp_path / 'strict'}") as s:
        with pytest.raises(PromptRowError, match=r"row 2 \(id empty\): prompt is empty"):
            ingest_corpus(corpus, lm, tc, s, graphs_dir=tmp_path / "g2", fail_fast=True, progress=False, **SETTINGS)
        assert s.prompt_ids() == set()


def _cli_ingest(corpus: Path, model_dir: Path, tc_dir: Path, url: str, gdir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "circuit_atlas.cli", "ingest", str(corpus), "--model", str(model_dir),
            "--transcoders", str(tc_dir), "--store", url, "--graphs-dir", str(gdir), "--batch-size", "32",
            "--device", "cpu", *extra]


@pytest.mark.parametrize("command", ["ingest", "features"])
def test_an_unreadable_corpus_is_said_before_any_model_loads(tmp_path, command):
    """The model named does not exist either: the error must be the corpus's, so the corpus was
    checked first (a user waited ~6 s for the model before learning of a typo in the path)."""
    for corpus, message in ((tmp_path / "missing.txt", "corpus file not found"), (tmp_path, "is a directory")):
        done = subprocess.run([sys.executable, "-m", "circuit_atlas.cli", command, str(corpus), "--model",
                               str(tmp_path / "no-model"), "--transcoders", str(tmp_path / "no-tc"),
                               "--store", f"embedded:{tmp_path / 'store'}"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert "no-model" not in done.stderr
    assert not (tmp_path / "store").exists()  # nothing was opened or created


def test_sigkill_mid_run_then_rerun_equals_an_uninterrupted_run(tmp_path, tiny):
    _, _, model_dir, tc_dir = tiny
    corpus = write_corpus(tmp_path / "animals.jsonl")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # the reference: one uninterrupted run
    ref_url = f"embedded:{tmp_path / 'ref'}"
    done = subprocess.run(_cli_ingest(corpus, model_dir, tc_dir, ref_url, tmp_path / "ref-graphs", "--json"),
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "0row" not in done.stderr  # no stuck, empty "reading prompts" bar left on the terminal
    ref_summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert ref_summary["succeeded"] == 20

    # killed right after its first batch is in the store
    url = f"embedded:{tmp_path / 'killed'}"
    gdir = tmp_path / "graphs"
    proc = subprocess.Popen(_cli_ingest(corpus, model_dir, tc_dir, url, gdir, "--load-batch", "2"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 300
    try:
        for line in proc.stderr:  # type: ignore[union-attr]
            if line.startswith("loaded "):
                os.kill(proc.pid, signal.SIGKILL)
                break
            assert time.monotonic() < deadline, "no batch loaded in time"
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    with open_store(url) as s:  # a writer open cleans up whatever the kill left half-loaded
        n_after_kill = len(s.prompt_ids())
    assert 2 <= n_after_kill < 20

    rerun = subprocess.run(_cli_ingest(corpus, model_dir, tc_dir, url, gdir, "--json"), capture_output=True,
                           text=True, env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert summary["succeeded"] + summary["skipped_present"] == 20 and summary["failed"] == 0
    assert summary["skipped_present"] == n_after_kill
    assert not [p for p in gdir.iterdir() if p.name.startswith(".")]  # no half-written graph left
    assert store_state(url) == store_state(ref_url)


def test_local_workers_give_the_same_store(tmp_path, tiny):
    lm, tc, _, _ = tiny
    corpus = write_corpus(tmp_path / "animals.jsonl", n=6)
    states = []
    for workers in (1, 2):
        url = f"embedded:{tmp_path / f'store{workers}'}"
        with open_store(url) as s:
            summary = ingest_corpus(corpus, lm, tc, s, graphs_dir=tmp_path / f"g{workers}", workers=workers,
                                    progress=False, load_batch=2, **SETTINGS)
        assert summary.succeeded == 6
        states.append(store_state(url))
    assert_close(states[0], states[1])


def test_ray_backend(tmp_path, tiny):
    pytest.importorskip("ray", reason="ray is not installed (pip install 'circuit-atlas[scale]'); Ray path untested here")
    lm, tc, _, _ = tiny
    corpus = write_corpus(tmp_path / "animals.jsonl", n=4)
    states = []
    for backend in ("local", "ray"):
        url = f"embedded:{tmp_path / backend}"
        with open_store(url) as s:
            summary = ingest_corpus(corpus, lm, tc, s, graphs_dir=tmp_path / f"g-{backend}", backend=backend,
                                    workers=2 if backend == "ray" else 1, progress=False, **SETTINGS)
        assert summary.succeeded == 4
        states.append(store_state(url))
    assert_close(states[0], states[1])


def test_in_process_attribution_leaves_a_core_to_the_loader_and_restores_threads(tiny):
    """1-process ingest attributes on one core fewer than the process may use (the loader thread
    runs beside it; with every core taken, parallel ops stall: docs/benchmarks/pipeline.md) and
    gives the caller's torch thread count back afterwards."""
    import torch

    from circuit_atlas.ingest.jobs import AttributionJob
    from circuit_atlas.ingest.scaleout import InProcess, in_process_threads, usable_cpus

    lm, tc, _, _ = tiny
    assert in_process_threads() == max(1, usable_cpus() - 1) and usable_cpus() == len(os.sched_getaffinity(0))
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        settings = AttributionSettings(SETTINGS["node_threshold"], SETTINGS["edge_threshold"], None, SETTINGS["batch_size"])
        ids = lm.tokenize("The cat sat on the")
        job = AttributionJob(0, 1, None, "The cat sat on the", ids, request_key(lm.model_id, tc.scan, ids, settings))
        seen = []
        for result in InProcess(lm, tc, settings).map([job]):
            seen.append(torch.get_num_threads())
            assert result.graph is not None
        assert seen == [in_process_threads()]
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_threads_sets_the_in_process_attribution_threads(tiny):
    """``threads`` (the CLI's --threads) overrides the default in-process count (for machines
    with cores to spare); a bad count is refused before anything runs."""
    import torch

    from circuit_atlas.ingest.jobs import AttributionJob
    from circuit_atlas.ingest.scaleout import InProcess, ScaleOutError, in_process_threads, make_attributor

    lm, tc, _, _ = tiny
    settings = AttributionSettings(SETTINGS["node_threshold"], SETTINGS["edge_threshold"], None, SETTINGS["batch_size"])
    ids = lm.tokenize("The cat sat on the")
    job = AttributionJob(0, 1, None, "The cat sat on the", ids, request_key(lm.model_id, tc.scan, ids, settings))
    wanted = in_process_threads() + 1
    attributor = make_attributor("local", 1, settings, lm=lm, tc=tc, threads=wanted)
    assert isinstance(attributor, InProcess)
    seen = [torch.get_num_threads() for result in attributor.map([job]) if result.graph is not None]
    assert seen == [wanted]
    with pytest.raises(ScaleOutError, match="--threads must be >= 1"):
        make_attributor("local", 1, settings, lm=lm, tc=tc, threads=0)


def test_cli_refuses_a_bad_thread_count_before_loading(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("The cat sat on the\n")
    done = subprocess.run(_cli_ingest(corpus, tmp_path / "no-model", tmp_path / "no-tc", f"embedded:{tmp_path / 's'}",
                                      tmp_path / "g", "--threads", "0"), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--threads: must be >= 1, got 0" in done.stderr and "no-model" not in done.stderr
    assert not (tmp_path / "s").exists()
