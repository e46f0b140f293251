"""Custom targets (any direction read after the final norm, and logit(a) - logit(b)): edges are
the frozen model's direct effects on the target's scalar, a difference target is the difference
of the two logit targets, and they are stored and named like logit nodes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from circuit_atlas.cli import app
from circuit_atlas.engine.attribution.attribute import (
    AttributionError,
    CustomTarget,
    TargetDiff,
    attribute,
    compute_graph,
    custom_target_id,
)
from circuit_atlas.engine.formats.graph_files import GraphFile, is_graph_dir
from circuit_atlas.engine.models.loading import tiny_model
from circuit_atlas.engine.attribution.replacement import frozen_forward, frozen_state
from circuit_atlas.engine.transcoders.transcoder_set import random_transcoders
from circuit_atlas.errors import CircuitAtlasError

PROMPT = "The cat sat on the mat"
_CACHE: dict = {}


def setup(arch: str, kind: str, skip: bool):
    key = (arch, kind, skip)
    if key not in _CACHE:
        lm = tiny_model(arch, n_layers=2, d_model=32, vocab_size=97, seed=0)
        tc = random_transcoders(lm.n_layers, lm.d_model, 48, kind=kind, activation="relu", skip=skip, seed=1, scan="ct")
        _CACHE[key] = (lm, tc)
    return _CACHE[key]


def _direction_value(lm, tc, state, vec: torch.Tensor, **sources) -> float:
    """<vec, final norm output at the last position> of the frozen model at the given sources."""
    kept: list[torch.Tensor] = []
    head = lm.model.get_output_embeddings()
    handle = head.register_forward_pre_hook(lambda m, args: kept.append(args[0].detach()))
    try:
        frozen_forward(lm, tc, state, **sources)
    finally:
        handle.remove()
    return float(kept[-1][0, -1].double() @ vec.double())


@pytest.mark.parametrize("arch,kind,skip", [("llama", "plt", True), ("gemma2", "clt", False), ("gpt2", "plt", False)])
def test_custom_edge_is_the_frozen_perturbation_effect(arch: str, kind: str, skip: bool) -> None:
    lm, tc = setup(arch, kind, skip)
    ids = lm.tokenize(PROMPT)
    vec = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(3))
    raw = compute_graph(lm, tc, ids, custom_targets=[CustomTarget("dir", 0.7, vec)], batch_size=4)
    assert raw.logits.n_custom == 1 and raw.logits.token_ids.shape[0] == 1
    assert float(raw.logits.probs[0]) == pytest.approx(0.7)
    row = raw.rows[int(torch.nonzero(raw.row_nodes == raw.kinds.shape[0] - 1)[0])].double()
    state = frozen_state(lm, tc, torch.tensor(ids))
    base = _direction_value(lm, tc, state, vec)
    n_feat, L, T = raw.feat_layer.shape[0], raw.n_layers, raw.n_pos
    checked = []
    step = max(1, n_feat // 8)
    for i in range(0, n_feat, step):  # doubling a source adds its edge (the frozen model is linear)
        l, p, f = int(raw.feat_layer[i]), int(raw.feat_pos[i]), int(raw.feat_index[i])
        acts = [a.clone() for a in state.activations]
        acts[l][p, f] *= 2
        checked.append((float(row[i]), _direction_value(lm, tc, state, vec, activations=acts) - base))
    for l in range(L):
        for p in (1, T - 1):
            errs = [e.clone() for e in state.errors]
            errs[l][p] *= 2
            checked.append((float(row[n_feat + l * (T - 1) + p - 1]), _direction_value(lm, tc, state, vec, errors=errs) - base))
    for p in (0, 1, T // 2, T - 1):
        emb = state.embeddings.clone()
        emb[p] *= 2
        checked.append((float(row[n_feat + L * (T - 1) + p]), _direction_value(lm, tc, state, vec, embeddings=emb) - base))
    got, want = np.array(checked).T
    scale = np.abs(want).max()
    assert scale > 1e-3, "perturbations moved nothing: the test would prove nothing"
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("arch", ["llama", "gemma2"])  # gemma2: soft-capped logits
def test_target_diff_is_the_difference_of_logit_targets(arch: str) -> None:
    lm, tc = setup(arch, "clt" if arch == "gemma2" else "plt", True)
    ids = lm.tokenize(PROMPT)
    logits = compute_graph(lm, tc, ids, logit_targets=[5, 9], batch_size=8)
    diff = compute_graph(lm, tc, ids, custom_targets=[TargetDiff(5, 9)], batch_size=8)
    n_src = diff.rows.shape[1] - 1
    assert logits.rows.shape[1] - 2 == n_src and torch.equal(logits.feat_index, diff.feat_index)
    r5, r9 = (logits.rows[int(torch.nonzero(logits.row_nodes == n_src + k)[0]), :n_src] for k in (0, 1))
    rd = diff.rows[int(torch.nonzero(diff.row_nodes == n_src)[0]), :n_src]
    expected = (r5 - r9).double()
    assert expected.abs().max() > 1e-2
    assert torch.allclose(rd.double(), expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
    probs = torch.softmax(lm.logits(torch.tensor(ids))[0, -1].double(), -1)
    assert float(diff.logits.probs[0]) == pytest.approx(abs(float(probs[5] - probs[9])), rel=1e-4)
    assert diff.logits.labels == [f"logit({lm.token_strings([5])[0]})-logit({lm.token_strings([9])[0]})"]


def test_custom_targets_are_logit_nodes_in_graph_files(tmp_path) -> None:
    lm, tc = setup("llama", "plt", False)
    vec = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(4))
    graph = attribute(lm, tc, PROMPT, custom_targets=[TargetDiff("c", "e"), CustomTarget("my dir", 2.0, vec)], batch_size=8)
    logits = graph.nodes[graph.nodes["type"] == "logit"].set_index("label")
    assert sorted(logits.index) == ["logit(c)-logit(e)", "my dir"]
    tid = custom_target_id("my dir", lm.vocab_size)
    assert tid >= lm.vocab_size and int(logits.loc["my dir", "token_id"]) == tid
    assert logits.loc["my dir", "node_id"] == f"{lm.n_layers + 1}_{tid}_{len(lm.tokenize(PROMPT)) - 1}"
    assert float(logits.loc["my dir", "prob"]) == 2.0
    assert graph.meta["logit_tokens"][str(tid)] == "my dir"
    assert [c["label"] for c in graph.meta["custom_targets"]] == ["logit(c)-logit(e)", "my dir"]
    assert graph.meta["settings"]["logit_targets"] == [
        {k: v for k, v in c.items() if k != "vector"} for c in graph.meta["custom_targets"]
    ]
    assert np.allclose(graph.meta["custom_targets"][1]["vector"], vec.numpy())
    assert len(graph.edges[graph.edges["target"] == logits.loc["my dir", "node_id"]]) > 0
    again = GraphFile.load(graph.save(tmp_path / "g"))
    assert again.nodes[again.nodes["type"] == "logit"]["label"].tolist() == graph.nodes[graph.nodes["type"] == "logit"]["label"].tolist()
    # another direction under another label is another graph and another node
    other = attribute(lm, tc, PROMPT, custom_targets=[CustomTarget("my dir 2", 2.0, vec)], batch_size=8)
    assert other.graph_id != graph.graph_id


def test_bad_custom_targets() -> None:
    lm, tc = setup("llama", "plt", False)
    with pytest.raises(AttributionError, match="shape"):
        attribute(lm, tc, PROMPT, custom_targets=[CustomTarget("x", 1.0, torch.zeros(lm.d_model + 1))])
    with pytest.raises(AttributionError, match="labelled"):
        attribute(lm, tc, PROMPT, custom_targets=[CustomTarget("x", 1.0, torch.ones(lm.d_model))] * 2)
    with pytest.raises(AttributionError, match="weight"):
        attribute(lm, tc, PROMPT, custom_targets=[CustomTarget("x", -1.0, torch.ones(lm.d_model))])
    with pytest.raises(AttributionError, match="2 tokens"):
        attribute(lm, tc, PROMPT, custom_targets=[TargetDiff("ab", "c")])
    with pytest.raises(AttributionError, match="same token"):
        attribute(lm, tc, PROMPT, custom_targets=[TargetDiff("c", "c")])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct-cli")
    lm, tc = setup("llama", "plt", False)
    lm.model.save_pretrained(root / "model")
    lm.tokenizer.save_pretrained(root / "model")
    tc.save(root / "tc")
    return root


def _run(saved, out, *extra: str):
    return CliRunner().invoke(app, ["attribute", "-m", str(saved / "model"), "-t", str(saved / "tc"),
                                    "-p", PROMPT, "-o", str(out), "--batch-size", "8", *extra])


def test_cli_target_diff_and_direction(saved, tmp_path) -> None:
    from safetensors.torch import save_file

    lm, _ = setup("llama", "plt", False)
    vec = np.random.default_rng(0).standard_normal(lm.d_model).astype(np.float32)
    np.save(tmp_path / "d.npy", vec)
    save_file({"direction": torch.from_numpy(vec), "other": torch.zeros(3)}, str(tmp_path / "d.safetensors"))
    graphs = []
    for name, extra in (("npy", ["--target-direction", str(tmp_path / "d.npy"), "--target-label", "D", "--target-weight", "0.3"]),
                        ("st", ["--target-direction", str(tmp_path / "d.safetensors"), "--target-label", "D", "--target-weight", "0.3"]),
                        ("diff", ["--target-diff", "c", "e"])):
        result = _run(saved, tmp_path / name, *extra)
        assert result.exit_code == 0, result.output
        (d,) = [p for p in (tmp_path / name).iterdir() if is_graph_dir(p)]
        graphs.append(GraphFile.load(d))
    npy, st, diff = graphs
    for g, label in ((npy, "D"), (st, "D"), (diff, "logit(c)-logit(e)")):
        assert g.nodes[g.nodes["type"] == "logit"]["label"].tolist() == [label]
    assert npy.graph_id == st.graph_id  # the same vector from either file format
    assert npy.meta["custom_targets"][0]["weight"] == pytest.approx(0.3)


def test_cli_custom_target_errors(saved, tmp_path) -> None:
    np.save(tmp_path / "bad.npy", np.zeros(5, dtype=np.float32))
    (tmp_path / "x.txt").write_text("1 2 3")
    for extra, message in ((["--target-direction", str(tmp_path / "bad.npy")], "d_model"),
                           (["--target-direction", str(tmp_path / "x.txt")], ".npy or .safetensors"),
                           (["--target-direction", str(tmp_path / "missing.npy")], "no such direction file"),
                           (["--target-weight", "2"], "go with --target-direction"),
                           (["--target-diff", "ab", "c"], "2 tokens")):
        result = _run(saved, tmp_path / "out", *extra)
        # a CircuitAtlasError (exit 2 through main) or click's usage error (exit 2)
        assert result.exit_code == 2 or isinstance(result.exception, CircuitAtlasError), (extra, result.output)
        text = result.output + (str(result.exception) if result.exception else "")
        assert message in text, (extra, text)
        assert not (tmp_path / "out").exists()
