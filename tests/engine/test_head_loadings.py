"""Head loadings on tiny random models (fp32): the per-head parts and the bypass sum to the
graph's edge, and each part is what zeroing that head's output in the frozen model changes."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from typer.testing import CliRunner

from circuit_atlas.cli import app
from circuit_atlas.engine.attribution import head_loadings as hl
from circuit_atlas.engine.attribution.attribute import TargetDiff, attribute
from circuit_atlas.engine.formats.graph_files import GraphFile
from circuit_atlas.engine.models.loading import tiny_model
from circuit_atlas.engine.attribution.replacement import frozen_forward
from circuit_atlas.engine.transcoders.transcoder_set import random_transcoders

PROMPT = "A cat sat"
CASES = [("llama", "plt", False), ("gemma2", "clt", True), ("gpt2", "plt", True)]
# gemma2's features read GemmaScope's hook point (after the frozen norm scale, before its weight)
HOOKS = {"gemma2": ("ln2.hook_normalized", "hook_mlp_out")}
_CACHE: dict = {}


def setup(arch: str, kind: str, skip: bool):
    key = (arch, kind, skip)
    if key not in _CACHE:
        lm = tiny_model(arch, n_layers=3, d_model=32, vocab_size=97, seed=0)
        tc = random_transcoders(3, 32, 40, kind=kind, activation="relu", skip=skip, seed=1, scan=f"hl-{arch}")
        if arch in HOOKS:
            tc.feature_input_hook, tc.feature_output_hook = HOOKS[arch]
        graph = attribute(lm, tc, PROMPT, prune=False, custom_targets=[TargetDiff("c", "e")], batch_size=32)
        _CACHE[key] = (lm, tc, graph, hl.prepare(lm, tc, graph.meta["token_ids"], hl.custom_vectors_of(graph.meta)))
    return _CACHE[key]


def _edges(graph: GraphFile, n_layers: int) -> list[tuple[str, str]]:
    """The strongest edge of each kind that has an attention layer to split at."""
    nodes = graph.nodes.set_index("node_id")
    e = graph.edges.reindex(graph.edges["weight"].abs().sort_values(ascending=False).index)
    picked: dict[str, tuple[str, str]] = {}
    for s, t in zip(e["source"], e["target"]):
        a, b = nodes.loc[s], nodes.loc[t]
        kind = f"{a['type']}->{b['type']}"
        if kind in picked or not len(hl.valid_layers(hl.parse_node(s, n_layers), hl.parse_node(t, n_layers), n_layers)):
            continue
        if a["type"] == "feature" and b["type"] == "feature" and not (a["layer"] == 0 and b["layer"] == n_layers - 1):
            continue  # a feature edge crossing every middle layer
        picked[kind] = (s, t)
    return list(picked.values())


@pytest.mark.parametrize("arch,kind,skip", CASES)
def test_parts_sum_to_the_edge(arch: str, kind: str, skip: bool) -> None:
    lm, tc, graph, prep = setup(arch, kind, skip)
    edges = _edges(graph, lm.n_layers)
    kinds = {graph.nodes.set_index("node_id").loc[s, "type"] + "->" + graph.nodes.set_index("node_id").loc[t, "type"]
             for s, t in edges}
    assert {"embedding->feature", "feature->feature", "error->logit", "embedding->logit"} <= kinds, kinds
    edges.sort(key=lambda e: e[0].startswith("E_"))  # features and errors first, then embeddings
    n_checked = 0
    for s, t in edges[:4]:
        for r in hl.head_loadings(prep, s, t):
            assert r.stored_weight is None  # only graph_head_loadings attaches it
            weight = float(graph.edges[(graph.edges["source"] == s) & (graph.edges["target"] == t)]["weight"].iloc[0])
            assert abs(r.total - weight) <= 1e-5 * abs(weight) + 1e-7, (s, t, r.layer, r.total, weight)
            assert abs(r.edge - weight) <= 1e-5 * abs(weight) + 1e-7
            n_checked += 1
    assert n_checked >= 6
    s, t = edges[0]
    (r,) = hl.graph_head_loadings(lm, tc, graph, s, t, [hl.valid_layers(hl.parse_node(s, 3), hl.parse_node(t, 3), 3).start])
    assert r.stored_weight is not None and abs(r.total - r.stored_weight) <= 1e-5 * abs(r.stored_weight)


@contextmanager
def _pinned_heads(lm, layer: int, heads: list[int], value: torch.Tensor | None):
    """Inside: heads ``heads`` of ``layer`` output ``value``'s slice (zero when None)."""
    module = hl.attention_output(lm.adapter.layers(lm.model)[layer])
    n_h = hl.n_heads(lm)

    def hook(mod, args):
        x = args[0].clone()
        w = x.shape[-1] // n_h
        for h in heads:
            x[..., h * w : (h + 1) * w] = 0 if value is None else value[..., h * w : (h + 1) * w]
        return (x, *args[1:])

    handle = module.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _target(lm, tc, prep, target: str, **sources) -> float:
    """The target's scalar in the frozen model at the given sources."""
    node = hl.parse_node(target, lm.n_layers)
    kept = []
    handle = lm.model.get_output_embeddings().register_forward_pre_hook(lambda m, a: kept.append(a[0]))
    try:
        logits, mlp_in = frozen_forward(lm, tc, prep.state, **sources)
    finally:
        handle.remove()
    if node.kind == "feature":
        return float(tc.pre_activations(node.layer, mlp_in[node.layer][node.pos])[node.index].detach())
    if node.token_id >= lm.vocab_size:
        return float(kept[-1][0, -1].double() @ prep.custom_vectors[node.token_id].double())
    z = logits[-1].double()
    cap = lm.adapter.logit_softcap(lm.model)
    if cap:
        z = cap * torch.atanh(z / cap)
    return float(z[node.token_id] - z.mean())


def _doubled(prep, source: str, n_layers: int) -> dict:
    node, st = hl.parse_node(source, n_layers), prep.state
    if node.kind == "embedding":
        emb = st.embeddings.clone()
        emb[node.pos] *= 2
        return {"embeddings": emb}
    if node.kind == "error":
        errs = [e.clone() for e in st.errors]
        errs[node.layer][node.pos] *= 2
        return {"errors": errs}
    acts = [a.clone() for a in st.activations]
    acts[node.layer][node.pos, node.index] *= 2
    return {"activations": acts}


@pytest.mark.parametrize("arch,kind,skip", CASES)
def test_zeroing_a_head_changes_the_target_by_its_part(arch: str, kind: str, skip: bool) -> None:
    """Zeroing head h's output in the frozen model removes every source's path through it; its
    effect at the doubled source minus at the clean one is the edge's path through h."""
    lm, tc, graph, prep = setup(arch, kind, skip)
    largest = 0.0
    for s, t in _edges(graph, lm.n_layers)[:2]:
        rows = hl.head_loadings(prep, s, t)
        r = max(rows, key=lambda x: float(x.heads.abs().max()))
        h = int(r.heads.abs().argmax())
        doubled = _doubled(prep, s, lm.n_layers)
        clean = _target(lm, tc, prep, t)
        base2 = _target(lm, tc, prep, t, **doubled)
        with _pinned_heads(lm, r.layer, [h], None):
            zero1 = _target(lm, tc, prep, t)
            zero2 = _target(lm, tc, prep, t, **doubled)
        part = (base2 - zero2) - (clean - zero1)
        scale = abs(r.edge) + float(r.heads.abs().max())
        assert abs(part - float(r.heads[h])) <= 2e-4 * scale, (arch, s, t, r.layer, h, part, float(r.heads[h]))
        # all heads pinned to their clean outputs: what is left of the edge is the bypass
        saved: list[torch.Tensor] = []
        module = hl.attention_output(lm.adapter.layers(lm.model)[r.layer])
        handle = module.register_forward_pre_hook(lambda m, a: saved.append(a[0].clone()))
        try:
            _target(lm, tc, prep, t)
        finally:
            handle.remove()
        with _pinned_heads(lm, r.layer, list(range(hl.n_heads(lm))), saved[-1]):
            left = _target(lm, tc, prep, t, **doubled) - clean
        assert abs(left - r.bypass) <= 2e-4 * scale, (arch, s, t, r.layer, left, r.bypass)
        largest = max(largest, abs(float(r.heads[h])) / scale)
    assert largest > 0.02, "only negligible heads (vs the 2e-4 tolerance): the test would prove nothing"


def test_refusals() -> None:
    lm, tc, graph, prep = setup("llama", "plt", False)
    nodes = graph.nodes
    feat = nodes[(nodes["type"] == "feature") & (nodes["layer"] == 1)]["node_id"].iloc[0]
    logit = nodes[nodes["type"] == "logit"]["node_id"].iloc[0]
    with pytest.raises(hl.HeadLoadingError, match="not between"):
        hl.head_loadings(prep, feat, logit, [0])  # a layer-1 feature enters after layer 1's attention
    with pytest.raises(hl.HeadLoadingError, match="a target, not a source"):
        hl.head_loadings(prep, logit, feat)
    with pytest.raises(hl.HeadLoadingError, match="not a node id"):
        hl.head_loadings(prep, "nonsense", feat)
    with pytest.raises(hl.HeadLoadingError, match="not a node of graph"):
        hl.graph_head_loadings(lm, tc, graph, "0_39_0", feat)  # nothing is active at BOS
    bare = hl.prepare(lm, tc, graph.meta["token_ids"])  # as from the store: no custom vectors
    with pytest.raises(hl.HeadLoadingError, match="custom target"):
        hl.head_loadings(bare, "E_0_0", logit)
    other = random_transcoders(3, 32, 40, kind="plt", activation="relu", seed=1, scan="another")
    with pytest.raises(hl.HeadLoadingError, match="transcoders"):
        hl.graph_head_loadings(lm, other, graph, "E_0_0", logit)


def test_cli_on_a_graph_and_a_store(tmp_path) -> None:
    from circuit_atlas.store import open_store

    lm, tc, graph, _ = setup("llama", "plt", False)
    lm.model.save_pretrained(tmp_path / "model")
    lm.tokenizer.save_pretrained(tmp_path / "model")
    tc.save(tmp_path / "tc")
    gdir = graph.save(tmp_path / "graphs" / graph.graph_id)
    s, t = next((s, t) for s, t in _edges(graph, lm.n_layers) if t.startswith("2_"))  # a layer-2 feature target
    args = ["-m", str(tmp_path / "model"), "-t", str(tmp_path / "tc"), "--layer", "1", "--json"]
    result = CliRunner().invoke(app, ["heads", str(gdir), s, t, *args])
    assert result.exit_code == 0, result.output
    import json

    rows = json.loads(result.stdout[result.stdout.index("[\n") :])
    assert [r["layer"] for r in rows] == [1] and len(rows[0]["heads"]) == hl.n_heads(lm)
    assert abs(rows[0]["sum"] - rows[0]["stored_weight"]) <= 1e-5 * abs(rows[0]["stored_weight"])
    url = f"embedded:{tmp_path / 'store'}"
    with open_store(url) as st:
        st.write_graphs([gdir])
    stored = CliRunner().invoke(app, ["heads", graph.graph_id, s, t, *args, "--store", url])
    assert stored.exit_code == 0, stored.output
    again = json.loads(stored.stdout[stored.stdout.index("[\n") :])
    assert again[0]["heads"] == pytest.approx(rows[0]["heads"], rel=1e-9) and again[0]["stored_weight"] == rows[0]["stored_weight"]
    table = CliRunner().invoke(app, ["heads", str(gdir), s, t, *args[:-1]])
    assert table.exit_code == 0 and "bypass" in table.stdout and "sum of parts" in table.stdout
    bad = CliRunner().invoke(app, ["heads", str(gdir), s, t, *args[:4], "--layer", "0"])
    assert isinstance(bad.exception, hl.HeadLoadingError) or "not between" in bad.output


def test_app_figure_shows_every_part() -> None:
    from circuit_atlas.app.graph_view import heads_figure

    lm, tc, graph, prep = setup("llama", "plt", False)
    s, t = _edges(graph, lm.n_layers)[0]
    r = hl.head_loadings(prep, s, t)[-1]
    fig = heads_figure(r.heads.tolist(), r.bypass, r.edge, "title")
    (bar,) = fig.data
    assert list(bar.x) == [f"head {h}" for h in range(hl.n_heads(lm))] + ["bypass"]
    assert sum(bar.y) == pytest.approx(r.edge, rel=1e-5)
    assert f"{r.edge:+.4g}" in fig.layout.xaxis.title.text
