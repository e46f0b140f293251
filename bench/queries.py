"""Benchmark of the query library: p50/p95 of every query on the embedded store and on Bolt.

Builds a synthetic corpus with the planted circuits of tests/queries/planted.py repeated over
many prompts plus per-prompt noise (``--prompts`` x ``--edges`` per prompt), loads it into the
embedded store (LadybugDB) and, unless ``--no-bolt``, a smaller one (``--bolt-prompts``,
``--bolt-edges``) into the ArcadeDB Bolt test server, then times every library query.
Baseline: a trivial ``count(*)`` over prompts, timed in the same run; each query's p50 is also
printed as a multiple of it. The last line is JSON with every figure.

    python bench/queries.py                      # 1,000 prompts x 50,000 edges each, embedded
    python bench/queries.py --prompts 200 --edges 2000 --repeats 5    # quick run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "queries"))

import planted  # noqa: E402

from circuit_atlas.queries.runner import list_queries, run_query  # noqa: E402

BASELINE = "MATCH (p:Prompt) RETURN count(*) AS n"


def query_params(prompt_id: str) -> dict[str, dict[str, Any]]:
    """Parameters that make every query do real work on the planted corpus."""
    k = planted.key
    return {
        "corpus_overview": {},
        "recurring_edges": {"min_prompts": 3},
        "recurring_paths": {"min_prompts": 3},
        "token_to_logit": {"input_token": " capital", "output_token": " Paris", "min_prompts": 3},
        "feature_profile": {"key": k("C"), "min_prompts": 3},
        "prompts_with_circuit": {"keys": [k("A"), k("B"), k("C")]},
        "contrastive": {"a": "capitals", "min_prompts": 3},
        "hubs": {"min_prompts": 3},
        "similar_prompts": {"prompt_id": prompt_id},
        "motifs": {"min_prompts": 3},
        "supernode_candidates": {"min_prompts": 3},
        "prompt_subgraph": {"prompt_id": prompt_id},
        "untrusted_graphs": {},
    }


def _time(fn, repeats: int) -> tuple[float, float]:
    fn()  # warm-up (plans, caches)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
    return statistics.median(times), p95


def bench_store(store, prompt_id: str, repeats: int, label: str) -> dict[str, Any]:
    from tqdm import tqdm

    base50, _ = _time(lambda: store.read(BASELINE), repeats)
    p50, p95 = {}, {}
    params = query_params(prompt_id)
    for q in tqdm(list_queries(), desc=f"{label} queries", file=sys.stderr):
        p50[q.name], p95[q.name] = _time(lambda: run_query(store, q.name, params.get(q.name, {})), repeats)
    print(f"\n{label}: baseline count(*) p50 {base50:.2f} ms", file=sys.stderr)
    print(f"{'query':24s} {'p50 ms':>9s} {'p95 ms':>9s} {'x baseline':>11s}", file=sys.stderr)
    for name in p50:
        print(f"{name:24s} {p50[name]:9.1f} {p95[name]:9.1f} {p50[name] / base50:11.1f}", file=sys.stderr)
    return {"baseline_ms": round(base50, 3), "p50": {k: round(v, 2) for k, v in p50.items()}, "p95": {k: round(v, 2) for k, v in p95.items()}}


def _open_embedded(path: Path, dirs: list[Path]):
    from circuit_atlas.store import open_store

    store = open_store(f"embedded:{path}")
    store.init_schema()
    store.write_graphs(dirs, progress=True)  # leaves the derived layer fresh
    return store, "store"


@contextlib.contextmanager
def _bolt_store(root: Path, dirs: list[Path]):
    """The ArcadeDB Bolt test server loaded with ``dirs``: (store, loader, load seconds)."""
    from circuit_atlas.store import arcadedb_server, open_store

    with arcadedb_server.arcadedb_server() as server:
        os.environ.update(NEO4J_USER=server.user, NEO4J_PASSWORD=server.password, NEO4J_DATABASE=server.default_database)
        with open_store(server.url) as store:
            t0 = time.perf_counter()
            store.init_schema()
            store.write_graphs(dirs, progress=True)  # leaves the derived layer fresh
            yield store, "store", time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=1000, help="prompts in the embedded corpus")
    ap.add_argument("--edges", type=int, default=50_000, help="edges per prompt in the embedded corpus")
    ap.add_argument("--bolt-prompts", type=int, default=150, help="prompts in the Bolt corpus")
    ap.add_argument("--bolt-edges", type=int, default=500, help="edges per prompt in the Bolt corpus")
    ap.add_argument("--repeats", type=int, default=9, help="timed runs per query (after one warm-up)")
    ap.add_argument("--no-bolt", action="store_true", help="skip the Bolt backend")
    args = ap.parse_args()

    result: dict[str, Any] = {"sizes": {}, "query_p50_ms": {}, "query_p95_ms": {}, "baseline_ms": {}}
    with tempfile.TemporaryDirectory(prefix="bench-queries-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        dirs = planted.build_scaled_corpus(tmp / "graphs", args.prompts, args.edges)
        gen_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        store, kind = _open_embedded(tmp / "db", dirs)
        load_s = time.perf_counter() - t0
        pid = store.read("MATCH (p:Prompt) RETURN p.id AS id ORDER BY id LIMIT 1")["id"].iloc[0]
        n_edges = int(store.read("MATCH ()-[e:EDGE]->() RETURN count(*) AS n")["n"].iloc[0])
        result["sizes"]["embedded"] = {"prompts": args.prompts, "edges": n_edges, "loader": kind, "generate_s": round(gen_s, 1), "load_s": round(load_s, 1)}
        r = bench_store(store, pid, args.repeats, "embedded")
        store.close()
        result["query_p50_ms"]["embedded"], result["query_p95_ms"]["embedded"], result["baseline_ms"]["embedded"] = r["p50"], r["p95"], r["baseline_ms"]
        if not args.no_bolt:
            bdirs = planted.build_scaled_corpus(tmp / "bgraphs", args.bolt_prompts, args.bolt_edges, seed=1)
            with _bolt_store(tmp / "arcadedb", bdirs) as (bstore, bkind, bload):
                bpid = bstore.read("MATCH (p:Prompt) RETURN p.id AS id ORDER BY id LIMIT 1")["id"].iloc[0]
                bn = int(bstore.read("MATCH ()-[e:EDGE]->() RETURN count(*) AS n")["n"].iloc[0])
                result["sizes"]["bolt"] = {"prompts": args.bolt_prompts, "edges": bn, "loader": bkind, "load_s": round(bload, 1)}
                r = bench_store(bstore, bpid, args.repeats, "bolt")
            result["query_p50_ms"]["bolt"], result["query_p95_ms"]["bolt"], result["baseline_ms"]["bolt"] = r["p50"], r["p95"], r["baseline_ms"]
    targets = ("recurring_edges", "recurring_paths", "feature_profile", "contrastive")
    emb = result["query_p50_ms"]["embedded"]
    result["target_p50_under_300ms_embedded"] = {t: emb[t] < 300 for t in targets}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
