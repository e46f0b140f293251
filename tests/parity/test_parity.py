"""Our attribution graphs against circuit-tracer 0.5.0's (nnsight backend) on the same saved
models and transcoders: every architecture both support x PLT/CLT x skip x activation, the
hook points circuit-tracer maps, and greedy ``max_feature_nodes`` at a small batch.

circuit-tracer runs once for all cases (``ct_worker.py`` in its own venv, see conftest.py);
each test then builds our graph of the same prompt and checks: node sets equal; every edge
within 1e-5 of the largest; activations, logit probabilities and node influence equal; the
pruned node and edge sets (circuit-tracer's ``prune_graph`` against ours) and both scores equal;
and circuit-tracer's ``.pt`` imported as ``circuit-atlas import`` reads it equals our pruned graph.
circuit-tracer keeps an error node at BOS (always zero, no edges) that we do not make; those
are checked to be edgeless and set aside.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from parity_cases import all_cases, save_model, save_transcoders, worker_case  # noqa: E402

CASES = all_cases()
# the first case carries the session's setup: making the venv on first use and circuit-tracer's run
pytestmark = pytest.mark.timeout(2400)
EDGE_TOL = 1e-5  # of the largest edge
WORKER = Path(__file__).parent / "ct_worker.py"


@pytest.fixture(scope="session")
def ct_results(ct_python, tmp_path_factory, request):
    """Build the selected cases' files, run circuit-tracer over all of them in one process;
    returns (root, {case name: worker report}, {arch: token ids})."""
    chosen = {item.callspec.params["case"] for item in request.session.items
              if hasattr(item, "callspec") and "case" in item.callspec.params and item.name.startswith("test_same_graph")}
    cases = [c for c in CASES if c in chosen] or CASES
    root = tmp_path_factory.mktemp("parity")
    ids = {arch: save_model(arch, root / "models" / arch) for arch in sorted({c.arch for c in cases})}
    jobs = []
    for case in cases:
        tc_dir = root / "tc" / case.name
        save_transcoders(case, tc_dir)
        # ".graph" is the suffix the worker replaces (case names hold dots)
        jobs.append(worker_case(case, root / "models" / case.arch, tc_dir, ids[case.arch], root / "ct" / f"{case.name}.graph"))
    (root / "ct").mkdir()
    (root / "cases.json").write_text(json.dumps(jobs))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONPATH": ""}
    proc = subprocess.run([str(ct_python), str(WORKER), str(root / "cases.json")], capture_output=True, text=True,
                          env=env, timeout=1200)
    reports = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            reports[r["name"]] = r
    if not reports:
        pytest.fail(f"circuit-tracer worker produced nothing (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return root, reports, ids


def _ours(root: Path, case, ids: list[int], prune: bool):
    from circuit_atlas.engine.attribution.attribute import attribute
    from circuit_atlas.engine.models.loading import load_model
    from circuit_atlas.engine.transcoders.transcoder_set import load_transcoders

    lm = load_model(str(root / "models" / case.arch), dtype="float32", device="cpu")
    tc = load_transcoders(root / "tc" / case.name)
    assert (tc.feature_input_hook, tc.feature_output_hook) == (case.input_hook, case.output_hook)
    return attribute(lm, tc, ids, batch_size=case.batch, max_feature_nodes=case.max_feat, prune=prune)


def _edges(graph) -> pd.Series:
    e = graph.edges
    return pd.Series(e["weight"].to_numpy(np.float64), index=pd.MultiIndex.from_arrays([e["source"], e["target"]]))


def _bos_errors(nodes: pd.DataFrame) -> pd.Series:
    return (nodes["type"] == "error") & (nodes["pos"] == 0)


def _by_id(nodes: pd.DataFrame, column: str, mask=None) -> pd.Series:
    n = nodes if mask is None else nodes[mask]
    return pd.Series(n[column].to_numpy(np.float64), index=n["node_id"].to_numpy())


def _at_edge_cutoff(scores: torch.Tensor, t: int, s: int, threshold: float = 0.98, tol: float = 1e-5) -> bool:
    """Whether edge (t, s) sits where prune_graph's cumulative edge-score fraction crosses
    ``threshold``: the fractions kept before and after it bracket the threshold, up to float
    rounding, so summing in another order may put it on either side."""
    flat = scores.flatten().double()
    total = float(flat.sum())
    v = float(scores[t, s])
    before = float(flat[flat > v].sum()) / total
    return before - tol <= threshold <= before + v / total + tol


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_same_graph_as_circuit_tracer(case, ct_results):
    from circuit_atlas.engine.formats.circuit_tracer import read_circuit_tracer_pt

    root, reports, ids = ct_results
    report = reports.get(case.name, {"error": "no report"})
    assert "error" not in report, f"circuit-tracer failed on {case.name}: {report.get('error')} {report.get('trace')}"
    pt = root / "ct" / f"{case.name}.pt"
    extra = torch.load(str(root / "ct" / f"{case.name}.extra.pt"))
    theirs = read_circuit_tracer_pt(pt, prune=False)  # node order = circuit-tracer's
    ours = _ours(root, case, ids[case.arch], prune=False)

    # nodes: the same features, errors, tokens and logits (their BOS errors are edgeless)
    tn, on = theirs.nodes, ours.nodes
    bos = _bos_errors(tn)
    bos_ids = set(tn.loc[bos, "node_id"])
    te = _edges(theirs)
    assert not (set(te.index.get_level_values(0)) | set(te.index.get_level_values(1))) & bos_ids
    assert set(tn.loc[~bos, "node_id"]) == set(on["node_id"])
    n_feat = int((on["type"] == "feature").sum())
    assert n_feat >= 8, f"only {n_feat} active features: the comparison would prove little"

    # activations and logit probabilities
    feat = on["type"] == "feature"
    ta, oa = _by_id(tn, "activation", tn["type"] == "feature"), _by_id(on, "activation", feat)
    np.testing.assert_allclose(oa.to_numpy(), ta.reindex(oa.index).to_numpy(), rtol=1e-5, atol=1e-6)
    tp, op = _by_id(tn, "prob", tn["type"] == "logit"), _by_id(on, "prob", on["type"] == "logit")
    np.testing.assert_allclose(op.to_numpy(), tp.reindex(op.index).to_numpy(), rtol=1e-5, atol=1e-7)

    # every edge (union of both edge sets; a missing edge is a zero)
    oe = _edges(ours)
    both = pd.concat([oe.rename("ours"), te.rename("theirs")], axis=1).fillna(0.0)
    scale = float(both["theirs"].abs().max())
    worst = float((both["ours"] - both["theirs"]).abs().max())
    assert worst <= EDGE_TOL * scale, f"{case.name}: worst edge difference {worst:.3g} = {worst / scale:.3g} of the largest edge"

    # influence: circuit-tracer's compute_node_influence against ours, node by node
    t_infl = pd.Series(extra["influence"].double().numpy(), index=tn["node_id"].to_numpy())[~bos.to_numpy()]
    o_infl = _by_id(on, "influence")
    np.testing.assert_allclose(o_infl.to_numpy(), t_infl.reindex(o_infl.index).to_numpy(), rtol=1e-4, atol=1e-6 * float(t_infl.abs().max()))

    # pruning (circuit-tracer's prune_graph vs ours) and both scores
    pruned = _ours(root, case, ids[case.arch], prune=True)
    t_nodes = set(tn["node_id"].to_numpy()[extra["node_mask"].numpy()])
    assert set(pruned.nodes["node_id"]) == t_nodes
    src, dst = torch.nonzero(extra["edge_mask"], as_tuple=True)[1], torch.nonzero(extra["edge_mask"], as_tuple=True)[0]
    id_arr = tn["node_id"].to_numpy()
    t_pairs = set(zip(id_arr[src.numpy()], id_arr[dst.numpy()]))
    o_pairs = set(zip(pruned.edges["source"], pruned.edges["target"]))
    where = {nid: i for i, nid in enumerate(id_arr)}
    for s_id, t_id in o_pairs ^ t_pairs:  # only where the 98% cumulative edge score falls
        assert _at_edge_cutoff(extra["edge_scores"], where[t_id], where[s_id]), f"pruned edge {s_id} -> {t_id} differs"
    for key in ("replacement_score", "completeness_score"):
        assert pruned.meta["scores"][key] == pytest.approx(extra[key], abs=1e-5), key

    # circuit-tracer's .pt as `circuit-atlas import` reads it (pruned) equals our pruned graph
    imported = read_circuit_tracer_pt(pt)
    assert set(imported.nodes["node_id"]) == set(pruned.nodes["node_id"])
    ie, pe = _edges(imported), _edges(pruned)
    assert set(ie.index) == set(pe.index)
    assert float((ie - pe.reindex(ie.index)).abs().max()) <= EDGE_TOL * scale
    ia = _by_id(imported.nodes, "activation", imported.nodes["type"] == "feature")
    pa = _by_id(pruned.nodes, "activation", pruned.nodes["type"] == "feature")
    np.testing.assert_allclose(pa.to_numpy(), ia.reindex(pa.index).to_numpy(), rtol=1e-5, atol=1e-6)
    for key in ("replacement_score", "completeness_score"):
        assert imported.meta["scores"][key] == pytest.approx(pruned.meta["scores"][key], abs=1e-5), key
