"""Ingest benchmark: synthetic graph files into each backend, bulk path vs a naive baseline.

Prints edges/s for our bulk load (end to end: graph files on disk -> stored, committed) and for a
naive baseline measured in the same run (one CREATE statement per edge, on a sample, extrapolated),
their ratio, and the p50 latency of three cross-prompt queries. It also measures, in the same run,
what each database does on its own with the same edges and nothing else (the ceiling any loader on
this machine can approach): LadybugDB, one COPY FROM parquet of ~1M of the corpus's edges into a
bare node table and a single relationship table (string keys as in our schema, and INT64 keys);
ArcadeDB, one statement per prompt that creates bare nodes and the prompt's edges by list
position. Ends with one JSON line.

    python bench/ingest.py                       # 200 prompts x 2k nodes x 50k edges
    python bench/ingest.py --prompts 20 --bolt-prompts 10
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from circuit_atlas.engine.formats.graph_files import GraphFile
from circuit_atlas.store import open_store
from circuit_atlas.store.synthetic import write_synthetic_corpus

N_LAYERS, N_POS = 12, 24  # of the synthetic graphs

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


def _ceiling_edges(paths: list[Path], max_edges: int) -> tuple[pa.ChunkedArray, pa.Table]:
    """Node ids and edges (from, to, weight) of the first graphs, up to `max_edges` edges, with the
    ids prefixed by the prompt as in the store."""
    ids, edges, n = [], [], 0
    for i, p in enumerate(paths):
        nodes = pq.read_table(p / "nodes.parquet", columns=["node_id"]).column("node_id")
        e = pq.read_table(p / "edges.parquet", columns=["source", "target", "weight"])
        pre = f"g{i}"
        ids.append(pc.binary_join_element_wise(pre, nodes, "/"))
        edges.append(pa.table({"from": pc.binary_join_element_wise(pre, e.column("source"), "/"),
                               "to": pc.binary_join_element_wise(pre, e.column("target"), "/"),
                               "weight": pc.cast(e.column("weight"), pa.float32())}))
        n += e.num_rows
        if n >= max_edges:
            break
    return pa.chunked_array([c for a in ids for c in a.chunks], pa.string()), pa.concat_tables(edges)


def embedded_ceiling(paths: list[Path], work: Path, max_edges: int = 1_000_000) -> dict:
    """LadybugDB alone: one COPY FROM parquet of the corpus's first ~1M edges into a fresh
    database with one bare node table and one relationship table (auto-commit, checkpoint
    included), with string keys as in our schema and with INT64 keys."""
    import ladybug

    ids, edges = _ceiling_edges(paths, max_edges)
    out = {}
    for kind in ("string", "int64"):
        root = work / f"ceiling-{kind}"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        if kind == "string":
            nodes, e = pa.table({"id": ids}), edges
        else:
            nodes = pa.table({"id": pa.array(np.arange(len(ids)), pa.int64())})
            e = pa.table({"from": pc.index_in(edges.column("from"), value_set=ids).cast(pa.int64()),
                          "to": pc.index_in(edges.column("to"), value_set=ids).cast(pa.int64()),
                          "weight": edges.column("weight")})
        pq.write_table(nodes, root / "nodes.parquet", compression="none")
        pq.write_table(e, root / "edges.parquet", compression="none", use_dictionary=False)
        db = ladybug.Database(str(root / "db"))
        conn = ladybug.Connection(db)
        conn.execute(f"CREATE NODE TABLE N(id {'STRING' if kind == 'string' else 'INT64'}, PRIMARY KEY (id))")
        conn.execute("CREATE REL TABLE R(FROM N TO N, weight FLOAT)")
        conn.execute(f"COPY N FROM '{(root / 'nodes.parquet').as_posix()}'")
        t = time.perf_counter()
        conn.execute(f"COPY R FROM '{(root / 'edges.parquet').as_posix()}'")
        out[kind] = e.num_rows / (time.perf_counter() - t)
        conn.close()
        db.close()
        shutil.rmtree(root, ignore_errors=True)
    print(f"[embedded ceiling] LadybugDB COPY of {edges.num_rows} edges alone: {out['string']:,.0f} edges/s "
          f"(string keys), {out['int64']:,.0f} edges/s (INT64 keys)", flush=True)
    return {"copy_ceiling_edges_per_s": out["string"], "copy_ceiling_int_keys_edges_per_s": out["int64"]}


def bolt_ceiling(store, paths: list[Path], warmup: int = 2, timed: int = 6) -> dict:
    """The Bolt server alone: per prompt, one transaction with one statement that creates the
    prompt's nodes bare (one integer property) and its edges by list position with their weights,
    the fastest statement shape measured here; after `warmup` prompts, over `timed` prompts."""
    use = paths[: warmup + timed]
    if len(use) <= warmup:
        return {}
    n_edges, secs = 0, 0.0
    for i, p in enumerate(use):
        ids = pq.read_table(p / "nodes.parquet", columns=["node_id"]).column("node_id")
        e = pq.read_table(p / "edges.parquet", columns=["source", "target", "weight"])
        es = pc.index_in(e.column("source"), value_set=ids).to_pylist()
        et = pc.index_in(e.column("target"), value_set=ids).to_pylist()
        ew = pc.cast(e.column("weight"), pa.float64()).to_pylist()
        t = time.perf_counter()
        with store._session(True) as s:
            s.execute_write(lambda tx: tx.run(
                "UNWIND range(0, $n - 1) AS i CREATE (x:CeilingNode {i: i}) WITH collect(x) AS nodes "
                "UNWIND range(0, size($es) - 1) AS j WITH nodes[$es[j]] AS a, nodes[$et[j]] AS b, $ew[j] AS w "
                "CREATE (a)-[:CEILING {weight: w}]->(b)", n=len(ids), es=es, et=et, ew=ew).consume())
        if i >= warmup:
            secs += time.perf_counter() - t
            n_edges += len(es)
    store._run("MATCH (x:CeilingNode) DETACH DELETE x")
    rate = n_edges / secs
    print(f"[bolt ceiling] bare nodes + positional edges alone, {len(use) - warmup} warm prompts: {rate:,.0f} edges/s",
          flush=True)
    return {"ceiling_edges_per_s": rate}


def bench_backend(name: str, url: str, paths: list[Path], naive_edges: int, reps: int) -> dict:
    with open_store(url) as s:
        # write_graphs rebuilds the derived layer before it returns: defer it, so the load is timed
        # alone and the rebuild as the block's exit (one rebuild, as a user's load does)
        t = time.perf_counter()
        with s.deferred_derived():
            rep = s.write_graphs(paths, progress=True)
            secs = time.perf_counter() - t
            t = time.perf_counter()
        links_s = time.perf_counter() - t
        rate = rep.edges / secs
        links = int(s.read("MATCH ()-[l:LINKS]->() RETURN count(l) AS c")["c"].iloc[0])
        key = s.read("MATCH (a:Active) RETURN a.feature_key AS k, count(*) AS n ORDER BY n DESC LIMIT 1")["k"].iloc[0]
        lat = {q: p50(s, c, {"key": key}, reps) for q, c in QUERIES.items()}
        nrate = naive(s, paths[0], naive_edges)
        ceiling = bolt_ceiling(s, paths) if s.backend == "bolt" else {}
    out = {"edges": rep.edges, "seconds": secs, "edges_per_s": rate, "naive_edges_per_s": nrate,
           "speedup_vs_naive": rate / nrate, "links": links, "rebuild_links_s": links_s,
           **{f"p50_{q}_ms": v * 1000 for q, v in lat.items()}, **ceiling}
    if ceiling:
        out["fraction_of_ceiling"] = rate / ceiling["ceiling_edges_per_s"]
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
    fixed = N_LAYERS * (N_POS - 1) + N_POS + 3  # a synthetic graph's error, embedding and logit nodes
    if a.nodes <= fixed:
        ap.error(f"--nodes must be more than {fixed} (the error, embedding and logit nodes of a graph), "
                 "or the graphs have no features")
    work = a.workdir or Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    load_before = os.getloadavg()[0]
    t = time.perf_counter()
    paths = write_synthetic_corpus(work / "graphs", a.prompts, progress=True, n_nodes=a.nodes, n_edges=a.edges,
                                   n_features_vocab=a.features_vocab, n_layers=N_LAYERS, n_pos=N_POS)
    print(f"corpus: {a.prompts} graphs x {a.nodes} nodes x ~{a.edges} edges written in {time.perf_counter() - t:.1f}s", flush=True)
    result: dict = {"prompts": a.prompts, "nodes_per_prompt": a.nodes, "edges_per_prompt": a.edges,
                    "cpu_count": os.cpu_count(), "load_before": load_before}
    emb = bench_backend("embedded", f"embedded:{work / 'store'}", paths, a.naive_edges, a.reps)
    emb.update(embedded_ceiling(paths, work))
    emb["fraction_of_ceiling"] = emb["edges_per_s"] / emb["copy_ceiling_edges_per_s"]
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
