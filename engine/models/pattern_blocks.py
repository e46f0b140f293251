"""Frozen attention patterns recomputed in blocks of query rows, so long prompts never hold one.

Attribution's backward passes need each layer's frozen pattern (constant, so only the values get
a gradient). Kept whole, the patterns are layers x heads x T^2 floats: 1 GiB for a 4-layer,
4-head model at 4,096 tokens, 26 GiB for Gemma-2-2B. Instead, ``PatternRows`` keeps what the
pattern is made from (the detached queries and keys, and the mask as one interval of keys per
query) and recomputes a block of rows whenever a pass needs it; the forward and every backward
pass then hold at most ``PATTERN_BLOCK_ELEMENTS`` pattern entries at a time. A row's softmax sees
the same scores as in the whole pattern, so each entry is the same up to the matmul's rounding;
the value gradient sums the blocks' products, in another order than one product does.

Used only when a whole pattern would be larger than one block (``block_rows``): short prompts keep
the exact path in ``adapters._attention``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

# pattern entries (batch x heads x rows x keys) one block may hold: 16 MiB of float32
PATTERN_BLOCK_ELEMENTS = 1 << 22


def block_rows(batch: int, heads: int, q_len: int, kv_len: int) -> int:
    """Query rows per block; ``q_len`` or more means one block (the whole pattern is small)."""
    return max(1, PATTERN_BLOCK_ELEMENTS // max(1, batch * heads * kv_len))


@dataclass
class PatternRows:
    """What recomputes any rows of a frozen attention pattern (all detached constants)."""

    query: Tensor  # (B, H, T, d_head)
    key: Tensor  # (B, H_kv, S, d_head): grouped heads are not repeated
    scaling: float
    softcap: float | None
    lo: Tensor | None  # (B, T): the first key each query sees (an interval mask) ...
    hi: Tensor | None  # (B, T): ... and the last
    mask: Tensor | None  # the additive mask itself, when it is not one interval of keys per row
    dtype: torch.dtype  # the values' dtype (the pattern is computed in float32, then cast)
    block: int

    @property
    def n_rows(self) -> int:
        return self.query.shape[2]

    def keys(self, a: int, b: int) -> tuple[int, int]:
        """The keys rows ``a:b`` can see, ``k0:k1``: with an interval mask, the union of the rows'
        intervals (half the keys on average for a causal mask, a window's width for a sliding
        one); otherwise all of them. Outside it the pattern is exactly 0."""
        if self.lo is None:
            return 0, self.key.shape[2]
        return int(self.lo[:, a:b].min()), int(self.hi[:, a:b].max()) + 1

    def pattern(self, a: int, b: int) -> Tensor:
        """Rows ``a:b`` of the pattern over keys ``keys(a, b)``, (B, H, b - a, k1 - k0), as
        ``adapters._attention`` computes them."""
        k0, k1 = self.keys(a, b)
        q, key = self.query[:, :, a:b], self.key[:, :, k0:k1]
        bsz, heads, n, d_head = q.shape
        kv_heads, s = key.shape[1], key.shape[2]
        rep = heads // kv_heads
        # query head h reads key head h // rep (repeat_interleave): group the rep heads' rows
        scores = torch.matmul(q.reshape(bsz, kv_heads, rep * n, d_head), key.transpose(2, 3))
        scores = scores.reshape(bsz, heads, n, s) * self.scaling
        if self.softcap is not None:
            scores = torch.tanh(scores / self.softcap) * self.softcap
        if self.lo is not None:
            cols = torch.arange(k0, k1, device=scores.device)
            seen = (cols >= self.lo[:, a:b, None]) & (cols <= self.hi[:, a:b, None])  # (B, n, s)
            scores = scores.masked_fill(~seen[:, None], torch.finfo(scores.dtype).min)
        elif self.mask is not None:
            scores = scores + self.mask[:, :, a:b, k0:k1]
        return torch.softmax(scores, dim=-1, dtype=torch.float32).to(self.dtype)

    def blocks(self):
        for a in range(0, self.n_rows, self.block):
            yield a, min(a + self.block, self.n_rows)

    def apply(self, value: Tensor) -> Tensor:
        """``pattern @ value``, (B, H, T, d), one block of rows at a time (out of place, so
        forward-mode tangents batched by vmap pass through)."""
        parts = []
        for a, b in self.blocks():
            k0, k1 = self.keys(a, b)
            parts.append(torch.matmul(self.pattern(a, b), value[..., k0:k1, :]))
        return torch.cat(parts, dim=-2)

    def transpose_apply(self, grad: Tensor) -> Tensor:
        """``pattern^T @ grad``: (B, H, S, d) from (B, H, T, d), summed over the blocks (out of
        place: ``autograd.grad(is_grads_batched=True)`` batches ``grad`` with the legacy vmap,
        which has no rule for writing into slices)."""
        s, out = self.key.shape[2], None
        for a, b in self.blocks():
            k0, k1 = self.keys(a, b)
            part = torch.matmul(self.pattern(a, b).mT, grad[..., a:b, :])
            if (k0, k1) != (0, s):
                part = torch.nn.functional.pad(part, (0, 0, k0, s - k1))
            out = part if out is None else out + part
        return out


def interval_mask(mask: Tensor | None, q_len: int, kv_len: int) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """(lo, hi, mask): a causal or sliding-window mask as the first and last key of each query
    row (linear in T), or, for any other mask (padding, additive biases), the mask itself."""
    if mask is None:
        return None, None, None
    m = mask[..., :q_len, :kv_len]
    if m.dtype == torch.bool:
        seen = m
    else:
        seen = m == 0
        if not bool((seen | (m <= torch.finfo(m.dtype).min / 2)).all()):
            return None, None, mask  # values other than 0 and "masked": keep them as they are
    if seen.shape[1] != 1:  # per-head masks: not an interval per row
        return None, None, mask
    seen = seen[:, 0]  # (B, T, S)
    count = seen.sum(-1)
    if bool((count == 0).any()):
        return None, None, mask
    cols = torch.arange(kv_len, device=seen.device)
    lo = torch.where(seen, cols, kv_len).amin(-1)
    hi = torch.where(seen, cols, -1).amax(-1)
    if not bool((hi - lo + 1 == count).all()):
        return None, None, mask
    return lo, hi, None


class RecomputedPatternApply(torch.autograd.Function):
    """``pattern @ value`` with a frozen pattern recomputed in blocks: only the value gets a
    gradient, through ``RecomputedTransposeApply``."""

    @staticmethod
    def forward(value: Tensor, rows: PatternRows) -> Tensor:
        return rows.apply(value)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.rows = inputs[1]

    @staticmethod
    def backward(ctx, grad: Tensor):
        return RecomputedTransposeApply.apply(grad, ctx.rows), None

    @staticmethod
    def jvp(ctx, value_tangent: Tensor | None, _rows_tangent=None) -> Tensor:
        """Forward mode (head loadings): the pattern is constant, so only the value's tangent moves."""
        return ctx.rows.apply(value_tangent)


class RecomputedTransposeApply(torch.autograd.Function):
    """``pattern^T @ grad``. Under vmap (one gradient per attribution target) the targets are
    folded into the columns, so each block of the pattern is recomputed once per backward pass,
    not once per target."""

    @staticmethod
    def forward(grad: Tensor, rows: PatternRows) -> Tensor:
        return rows.transpose_apply(grad)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def vmap(info, in_dims, grad: Tensor, rows: PatternRows):
        moved = grad.movedim(in_dims[0], -2)  # (B, H, T, targets, d)
        shape = moved.shape
        out = rows.transpose_apply(moved.reshape(*shape[:-2], shape[-2] * shape[-1]))
        return out.reshape(*out.shape[:-1], shape[-2], shape[-1]).movedim(-2, 0), 0
