"""Attribution graphs: direct linear effects between the nodes of a local replacement model.

For one prompt the replacement model (``engine.attribution.replacement``) has frozen attention patterns,
frozen normalisation denominators and MLPs replaced by transcoder features plus error terms,
so the residual stream is linear in the embeddings, the feature activations and the errors.
The edge ``A[t, s]`` is then exact: the change of target ``t``'s pre-activation (or de-meaned
logit) per unit of source ``s``. One backward pass per batch of targets injects each target's
encoder vector (or de-meaned unembedding) as the gradient at its input, and every source's edge
is read from the gradient at the point where the source enters the residual stream:

- feature (l, p, f): ``activation * sum_{l' >= l} <decoder(l -> l', f), grad mlp_out[l'][p]>``
- error (l, p):      ``<error[l][p], grad mlp_out[l][p]>``
- embedding p:       ``<embedding[p], grad embeddings[p]>``

Nodes are laid out as [features, errors (layer-major, positions 1..T-1), embeddings, logits];
only features and logits have incoming edges, so edges are kept as row-compressed matrices
holding only their non-zero entries (``pruning.SparseRows``: a feature reads only earlier layers
and positions, so most of a dense row would be zeros). Edges accumulate in float32 whatever the
model's dtype.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuit_atlas.engine.attribution import pruning
from circuit_atlas.errors import CircuitAtlasError

if TYPE_CHECKING:  # pandas and pyarrow (graph_files) are imported where the tables are built
    import pandas as pd

    from circuit_atlas.engine.formats import graph_files as gf


def _release_freed_memory() -> None:
    """Hand the C heap's free pages back to the OS between phases (glibc's malloc_trim;
    elsewhere nothing). The backward passes free many 1-30 MB temporaries that glibc keeps
    in its heap, fragmented: on the benchmark's small model that is ~150 MiB more resident
    memory than is in use by the end of the passes. Trimming once per phase (or per greedy
    update) costs a few page faults, not the per-batch cost of trimming every pass."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class AttributionError(CircuitAtlasError, ValueError):
    """Bad attribution settings: unknown logit target, thresholds out of range, and so on."""


@dataclass
class LogitTargets:
    """The graph's output nodes: ``grads.shape[0]`` token logits, then (when ``vectors`` is
    given) custom directions. ``token_ids`` and ``probs`` cover both, in that order."""

    token_ids: Tensor  # (K,) vocabulary ids, then custom_target_id of each custom target
    probs: Tensor  # (K,) softmax probability of each logit, then each custom target's weight
    grads: Tensor  # (K_logit, V) gradient to inject at the last position's logits
    vectors: Tensor | None = None  # (K_custom, d_model) direction read after the final norm
    labels: list[str] | None = None  # (K_custom,) custom targets' labels

    @property
    def n_custom(self) -> int:
        return 0 if self.vectors is None else int(self.vectors.shape[0])

    def to(self, device: Any) -> "LogitTargets":
        vec = None if self.vectors is None else self.vectors.to(device)
        return LogitTargets(self.token_ids.to(device), self.probs.to(device), self.grads.to(device), vec, self.labels)


@dataclass(frozen=True)
class CustomTarget:
    """Any direction as an output node, as circuit-tracer 0.5.0's ``CustomTarget``: the scalar
    attributed to is ``<vector, h>`` with ``h`` the final norm's output at the last position
    (what the unembedding reads; the norm's denominator frozen), so the vector is applied as
    given, not de-meaned. ``weight`` plays the part a logit's probability plays in influence,
    pruning and the scores. ``W_U[a] - W_U[b]`` gives logit(a) - logit(b) (before any soft-cap)."""

    label: str
    weight: float
    vector: Tensor  # (d_model,)


@dataclass(frozen=True)
class TargetDiff:
    """logit(a) - logit(b) as a custom target, resolved on the model: vector ``W_U[a] - W_U[b]``,
    label ``logit(a)-logit(b)``, weight ``|p(a) - p(b)|`` at the last position unless given
    (0.5 where the two are within 1e-6, as circuit-tracer's own difference targets)."""

    a: str | int
    b: str | int
    weight: float | None = None
    label: str | None = None


CUSTOM_ID_BITS = 40


def custom_target_id(label: str, vocab_size: int) -> int:
    """The token id a custom target's logit node carries: ``vocab_size`` plus a 40-bit hash of its
    label. Past the vocabulary, so it names no real token; a function of the label, so the same
    target on many prompts is one Token in the store (key ``{model}:{id}``) and different targets
    are different ones (circuit-tracer's ``vocab_size + position`` would make the first custom
    target of every graph one Token whatever it is)."""
    digest = hashlib.sha256(label.encode("utf-8")).digest()
    return int(vocab_size) + int.from_bytes(digest[: CUSTOM_ID_BITS // 8], "big")


@dataclass
class RawGraph:
    """The unpruned graph as computed: row-compressed edges plus what names the nodes."""

    edges: pruning.SparseRows  # (R, N) float32 non-zero edges, R = selected features + logits
    row_nodes: Tensor  # (R,) node index of each row
    kinds: Tensor  # (N,) pruning.EMBEDDING/FEATURE/ERROR/LOGIT
    feat_layer: Tensor  # (F,) selected features
    feat_pos: Tensor
    feat_index: Tensor
    feat_act: Tensor
    n_layers: int
    n_pos: int
    token_ids: list[int]
    logits: LogitTargets

    @cached_property
    def rows(self) -> Tensor:
        """The edges as a dense (R, N) matrix: for checks and small graphs (it can be large)."""
        return self.edges.to_dense()

    @property
    def logit_weights(self) -> Tensor:
        w = torch.zeros(self.kinds.shape[0])
        w[-self.logits.token_ids.shape[0] :] = self.logits.probs.float().cpu()
        return w


def _check_prompt(lm: Any, prompt: str | list[int]) -> tuple[str, list[int]]:
    from circuit_atlas.engine.models.loading import PromptError

    if isinstance(prompt, str):
        ids = list(lm.tokenize(prompt))
        return prompt, ids
    ids = [int(t) for t in prompt]
    if not ids:
        raise PromptError("empty prompt: no token ids given")
    if len(ids) > lm.max_context:
        raise PromptError(f"prompt has {len(ids)} tokens; the model's context is {lm.max_context}")
    bad = [t for t in ids if not 0 <= t < lm.vocab_size]
    if bad:
        raise PromptError(f"token ids {bad[:5]} are outside the vocabulary (size {lm.vocab_size})")
    return lm.tokenizer.decode(ids), ids


def _softcap(lm: Any) -> float | None:
    return lm.adapter.logit_softcap(lm.model)


def _logit_targets(
    lm: Any, last_logits: Tensor, targets: list[str | int] | None, max_n_logits: int, desired_logit_prob: float
) -> LogitTargets:
    """Top tokens up to ``desired_logit_prob`` cumulative probability (at most ``max_n_logits``),
    or the given tokens. The injected gradient is the de-meaned one-hot, so the target is
    "logit minus mean logit"; under a final softcap it is divided by the (frozen) tanh slope so
    the effect is measured on the pre-softcap logit, which is linear in the residual stream."""
    logits32 = last_logits.float()
    probs = torch.softmax(logits32, dim=-1)
    vocab = logits32.shape[-1]
    if targets is None:
        top_p, top_i = probs.topk(min(max_n_logits, vocab))
        cut = int(torch.searchsorted(torch.cumsum(top_p, 0), torch.tensor(desired_logit_prob)).item()) + 1
        ids = top_i[: min(cut, top_i.shape[0])]
    else:
        if not targets:
            raise AttributionError("logit_targets is empty")
        resolved = [_token_id(lm, t, vocab) for t in targets]
        ids = torch.tensor(list(dict.fromkeys(resolved)), dtype=torch.long, device=logits32.device)
    grads = _demeaned_one_hots(ids, vocab)
    cap = _softcap(lm)
    if cap:
        slope = 1.0 - (logits32 / cap) ** 2  # d softcap(z)/dz at the frozen logits
        grads = grads / slope.clamp(min=1e-12)
    return LogitTargets(ids, probs[ids], grads)


def _demeaned_one_hots(ids: Tensor, vocab: int) -> Tensor:
    """(K, V): row k is one-hot at ``ids[k]`` minus 1/V everywhere: the gradient of
    "logit minus mean logit" with respect to the logits."""
    grads = torch.full((ids.shape[0], vocab), -1.0 / vocab, device=ids.device)
    grads[torch.arange(ids.shape[0], device=ids.device), ids] += 1.0
    return grads


def _unembedding_side(lm: Any, targets: LogitTargets) -> Tensor | None:
    """The token logit targets as d_model vectors at the unembedding's input: the de-meaned
    one-hot times the unembedding matrix (float32), i.e. the gradient the backward pass through
    the head would bring there. Injected at the last position of the head's input, a logit
    target then costs one d_model vector per target, where injecting at the logits costs a
    (T, vocabulary) gradient per target and a T x vocabulary x d_model product in the head's
    backward (circuit-tracer injects its logit targets there too). The target is the same: the
    pre-soft-cap logit, which the head's linear output is. None (inject at the logits) when
    the head is not a plain linear map."""
    head = lm.model.get_output_embeddings()
    n = int(targets.grads.shape[0])
    if not isinstance(head, torch.nn.Linear) or n == 0:
        return None
    ids = targets.token_ids[:n]
    out = torch.empty(n, head.weight.shape[1], device=head.weight.device)
    for i in range(0, n, 64):  # a few (64, V) one-hots at a time
        j = min(n, i + 64)
        out[i:j] = _demeaned_one_hots(ids[i:j], int(head.weight.shape[0])).to(out.device) @ head.weight.float()
    return out


def _token_id(lm: Any, t: str | int, vocab: int, what: str = "logit target") -> int:
    """A target token given as its text (exactly one token) or its id (digits)."""
    if isinstance(t, str) and not t.lstrip("-").isdigit():
        enc = lm.tokenizer.encode(t, add_special_tokens=False)
        if len(enc) != 1:
            raise AttributionError(f"{what} {t!r} is {len(enc)} tokens, not one: {enc}")
        return int(enc[0])
    tid = int(t)
    if not 0 <= tid < vocab:
        raise AttributionError(f"{what} id {tid} is outside the vocabulary (size {vocab})")
    return tid


def _custom_targets(
    lm: Any, last_logits: Tensor, custom: list[CustomTarget | TargetDiff], real: LogitTargets
) -> LogitTargets:
    """``real`` followed by the custom targets (difference targets resolved on the model)."""
    vocab = int(last_logits.shape[-1])
    probs = torch.softmax(last_logits.float(), dim=-1)
    unembed = lm.adapter.unembed(lm.model)  # (V, d)
    labels, weights, vecs = [], [], []
    for c in custom:
        if isinstance(c, TargetDiff):
            a, b = _token_id(lm, c.a, vocab, "target-diff token"), _token_id(lm, c.b, vocab, "target-diff token")
            if a == b:
                raise AttributionError(f"target-diff tokens {c.a!r} and {c.b!r} are the same token ({a})")
            text_a, text_b = lm.token_strings([a, b])
            label = c.label or f"logit({text_a})-logit({text_b})"
            weight = c.weight if c.weight is not None else abs(float(probs[a]) - float(probs[b]))
            if c.weight is None and weight < 1e-6:
                weight = 0.5
            vec = unembed[a].detach().float() - unembed[b].detach().float()
        elif isinstance(c, CustomTarget):
            label, weight, vec = c.label, c.weight, torch.as_tensor(c.vector).detach().float()
        else:
            raise AttributionError(f"a custom target must be a CustomTarget or TargetDiff, got {type(c).__name__}")
        if not isinstance(label, str) or not label:
            raise AttributionError("a custom target needs a non-empty label")
        vec = vec.reshape(-1) if vec.dim() == 2 and 1 in vec.shape else vec
        if tuple(vec.shape) != (lm.d_model,):
            raise AttributionError(f"custom target {label!r}: vector of shape {tuple(vec.shape)}, expected ({lm.d_model},)")
        if not torch.isfinite(vec).all():
            raise AttributionError(f"custom target {label!r}: vector has non-finite entries")
        if not (isinstance(weight, (int, float)) and weight >= 0 and weight == weight):
            raise AttributionError(f"custom target {label!r}: weight must be a number >= 0, got {weight!r}")
        if label in labels:
            raise AttributionError(f"two custom targets are labelled {label!r}: labels name the nodes, give distinct ones")
        labels.append(label)
        weights.append(float(weight))
        vecs.append(vec.to(last_logits.device))
    ids = torch.tensor([custom_target_id(x, vocab) for x in labels], dtype=torch.long, device=real.token_ids.device)
    return LogitTargets(
        torch.cat([real.token_ids, ids]),
        torch.cat([real.probs.float(), torch.tensor(weights, device=real.probs.device)]),
        real.grads,
        torch.stack(vecs),
        labels,
    )


@contextlib.contextmanager
def _pre_logits(lm: Any, keep: list[Tensor]) -> Any:
    """Inside: the unembedding's input (B, T, d) of each forward pass is appended to ``keep``
    (custom targets are injected there, where circuit-tracer injects every target)."""
    head = lm.model.get_output_embeddings()
    handle = head.register_forward_pre_hook(lambda module, args: keep.append(args[0]))
    try:
        yield keep
    finally:
        handle.remove()


class _SourceReader:
    """Turns the gradients of one backward pass into edge rows for every source, vectorised:
    one padded batched matmul per target layer for features, one einsum for errors/embeddings."""

    @torch.no_grad()
    def __init__(self, run: Any, tc: Any, layers: Tensor, pos: Tensor, feats: Tensor, acts: Tensor) -> None:
        self.n_layers = len(run.mlp_out)
        self.n_pos = run.embeddings.shape[1]
        self.n_feat = int(layers.shape[0])
        self.n_src = self.n_feat + self.n_layers * (self.n_pos - 1) + self.n_pos
        self._out: Tensor | None = None  # the rows' buffer, reused by every batch
        device = run.embeddings.device
        self.emb = run.embeddings[0].detach().float()  # (T, d)
        self.err = torch.stack([e.float() for e in run.errors])[:, 1:]  # (L, T-1, d)
        # per target layer l': decoders of every feature that writes to l', scaled by activation,
        # grouped by position into a padded (T, S_max, d) block for one bmm
        self.blocks: list[tuple[Tensor, Tensor] | None] = []
        for target in range(self.n_layers):
            src = (layers == target) if tc.kind == "plt" else (layers <= target)
            idx = torch.nonzero(src, as_tuple=True)[0]
            if idx.numel() == 0:
                self.blocks.append(None)
                continue
            vecs = torch.empty(idx.numel(), self.emb.shape[1], device=device)
            for source in torch.unique(layers[idx]).tolist():
                sel = idx[layers[idx] == source]
                pos_sel = (layers[idx] == source).nonzero(as_tuple=True)[0]
                dec = tc.decoder_vectors(source, target, feats[sel].to(device)).float()
                vecs[pos_sel] = dec * acts[sel].to(device).float()[:, None]
            p = pos[idx].to(device)
            order = torch.argsort(p, stable=True)
            p, idx, vecs = p[order], idx[order], vecs[order]
            counts = torch.bincount(p, minlength=self.n_pos)
            slot = torch.arange(p.numel(), device=device) - (torch.cumsum(counts, 0) - counts)[p]
            width = int(counts.max().item())
            block = torch.zeros(self.n_pos, width, vecs.shape[1], device=device)
            block[p, slot] = vecs
            # padding slots point past the last source column (see ``rows``)
            cols = torch.full((self.n_pos, width), self.n_src, dtype=torch.long, device=device)
            cols[p, slot] = idx.to(device)
            self.blocks.append((block.transpose(1, 2).contiguous(), cols))

    @torch.no_grad()
    def rows(self, g_emb: Tensor | None, g_out: list[Tensor | None], n: int) -> Tensor:
        """Edge rows (n, F + L*(T-1) + T) for the first n batch copies: a view of one buffer
        that the next call overwrites (the caller copies the non-zero entries out). The
        gradients may cover the first P <= T positions only (a pass through a prefix run):
        later positions are no target's sources then."""
        t, f = self.n_pos, self.n_feat
        if self._out is None or self._out.shape[0] < n:
            # features, errors, embeddings, then one padding column for the padded bmm slots
            self._out = torch.empty(n, self.n_src + 1, device=self.emb.device)
        out = self._out[:n]
        out.zero_()
        err = out[:, f : f + self.n_layers * (t - 1)].unflatten(1, (self.n_layers, t - 1))
        for layer, g in enumerate(g_out):
            if g is None:
                continue
            g = g[:n].float()
            p = g.shape[1]
            err[:, layer, : p - 1] = torch.einsum("btd,td->bt", g[:, 1:], self.err[layer][: p - 1])
            block = self.blocks[layer]
            if block is not None:
                mats, cols = block
                prod = torch.bmm(g.transpose(0, 1), mats[:p])  # (P, n, S_max)
                out.index_add_(1, cols[:p].flatten(), prod.transpose(0, 1).reshape(n, -1))
        if g_emb is not None:
            p = g_emb.shape[1]
            out[:, self.n_src - t : self.n_src - t + p] = torch.einsum("btd,td->bt", g_emb[:n].float(), self.emb[:p])
        return out[:, : self.n_src]


def compute_graph(
    lm: Any,
    tc: Any,
    token_ids: list[int],
    *,
    max_feature_nodes: int | None = None,
    batch_size: int = 64,
    logit_targets: list[str | int] | None = None,
    max_n_logits: int = 10,
    desired_logit_prob: float = 0.95,
    progress: bool = False,
    update_interval: int = 4,
    on_batch: Callable[[int], None] | None = None,
    custom_targets: list[CustomTarget | TargetDiff] | None = None,
    max_memory: int | str | None = None,
    spill_dir: str | None = None,
) -> RawGraph:
    """Every edge into the logits and into the visited features (all, or the
    ``max_feature_nodes`` most influential found greedily), unpruned. With ``custom_targets``
    the output nodes are those (after the ``logit_targets`` tokens, if any are given too):
    no salient logits are added, as in circuit-tracer."""
    from circuit_atlas.engine.attribution.replacement import replacement_run

    if batch_size < 1:
        raise AttributionError(f"batch_size must be >= 1, got {batch_size}")
    tc.check_fits(lm.n_layers, lm.d_model, source=str(getattr(tc, "scan", "")))
    ids = torch.tensor(token_ids, dtype=torch.long, device=lm.device)
    kept: list[Tensor] = []
    with _pre_logits(lm, kept):
        run = replacement_run(lm, tc, ids, batch_size=1, last_logits_only=True)
    last = run.logits[0, -1].detach()
    if custom_targets:
        if logit_targets:
            real = _logit_targets(lm, last, logit_targets, max_n_logits, desired_logit_prob)
        else:
            empty = torch.zeros(0, dtype=torch.long, device=last.device)
            real = LogitTargets(empty, last.new_zeros(0, dtype=torch.float32), last.new_zeros(0, last.shape[-1]))
        targets = _custom_targets(lm, last, list(custom_targets), real)
    else:
        targets = _logit_targets(lm, last, logit_targets, max_n_logits, desired_logit_prob)
    return graph_from_run(
        run,
        tc,
        targets,
        token_ids,
        max_feature_nodes=max_feature_nodes,
        batch_size=batch_size,
        progress=progress,
        update_interval=update_interval,
        on_batch=on_batch,
        pre_logits=kept[-1][:, -1],
        logit_vectors=_unembedding_side(lm, targets),
        max_memory=max_memory,
        spill_dir=spill_dir,
        targets_per_pass=_targets_per_pass(lm, len(token_ids), max_memory, batch_size),
        # passes of early targets through a forward pass of the prompt's first tokens; not under a
        # memory budget, which counts on one run's saved tensors
        prefix_run=None if max_memory is not None else (
            lambda n: replacement_run(lm, tc, ids[:n], batch_size=1, last_logits_only=True)),
    )


def _memory_budget(max_memory: int | str | None) -> int | None:
    """``--max-memory`` in bytes (None: no budget); a malformed one is an AttributionError."""
    try:
        return pruning.parse_memory(max_memory)
    except ValueError as exc:
        raise AttributionError(str(exc)) from None


def _targets_per_pass(lm: Any, n_pos: int, max_memory: int | str | None, batch_size: int) -> int | None:
    """How many targets one backward pass may carry under ``max_memory``: each target's
    gradients with respect to the embeddings and every layer's MLP output are held until the
    pass's rows are read ((layers + 1) x T x d_model floats), plus a few per-layer working
    tensors of the same size; at thousands of tokens that is the largest term of a pass (the
    frozen patterns are recomputed in blocks shared by the targets, ``engine/models/pattern_blocks``).
    At most a quarter of the budget goes to it; None (no split) without a budget or when the
    whole batch fits."""
    budget = _memory_budget(max_memory)
    if budget is None:
        return None
    per_target = (lm.n_layers + 1 + 4) * n_pos * lm.d_model * 4
    fits = max(1, (budget // 4) // per_target)
    return None if fits >= batch_size else int(fits)


def _batched_grad(outs: list[Tensor], inputs: list[Tensor], grads: list[Tensor]) -> list[Tensor | None]:
    """``autograd.grad`` for a batch of output gradients (dim 0) in one backward pass, under
    ``torch.func.vmap``: unlike ``is_grads_batched`` (the legacy vmap), it uses the batching
    rules of the frozen attention's own autograd functions (``engine/models``), which fold the
    targets into one product per head instead of copying the pattern per target."""
    unused: list[bool] = []

    def one(*gs: Tensor) -> tuple[Tensor, ...]:
        got = torch.autograd.grad(outs, inputs, gs, retain_graph=True, allow_unused=True)
        unused[:] = [g is None for g in got]
        return tuple(torch.zeros(0) if g is None else g for g in got)

    got = torch.func.vmap(one)(*grads)
    return [None if skip else g for skip, g in zip(unused, got)]


# What one forward pass of a prefix costs, in targets carried through the same positions and
# layers by a backward pass, and the fewest positions it is priced at (a short forward pass costs
# mostly its fixed per-layer work): measured on CPU with SmolLM2-135M, a 17-token forward 0.16-0.19 s
# and a 9-token one 0.13 s, against ~9.5 us per target, position and layer in the passes.
PREFIX_FORWARD_TARGETS = 40
PREFIX_FORWARD_MIN_POSITIONS = 12


def _plan_passes(layers: list[int], pos: list[int], n_pos: int, n_layers: int, batch_size: int,
                 cached: set[int], allow_prefix: bool) -> list[tuple[list[int], int]]:
    """Targets (in (layer, position) order) into passes of at most ``batch_size``: (indices,
    positions P the pass runs over). A pass costs about targets x (deepest layer + 1) x P, and
    a target at position p needs only the first p + 1 positions (the model is causal): the
    targets before a split point P1 can run through a forward pass of the prompt's first P1
    tokens (one more forward, ``PREFIX_FORWARD_TARGETS``, unless ``cached``), the rest through
    the whole prompt. The split (or none) is the cheapest by that count, among a few
    candidates (quartiles of the targets' positions)."""
    order = list(range(len(layers)))

    def passes(split: int | None) -> list[tuple[list[int], int]]:
        groups = [(order, n_pos)] if split is None else [
            ([i for i in order if pos[i] < split], split), ([i for i in order if pos[i] >= split], n_pos)]
        return [(g[k : k + batch_size], p) for g, p in groups for k in range(0, len(g), batch_size) if g]

    def cost(plan: list[tuple[list[int], int]], split: int | None) -> float:
        work = sum(len(idx) * (max(layers[i] for i in idx) + 1) * p for idx, p in plan)
        forward = 0 if split is None or split in cached else (
            PREFIX_FORWARD_TARGETS * max(split, PREFIX_FORWARD_MIN_POSITIONS) * n_layers)
        return work + forward

    best = passes(None)
    if not allow_prefix or n_pos < 4 or not order:
        return best
    best_cost = cost(best, None)
    ranked = sorted(pos)
    for q in (0.25, 0.5, 0.75):
        split = ranked[int(q * (len(ranked) - 1))] + 1
        if not 2 <= split < n_pos:
            continue
        plan = passes(split)
        c = cost(plan, split)
        if c < best_cost:
            best, best_cost = plan, c
    return best


def graph_from_run(
    run: Any,
    tc: Any,
    targets: LogitTargets,
    token_ids: list[int],
    *,
    max_feature_nodes: int | None = None,
    batch_size: int = 64,
    progress: bool = False,
    update_interval: int = 4,
    on_batch: Callable[[int], None] | None = None,
    pre_logits: Tensor | None = None,
    logit_vectors: Tensor | None = None,
    max_memory: int | str | None = None,
    spill_dir: str | None = None,
    targets_per_pass: int | None = None,
    prefix_run: Callable[[int], Any] | None = None,
) -> RawGraph:
    """The edges of a prepared replacement run (any object with ReplacementRun's fields; batch
    copy 0 is used, so a batch of 1 suffices) for the given logit targets, ``batch_size``
    targets per backward pass. Split from compute_graph so the edge bookkeeping can be checked
    on hand-built frozen networks. Custom targets (``targets.vectors``) need ``pre_logits``:
    the unembedding's input at the last position, (B, d), in the run's autograd graph.
    ``logit_vectors`` (K_logit, d) with ``pre_logits``: the token logit targets carried
    through the unembedding (``_unembedding_side``), injected there like custom targets
    instead of as (vocabulary-wide) gradients at ``run.logits``; the rows are the same.

    ``max_memory`` (bytes, or a size such as ``"512M"``): a budget for the edge rows kept while
    the passes run; past it, older blocks of rows are written to a temporary folder (under
    ``spill_dir``) and read back one at a time for the greedy influence updates, then once to
    keep the visited features' columns. Every pass's rows are the same, so the graph is too.

    ``targets_per_pass``: split each batch's backward pass into passes of at most this many
    targets (``compute_graph`` sets it from ``max_memory`` on long prompts: a pass holds every
    target's gradients at every layer until its rows are read). Rows stay
    in the same order; their values are those of smaller batches (equal up to float rounding).

    ``prefix_run(P)``: the same replacement run over the prompt's first P tokens. Given it, a
    pass of feature targets that all sit before position P may run through it, doing the
    backward over P positions instead of T (``_plan_passes`` decides); the edges are those of
    the whole run up to float rounding, since the model is causal."""
    device = run.embeddings.device
    n_layers, n_pos = len(run.mlp_out), int(run.embeddings.shape[1])
    d_model = int(run.embeddings.shape[-1])

    # active features, ordered (layer, pos, feature)
    found = [torch.nonzero(run.activations[l]) for l in range(n_layers)]
    layers = torch.cat([torch.full((f.shape[0],), l, dtype=torch.long) for l, f in enumerate(found)]).to(device)
    pos = torch.cat([f[:, 0] for f in found]).to(device)
    feats = torch.cat([f[:, 1] for f in found]).to(device)
    acts = torch.cat([run.activations[l][f[:, 0], f[:, 1]] for l, f in enumerate(found)]).detach().float()
    n_feat = int(layers.shape[0])
    n_err = n_layers * (n_pos - 1)
    n_src = n_feat + n_err + n_pos

    targets = targets.to(device)
    n_logit = int(targets.token_ids.shape[0])
    n_real = int(targets.grads.shape[0])
    if (targets.n_custom or logit_vectors is not None) and pre_logits is None:
        raise AttributionError("custom targets need the unembedding's input (pre_logits) of the run")
    budget = n_feat if max_feature_nodes is None else max(0, min(int(max_feature_nodes), n_feat))

    reader = _SourceReader(run, tc, layers, pos, feats, acts)
    _release_freed_memory()  # the forward pass's and the reader's temporaries, before the passes
    inputs = [run.embeddings, *run.mlp_out]
    # columns: all sources, then the logits (never sources: zero), so row indices and node
    # indices share one space; every pass's non-zero entries go into a few large blocks
    # (pruning.RowBlocks: nothing small is kept per pass), joined at the end
    max_bytes = _memory_budget(max_memory)
    store = pruning.RowBlocks(n_logit + budget, n_src + n_logit, max_bytes=max_bytes, spill_dir=spill_dir)
    row_nodes = torch.zeros(n_logit + budget, dtype=torch.long)  # in the all-features node space
    # each computed row's place in the canonical order (logits, then every round's features in
    # (layer, position) order): passes split over a prefix compute a round's rows in another order
    canon = torch.arange(n_logit + budget)

    def backward(
        enc_layers: list[int],
        enc_pos: list[int],
        enc_vecs: Tensor | None,
        logit_grads: Tensor | None,
        custom_vecs: Tensor | None = None,
        through: Any = None,
    ) -> None:
        """A batch of targets, in passes of at most ``targets_per_pass`` (rows in the same order),
        through ``run`` or the given prefix run."""
        some = enc_vecs if enc_vecs is not None else logit_grads if logit_grads is not None else custom_vecs
        n = int(some.shape[0])  # type: ignore[union-attr]
        step = n if targets_per_pass is None else max(1, min(n, int(targets_per_pass)))
        for i in range(0, n, step):
            j = min(n, i + step)
            one_pass(
                enc_layers[i:j],
                enc_pos[i:j],
                None if enc_vecs is None else enc_vecs[i:j],
                None if logit_grads is None else logit_grads[i:j],
                None if custom_vecs is None else custom_vecs[i:j],
                through,
            )

    def one_pass(
        enc_layers: list[int],
        enc_pos: list[int],
        enc_vecs: Tensor | None,
        logit_grads: Tensor | None,
        custom_vecs: Tensor | None = None,
        through: Any = None,
    ) -> None:
        # one vmapped backward pass carries n targets through a forward pass
        # of batch 1: the forward is not repeated per target, and the saved tensors stay small.
        # Only batch copy 0 of the run is used.
        r = run if through is None else through
        outs, grads = [], []
        if enc_vecs is not None:
            n = len(enc_layers)
        else:
            n = int((logit_grads if logit_grads is not None else custom_vecs).shape[0])  # type: ignore[union-attr]
        if enc_vecs is not None:
            el = torch.tensor(enc_layers, device=device)
            ep = torch.tensor(enc_pos, device=device)
            for layer in torch.unique(el).tolist():
                x = r.mlp_in[layer]
                g = x.new_zeros((n, *x.shape))
                b = torch.nonzero(el == layer, as_tuple=True)[0]
                g[b, 0, ep[b]] = enc_vecs[b].to(g.dtype)
                outs.append(x)
                grads.append(g)
        if logit_grads is not None:
            last = run.logits[:, -1]  # (B, V): a (B, T, V) zero gradient would be large for big vocabularies
            g = last.new_zeros((n, *last.shape))
            g[:, 0] = logit_grads.to(g.dtype)
            outs.append(last)
            grads.append(g)
        if custom_vecs is not None:
            g = pre_logits.new_zeros((n, *pre_logits.shape))  # type: ignore[union-attr]
            g[:, 0] = custom_vecs.to(g.dtype)
            outs.append(pre_logits)
            grads.append(g)
        ins = inputs if through is None else [r.embeddings, *r.mlp_out]
        got = [None if g is None else g[:, 0] for g in _batched_grad(outs, ins, grads)]
        store.append(reader.rows(got[0], got[1:], n).cpu())

    # logit rows first
    logit_node0 = n_src  # logit k is node n_src + k in the all-features space
    for start in range(0, n_real, batch_size):
        stop = min(start + batch_size, n_real)
        if logit_vectors is not None:  # at the unembedding's input (one position), not the logits
            backward([], [], None, None, logit_vectors[start:stop].to(device))
        else:
            backward([], [], None, targets.grads[start:stop])
        row_nodes[start:stop] = torch.arange(start, stop) + logit_node0
    for start in range(n_real, n_logit, batch_size):  # custom targets, read after the final norm
        stop = min(start + batch_size, n_logit)
        backward([], [], None, None, targets.vectors[start - n_real : stop - n_real])  # type: ignore[index]
        row_nodes[start:stop] = torch.arange(start, stop) + logit_node0

    # feature rows: all in order, or greedily by current influence on the logits
    weights = torch.zeros(n_src + n_logit)
    weights[n_src:] = targets.probs.float().cpu()
    visited = torch.zeros(n_feat, dtype=torch.bool)
    filled, n_done = n_logit, 0
    prefixes: dict[int, Any] = {}  # at most one prefix run is kept

    def through(n: int) -> Any:
        if n >= n_pos:
            return None
        if n not in prefixes:
            prefixes.clear()
            _release_freed_memory()
            prefixes[n] = prefix_run(n)  # type: ignore[misc]
        return prefixes[n]

    bar = tqdm(total=budget, desc="attribution", unit="feature", disable=not progress)
    while n_done < budget:
        if budget == n_feat:
            pending = torch.arange(n_feat)
        else:
            _release_freed_memory()  # once per update: the passes since the last one
            infl = pruning.node_influence(store.parts(), row_nodes[:filled], weights)
            rank = torch.argsort(infl[:n_feat], descending=True, stable=True)
            pending = rank[~visited[rank]][: min(update_interval * batch_size, budget - n_done)]
            # the same features, in (layer, position) order: a pass costs as many layers as its
            # deepest target, so mixing layers (influence order) made every pass run through nearly
            # all of them (the demo's passes: ~0.5x the layer-times-targets work this way)
            pending = pending.sort().values  # feature indices are already in (layer, pos, feature) order
        plan = _plan_passes(layers[pending.to(device)].tolist(), pos[pending.to(device)].tolist(), n_pos, n_layers,
                            batch_size, set(prefixes), prefix_run is not None)
        round_start = filled
        for group, n_through in plan:
            chunk = pending[torch.tensor(group, dtype=torch.long)]
            canon[filled : filled + len(group)] = round_start + torch.tensor(group, dtype=torch.long)
            cl, cp, cf = layers[chunk.to(device)], pos[chunk.to(device)], feats[chunk.to(device)]
            vecs = torch.empty(chunk.shape[0], d_model, device=device)
            for layer in torch.unique(cl).tolist():
                m = cl == layer
                vecs[m] = tc.encoder_vectors(layer, cf[m]).detach().float()
            stop = filled + chunk.shape[0]
            backward(cl.tolist(), cp.tolist(), vecs, None, through=through(n_through))
            row_nodes[filled:stop] = chunk
            visited[chunk] = True
            filled, n_done = stop, n_done + chunk.shape[0]
            bar.update(chunk.shape[0])
            if on_batch:
                on_batch(chunk.shape[0])
    bar.close()
    del run, reader, prefixes
    _release_freed_memory()

    # keep the visited features only; renumber nodes to [selected features, errors, embeddings, logits]
    selected = torch.nonzero(visited, as_tuple=True)[0]
    new_index = torch.full((n_src + n_logit,), -1, dtype=torch.long)
    new_index[selected] = torch.arange(selected.shape[0])
    n_sel = int(selected.shape[0])
    new_index[n_feat:] = torch.arange(n_sel, n_sel + n_err + n_pos + n_logit)
    parts = store.finish()
    del store
    if n_sel < n_feat:  # drop the columns of unvisited features, block by block (each freed as replaced)
        for i, part in enumerate(parts):  # (a spilled block is read back only for its turn)
            parts[i] = pruning.loaded(part).select_columns(new_index, n_sel + n_err + n_pos + n_logit)
        del part
    edges = pruning.SparseRows.cat(parts)
    row_nodes = new_index[row_nodes[:filled]]
    if not torch.equal(canon[:filled], torch.arange(filled)):  # the same rows whatever the passes
        order = torch.argsort(canon[:filled])
        edges, row_nodes = edges.take_rows(order), row_nodes[order]
    # rows stay in the order computed (logits first); row_nodes says which node each is

    kinds = torch.cat(
        [
            torch.full((n_sel,), pruning.FEATURE),
            torch.full((n_err,), pruning.ERROR),
            torch.full((n_pos,), pruning.EMBEDDING),
            torch.full((n_logit,), pruning.LOGIT),
        ]
    )
    sel_dev = selected.to(device)
    return RawGraph(
        edges=edges,
        row_nodes=row_nodes,
        kinds=kinds,
        feat_layer=layers[sel_dev].cpu(),
        feat_pos=pos[sel_dev].cpu(),
        feat_index=feats[sel_dev].cpu(),
        feat_act=acts[sel_dev].cpu(),
        n_layers=n_layers,
        n_pos=n_pos,
        token_ids=list(token_ids),
        logits=targets.to("cpu"),
    )


def node_table(raw: RawGraph, influence: Tensor | None) -> pd.DataFrame:
    """nodes.parquet rows in node order (features, errors, embeddings, logits)."""
    from circuit_atlas.engine.formats import graph_files as gf

    L, T = raw.n_layers, raw.n_pos
    err_layer = np.repeat(np.arange(L), T - 1)  # no error node at the BOS position
    err_pos = np.tile(np.arange(1, T), L)
    logit_ids = raw.logits.token_ids.numpy()
    fl, fp, ff = raw.feat_layer.numpy(), raw.feat_pos.numpy(), raw.feat_index.numpy()
    ids = gf.node_ids(L, fl, fp, ff, err_layer, err_pos, raw.token_ids, logit_ids)
    labels = [None] * (len(ids) - raw.logits.n_custom) + list(raw.logits.labels or [])
    return gf.node_frame(
        ids, L, fl, fp, ff, raw.feat_act.numpy(), err_layer, err_pos, raw.token_ids, logit_ids,
        None if influence is None else influence.numpy(), raw.logits.probs.float().numpy(), labels,
    )


def attribute(
    lm: Any,
    tc: Any,
    prompt: str | list[int],
    *,
    max_feature_nodes: int | None = None,
    batch_size: int = 64,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    prune: bool = True,
    logit_targets: list[str | int] | None = None,
    max_n_logits: int = 10,
    desired_logit_prob: float = 0.95,
    progress: bool = False,
    prompt_props: dict | None = None,
    on_batch: Callable[[int], None] | None = None,
    custom_targets: list[CustomTarget | TargetDiff] | None = None,
    max_memory: int | str | None = None,
) -> gf.GraphFile:
    """The attribution graph of ``prompt`` under transcoders ``tc``, pruned unless
    ``prune=False`` (then every computed non-zero edge is kept), with both scores in meta.
    ``custom_targets`` (``CustomTarget`` directions, ``TargetDiff`` token pairs) become logit
    nodes labelled by their label, with token id ``custom_target_id(label, vocab)``.
    ``max_memory`` bounds the edge rows held in memory during the passes (``graph_from_run``);
    the graph is the same with or without it.

    pandas and pyarrow (~70 MiB) are imported only once the edges are pruned, after the peak
    of the attribution buffers, rather than when this module is."""
    for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= value <= 1.0:
            raise AttributionError(f"{name} must be between 0 and 1, got {value}")
    text, token_ids = _check_prompt(lm, prompt)
    raw = compute_graph(
        lm,
        tc,
        token_ids,
        max_feature_nodes=max_feature_nodes,
        batch_size=batch_size,
        logit_targets=logit_targets,
        max_n_logits=max_n_logits,
        desired_logit_prob=desired_logit_prob,
        progress=progress,
        on_batch=on_batch,
        custom_targets=custom_targets,
        max_memory=max_memory,
    )
    weights = raw.logit_weights
    raw.edges = raw.edges.with_row_index()  # used by every step below
    # the normalised rows and the influence are computed once, for the scores and pruning both
    norm = pruning.normalize_rows(raw.edges)
    infl = pruning.influence(norm, raw.row_nodes, weights)
    replacement, completeness = pruning.graph_scores(raw.edges, raw.row_nodes, raw.kinds, weights, norm=norm, infl=infl)
    del norm
    if prune:
        result = pruning.prune(raw.edges, raw.row_nodes, raw.kinds, weights, node_threshold, edge_threshold, infl=infl)
        node_mask, edge_mask = result.node_mask, result.edge_mask
        del result
    else:
        node_mask = torch.ones(raw.kinds.shape[0], dtype=torch.bool)
        edge_mask = raw.edges.val != 0
    _release_freed_memory()  # before pandas is imported and the tables are built
    import pandas as pd

    from circuit_atlas.engine.formats import graph_files as gf

    nodes = node_table(raw, infl)
    r, s = raw.edges.row_index()[edge_mask].long(), raw.edges.col[edge_mask].long()
    ids = nodes["node_id"].to_numpy()
    edges = pd.DataFrame(
        {
            "source": ids[s.numpy()],
            "target": ids[raw.row_nodes[r].numpy()],
            "weight": raw.edges.val[edge_mask].numpy().astype(np.float32),
        }
    )
    nodes = nodes[node_mask.numpy()].reset_index(drop=True)

    logit_ids = [int(t) for t in raw.logits.token_ids.tolist()]
    n_real = len(logit_ids) - raw.logits.n_custom
    custom = None if logit_targets is None else logit_ids[:n_real]
    described = _describe_custom(raw.logits)
    if described:  # part of the graph's identity (settings' logit_targets is an identity setting)
        custom = (custom or []) + described
    settings = {
        "node_threshold": float(node_threshold),
        "edge_threshold": float(edge_threshold),
        "max_feature_nodes": max_feature_nodes,
        "pruned": bool(prune),
        "logit_targets": custom,
        "max_n_logits": int(max_n_logits),
        "desired_logit_prob": float(desired_logit_prob),
        "batch_size": int(batch_size),
        "dtype": str(lm.dtype).replace("torch.", ""),
        "device": str(lm.device),
    }
    meta = {
        "graph_id": gf.graph_id(lm.model_id, tc.scan, token_ids, settings, nodes, edges),
        "prompt": text,
        "tokens": list(lm.token_strings(token_ids)),
        "token_ids": token_ids,
        "model": lm.model_id,
        "scan": tc.scan,
        "n_layers": raw.n_layers,
        "logit_tokens": {
            **dict(zip(map(str, logit_ids[:n_real]), lm.token_strings(logit_ids[:n_real]))),
            **{str(d["token_id"]): d["label"] for d in described},
        },
        "settings": settings,
        "scores": {"replacement_score": replacement, "completeness_score": completeness},
        "prompt_props": dict(prompt_props or {}),
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if described:  # with the vectors, which head loadings and re-runs need (settings keep the digest)
        vectors = raw.logits.vectors.float().cpu().tolist()  # type: ignore[union-attr]
        meta["custom_targets"] = [{**d, "vector": v} for d, v in zip(described, vectors)]
    return gf.GraphFile(meta=meta, nodes=nodes, edges=edges)


def _describe_custom(targets: LogitTargets) -> list[dict[str, Any]]:
    """meta.json records of the custom targets: label, node token id, weight, and the vector's
    norm and digest (float32 bytes), so a reader can tell two same-labelled directions apart."""
    if not targets.n_custom:
        return []
    ids = targets.token_ids[-targets.n_custom :].tolist()
    weights = targets.probs[-targets.n_custom :].tolist()
    out = []
    for label, tid, w, vec in zip(targets.labels or [], ids, weights, targets.vectors):  # type: ignore[arg-type]
        v = vec.detach().float().cpu().contiguous()
        out.append(
            {
                "label": label,
                "token_id": int(tid),
                "weight": float(w),
                "vector_norm": float(v.norm()),
                "vector_sha256": hashlib.sha256(v.numpy().tobytes()).hexdigest()[:16],
            }
        )
    return out
