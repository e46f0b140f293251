"""kill -9 at random moments of the write commands, then every command opens the store, and
every stored prompt is whole (its nodes and edges by type, its supernodes) or absent.

The commands run as a user runs them (`python -m circuit_atlas ...` subprocesses) on one
embedded store that the kills accumulate on; the moments are drawn from a seeded generator, so
a failure reproduces. LadybugDB 0.22 segfaults on opening some stores a kill leaves mid-checkpoint
(store/recovery.py): here no command may die of a signal or print a traceback.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from circuit_atlas.store import open_store
from circuit_atlas.store.synthetic import synthetic_graph

KILLS = 20
SEED = 20261206
N_GRAPHS = 16


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "circuit_atlas", *args], capture_output=True, text=True, timeout=timeout)


def _supernode_records(meta: dict, nodes) -> list[dict]:
    """Two supernodes of the graph's first feature nodes (the format store.write_supernodes takes)."""
    feats = nodes[nodes["type"] == "feature"].head(6)
    keys = [f"{meta['scan']}:{int(l)}:{int(f)}" for l, f in zip(feats["layer"], feats["feature"])]
    ids = [str(i) for i in feats["node_id"]]
    return [{"key": f"{meta['graph_id']}:import:{k}", "scan": meta["scan"], "label": f"group {k}", "method": "import",
             "score": None, "prompt_id": meta["graph_id"], "node_ids": ids[k * 3:(k + 1) * 3],
             "members": sorted(set(keys[k * 3:(k + 1) * 3]))} for k in range(2)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A tiny real model and random transcoders on disk, and a corpus, for `ingest` and `features`."""
    from circuit_atlas.engine.models import loading as models
    from circuit_atlas.engine.transcoders.transcoder_set import random_transcoders

    root = tmp_path_factory.mktemp("kill-tiny")
    lm = models.tiny_model("llama", n_layers=2, d_model=32, vocab_size=97, seed=0)
    tc = random_transcoders(lm.n_layers, lm.d_model, 48, kind="clt", activation="relu", seed=1, scan="tiny-clt")
    tc_dir = tc.save(root / "tc")
    lm.model.save_pretrained(root / "model")
    lm.tokenizer.save_pretrained(root / "model")
    corpus = root / "corpus.txt"
    corpus.write_text("".join(f"The {a} number {i} sat on the\n" for i, a in enumerate(["cat", "dog", "fox", "owl", "elk", "bee"])))
    return root / "model", Path(tc_dir), corpus


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> list[Path]:
    """Small synthetic graphs; every other one carries supernode records in its meta.json (an
    import's, written in the graph's own transaction)."""
    root = tmp_path_factory.mktemp("kill-graphs")
    out = []
    for i in range(N_GRAPHS):
        g = synthetic_graph(i, n_nodes=70, n_edges=350, n_features_vocab=60, seed=7)
        if i % 2:
            g.meta["supernode_records"] = _supernode_records(g.meta, g.nodes)
        out.append(g.save(root / f"g{i:02d}"))
    return out


def expected(directory: Path) -> dict:
    """What the store must hold for a graph: node counts by type, edge count, supernodes."""
    meta = json.loads((directory / "meta.json").read_text())
    nodes = pq.read_table(directory / "nodes.parquet").to_pandas()
    edges = pq.read_table(directory / "edges.parquet")
    return {"id": meta["graph_id"], "nodes": dict(Counter(nodes["type"])), "edges": edges.num_rows,
            "supernodes": sorted((r["key"], len(r["members"])) for r in meta.get("supernode_records") or [])}


def stored(store, prompt_id: str) -> dict:
    table_type = {"Active": "feature", "Embedding": "embedding", "Error": "error", "Logit": "logit"}
    nodes = {}
    for table, kind in table_type.items():
        n = int(store.read(f"MATCH (p:Prompt {{id: $id}})-[:HAS]->(n:{table}) RETURN count(n) AS c", {"id": prompt_id})["c"].iloc[0])
        if n:
            nodes[kind] = n
    edges = int(store.read("MATCH (p:Prompt {id: $id})-[:HAS]->(a)-[e:EDGE]->() RETURN count(e) AS c", {"id": prompt_id})["c"].iloc[0])
    sn = store.read("MATCH (s:Supernode) WHERE s.prompt_id = $id OPTIONAL MATCH (s)-[:CONTAINS]->(f:Feature) "
                    "RETURN s.key AS key, count(f) AS m", {"id": prompt_id})
    return {"id": prompt_id, "nodes": nodes, "edges": edges,
            "supernodes": sorted((k, int(m)) for k, m in zip(sn["key"], sn["m"])) if len(sn) else []}


def check_whole_or_absent(url: str, graphs: list[Path]) -> int:
    """Every prompt in the store equals its graph files; returns how many are stored."""
    want = {e["id"]: e for e in map(expected, graphs)}
    with open_store(url, read_only=True) as s:
        ids = set(s.read("MATCH (p:Prompt) RETURN p.id AS id")["id"])
        assert ids <= set(want), "a prompt that no graph file has"
        for pid in ids:
            assert stored(s, pid) == want[pid], f"prompt {pid} is not whole"
    return len(ids)


def assert_clean(r: subprocess.CompletedProcess, what: str, ok: tuple[int, ...] = (0,)) -> None:
    """A command that ran to its end: no signal, no traceback, an expected exit status."""
    assert r.returncode >= 0, f"{what} died of signal {-r.returncode}: {r.stderr[-400:]}"
    assert "Traceback" not in r.stderr, f"{what}: {r.stderr[-800:]}"
    assert r.returncode in ok, f"{what} exited {r.returncode}: {r.stderr[-400:]}"


def test_kill_loop(graphs, tiny, tmp_path):
    rng = random.Random(SEED)
    store = tmp_path / "store"
    url = f"embedded:{store}"
    model_dir, tc_dir, corpus = tiny
    ingested = tmp_path / "ingested"  # the ingest's graph directories: what its prompts must equal

    def all_graphs() -> list[Path]:
        made = [d for d in sorted(ingested.glob("*")) if (d / "meta.json").is_file()] if ingested.exists() else []
        return [*graphs, *made]

    # a first load, so that later kills find prompts, a derived layer and supernodes to damage
    assert_clean(cli("store", "load", *map(str, graphs[:4]), "--store", url), "first load")
    import_dir = tmp_path / "to-import"
    import_dir.mkdir()
    for g in graphs[8:]:
        shutil.copytree(g, import_dir / g.name)
    commands = {
        "load": lambda: ["store", "load", *map(str, rng.sample(graphs[:8], rng.randint(2, 8))), "--store", url],
        "import": lambda: ["import", str(import_dir), "--store", url],
        "rebuild-links": lambda: ["store", "rebuild-links", "--store", url],
        "supernodes": lambda: ["supernodes", "--store", url, "--min-size", "2"],
        "ingest": lambda: ["ingest", str(corpus), "--model", str(model_dir), "--transcoders", str(tc_dir), "--store", url,
                           "--graphs-dir", str(ingested), "--batch-size", "32", "--device", "cpu", "--load-batch", "2"],
        "features": lambda: ["features", "default", "--model", str(model_dir), "--transcoders", str(tc_dir), "--store", url,
                             "--tokens", "300", "--device", "cpu"],
        "delete": lambda: None,  # filled in below: needs a stored id
    }
    kinds = []
    for k in range(KILLS):
        kind = rng.choice(["load", "load", "import", "import", "rebuild-links", "supernodes", "delete", "ingest", "features"])
        if kind == "delete":  # one of the loaded graphs (an ingest re-run skips the prompts it has made)
            with open_store(url, read_only=True) as s:
                ids = sorted(s.prompt_ids() & {expected(g)["id"] for g in graphs})
            if not ids:
                kind = "load"
            args = ["store", "delete-prompt", rng.choice(ids), "--store", url] if ids else commands[kind]()
        else:
            args = commands[kind]()
        kinds.append(kind)
        proc = subprocess.Popen([sys.executable, "-m", "circuit_atlas", *args], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        # interpreter start and imports take most of a small command's first second or two (torch
        # and the model a few more)
        time.sleep(rng.uniform(2.0, 9.0) if kind in ("ingest", "features") else rng.uniform(0.3, 4.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # a read-only command first (it must open what the kill left), then the prompts
        assert_clean(cli("store", "stats", "--store", url, "--json"), f"kill {k} ({kind}): store stats")
        check_whole_or_absent(url, all_graphs())
        if k % 6 == 5:
            assert_clean(cli("doctor", "--store", url), f"kill {k} ({kind}): doctor")
            # a query that needs the derived layer answers, or says it is stale and what to run
            r = cli("query", "recurring_edges", "--store", url)
            assert_clean(r, f"kill {k} ({kind}): query", ok=(0, 2))
            assert r.returncode == 0 or "rebuild-links" in r.stderr
    assert {"load", "import", "ingest"} <= set(kinds)
    # afterwards every writer opens, completes what the kills cut short, and answers right
    assert_clean(cli("store", "load", *map(str, graphs[:8]), "--store", url), "final load")
    assert_clean(cli("import", str(import_dir), "--store", url), "final import")
    assert_clean(cli(*commands["ingest"]()), "final ingest")
    n_ingested = len(all_graphs()) - N_GRAPHS
    assert n_ingested == 6
    assert check_whole_or_absent(url, all_graphs()) == N_GRAPHS + n_ingested
    r = cli("query", "recurring_edges", "--store", url)
    assert_clean(r, "final query")
    assert_clean(cli("doctor", "--store", url), "final doctor")
    log = store / "recovery.log"
    if log.exists():  # whatever was recovered is on record, and the moved files are kept
        for line in log.read_text().splitlines():
            assert "recovered" in line or "completed" in line or "stale" in line, line
        for folder in store.glob("recovered-*"):
            assert any(folder.iterdir())
