"""The demo recipe on the real SmolLM2-135M (opt-in: -m slow): trains, caches, and reconstructs usefully."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_quick_demo_recipe_trains_once_and_is_reused(tmp_path: Path, monkeypatch) -> None:
    from circuit_atlas.engine.training.evaluate import evaluate_transcoders
    from circuit_atlas.engine.training.train import ensure_demo_transcoders, read_metrics

    monkeypatch.setenv("CIRCUIT_ATLAS_HOME", str(tmp_path))
    out = ensure_demo_transcoders(quick=True, progress=False)
    assert out == tmp_path / "transcoders" / "demo-quick" and (out / "config.yaml").exists()
    m = read_metrics(out)
    # the first batches fit the skip's least-squares start (they score low at once); compare later ones
    first, last = [r["nmse"] for r in m[4:8]], [r["nmse"] for r in m[-4:]]
    assert sum(last) < sum(first)
    stamp = (out / "config.yaml").stat().st_mtime_ns
    assert ensure_demo_transcoders(quick=True, progress=False) == out  # cached: nothing trained or written
    assert (out / "config.yaml").stat().st_mtime_ns == stamp and read_metrics(out) == m
    res = evaluate_transcoders(model="demo", transcoders=str(out), tokens=512, progress=False)
    assert len(res.layers) == 30
    assert res.mean_nmse < 1.0
    assert all(6 < d["l0"] <= 8 for d in res.layers)  # TopK 8
