"""Influence, pruning and scores on a hand-built graph whose numbers are derived by hand below."""

from __future__ import annotations

import pytest
import torch

from circuit_atlas.engine.attribution import pruning
from circuit_atlas.engine.attribution.pruning import EMBEDDING, ERROR, FEATURE, LOGIT

# Nodes: 0 e0, 1 e1 (embeddings), 2 f0, 3 f1, 4 f2 (features), 5 r (error), 6 L0, 7 L1 (logits).
KINDS = torch.tensor([EMBEDDING, EMBEDDING, FEATURE, FEATURE, FEATURE, ERROR, LOGIT, LOGIT])
N = 8
# Raw edges A[target, source] and their row-normalised |A|:
#   f0 <- e0 2, e1 -2          -> .5, .5
#   f1 <- e0 1, f0 3           -> .25, .75
#   f2 <- e1 0.5               -> 1
#   L0 <- f0 1, f1 2, r 1      -> .25, .5, .25
#   L1 <- e1 -1, r 2, f2 1     -> .25, .5, .25
EDGES = {(2, 0): 2.0, (2, 1): -2.0, (3, 0): 1.0, (3, 2): 3.0, (4, 1): 0.5,
         (6, 2): 1.0, (6, 3): 2.0, (6, 5): 1.0, (7, 1): -1.0, (7, 5): 2.0, (7, 4): 1.0}
W = torch.tensor([0, 0, 0, 0, 0, 0, 0.6, 0.2])  # logit probabilities on the logit nodes

# Influence w A + w A^2 + ... by hand:
#   step 1 (from L0 .6, L1 .2): f0 .15, f1 .3, r .15+.1=.25, e1 .05, f2 .05
#   step 2 (f0 .15, f1 .3, f2 .05): e0 .075+.075=.15, e1 .075+.05=.125, f0 .225
#   step 3 (f0 .225): e0 .1125, e1 .1125
#   total: e0 .2625, e1 .2875, f0 .375, f1 .3, f2 .05, r .25, logits 0   (sum 1.525)
INFLUENCE = [0.2625, 0.2875, 0.375, 0.3, 0.05, 0.25, 0.0, 0.0]


def square() -> torch.Tensor:
    a = torch.zeros(N, N)
    for (t, s), v in EDGES.items():
        a[t, s] = v
    return a


def compressed() -> tuple[torch.Tensor, torch.Tensor]:
    """Only rows with inputs (features and logits), in a scrambled order."""
    row_nodes = torch.tensor([7, 3, 2, 6, 4])
    return square()[row_nodes], row_nodes


def test_normalize_rows_sums_to_one_and_keeps_zero_rows() -> None:
    norm = pruning.normalize_rows(square())
    assert torch.allclose(norm[6], torch.tensor([0, 0, 0.25, 0.5, 0, 0.25, 0, 0]))
    assert torch.allclose(norm[2, :2], torch.tensor([0.5, 0.5]))
    assert torch.equal(norm[0], torch.zeros(N))


@pytest.mark.parametrize("layout", ["square", "compressed"])
def test_influence_matches_hand_values(layout: str) -> None:
    rows, row_nodes = (square(), torch.arange(N)) if layout == "square" else compressed()
    infl = pruning.node_influence(rows, row_nodes, W)
    assert torch.allclose(infl, torch.tensor(INFLUENCE), atol=1e-6)


def test_influence_equals_matrix_inverse_formula() -> None:
    norm = pruning.normalize_rows(square()).double()
    closed = W.double() @ (torch.linalg.inv(torch.eye(N, dtype=torch.float64) - norm) - torch.eye(N, dtype=torch.float64))
    assert torch.allclose(pruning.node_influence(square(), torch.arange(N), W).double(), closed, atol=1e-6)


def test_influence_rejects_cycles() -> None:
    a = torch.zeros(3, 3)
    a[1, 2] = a[2, 1] = 1.0
    a[0, 1] = 1.0
    with pytest.raises(RuntimeError, match="not a DAG"):
        pruning.node_influence(a, torch.arange(3), torch.tensor([1.0, 0, 0]))


def test_scores_match_hand_values() -> None:
    # replacement: tokens .2625+.2875=.55, errors .25 -> .55/.8 = .6875
    # completeness: non-error input shares L0 .75, L1 .5, all other nodes 1;
    #   output influence = influence + w: sum 1.525 + .8 = 2.325;
    #   weighted = 1.525 + .6*.75 + .2*.5 = 2.075 -> 2.075/2.325
    for rows, row_nodes in ((square(), torch.arange(N)), compressed()):
        rep, comp = pruning.graph_scores(rows, row_nodes, KINDS, W)
        assert rep == pytest.approx(0.6875, rel=1e-6)
        assert comp == pytest.approx(2.075 / 2.325, rel=1e-6)


def test_find_threshold() -> None:
    scores = torch.tensor([0.1, 0.4, 0.2, 0.3])  # sorted .4 .3 .2 .1, cumulative .4 .7 .9 1.0
    assert pruning.find_threshold(scores, 0.7).item() == pytest.approx(0.3)
    assert pruning.find_threshold(scores, 0.71).item() == pytest.approx(0.2)
    assert pruning.find_threshold(scores, 1.0).item() == pytest.approx(0.1)


def edge_set(result: pruning.PruneResult, row_nodes: torch.Tensor) -> set[tuple[int, int]]:
    r, s = torch.nonzero(result.edge_mask, as_tuple=True)
    return {(int(row_nodes[i]), int(j)) for i, j in zip(r, s)}


# Node pruning at 0.8: influences sorted f0 .375, f1 .3, e1 .2875, e0 .2625, r .25, f2 .05;
# cumulative / 1.525 = .246 .443 .631 .803 -> threshold .2625: r (.25) and f2 (.05) go.
# Edge scores on the node-pruned graph (rows/cols of f2 and r zeroed):
#   normalised rows: f0 <- e0 .5, e1 .5; f1 <- e0 .25, f0 .75; L0 <- f0 1/3, f1 2/3; L1 <- e1 1
#   influence: step1 f0 .2, f1 .4, e1 .2; step2 e0 .1+.1, e1 .1, f0 .3; step3 e0 .15, e1 .15
#     -> f0 .5, f1 .4 (+ logits' own .6, .2)
#   scores: f0<-e0 .25, f0<-e1 .25, f1<-e0 .1, f1<-f0 .3, L0<-f0 .2, L0<-f1 .4, L1<-e1 .2
#   sorted .4 .3 .25 .25 .2 .2 .1 (sum 1.7), cumulative .235 .412 .559 .706 .824 .941 1.0
KEPT_NODES = [True, True, True, True, False, False, True, True]
ALL_PRUNED_EDGES = {(2, 0), (2, 1), (3, 0), (3, 2), (6, 2), (6, 3), (7, 1)}


@pytest.mark.parametrize("layout", ["square", "compressed"])
def test_prune_default_thresholds(layout: str) -> None:
    rows, row_nodes = (square(), torch.arange(N)) if layout == "square" else compressed()
    result = pruning.prune(rows, row_nodes, KINDS, W, 0.8, 0.98)  # .98 -> threshold .1: every edge
    assert result.node_mask.tolist() == KEPT_NODES
    assert edge_set(result, row_nodes) == ALL_PRUNED_EDGES
    assert torch.allclose(result.node_influence, torch.tensor(INFLUENCE), atol=1e-6)
    assert result.cumulative[2].item() == pytest.approx(0.375 / 1.525, rel=1e-5)
    assert result.cumulative[5].item() == pytest.approx(1.475 / 1.525, rel=1e-5)


def test_prune_edge_threshold_drops_weakest_edge() -> None:
    # 0.9 -> first cumulative >= .9 is .941 (score .2): only f1<-e0 (.1) goes
    result = pruning.prune(square(), torch.arange(N), KINDS, W, 0.8, 0.9)
    assert edge_set(result, torch.arange(N)) == ALL_PRUNED_EDGES - {(3, 0)}
    assert result.node_mask.tolist() == KEPT_NODES


def test_prune_removes_dangling_features_iteratively() -> None:
    # 0.3 -> threshold .3: only L0<-f1 and f1<-f0 survive; f0 has no input so goes, then f1
    # loses its only input and goes, then L0<-f1 goes: no features and no edges remain.
    result = pruning.prune(square(), torch.arange(N), KINDS, W, 0.8, 0.3)
    assert result.node_mask.tolist() == [True, True, False, False, False, False, True, True]
    assert not result.edge_mask.any()


def test_prune_rejects_bad_thresholds() -> None:
    with pytest.raises(ValueError, match="node_threshold"):
        pruning.prune(square(), torch.arange(N), KINDS, W, 1.5, 0.9)


@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.8, 0.98, 1.0])
def test_large_threshold_without_full_sort_matches_sorting(fraction: float) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(pruning._SORT_LIMIT + 12345, generator=gen) ** 6
    x[torch.rand(x.shape[0], generator=gen) < 0.3] = 0.0
    x[:500] = x[500]  # ties
    expected = pruning._threshold_by_sort(x, fraction)
    assert pruning.find_threshold(x, fraction).item() == expected.item()


def _random_rows(seed: int, n_rows: int = 37, n_cols: int = 29) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randn(n_rows, n_cols, generator=gen)
    return rows * (torch.rand(n_rows, n_cols, generator=gen) < 0.4)


@pytest.mark.parametrize("entries", [pruning._ENTRIES, 7])
def test_row_blocks_equal_from_dense(monkeypatch: pytest.MonkeyPatch, entries: int) -> None:
    """Batches appended to RowBlocks (in blocks smaller than a batch, a few rows at a time)
    give exactly the entries of from_dense of all rows."""
    monkeypatch.setattr(pruning, "_ENTRIES", entries)
    rows = _random_rows(0)
    rows[5] = 0  # an empty row
    builder = pruning.RowBlocks(rows.shape[0], rows.shape[1] + 3, block_entries=40)
    for start, stop in ((0, 10), (10, 11), (11, 30), (30, 37)):
        builder.append(rows[start:stop])
    expected = pruning.SparseRows.from_dense(rows, rows.shape[1] + 3)
    parts = builder.parts()
    assert len(parts) > 1 and sum(p.shape[0] for p in parts) == rows.shape[0]
    got = pruning.SparseRows.cat(builder.finish())
    assert got.n_cols == expected.n_cols
    assert torch.equal(got.ptr, expected.ptr)
    assert torch.equal(got.col, expected.col)
    assert torch.equal(got.val, expected.val)


def test_chunked_influence_scores_and_pruning_are_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """Influence, scores and pruning made a few entries at a time (and influence from blocks of
    raw rows) give bit for bit what they give in one go."""
    gen = torch.Generator().manual_seed(1)
    n = 40
    a = torch.randn(n, n, generator=gen) * (torch.rand(n, n, generator=gen) < 0.5)
    a = torch.tril(a, diagonal=-1)  # a DAG: node t reads only nodes < t
    kinds = torch.tensor([EMBEDDING] * 5 + [ERROR] * 5 + [FEATURE] * 27 + [LOGIT] * 3)
    a[:10] = 0  # embeddings and errors have no inputs
    rows, row_nodes = a[10:], torch.arange(10, n)
    w = torch.zeros(n)
    w[-3:] = torch.tensor([0.5, 0.3, 0.2])

    def run() -> tuple:
        sparse = pruning.SparseRows.from_dense(rows, n).with_row_index()
        norm = pruning.normalize_rows(sparse)
        infl = pruning.influence(norm, row_nodes, w)
        blocks = [pruning.SparseRows.from_dense(rows[i : i + 7], n) for i in range(0, rows.shape[0], 7)]
        greedy = pruning.node_influence(blocks, row_nodes, w)
        scores = pruning.graph_scores(sparse, row_nodes, kinds, w, norm=norm, infl=infl)
        result = pruning.prune(sparse, row_nodes, kinds, w, 0.8, 0.9, infl=infl)
        return norm.val, infl, greedy, scores, result.node_mask, result.edge_mask

    whole = run()
    monkeypatch.setattr(pruning, "_ENTRIES", 5)
    chunked = run()
    for x, y in zip(whole, chunked):
        assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y


def test_take_rows_reorders_and_selects_whole_rows() -> None:
    dense = torch.tensor([[0, 1.0, 0, 2], [0, 0, 0, 0], [3, 0, 4, 5], [0, 6, 0, 0]])
    rows = pruning.SparseRows.from_dense(dense)
    for order in ([2, 0, 3, 1], [1, 1, 3], [3, 2, 1, 0], []):
        idx = torch.tensor(order, dtype=torch.long)
        got = rows.take_rows(idx)
        assert got.shape == (len(order), 4) and torch.equal(got.to_dense(), dense[idx])
