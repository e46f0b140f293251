"""Ingest benchmark: synthetic graph files into each backend, bulk path vs a naive baseline.

Prints edges/s for our bulk load (end to end: graph files on disk -> stored, committed) and for a
naive baseline measured in the same run (one CREATE statement per edge, on a sample, extrapolated),
their ratio, and the p50 latency of three cross-prompt queries. Ends with one JSON line.

    python bench/ingest.py                       # 200 prompts x 2k nodes x 50k edges
    python bench/ingest.py --prompts 20 --bolt-prompts 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from circuit_atlas.engine.graph_files import GraphFile
from circuit_atlas.store import open_store
from circuit_atlas.store.synthetic import write_synthetic_corpus

QUERIES = {
    "recurring_pairs": "MATCH (a:Feature)-[l:LINKS]->(b:Feature) WHERE l.prompts >= 2 "
                       "RETURN a.key AS a, b.key AS b, l.prompts AS n ORDER BY n DESC LIMIT 20",
    "two_hop_to_logit": "MATCH (a:Active)-[:EDGE]->(b:Active)-[:EDGE]->(l:Logit) WHERE a.feature_key = $key "
                        "RETURN b.feature_key AS via, l.token_id AS token, count(*) AS n ORDER BY n DESC LIMIT 20",
    "feature_occurrences": "MATCH (p:Prompt)-[:HAS]->(a:Active) WHERE a.feature_key = $key "
                           "RETURN p.id AS prompt, a.pos AS pos, a.activation AS act ORDER BY act DESC LIMIT 100",
}


def p50(store, cypher: str, params: dict, reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        store.read(cypher, params)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def naive(store, graph_dir: Path, n_edges: int) -> float:
    """Edges/s of one auto-committed CREATE per edge (nodes created first, not timed)."""
    g = GraphFile.load(graph_dir)
    feats = g.nodes[g.nodes["type"] == "feature"]["node_id"].tolist()
    fs = set(feats)
    e = g.edges[g.edges["source"].isin(fs) & g.edges["target"].isin(fs)].head(n_edges)
    run = store._run if hasattr(store, "_run") else store._exec
    for nid in set(e["source"]) | set(e["target"]):
        run("CREATE (n:Active {id: $id, prompt_id: 'naive'})", {"id": "naive/" + nid})
    t = time.perf_counter()
    for s, d, w in zip(e["source"], e["target"], e["weight"]):
        run("MATCH (a:Active {id: $s}), (b:Active {id: $t}) CREATE (a)-[:EDGE {weight: $w}]->(b)",
            {"s": "naive/" + s, "t": "naive/" + d, "w": float(w)})
    rate = len(e) / (time.perf_counter() - t)
    run("MATCH (n:Active) WHERE n.prompt_id = 'naive' DETACH DELETE n")
    return rate


def bench_backend(name: str, url: str, paths: list[Path], naive_edges: int, reps: int) -> dict:
    with open_store(url) as s:
        t = time.perf_counter()
        rep = s.write_graphs(paths, progress=True)
        secs = time.perf_counter() - t
        rate = rep.edges / secs
        t = time.perf_counter()
        links = s.rebuild_links()
        links_s = time.perf_counter() - t
        key = s.read("MATCH (a:Active) RETURN a.feature_key AS k, count(*) AS n ORDER BY n DESC LIMIT 1")["k"].iloc[0]
        lat = {q: p50(s, c, {"key": key}, reps) for q, c in QUERIES.items()}
        nrate = naive(s, paths[0], naive_edges)
    out = {"edges": rep.edges, "seconds": secs, "edges_per_s": rate, "naive_edges_per_s": nrate,
           "speedup_vs_naive": rate / nrate, "links": links, "rebuild_links_s": links_s,
           **{f"p50_{q}_ms": v * 1000 for q, v in lat.items()}}
    print(f"[{name}] {rep.edges} edges in {secs:.1f}s = {rate:,.0f} edges/s; naive {nrate:,.0f} edges/s; "
          f"x{rate / nrate:.0f}; LINKS {links} in {links_s:.1f}s; "
          + ", ".join(f"p50 {q} {v * 1000:.1f} ms" for q, v in lat.items()), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=200, help="graphs in the corpus")
    ap.add_argument("--nodes", type=int, default=2000, help="nodes per graph")
    ap.add_argument("--edges", type=int, default=50000, help="edges per graph")
    ap.add_argument("--features-vocab", type=int, default=5000, help="distinct features per layer to draw from")
    ap.add_argument("--bolt-prompts", type=int, default=None, help="load only this many graphs over Bolt (default all)")
    ap.add_argument("--naive-edges", type=int, default=300, help="edges in the naive one-CREATE-per-edge sample")
    ap.add_argument("--reps", type=int, default=5, help="repetitions per query for the p50")
    ap.add_argument("--skip-bolt", action="store_true", help="embedded backend only")
    ap.add_argument("--workdir", type=Path, default=None, help="where to write graphs and the store (default: a temp dir)")
    a = ap.parse_args()
    work = a.workdir or Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    load_before = os.getloadavg()[0]
    t = time.perf_counter()
    paths = write_synthetic_corpus(work / "graphs", a.prompts, progress=True, n_nodes=a.nodes, n_edges=a.edges,
                                   n_features_vocab=a.features_vocab, n_layers=12, n_pos=24)
    print(f"corpus: {a.prompts} graphs x {a.nodes} nodes x ~{a.edges} edges written in {time.perf_counter() - t:.1f}s", flush=True)
    result: dict = {"prompts": a.prompts, "nodes_per_prompt": a.nodes, "edges_per_prompt": a.edges,
                    "cpu_count": os.cpu_count(), "load_before": load_before}
    emb = bench_backend("embedded", f"embedded:{work / 'store'}", paths, a.naive_edges, a.reps)
    result.update({f"embedded_{k}": v for k, v in emb.items()})
    if not a.skip_bolt:
        from circuit_atlas.store.arcadedb_server import arcadedb_server

        with arcadedb_server() as srv:
            os.environ.update(NEO4J_USER=srv.user, NEO4J_PASSWORD=srv.password, NEO4J_DATABASE=srv.default_database)
            bolt = bench_backend("bolt (ArcadeDB)", srv.url, paths[: a.bolt_prompts or a.prompts], a.naive_edges, a.reps)
        result.update({f"bolt_{k}": v for k, v in bolt.items()})
    result["load_after"] = os.getloadavg()[0]
    print(f"load average (1 min) before/after: {result['load_before']:.2f} / {result['load_after']:.2f} "
          f"on {os.cpu_count()} cores", flush=True)
    print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items()}))


if __name__ == "__main__":
    main()
