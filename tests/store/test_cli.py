"""The store commands, run as a user runs them (a subprocess of the real CLI)."""

from __future__ import annotations

import json
import subprocess
import sys

from circuit_atlas.store.synthetic import write_synthetic_corpus
from circuit_atlas.store import SCHEMA_VERSION


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "circuit_atlas.cli", *args], capture_output=True, text=True, timeout=300)


def test_load_stats_doctor_export(tmp_path):
    paths = write_synthetic_corpus(tmp_path / "g", 2, n_nodes=80, n_edges=300)
    url = f"embedded:{tmp_path / 'store'}"
    r = cli("store", "load", *map(str, paths), "--store", url)
    assert r.returncode == 0, r.stderr
    st = json.loads(cli("store", "stats", "--store", url, "--json").stdout)
    assert st["Prompt"] == 2
    r = cli("doctor", "--store", url)
    assert r.returncode == 0 and f"schema version {SCHEMA_VERSION}" in r.stdout
    r = cli("store", "export-csv", str(tmp_path / "csv"), "--store", url)
    assert r.returncode == 0, r.stderr
    edges = (tmp_path / "csv" / "EDGE.csv").read_text().splitlines()
    assert len(edges) - 1 == st["EDGE"]


def test_unreachable_store_one_line_nonzero():
    r = cli("doctor", "--store", "bolt://127.0.0.1:1")
    assert r.returncode != 0
    assert "cannot reach" in r.stderr and "Traceback" not in r.stderr
