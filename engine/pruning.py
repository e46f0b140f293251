"""Influence, pruning and graph scores of an attribution graph (pure tensor math).

Definitions agree with Anthropic's "Circuit Tracing" (2025) and circuit-tracer:

- ``A[t, s]`` is the direct effect of source ``s`` on target ``t``. Only features and logits
  have incoming edges, so the engine keeps ``A`` *row-compressed*: ``rows`` (R, N) holds the
  computed rows and ``row_nodes`` (R,) says which node each row belongs to. A square matrix is
  the special case ``row_nodes = arange(N)``. Keeping only computed rows halves the memory of
  a dense N x N matrix on long prompts.
- Normalise ``|A|`` so each row sums to 1 (a target's inputs as fractions of its total input).
- Influence ``= w ((I - A_norm)^-1 - I) = w A + w A^2 + ...`` with ``w`` the logit
  probabilities on logit nodes; computed by iteration, which terminates because the graph is
  a DAG (``A`` nilpotent).
- Node pruning keeps the most influential nodes up to ``node_threshold`` of the total
  influence (embeddings and logits always stay); edge pruning scores each edge by
  ``A_norm[t, s] * (influence[t] + w[t])`` on the node-pruned graph and keeps edges up to
  ``edge_threshold`` of the total; then features/errors without outgoing edges and features
  without incoming edges are dropped until nothing changes.
- Replacement score: the share of the logits' influence reaching the input via embeddings
  rather than error nodes. Completeness score: the influence-weighted share of each node's
  input that does not come from error nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

# Node kinds, one small int per node so masks are cheap to build.
EMBEDDING, FEATURE, ERROR, LOGIT = 0, 1, 2, 3


def normalize_rows(rows: Tensor, eps: float = 1e-10) -> Tensor:
    """``|A|`` with every row scaled to sum to 1 (rows that are all zero stay zero)."""
    a = rows.abs().to(torch.float32)
    return a / a.sum(dim=1, keepdim=True).clamp(min=eps)


def influence(norm_rows: Tensor, row_nodes: Tensor, weights: Tensor, max_iter: int | None = None) -> Tensor:
    """``w A + w A^2 + ...`` for a row-compressed, normalised ``A``: each node's total
    (indirect included) influence on the weighted targets.

    Raises RuntimeError if the series does not die out (the graph has a cycle)."""
    limit = max_iter if max_iter is not None else norm_rows.shape[0] + 2
    current = weights.to(norm_rows.dtype)
    total = torch.zeros(norm_rows.shape[1], dtype=norm_rows.dtype, device=norm_rows.device)
    for _ in range(limit):
        current = current[row_nodes] @ norm_rows
        if not bool(current.any()):
            return total
        total = total + current
    raise RuntimeError(f"influence did not converge in {limit} steps: the graph is not a DAG")


def node_influence(rows: Tensor, row_nodes: Tensor, logit_weights: Tensor) -> Tensor:
    """Influence of every node on the logits, from raw edge rows."""
    return influence(normalize_rows(rows), row_nodes, logit_weights)


def edge_influence(rows: Tensor, row_nodes: Tensor, logit_weights: Tensor) -> Tensor:
    """Score of every edge (same shape as ``rows``): its normalised weight times the
    influence of its target (a logit's own weight counts as its influence)."""
    norm = normalize_rows(rows)
    target_infl = influence(norm, row_nodes, logit_weights) + logit_weights.to(norm.dtype)
    return norm * target_infl[row_nodes][:, None]


def find_threshold(scores: Tensor, fraction: float) -> Tensor:
    """The score of the last item needed (in descending order) to reach ``fraction`` of the
    total score: keeping ``scores >= threshold`` keeps that fraction of the total.

    Large inputs (edge scores of a whole graph) are not sorted whole, which would need three
    times their memory: a weighted histogram over log-spaced bins finds the bin holding the
    threshold, and only that bin's items are sorted."""
    flat = scores.flatten()
    if flat.numel() == 0:
        return torch.tensor(0.0)
    if flat.numel() <= _SORT_LIMIT:
        return _threshold_by_sort(flat, fraction)
    return _threshold_by_histogram(flat, fraction)


_SORT_LIMIT = 1 << 20
_CHUNK = 1 << 22
_BINS_PER_OCTAVE = 32


def _threshold_by_sort(flat: Tensor, fraction: float, above: float = 0.0, total: float | None = None) -> Tensor:
    ordered = torch.sort(flat, descending=True).values
    total = float(ordered.sum(dtype=torch.float64)) + above if total is None else total
    if total <= 0:
        return ordered[0]
    cumulative = (torch.cumsum(ordered.double(), dim=0) + above) / total
    index = int(torch.searchsorted(cumulative, torch.tensor(fraction, dtype=torch.float64)).item())
    return ordered[min(index, ordered.numel() - 1)]


def _threshold_by_histogram(flat: Tensor, fraction: float) -> Tensor:
    def bins(chunk: Tensor) -> Tensor:
        # bin 0: zeros; otherwise 1 + offset + floor(log2(x) * bins per octave)
        logs = torch.floor(torch.log2(chunk.clamp(min=1e-38)) * _BINS_PER_OCTAVE).long() + 1 + 130 * _BINS_PER_OCTAVE
        return torch.where(chunk > 0, logs, torch.zeros_like(logs))

    n_bins = 1 + 260 * _BINS_PER_OCTAVE
    sums = torch.zeros(n_bins, dtype=torch.float64, device=flat.device)
    for start in range(0, flat.numel(), _CHUNK):
        chunk = flat[start : start + _CHUNK]
        sums += torch.bincount(bins(chunk), weights=chunk.double(), minlength=n_bins)
    total = float(sums.sum())
    if total <= 0:
        return flat.max()
    # cumulative from the top bin down; the threshold lies in the first bin reaching the target
    from_top = torch.cumsum(sums.flip(0), 0).flip(0)  # from_top[b] = sum of bins >= b
    target = fraction * total
    if target <= 0:
        return flat.max()
    reached = torch.nonzero(from_top >= target).flatten()
    b = int(reached.max()) if reached.numel() else 0
    above = float(from_top[b + 1]) if b + 1 < n_bins else 0.0
    members = torch.cat([c[bins(c) == b] for c in flat.split(_CHUNK)])
    return _threshold_by_sort(members, fraction, above=above, total=total)


@dataclass
class PruneResult:
    node_mask: Tensor  # (N,) bool: nodes kept
    edge_mask: Tensor  # (R, N) bool: edges kept (same layout as the rows)
    node_influence: Tensor  # (N,) influence on the logits of the unpruned graph
    cumulative: Tensor  # (N,) cumulative influence share of each node in descending order


def prune(
    rows: Tensor,
    row_nodes: Tensor,
    kinds: Tensor,
    logit_weights: Tensor,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
) -> PruneResult:
    """Keep the nodes and edges that carry most of the influence on the logits."""
    for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1, got {value}")
    rows = rows.to(torch.float32)
    # one working copy of the matrix, reused: normalised |A|, then the node-pruned normalised
    # |A|, then edge scores in place (dense graphs are large; copies are what costs memory)
    work = normalize_rows(rows)
    infl = influence(work, row_nodes, logit_weights)
    always = (kinds == EMBEDDING) | (kinds == LOGIT)
    node_mask = (infl >= find_threshold(infl, node_threshold)) | always

    torch.abs(rows, out=work)
    work.mul_(node_mask[row_nodes][:, None])
    work.mul_(node_mask[None, :])
    work.div_(work.sum(dim=1, keepdim=True).clamp(min=1e-10))
    target_infl = influence(work, row_nodes, logit_weights) + logit_weights.to(work.dtype)
    work.mul_(target_infl[row_nodes][:, None])
    edge_mask = work >= find_threshold(work, edge_threshold)
    del work
    edge_mask &= rows != 0
    edge_mask &= node_mask[row_nodes][:, None]
    edge_mask &= node_mask[None, :]

    inner = (kinds == FEATURE) | (kinds == ERROR)
    is_feature_row = kinds[row_nodes] == FEATURE
    while True:
        before = node_mask.clone()
        edge_mask &= node_mask[row_nodes][:, None] & node_mask[None, :]
        # features and errors need an outgoing edge; features also an incoming one
        node_mask &= ~inner | edge_mask.any(dim=0)
        has_input = torch.zeros_like(node_mask)
        has_input[row_nodes[is_feature_row]] = edge_mask[is_feature_row].any(dim=1)
        node_mask &= (kinds != FEATURE) | has_input
        if torch.equal(before, node_mask):
            break

    ordered, order = torch.sort(infl, descending=True)
    cumulative = torch.zeros_like(infl)
    total = ordered.sum()
    cumulative[order] = torch.cumsum(ordered, dim=0) / (total if total > 0 else 1.0)
    return PruneResult(node_mask, edge_mask, infl, cumulative)


def graph_scores(rows: Tensor, row_nodes: Tensor, kinds: Tensor, logit_weights: Tensor) -> tuple[float, float]:
    """(replacement score, completeness score) of an unpruned graph."""
    norm = normalize_rows(rows.to(torch.float32))
    infl = influence(norm, row_nodes, logit_weights)
    token_infl = infl[kinds == EMBEDDING].sum()
    error_infl = infl[kinds == ERROR].sum()
    denom = token_infl + error_infl
    replacement = float(token_infl / denom) if denom > 0 else 0.0

    # rows that were not computed (embeddings, errors) have no inputs: all their input is
    # "non-error" by convention, as in circuit-tracer where such rows are zero.
    non_error = torch.ones_like(infl)
    non_error[row_nodes] = 1.0 - norm[:, kinds == ERROR].sum(dim=1)
    output_infl = infl + logit_weights.to(infl.dtype)
    total = output_infl.sum()
    completeness = float((non_error * output_infl).sum() / total) if total > 0 else 0.0
    return replacement, completeness
