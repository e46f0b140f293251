"""Custom targets against circuit-tracer 0.5.0's ``CustomTarget`` on the same vectors: a
logit(a) - logit(b) direction (ours built by ``TargetDiff``, handed to circuit-tracer as the
vector and weight we computed) and a random direction, on tiny saved models and transcoders.

circuit-tracer names a custom target's logit node by a virtual index (vocab size + position);
ours by a hash of its label (``custom_target_id``), and the .pt import renames theirs to ours, so
every node is matched by id; then: node sets, every edge within 1e-5 of the largest, weights, the
pruned node and edge sets and both scores."""

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
from parity_cases import MATRIX_HOOKS, Case, save_model, save_transcoders, worker_case  # noqa: E402

pytestmark = pytest.mark.parity

CASES = [
    Case("llama", "clt", True, "relu", *MATRIX_HOOKS["llama"]["clt"]),
    Case("gemma2", "plt", True, "relu", *MATRIX_HOOKS["gemma2"]["plt"]),  # soft-capped logits
    Case("qwen3", "plt", False, "jumprelu", *MATRIX_HOOKS["qwen3"]["plt"]),
]
EDGE_TOL = 1e-5
# circuit-tracer's side: the parity worker's run_case with CustomTarget objects as the targets
CT_SCRIPT = """
import json, sys, torch
sys.path.insert(0, sys.argv[1])
import ct_worker
from circuit_tracer.attribution.targets import CustomTarget
for case in json.loads(open(sys.argv[2]).read()):
    spec = torch.load(case.pop("targets_file"))
    case["targets"] = [CustomTarget(token_str=l, prob=float(w), vec=v) for l, w, v in spec]
    try:
        ct_worker.run_case(case)
        print(json.dumps({"name": case["name"], "ok": True}), flush=True)
    except Exception as exc:
        import traceback
        print(json.dumps({"name": case["name"], "error": repr(exc), "trace": traceback.format_exc().splitlines()[-8:]}), flush=True)
"""


def _ours(root: Path, case: Case, ids: list[int], prune: bool):
    from circuit_atlas.engine.attribution.attribute import CustomTarget, TargetDiff, attribute
    from circuit_atlas.engine.models.loading import load_model
    from circuit_atlas.engine.transcoders.transcoder_set import load_transcoders

    lm = load_model(str(root / "models" / case.arch), dtype="float32", device="cpu")
    tc = load_transcoders(root / "tc" / case.name)
    vec = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(11))
    a, b = lm.tokenize("PL")[1:3]
    targets = [TargetDiff(a, b), CustomTarget("random direction", 0.4, vec)]
    return attribute(lm, tc, ids, batch_size=case.batch, prune=prune, custom_targets=targets)


@pytest.fixture(scope="module")
def ct_custom(ct_python, tmp_path_factory):
    root = tmp_path_factory.mktemp("parity-custom")
    ids = {arch: save_model(arch, root / "models" / arch) for arch in {c.arch for c in CASES}}
    jobs, ours = [], {}
    for case in CASES:
        save_transcoders(case, root / "tc" / case.name)
        graph = _ours(root, case, ids[case.arch], prune=False)
        ours[case.name] = graph
        spec = [(c["label"], c["weight"], torch.tensor(c["vector"], dtype=torch.float32)) for c in graph.meta["custom_targets"]]
        torch.save(spec, str(root / f"{case.name}.targets.pt"))
        job = worker_case(case, root / "models" / case.arch, root / "tc" / case.name, ids[case.arch], root / "ct" / case.name)
        jobs.append({**job, "targets_file": str(root / f"{case.name}.targets.pt")})
    (root / "ct").mkdir()
    (root / "cases.json").write_text(json.dumps(jobs))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONPATH": ""}
    proc = subprocess.run([str(ct_python), "-c", CT_SCRIPT, str(Path(__file__).parent), str(root / "cases.json")],
                          capture_output=True, text=True, env=env, timeout=900)
    reports = {r["name"]: r for r in (json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{"))}
    if not reports:
        pytest.fail(f"circuit-tracer produced nothing (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return root, ids, reports, ours


def _edges(graph, rename: dict[str, str]) -> pd.Series:
    e = graph.edges
    return pd.Series(e["weight"].to_numpy(np.float64),
                     index=pd.MultiIndex.from_arrays([e["source"].replace(rename), e["target"].replace(rename)]))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_custom_targets_match_circuit_tracer(case, ct_custom) -> None:
    from circuit_atlas.engine.formats.circuit_tracer import read_circuit_tracer_pt

    root, ids, reports, ours_all = ct_custom
    report = reports.get(case.name, {"error": "no report"})
    assert "error" not in report, f"circuit-tracer failed on {case.name}: {report.get('error')} {report.get('trace')}"
    pt = (root / "ct" / case.name).with_suffix(".pt")
    extra = torch.load(str((root / "ct" / case.name).with_suffix(".extra.pt")))
    theirs, ours = read_circuit_tracer_pt(pt, prune=False), ours_all[case.name]
    t_logits = theirs.nodes[theirs.nodes["type"] == "logit"]["node_id"].tolist()
    o_logits = ours.nodes[ours.nodes["type"] == "logit"]["node_id"].tolist()
    assert len(t_logits) == len(o_logits) == 2
    assert t_logits == o_logits  # the import names their virtual-index targets by our label hash
    rename = dict(zip(t_logits, o_logits))
    assert ours.nodes[ours.nodes["type"] == "logit"]["label"].tolist()[1] == "random direction"

    tn = theirs.nodes[~((theirs.nodes["type"] == "error") & (theirs.nodes["pos"] == 0))]  # their edgeless BOS errors
    assert set(tn["node_id"].replace(rename)) == set(ours.nodes["node_id"])
    assert int((ours.nodes["type"] == "feature").sum()) >= 8
    weights = dict(zip(ours.nodes["node_id"], ours.nodes["prob"]))
    for t_id, o_id in rename.items():
        assert float(theirs.nodes.set_index("node_id").loc[t_id, "prob"]) == pytest.approx(float(weights[o_id]), rel=1e-6)

    te, oe = _edges(theirs, rename), _edges(ours, {})
    both = pd.concat([oe.rename("ours"), te.rename("theirs")], axis=1).fillna(0.0)
    into_custom = both[both.index.get_level_values(1).isin(o_logits)]
    assert len(into_custom) > 0 and float(into_custom["theirs"].abs().max()) > 0
    scale = float(both["theirs"].abs().max())
    worst = float((both["ours"] - both["theirs"]).abs().max())
    assert worst <= EDGE_TOL * scale, f"{case.name}: worst edge difference {worst / scale:.3g} of the largest"

    pruned = _ours(root, case, ids[case.arch], prune=True)
    all_ids = theirs.nodes["node_id"].replace(rename).to_numpy()
    assert set(pruned.nodes["node_id"]) == set(all_ids[extra["node_mask"].numpy()])
    dst, src = torch.nonzero(extra["edge_mask"], as_tuple=True)
    assert set(zip(pruned.edges["source"], pruned.edges["target"])) == set(zip(all_ids[src.numpy()], all_ids[dst.numpy()]))
    for key in ("replacement_score", "completeness_score"):
        assert pruned.meta["scores"][key] == pytest.approx(extra[key], abs=1e-5), key
