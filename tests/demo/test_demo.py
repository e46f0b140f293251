"""`circuit-atlas demo --quick --no-serve` end to end on the real demo model: the smoke test of
the whole chain (model, transcoders trained here, corpus attributed and ingested into the
embedded store, derived layer, feature contexts, supernodes, the recurring-circuit queries)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from circuit_atlas.store import open_store

pytestmark = pytest.mark.demo


def test_quick_demo_end_to_end(tmp_path) -> None:
    env = dict(os.environ, CIRCUIT_ATLAS_HOME=str(tmp_path / "home"))
    proc = subprocess.run([sys.executable, "-m", "circuit_atlas", "demo", "--quick", "--no-serve"], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    root = tmp_path / "home" / "demo-quick"
    summary = json.loads((root / "summary.json").read_text())
    corpus_rows = len((root / "corpus.jsonl").read_text().splitlines())
    assert summary["ingest"]["succeeded"] + summary["ingest"]["failed"] == corpus_rows
    assert summary["ingest"]["succeeded"] >= corpus_rows - 2
    assert summary["recurring_paths"] > 0 and summary["supernodes"] > 0
    # an edge present in every capital prompt of the quick corpus
    got, of = summary["capital_circuit"]["capital_prompts"].split("/")
    assert got == of
    with open_store(f"embedded:{root / 'store'}") as store:
        assert store.stats()["Prompt"] == summary["ingest"]["succeeded"]
    # a second run reuses everything: nothing attributed again, same store
    again = subprocess.run([sys.executable, "-m", "circuit_atlas", "demo", "--quick", "--no-serve"], env=env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    second = json.loads((root / "summary.json").read_text())
    assert second["ingest"]["succeeded"] == 0 and second["stats"] == summary["stats"]
