"""Influence, pruning and graph scores of an attribution graph (pure tensor math).

Definitions agree with Anthropic's "Circuit Tracing" (2025) and circuit-tracer:

- ``A[t, s]`` is the direct effect of source ``s`` on target ``t``. Only features and logits
  have incoming edges, so the engine keeps ``A`` *row-compressed*: ``rows`` (R, N) holds the
  computed rows and ``row_nodes`` (R,) says which node each row belongs to. A square matrix is
  the special case ``row_nodes = arange(N)``. Keeping only computed rows halves the memory of
  a dense N x N matrix on long prompts. ``SparseRows`` keeps only the non-zero entries of those
  rows (most are structural zeros: a feature reads only earlier layers and positions); every
  function below takes either form.
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

import os
import re
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

# Node kinds, one small int per node so masks are cheap to build.
EMBEDDING, FEATURE, ERROR, LOGIT = 0, 1, 2, 3


# Per-entry temporaries (gathers, products) are made this many entries at a time: a few MB
# instead of several copies of all the edges at once. Every such loop visits the entries in
# their order and the sums are sequential (index_add_), so the results do not depend on it.
_ENTRIES = 1 << 18


def _spans(n: int) -> range:
    return range(0, n, _ENTRIES)


@dataclass
class SparseRows:
    """Row-compressed ``A`` with only its non-zero entries, CSR-style: row ``r`` holds
    ``val[ptr[r]:ptr[r + 1]]`` at columns ``col[ptr[r]:ptr[r + 1]]`` (ascending). Eight bytes
    per edge instead of four per matrix cell, and no cell for structural zeros."""

    ptr: Tensor  # (R + 1,) int64
    col: Tensor  # (E,) int32
    val: Tensor  # (E,)
    n_cols: int
    row: Tensor | None = field(default=None, repr=False, compare=False)  # (E,) int32, kept by with_row_index

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.ptr.shape[0]) - 1, self.n_cols

    @classmethod
    def from_dense(cls, rows: Tensor, n_cols: int | None = None) -> SparseRows:
        """The non-zero entries of ``rows`` (R, C); ``n_cols`` >= C widens it with zero columns."""
        r, c = torch.nonzero(rows, as_tuple=True)
        ptr = torch.zeros(rows.shape[0] + 1, dtype=torch.long, device=rows.device)
        torch.cumsum(torch.bincount(r, minlength=rows.shape[0]), 0, out=ptr[1:])
        return cls(ptr, c.to(torch.int32), rows[r, c], int(rows.shape[1] if n_cols is None else n_cols))

    @classmethod
    def cat(cls, parts: list[SparseRows | SpilledRows]) -> SparseRows:
        """The rows of ``parts`` one after another (all with the same columns). Empties the
        list as it goes, so the parts can be freed before the whole is built."""
        first, n_cols = loaded(parts[0]), parts[0].n_cols
        n_entries = sum(_n_entries(p) for p in parts)
        col = torch.empty(n_entries, dtype=first.col.dtype, device=first.col.device)
        val = torch.empty(n_entries, dtype=first.val.dtype, device=first.val.device)
        ptrs, offset = [first.ptr[:1]], 0
        del first
        while parts:
            part = loaded(parts.pop(0))  # a spilled part is read back only when its turn comes
            n = int(part.col.shape[0])
            col[offset : offset + n] = part.col
            val[offset : offset + n] = part.val
            ptrs.append(part.ptr[1:] + offset)
            offset += n
        return cls(torch.cat(ptrs), col, val, n_cols)

    def row_index(self) -> Tensor:
        """(E,) int32: the row of every entry, as a running count of the rows started at or
        before it (repeat_interleave would build an int64 copy of the entries first). Read
        only: it is the kept one after ``with_row_index``."""
        if self.row is not None:
            return self.row
        n = int(self.col.shape[0])
        starts = torch.zeros(n + 1, dtype=torch.int32, device=self.ptr.device)
        inner = self.ptr[1:-1]
        starts.index_add_(0, inner, torch.ones(inner.shape, dtype=torch.int32, device=inner.device))
        return starts[:n].cumsum_(0)

    def with_values(self, val: Tensor) -> SparseRows:
        return SparseRows(self.ptr, self.col, val, self.n_cols, self.row)

    def with_row_index(self) -> SparseRows:
        """The same entries keeping their row index (4 bytes per entry), for a caller that
        needs it many times: scoring and pruning one graph would otherwise rebuild it often."""
        return SparseRows(self.ptr, self.col, self.val, self.n_cols, self.row_index())

    def select_columns(self, new_index: Tensor, n_cols: int) -> SparseRows:
        """Entries of the columns with ``new_index[col] >= 0``, renumbered to that index (which
        must keep the columns' order); the rows stay."""
        new_col = _at(new_index.to(torch.int32), self.col)
        keep = new_col >= 0
        ptr = torch.zeros_like(self.ptr)
        torch.cumsum(torch.bincount(self.row_index()[keep], minlength=self.shape[0]), 0, out=ptr[1:])
        return SparseRows(ptr, new_col[keep].to(torch.int32), self.val[keep], n_cols)

    def take_rows(self, order: Tensor) -> SparseRows:
        """Rows ``order[0]``, ``order[1]``, ... (a permutation or a selection), entries copied once."""
        counts = self.ptr.diff()[order]
        ptr = torch.zeros(order.shape[0] + 1, dtype=self.ptr.dtype, device=self.ptr.device)
        torch.cumsum(counts, 0, out=ptr[1:])
        shift = self.ptr[:-1][order] - ptr[:-1]  # where each new row's entries start in the old arrays
        entries = torch.arange(int(ptr[-1]), device=self.ptr.device) + torch.repeat_interleave(shift, counts)
        return SparseRows(ptr, self.col[entries], self.val[entries], self.n_cols)

    def to_dense(self) -> Tensor:
        out = torch.zeros(self.shape, dtype=self.val.dtype, device=self.val.device)
        out[self.row_index().long(), self.col.long()] = self.val
        return out


def parse_memory(value: int | float | str | None) -> int | None:
    """Bytes from ``1500000``, ``"512M"``, ``"2G"``, ``"1.5GiB"`` (powers of 1024); None stays None.
    Raises ValueError on anything else or a budget that is not positive."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        n = int(value)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", str(value), re.IGNORECASE)
        if not m:
            raise ValueError(f"memory budget {value!r}: expected a size such as 512M or 2G")
        n = int(float(m.group(1)) * 1024 ** "bkmgt".index((m.group(2) or "b").lower()))
    if n <= 0:
        raise ValueError(f"memory budget {value!r} must be positive")
    return n


class _SpillDir:
    """A private temporary folder for spilled blocks, removed when nothing refers to it any more
    (the builder and every ``SpilledRows`` hold it) or at interpreter exit."""

    def __init__(self, parent: str | os.PathLike | None) -> None:
        self.path = tempfile.mkdtemp(prefix="ca-spill-", dir=parent)
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.path, True)
        self.n_files = 0

    def new_file(self) -> str:
        self.n_files += 1
        return os.path.join(self.path, f"block{self.n_files}.bin")


@dataclass
class SpilledRows:
    """A block of consecutive rows kept on disk (one raw file: columns as int32, then values);
    ``load()`` reads it back as a ``SparseRows``. Functions here that take a list of blocks
    (``influence``) load one spilled block at a time, so only one is in memory at once."""

    ptr: Tensor  # (R + 1,) int64, kept in memory (8 bytes per row)
    path: str
    n_entries: int
    dtype: torch.dtype
    n_cols: int
    owner: _SpillDir = field(repr=False, compare=False)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.ptr.shape[0]) - 1, self.n_cols

    def load(self) -> SparseRows:
        n = self.n_entries
        with open(self.path, "rb") as f:
            col = torch.from_numpy(np.fromfile(f, dtype=np.int32, count=n))
            val = torch.from_numpy(np.fromfile(f, dtype=torch.empty(0, dtype=self.dtype).numpy().dtype, count=n))
        return SparseRows(self.ptr, col, val, self.n_cols)


def loaded(block: SparseRows | SpilledRows) -> SparseRows:
    """The block in memory (a spilled one read back from disk)."""
    return block.load() if isinstance(block, SpilledRows) else block


def _n_entries(block: SparseRows | SpilledRows) -> int:
    return block.n_entries if isinstance(block, SpilledRows) else int(block.val.shape[0])


class RowBlocks:
    """Builds a ``SparseRows`` from dense batches of rows appended one after another, keeping
    only their non-zero entries, in a few large blocks (``block_entries`` entries each, or one
    batch's when larger) rather than a few small tensors per batch.

    Why: the attribution appends one batch per backward pass, between the passes' temporaries.
    Tensors kept per pass (and their small allocator records) land among those temporaries and
    split the space they free, so the next pass's temporaries no longer fit there and the C
    heap grows pass after pass (on the benchmark's small model, ~110 MiB of free but resident
    heap by the last pass for 20 MB of edges). Here a pass keeps nothing but a few numbers:
    its entries are copied into the current block and its row counts into one pointer array
    allocated up front."""

    def __init__(
        self,
        n_rows: int,
        n_cols: int,
        block_entries: int = 1 << 20,
        *,
        max_bytes: int | None = None,
        spill_dir: str | os.PathLike | None = None,
    ) -> None:
        """``max_bytes``: keep at most about this many bytes of entries in memory; older full
        blocks go to files in a private folder under ``spill_dir`` (the system's temporary
        folder by default), removed once the blocks are no longer referred to. The entries and
        their order are the same either way: only where they are kept changes."""
        self.n_cols = n_cols
        self.max_bytes = max_bytes
        self.spill_dir = spill_dir
        self._spill: _SpillDir | None = None
        self.spilled_bytes = 0  # written to disk so far (for reports)
        if max_bytes is not None:  # blocks small enough that a few of them fit the budget
            block_entries = max(1024, min(block_entries, max_bytes // 4 // 8))
        self.block_entries = block_entries
        self.ptr = torch.zeros(n_rows + 1, dtype=torch.long)  # over all rows appended
        self.n_rows = 0  # rows appended so far
        # per block: [col, val, first row, entries used]
        self._blocks: list[list] = []
        self._columns: Tensor | None = None  # 0..C-1 as int32, the columns of an entry

    def append(self, rows: Tensor) -> None:
        """Append the non-zero entries of ``rows`` (n, C <= n_cols) as the next n rows, in the
        order (and with the values) that ``SparseRows.from_dense`` would give."""
        n, c = int(rows.shape[0]), int(rows.shape[1])
        mask = rows != 0
        counts = torch.count_nonzero(mask, dim=1)  # (sum() would make an int64 copy of the mask)
        n_new = int(counts.sum())
        block = self._blocks[-1] if self._blocks else None
        if block is None or block[3] + n_new > block[0].shape[0] or block[1].dtype != rows.dtype:
            size = max(self.block_entries, n_new)
            block = [torch.empty(size, dtype=torch.int32), torch.empty(size, dtype=rows.dtype), self.n_rows, 0]
            self._blocks.append(block)
        if self._columns is None or self._columns.shape[0] < c:
            self._columns = torch.arange(max(c, self.n_cols), dtype=torch.int32)
        used = block[3]
        # a few rows at a time: masked_select makes three int64 temporaries the size of its input
        step = max(1, _ENTRIES // max(c, 1))
        for i in range(0, n, step):
            m = mask[i : i + step]
            k = int(torch.count_nonzero(m))
            torch.masked_select(rows[i : i + step], m, out=block[1][used : used + k])
            torch.masked_select(self._columns[:c].expand(m.shape[0], c), m, out=block[0][used : used + k])
            used += k
        block[3] = used
        first = self.n_rows
        ptr = self.ptr[first + 1 : first + n + 1]
        torch.cumsum(counts, 0, out=ptr)
        ptr += self.ptr[first]
        self.n_rows = first + n
        if self.max_bytes is not None:
            self._spill_over_budget()

    def _spill_over_budget(self) -> None:
        """Write the oldest full in-memory blocks to disk while the blocks in memory hold more
        than ``max_bytes`` (the current block, still being filled, stays)."""
        def size(b: list) -> int:
            return 0 if isinstance(b[0], str) else int(b[0].element_size() * b[0].shape[0] + b[1].element_size() * b[1].shape[0])

        in_memory = sum(size(b) for b in self._blocks)
        for block in self._blocks[:-1]:
            if in_memory <= self.max_bytes:  # type: ignore[operator]
                break
            if isinstance(block[0], str):
                continue
            if self._spill is None:
                self._spill = _SpillDir(self.spill_dir)
            path = self._spill.new_file()
            used = block[3]
            with open(path, "wb") as f:
                block[0][:used].numpy().tofile(f)
                block[1][:used].numpy().tofile(f)
            in_memory -= size(block)
            self.spilled_bytes += used * (block[0].element_size() + block[1].element_size())
            block[0], block[1] = path, block[1].dtype  # the tensors are freed here

    def parts(self) -> list[SparseRows | SpilledRows]:
        """The rows appended so far, one SparseRows per block (views of the blocks): for
        ``influence``, which takes a list of consecutive blocks of rows."""
        out = []
        ends = [b[2] for b in self._blocks[1:]] + [self.n_rows]
        for (col, val, first, used), end in zip(self._blocks, ends):
            ptr = self.ptr[first : end + 1] - self.ptr[first]
            if isinstance(col, str):  # spilled: col is the file, val the dtype
                out.append(SpilledRows(ptr, col, used, val, self.n_cols, self._spill))  # type: ignore[arg-type]
            else:
                out.append(SparseRows(ptr, col[:used], val[:used], self.n_cols))
        return out

    def finish(self) -> list[SparseRows | SpilledRows]:
        """``parts()``, handing the blocks over: the builder keeps nothing, so a caller that
        replaces or joins the parts frees each block as it goes (``SparseRows.cat``)."""
        out = self.parts()
        self._blocks.clear()
        self._columns = None
        self._spill = None  # the spilled parts keep the folder alive
        return out


def _at(values: Tensor, index: Tensor) -> Tensor:
    """``values[index]`` for an int32 index without the int64 copy of it that ``[]`` makes."""
    return torch.index_select(values, 0, index)


def _sparse(rows: Tensor | SparseRows) -> SparseRows:
    return rows if isinstance(rows, SparseRows) else SparseRows.from_dense(rows)


def normalize_rows(rows: Tensor | SparseRows, eps: float = 1e-10) -> Tensor | SparseRows:
    """``|A|`` with every row scaled to sum to 1 (rows that are all zero stay zero)."""
    if isinstance(rows, SparseRows):
        return _normalize_abs_(rows, rows.val.abs().to(torch.float32), eps)
    a = rows.abs().to(torch.float32)
    return a / a.sum(dim=1, keepdim=True).clamp(min=eps)


def _normalize_abs_(rows: SparseRows, a: Tensor, eps: float = 1e-10) -> SparseRows:
    """``rows`` with values ``a`` (float32, the absolute values of its entries, or of some of
    them with the others zero) divided in place by their row sums."""
    row = rows.row_index()
    sums = torch.zeros(rows.shape[0], dtype=a.dtype, device=a.device).index_add_(0, row, a).clamp_(min=eps)
    for i in _spans(a.shape[0]):
        a[i : i + _ENTRIES].div_(_at(sums, row[i : i + _ENTRIES]))
    return rows.with_values(a)


def influence(
    norm_rows: Tensor | SparseRows | list[SparseRows | SpilledRows],
    row_nodes: Tensor,
    weights: Tensor,
    max_iter: int | None = None,
    *,
    normalize: bool = False,
) -> Tensor:
    """``w A + w A^2 + ...`` for a row-compressed, normalised ``A`` (or a list of blocks of its
    consecutive rows, so a growing matrix need not be joined): each node's total (indirect
    included) influence on the weighted targets.

    Only the rows' own nodes pass influence on, so the series is iterated on the R x R part of
    ``A`` among them (``x_{k+1} = x_k A[:, row_nodes]``) and spread to all N nodes once at the
    end: ``(x_0 + x_1 + ...) A``.

    A block whose columns are mostly row nodes (a finished graph: the visited features) is
    iterated in place, its other entries landing on columns that are then ignored; otherwise
    (a greedy pass: most columns are features not yet visited) its row-node entries are
    gathered once. Either way each step adds the same products in the same order.

    With ``normalize`` the blocks are raw edges, normalised here one block at a time (the same
    values as ``normalize_rows`` of each): a gathered block then keeps only its row-node
    entries, not a normalised copy of all of them, and is normalised again for the final spread.

    Raises RuntimeError if the series does not die out (the graph has a cycle)."""
    given = norm_rows if isinstance(norm_rows, list) else [norm_rows]
    blocks = [b if isinstance(b, (SparseRows, SpilledRows)) else _sparse(b) for b in given]
    n_rows, n_cols = sum(b.shape[0] for b in blocks), blocks[0].n_cols
    dtype = torch.float32 if normalize else (blocks[0].dtype if isinstance(blocks[0], SpilledRows) else blocks[0].val.dtype)
    device = blocks[0].ptr.device

    def prepared(b: SparseRows | SpilledRows) -> SparseRows:
        b = loaded(b)  # a spilled block is read back here, one at a time
        return normalize_rows(b.with_row_index()) if normalize else b  # type: ignore[return-value]

    is_row = torch.zeros(n_cols, dtype=torch.bool, device=device)
    is_row[row_nodes] = True
    steps = []  # per block: (first row, row count, row of each entry, column, value)
    offset = 0
    for b in blocks:
        nb = prepared(b)
        row, col, val = nb.row_index(), nb.col, nb.val
        del nb
        inner = _at(is_row, col)
        # a spilled block always keeps only its row-node entries: the rest stays on disk
        if isinstance(b, SpilledRows) or 2 * int(torch.count_nonzero(inner)) < col.shape[0]:
            keep = torch.nonzero(inner, as_tuple=True)[0]
            row, col, val = row[keep], col[keep], val[keep]
            del keep
        steps.append((offset, b.shape[0], row, col, val))
        del inner
        offset += b.shape[0]
    del is_row

    limit = max_iter if max_iter is not None else n_rows + 2
    x = weights.to(dtype=dtype, device=device)[row_nodes]
    reached = torch.zeros(n_rows, dtype=dtype, device=device)
    # one chunk of products, for the steps and for the spread over every entry at the end
    buffer = torch.empty(min(_ENTRIES, max(_n_entries(b) for b in blocks)), dtype=dtype, device=device)
    for _ in range(limit):
        if not bool(x.any()):
            break
        reached += x
        spread = torch.zeros(n_cols, dtype=dtype, device=device)
        for first, count, row, col, val in steps:
            _add_products(spread, x[first : first + count], row, col, val, buffer)
        x = spread[row_nodes]
    else:
        raise RuntimeError(f"influence did not converge in {limit} steps: the graph is not a DAG")
    del steps
    total, offset = torch.zeros(n_cols, dtype=dtype, device=device), 0
    for b in blocks:
        nb = prepared(b)
        _add_products(total, reached[offset : offset + b.shape[0]], nb.row_index(), nb.col, nb.val, buffer)
        offset += b.shape[0]
        del nb
    return total


def _add_products(out: Tensor, source: Tensor, row: Tensor, col: Tensor, val: Tensor, buffer: Tensor) -> None:
    """``out[col] += source[row] * val`` over the entries, _ENTRIES at a time in their order,
    the products made in ``buffer`` (at least min(_ENTRIES, entries) long)."""
    for i in _spans(val.shape[0]):
        j = min(i + _ENTRIES, val.shape[0])
        step = torch.index_select(source, 0, row[i:j], out=buffer[: j - i])
        out.index_add_(0, col[i:j], step.mul_(val[i:j]))


def node_influence(
    rows: Tensor | SparseRows | list[SparseRows | SpilledRows], row_nodes: Tensor, logit_weights: Tensor
) -> Tensor:
    """Influence of every node on the logits, from raw edge rows (or blocks of them, see ``influence``)."""
    return influence(rows, row_nodes, logit_weights, normalize=True)


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
        # bin 0: zeros; otherwise 1 + offset + floor(log2(x) * bins per octave); computed in
        # place and as int32 (bin ids stay below 9,000): two 4-byte copies of a chunk, not five
        logs = chunk.clamp(min=1e-38).log2_().mul_(_BINS_PER_OCTAVE).floor_().int()
        return logs.add_(1 + 130 * _BINS_PER_OCTAVE).masked_fill_(~(chunk > 0), 0)

    n_bins = 1 + 260 * _BINS_PER_OCTAVE
    sums = torch.zeros(n_bins, dtype=torch.float64, device=flat.device)
    for start in range(0, flat.numel(), _CHUNK):
        # each chunk's bin sums as one bincount would add them (in order, from zero), a few
        # entries at a time: the bins and float64 weights of a slice, not of the whole chunk
        chunk_sums = torch.zeros_like(sums)
        for piece in flat[start : start + _CHUNK].split(_ENTRIES):
            chunk_sums.index_add_(0, bins(piece), piece.double())
        sums += chunk_sums
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
    members = torch.cat([c[bins(c) == b] for c in flat.split(_ENTRIES)])
    return _threshold_by_sort(members, fraction, above=above, total=total)


@dataclass
class PruneResult:
    node_mask: Tensor  # (N,) bool: nodes kept
    edge_mask: Tensor  # edges kept: (R, N) bool for dense rows, (E,) bool per entry for SparseRows
    node_influence: Tensor  # (N,) influence on the logits of the unpruned graph
    cumulative: Tensor  # (N,) cumulative influence share of each node in descending order


def prune(
    rows: Tensor | SparseRows,
    row_nodes: Tensor,
    kinds: Tensor,
    logit_weights: Tensor,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    *,
    infl: Tensor | None = None,
) -> PruneResult:
    """Keep the nodes and edges that carry most of the influence on the logits. ``infl``: the
    graph's node influence when already computed (``node_influence`` of the same rows), so a
    caller that also scores the graph does not iterate the series twice."""
    for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1, got {value}")
    a = _sparse(rows.to(torch.float32) if isinstance(rows, Tensor) else rows)
    row, col = a.row_index(), a.col
    if infl is None:
        infl = influence(normalize_rows(a), row_nodes, logit_weights)
    always = (kinds == EMBEDDING) | (kinds == LOGIT)
    node_mask = (infl >= find_threshold(infl, node_threshold)) | always

    # edge scores: the node-pruned normalised |A| times the influence of each edge's target
    kept = _at(node_mask[row_nodes], row) & _at(node_mask, col) & (a.val != 0)
    # |A| with the entries not kept zeroed (the same values as |A * kept|), normalised in place
    scores = _normalize_abs_(a, a.val.abs().to(torch.float32).masked_fill_(~kept, 0.0))
    target_infl = influence(scores, row_nodes, logit_weights) + logit_weights.to(scores.val.dtype)
    edge_score, row_infl = scores.val, target_infl[row_nodes]
    del scores
    for i in _spans(edge_score.shape[0]):
        edge_score[i : i + _ENTRIES].mul_(_at(row_infl, row[i : i + _ENTRIES]))
    edge_mask = (edge_score >= find_threshold(edge_score, edge_threshold)) & kept
    del edge_score, kept

    inner = (kinds == FEATURE) | (kinds == ERROR)
    is_feature_row = kinds[row_nodes] == FEATURE
    while True:
        before = node_mask.clone()
        edge_mask &= _at(node_mask[row_nodes], row) & _at(node_mask, col)
        # features and errors need an outgoing edge; features also an incoming one
        has_output = torch.zeros_like(node_mask)
        has_output[col[edge_mask]] = True
        node_mask &= ~inner | has_output
        row_has_input = torch.zeros_like(is_feature_row)
        row_has_input[row[edge_mask]] = True
        has_input = torch.zeros_like(node_mask)
        has_input[row_nodes[is_feature_row]] = row_has_input[is_feature_row]
        node_mask &= (kinds != FEATURE) | has_input
        if torch.equal(before, node_mask):
            break

    ordered, order = torch.sort(infl, descending=True)
    cumulative = torch.zeros_like(infl)
    total = ordered.sum()
    cumulative[order] = torch.cumsum(ordered, dim=0) / (total if total > 0 else 1.0)
    if not isinstance(rows, SparseRows):
        dense_mask = torch.zeros(a.shape, dtype=torch.bool, device=edge_mask.device)
        dense_mask[row.long(), col.long()] = edge_mask
        edge_mask = dense_mask
    return PruneResult(node_mask, edge_mask, infl, cumulative)


def graph_scores(
    rows: Tensor | SparseRows,
    row_nodes: Tensor,
    kinds: Tensor,
    logit_weights: Tensor,
    *,
    norm: SparseRows | None = None,
    infl: Tensor | None = None,
) -> tuple[float, float]:
    """(replacement score, completeness score) of an unpruned graph. ``norm`` and ``infl``:
    ``normalize_rows`` of the rows and its ``influence`` when the caller already has them
    (pruning needs the same influence), so neither is computed twice."""
    if norm is None:
        norm = normalize_rows(_sparse(rows.to(torch.float32) if isinstance(rows, Tensor) else rows))
    if infl is None:
        infl = influence(norm, row_nodes, logit_weights)
    token_infl = infl[kinds == EMBEDDING].sum()
    error_infl = infl[kinds == ERROR].sum()
    denom = token_infl + error_infl
    replacement = float(token_infl / denom) if denom > 0 else 0.0

    # rows that were not computed (embeddings, errors) have no inputs: all their input is
    # "non-error" by convention, as in circuit-tracer where such rows are zero.
    is_error, row = kinds == ERROR, norm.row_index()
    error_share = torch.zeros(norm.shape[0], dtype=infl.dtype, device=infl.device)
    for i in _spans(norm.val.shape[0]):
        from_errors = norm.val[i : i + _ENTRIES] * _at(is_error, norm.col[i : i + _ENTRIES])
        error_share.index_add_(0, row[i : i + _ENTRIES], from_errors)
    non_error = torch.ones_like(infl)
    non_error[row_nodes] = 1.0 - error_share
    output_infl = infl + logit_weights.to(infl.dtype)
    total = output_infl.sum()
    completeness = float((non_error * output_infl).sum() / total) if total > 0 else 0.0
    return replacement, completeness
