"""Benchmark: importing real Neuronpedia graphs made by others, edges/s including JSON parsing,
beside only parsing the same files with the fastest JSON parser here (orjson), same run.

The corpus is ``../shared/real-np`` (SOURCES.md there: 17 + 1 circuit-tracer graphs of gemma-2-2b
and 2 of Anthropic's; about 90k links). Three measurements, each the best of ``--repeat`` runs:

- parse: ``orjson.loads`` of every file's bytes (already in memory): the ceiling;
- read: our reader, file -> Arrow tables (read, parse, ids, clash resolution, graph id), what
  the import does per file;
- import: ``circuit-atlas import`` of the whole corpus into a fresh embedded store: opening the
  store, reading, one store write (one transaction; the derived layer updated in it) and the
  post-write steps (supernodes, labels, shared texts), closing the store.

The import is split into ``import_open_s`` (open a fresh store), ``import_read_s`` (files to
tables, inside import_path), ``import_store_s`` (the store's write incl. the derived layer) and
the rest. Prints a table and ends with one JSON line: edges, seconds and edges/s of each, and
``read_ratio`` / ``import_ratio`` = edges/s over parse-only edges/s (target >= 0.5).
Usage: ``python bench/import_real.py [--dir ../shared/real-np] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def corpus(folder: Path) -> list[Path]:
    files = sorted(f for f in folder.glob("*/*.json") if f.is_file())
    if not files:
        print(f"no graphs under {folder} (expected ../shared/real-np/<set>/*.json)", file=sys.stderr)
        raise SystemExit(2)
    return files


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=ROOT / ".." / "shared" / "real-np")
    parser.add_argument("--repeat", type=int, default=3)
    a = parser.parse_args()
    import orjson

    from circuit_atlas.engine.formats.neuronpedia import read_neuronpedia_tables
    from circuit_atlas.ingest.importers import import_path
    from circuit_atlas.store import open_store

    files = corpus(a.dir.resolve())
    raw = [f.read_bytes() for f in files]
    edges = sum(len(orjson.loads(r)["links"]) for r in raw)
    parse_s = best(lambda: [orjson.loads(r) for r in raw], a.repeat)
    read_s = best(lambda: [read_neuronpedia_tables(f) for f in files], a.repeat)

    parts: list[dict] = []

    def run_import() -> None:
        with tempfile.TemporaryDirectory(prefix="ca-import-real-") as tmp:
            folder = Path(tmp) / "graphs"
            folder.mkdir()
            for f in files:  # one folder of links to the files, so one import command takes them all
                (folder / f"{f.parent.name}--{f.name}").symlink_to(f)
            t0 = time.perf_counter()
            with open_store(f"embedded:{Path(tmp) / 'store'}") as s:
                opened = time.perf_counter() - t0
                rep = import_path(folder, s, progress=False)
            total = time.perf_counter() - t0
            if rep.failed or len(rep.written) != len(files):
                raise SystemExit(f"import failed: {rep.failed[:3]}")
            parts.append({"total": total, "import_open_s": opened, "import_read_s": rep.read_seconds,
                          "import_store_s": rep.store_seconds,
                          "import_rest_s": total - opened - rep.read_seconds - rep.store_seconds})

    import_s = best(run_import, a.repeat)
    split = min(parts, key=lambda p: p["total"])
    fig = {
        "files": len(files), "edges": edges, "repeat": a.repeat, "parser": f"orjson {orjson.__version__}",
        "parse_s": parse_s, "read_s": read_s, "import_s": import_s,
        "parse_edges_per_s": edges / parse_s, "read_edges_per_s": edges / read_s, "import_edges_per_s": edges / import_s,
    }
    fig.update({k: v for k, v in split.items() if k != "total"})
    fig["load_avg_1m"] = os.getloadavg()[0]
    fig["read_ratio"] = fig["read_edges_per_s"] / fig["parse_edges_per_s"]
    fig["import_ratio"] = fig["import_edges_per_s"] / fig["parse_edges_per_s"]
    print(f"{'what':<28}{'seconds':>10}{'edges/s':>14}{'x parse':>10}")
    for name, key in (("parse only (orjson)", "parse"), ("read (file -> tables)", "read"), ("import into the store", "import")):
        rate = fig[f"{key}_edges_per_s"]
        print(f"{name:<28}{fig[f'{key}_s']:>10.3f}{rate:>14,.0f}{rate / fig['parse_edges_per_s']:>10.2f}")
    print("import split: " + ", ".join(f"{k[7:-2]} {split[k]:.3f}s" for k in ("import_open_s", "import_read_s",
                                                                             "import_store_s", "import_rest_s")))
    print(json.dumps(fig))


if __name__ == "__main__":
    main()
