"""The local replacement model of one prompt.

One forward pass of the real model with attention patterns and normalisation denominators
frozen (detached: they keep their values, but no gradient flows through them), in which every
layer's MLP output at positions >= 1 is rebuilt as

    transcoder reconstruction (constant: decoders times the activations of this prompt)
    + skip path (linear in the features' input, when the transcoders have one)
    + error node (constant: true MLP output minus the two above)

and the BOS position keeps its true MLP output less the skip term as a constant, the skip term
staying live there as at every position (circuit-tracer's choice: W_skip x is part of the
replacement, so the BOS embedding's path through it is a real edge; see README "Transcoders").
The values are exactly the real model's (the rebuilt output *is* the true output), and
everything is linear in the embeddings, feature activations and errors, so edges are exact
gradients. The prompt is repeated ``batch_size`` times along the batch so one backward pass can
carry that many targets.

"MLP input" and "MLP output" are the transcoders' hook points (config.yaml's
``feature_input_hook`` / ``feature_output_hook``, placed by ``adapters.mlp_hooks``): the input
may sit before the pre-MLP norm or between its frozen scale and its weight, the output before
Gemma's post-MLP norm; whatever lies between the two points and the residual stream is frozen
linear arithmetic, so the map stays exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from circuit_atlas.engine.models.adapters import Freeze, frozen, mlp_hooks, recording, replaying


def hook_points(tc) -> dict[str, str]:
    """``mlp_hooks``'s keywords for a transcoder set: where its features read and write."""
    return {"input_hook": tc.feature_input_hook, "output_hook": tc.feature_output_hook}


@dataclass
class ReplacementRun:
    input_ids: Tensor  # (T,)
    embeddings: Tensor  # (B, T, d) leaf, requires grad: the embedding nodes' vectors
    mlp_in: list[Tensor]  # per layer (B, T, d) at the features' input hook, in the autograd graph
    mlp_out: list[Tensor]  # per layer (B, T, d) at the features' output hook, in the autograd graph
    logits: Tensor  # (B, T, V); (B, 1, V) with last_logits_only
    activations: list[Tensor]  # per layer (T, d_tc), detached; row 0 (BOS) is zero
    errors: list[Tensor]  # per layer (T, d), detached; row 0 (BOS) is zero
    record: Freeze | None = None  # patterns and scales, when asked for


def _input_embeddings(lm, ids: Tensor) -> tuple[Tensor, Tensor | None]:
    """(what the embedding nodes are, what to subtract before feeding ``inputs_embeds``).

    For GPT-2 the model adds learned position embeddings itself; the embedding node is the
    token plus position embedding, so the position part is subtracted from what is fed and the
    model adds it back: the same values, and the node carries the whole input vector."""
    model, adapter = lm.model, lm.adapter
    emb = adapter.embed(model)(ids)
    pos_module = adapter.position_embed(model)
    if pos_module is None:
        return emb, None
    pos = pos_module(torch.arange(ids.shape[-1], device=ids.device))
    return emb + pos, pos


def replacement_run(
    lm, tc, input_ids: Tensor, batch_size: int = 1, *, record: bool = False, last_logits_only: bool = False
) -> ReplacementRun:
    """The replacement model's forward pass for one prompt (1-D ``input_ids``). With
    ``record``, the patterns and scales are kept in ``run.record`` for ``replaying``. With
    ``last_logits_only``, ``run.logits`` is (B, 1, V): the unembedding runs on the last position
    only (``logits_to_keep=1``), which is all attribution reads; a (T, V) logits tensor is
    T x vocabulary floats (4 GB for 4,096 tokens of a 256k vocabulary)."""
    ids = torch.as_tensor(input_ids, dtype=torch.long, device=lm.device).reshape(-1)
    n_layers = lm.n_layers
    tc.check_fits(n_layers, lm.d_model, source=str(getattr(tc, "scan", "")))
    model, adapter = lm.model, lm.adapter
    with torch.no_grad():
        base, pos_part = _input_embeddings(lm, ids)
    embeddings = base.unsqueeze(0).repeat(batch_size, 1, 1).detach().requires_grad_(True)
    fed = embeddings if pos_part is None else embeddings - pos_part

    mlp_in: list[Tensor] = [None] * n_layers  # type: ignore[list-item]
    mlp_out: list[Tensor] = [None] * n_layers  # type: ignore[list-item]
    acts: list[Tensor] = []
    errors: list[Tensor] = [None] * n_layers  # type: ignore[list-item]
    tc_dtype = tc.dtype

    def pre(i: int, x: Tensor) -> None:
        mlp_in[i] = x

    def post(i: int, output: Tensor) -> Tensor:
        true = output.detach()
        x = mlp_in[i]
        with torch.no_grad():
            a = tc.encode(i, x[0].to(tc_dtype))
            a[0] = 0
            acts.append(a)
            recon = tc.decode(acts, i).to(true.dtype)
        skip = tc.skip(i, x.to(tc_dtype))
        skip = None if skip is None else skip.to(true.dtype)
        with torch.no_grad():
            err = true[0] - recon - (skip[0].detach() if skip is not None else 0)
            err[0] = 0
            errors[i] = err
        # value: exactly the true output; gradient: through the skip path only (BOS included)
        if skip is None:
            new = true.clone().requires_grad_(True)
        else:
            new = true + (skip - skip.detach())
        mlp_out[i] = new
        return new

    with mlp_hooks(model, adapter, pre, post, **hook_points(tc)), (recording() if record else frozen()) as state, torch.enable_grad():
        keep = {"logits_to_keep": 1} if last_logits_only else {}
        logits = model(inputs_embeds=fed, use_cache=False, **keep).logits
    return ReplacementRun(
        input_ids=ids,
        embeddings=embeddings,
        mlp_in=mlp_in,
        mlp_out=mlp_out,
        logits=logits,
        activations=acts,
        errors=errors,
        record=state if record else None,
    )


# ---- the frozen model as a function of its sources (for checks by perturbation) ------------
@dataclass
class FrozenState:
    """A clean pass's frozen constants: attention patterns and norm scales (``record``), the
    feature activations, error vectors and the BOS MLP outputs less their skip term, and the
    embeddings fed."""

    input_ids: Tensor
    record: Freeze
    embeddings: Tensor  # (T, d)
    activations: list[Tensor]  # per layer (T, d_tc)
    errors: list[Tensor]  # per layer (T, d), row 0 zero
    bos_out: list[Tensor]  # per layer (d,): the BOS MLP output less its skip term (the constant part)
    logits: Tensor  # (T, V)


@torch.no_grad()
def frozen_state(lm, tc, input_ids: Tensor) -> FrozenState:
    """One clean pass recording everything the local replacement model holds fixed."""
    ids = torch.as_tensor(input_ids, dtype=torch.long, device=lm.device).reshape(-1)
    run = replacement_run(lm, tc, ids, batch_size=1, record=True)
    bos = []
    for i, out in enumerate(run.mlp_out):
        skip = tc.skip(i, run.mlp_in[i][0, 0].detach().to(tc.dtype))
        bos.append(out[0, 0].detach() - (0 if skip is None else skip.to(out.dtype)))
    return FrozenState(ids, run.record, run.embeddings[0].detach(), run.activations, run.errors, bos, run.logits[0].detach())


@torch.no_grad()
def frozen_forward(
    lm,
    tc,
    state: FrozenState,
    *,
    embeddings: Tensor | None = None,
    activations: list[Tensor] | None = None,
    errors: list[Tensor] | None = None,
) -> tuple[Tensor, list[Tensor]]:
    """The local replacement model evaluated at given sources (default: the clean ones) with the
    clean run's patterns and scales: (logits (T, V), MLP inputs per layer (T, d)). It is linear
    in the sources, so a source's edge to a target is the target's change when that source is
    doubled."""
    emb = state.embeddings if embeddings is None else embeddings
    acts = state.activations if activations is None else activations
    errs = state.errors if errors is None else errors
    model, adapter = lm.model, lm.adapter
    _, pos_part = _input_embeddings(lm, state.input_ids)
    fed = (emb if pos_part is None else emb - pos_part).unsqueeze(0)
    mlp_in: list[Tensor] = [None] * lm.n_layers  # type: ignore[list-item]

    def pre(i: int, x: Tensor) -> None:
        mlp_in[i] = x[0]

    def post(i: int, output: Tensor) -> Tensor:
        new = tc.decode(list(acts), i).to(output.dtype) + errs[i].to(output.dtype)
        skip = tc.skip(i, mlp_in[i].to(tc.dtype))
        if skip is not None:
            new = new + skip.to(output.dtype)
        new = new.clone()
        new[0] = state.bos_out[i] + (0 if skip is None else skip[0].to(output.dtype))
        return new.unsqueeze(0)

    with mlp_hooks(model, adapter, pre, post, **hook_points(tc)), replaying(state.record):
        logits = model(inputs_embeds=fed, use_cache=False).logits[0]
    return logits, mlp_in
