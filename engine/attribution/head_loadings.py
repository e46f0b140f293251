"""Head loadings: one edge's effect split across the attention heads of one layer.

An edge is the direct effect of a source node on a target in the local replacement model, whose
attention patterns, norm denominators and transcoder activations are frozen. That model is
linear in the source, and at attention layer ``m`` the source's perturbation reaches the target
either through one of the layer's heads or not through that layer's attention at all: the
residual stream past it, and (for a cross-layer transcoder source) its writes into layers
``>= m``. So the edge is exactly

    sum over heads h of  effect(head h's write at layer m)  +  bypass

where head h's write is its slice of the attention output projection's input (``o_proj`` /
``c_proj``), carried on through the rest of the frozen model. The source's perturbation of that
input comes from forward-mode autodiff on ``replacement.frozen_forward`` (the frozen model the
perturbation checks use), the target's gradient there from one backward pass of the replacement
run (the frozen model the edges come from); a head's part is their dot product over its slice.
The bypass is a separate forward pass with the layer's attention tangent zeroed, so the parts
are computed independently and sum to the edge up to float rounding.

Nothing in the maths needs refusing: skip transcoders (``W_skip``) and cross-layer sources keep
the frozen model linear, so their paths are split like any other. Only layers where no path of
the edge can pass are refused (at or before the layer where the source enters, after the layer
where a feature target reads), and custom targets of a stored prompt (the store does not keep
their vectors; their graph directory does).
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import Tensor, nn
from torch.autograd import forward_ad as fwad

from circuit_atlas.errors import CircuitAtlasError


class HeadLoadingError(CircuitAtlasError, ValueError):
    """A node that is not in the graph, an edge that cannot be split at the asked layer, and so on."""


@dataclass(frozen=True)
class Node:
    """A graph node parsed from its id (Neuronpedia convention)."""

    node_id: str
    kind: str  # feature | error | embedding | logit
    layer: int  # features, errors: their layer; embeddings -1; logits n_layers
    pos: int
    index: int = -1  # feature index
    token_id: int = -1  # embeddings and logits


def parse_node(node_id: str, n_layers: int) -> Node:
    """``{l}_{f}_{p}`` feature, ``{l}_-1_{p}`` error, ``E_{tok}_{p}`` embedding,
    ``{n_layers+1}_{tok}_{p}`` logit."""
    m = re.fullmatch(r"E_(\d+)_(\d+)", node_id)
    if m:
        return Node(node_id, "embedding", -1, int(m.group(2)), token_id=int(m.group(1)))
    m = re.fullmatch(r"(\d+)_(-?\d+)_(\d+)", node_id)
    if not m:
        raise HeadLoadingError(f"{node_id!r} is not a node id (feature L_F_P, error L_-1_P, embedding E_T_P, logit {n_layers + 1}_T_P)")
    layer, mid, pos = int(m.group(1)), int(m.group(2)), int(m.group(3))
    if layer == n_layers + 1:
        return Node(node_id, "logit", n_layers, pos, token_id=mid)
    if not 0 <= layer < n_layers:
        raise HeadLoadingError(f"node {node_id!r}: layer {layer} is outside the model's {n_layers} layers")
    if mid == -1:
        return Node(node_id, "error", layer, pos)
    if mid < 0:
        raise HeadLoadingError(f"node {node_id!r}: negative feature index")
    return Node(node_id, "feature", layer, pos, index=mid)


@dataclass
class HeadLoadings:
    """The split of one edge at one attention layer: ``heads[h]`` is what passes through head
    ``h``, ``bypass`` what does not pass through the layer's attention; ``edge`` is the edge
    recomputed in full, which the parts sum to."""

    source: str
    target: str
    layer: int
    heads: Tensor  # (H,) float64
    bypass: float
    edge: float
    stored_weight: float | None = None  # the graph's or store's weight of the edge, when known

    @property
    def total(self) -> float:
        return float(self.heads.sum()) + self.bypass

    def rows(self) -> list[dict[str, Any]]:
        """One row per part (heads, then the bypass) with its share of the edge."""
        parts = [(f"head {h}", float(v)) for h, v in enumerate(self.heads.tolist())] + [("bypass", self.bypass)]
        return [
            {"layer": self.layer, "part": name, "value": v, "share": (v / self.edge if self.edge else float("nan"))}
            for name, v in parts
        ]


@dataclass
class Prepared:
    """What the frozen model holds fixed for one prompt, reused for every edge and layer: the
    clean pass's constants (for forward passes) and one replacement run kept with its autograd
    graph (for each target's gradient at every layer's heads, one backward pass per target)."""

    lm: Any
    tc: Any
    token_ids: list[int]
    state: Any  # replacement.FrozenState
    run: Any  # replacement.ReplacementRun, batch 1
    heads_in: list[Tensor]  # per layer: the attention output projection's input (1, T, H*dh), in the graph
    pre_logits: Tensor  # (1, T, d) the unembedding's input, in the graph
    custom_vectors: dict[int, Tensor] = field(default_factory=dict)  # logit token id -> direction
    _grads: dict[str, list[Tensor | None]] = field(default_factory=dict)


def prepare(lm: Any, tc: Any, token_ids: list[int], custom_vectors: dict[int, Tensor] | None = None) -> Prepared:
    """One clean pass recording the frozen patterns, scales, activations and errors, and one
    replacement run whose heads' inputs are kept in its autograd graph."""
    from circuit_atlas.engine.attribution.replacement import frozen_state, replacement_run

    tc.check_fits(lm.n_layers, lm.d_model, source=str(getattr(tc, "scan", "")))
    ids = torch.tensor(token_ids, dtype=torch.long, device=lm.device)
    state = frozen_state(lm, tc, ids)
    layers = lm.adapter.layers(lm.model)
    heads_in: list[Tensor] = [None] * len(layers)  # type: ignore[list-item]
    pre: list[Tensor] = []
    handles = [lm.model.get_output_embeddings().register_forward_pre_hook(lambda m, a: pre.append(a[0]))]
    for i, layer in enumerate(layers):
        handles.append(attention_output(layer).register_forward_pre_hook(
            lambda m, a, i=i: heads_in.__setitem__(i, a[0])))
    try:
        run = replacement_run(lm, tc, ids, batch_size=1)
    finally:
        for h in handles:
            h.remove()
    return Prepared(lm, tc, list(token_ids), state, run, heads_in, pre[-1], dict(custom_vectors or {}))


def attention_output(layer: nn.Module) -> nn.Module:
    """The module that projects a layer's concatenated heads back to the residual stream."""
    for path in (("self_attn", "o_proj"), ("attn", "c_proj")):
        mod: Any = layer
        for name in path:
            mod = getattr(mod, name, None)
        if isinstance(mod, nn.Module):
            return mod
    raise HeadLoadingError(f"cannot find the attention output projection of {type(layer).__name__}")


def n_heads(lm: Any) -> int:
    cfg = lm.model.config
    return int(getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head"))


def valid_layers(source: Node, target: Node, n_layers: int) -> range:
    """Attention layers a path of the edge can pass: after the source enters the residual
    stream (embeddings before layer 0; features and errors after their layer's attention) and
    up to where the target reads (a feature after its own layer's attention; logits at the end)."""
    first = 0 if source.kind == "embedding" else source.layer + 1
    last = target.layer if target.kind == "feature" else n_layers - 1
    return range(first, last + 1)


@contextmanager
def _attention_tangent(lm: Any, layer: int, action: Any) -> Iterator[None]:
    """Inside: ``action(tangent or None, primal) -> new tangent or None`` rewrites the tangent of
    layer ``layer``'s attention output projection input (B, T, H*dh) in forward passes."""
    module = attention_output(lm.adapter.layers(lm.model)[layer])

    def hook(mod: nn.Module, args: tuple) -> tuple | None:
        x = args[0]
        primal, tangent = fwad.unpack_dual(x)
        new = action(tangent, primal)
        if new is None:
            return None
        return (fwad.make_dual(primal, new), *args[1:])

    handle = module.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _source_tangents(prep: Prepared, source: Node) -> dict[str, Any]:
    """frozen_forward keyword arguments that carry the source's vector as a tangent."""
    st = prep.state
    T = st.embeddings.shape[0]
    if not 0 <= source.pos < T:
        raise HeadLoadingError(f"source {source.node_id}: position {source.pos} is outside the prompt's {T} tokens")
    if source.kind == "embedding":
        if int(st.input_ids[source.pos]) != source.token_id:
            raise HeadLoadingError(f"source {source.node_id}: the prompt has token {int(st.input_ids[source.pos])} at position {source.pos}")
        t = torch.zeros_like(st.embeddings)
        t[source.pos] = st.embeddings[source.pos]
        return {"embeddings": fwad.make_dual(st.embeddings, t)}
    if source.kind == "error":
        if source.pos == 0:
            raise HeadLoadingError(f"source {source.node_id}: there is no error node at BOS")
        errs = list(st.errors)
        t = torch.zeros_like(errs[source.layer])
        t[source.pos] = errs[source.layer][source.pos]
        errs[source.layer] = fwad.make_dual(errs[source.layer], t)
        return {"errors": errs}
    if source.kind == "feature":
        acts = list(st.activations)
        a = acts[source.layer]
        if not 0 <= source.index < a.shape[1]:
            raise HeadLoadingError(f"source {source.node_id}: feature {source.index} is outside the transcoders' {a.shape[1]}")
        if float(a[source.pos, source.index]) == 0.0:
            raise HeadLoadingError(f"source {source.node_id}: that feature is not active at position {source.pos} of this prompt")
        t = torch.zeros_like(a)
        t[source.pos, source.index] = a[source.pos, source.index]
        acts[source.layer] = fwad.make_dual(a, t)
        return {"activations": acts}
    raise HeadLoadingError(f"{source.node_id} is a logit node: a target, not a source")


def _target_reader(prep: Prepared, target: Node) -> tuple[Any, Tensor]:
    """(read(logits, mlp_in, pre_logits) -> the target's tangent in a forward pass, the target
    as a scalar of the prepared replacement run)."""
    lm, tc, st = prep.lm, prep.tc, prep.state
    T = st.embeddings.shape[0]
    if target.kind == "feature":
        if not 0 <= target.pos < T:
            raise HeadLoadingError(f"target {target.node_id}: position {target.pos} is outside the prompt")
        if not 0 <= target.index < tc.d_transcoder:
            raise HeadLoadingError(f"target {target.node_id}: feature {target.index} is outside the transcoders' {tc.d_transcoder}")
        enc = tc.encoder_vectors(target.layer, torch.tensor([target.index], device=st.embeddings.device))[0].detach().double()

        def read(logits: Tensor, mlp_in: list[Tensor], pre: list[Tensor]) -> float:
            tan = fwad.unpack_dual(mlp_in[target.layer]).tangent
            return 0.0 if tan is None else float(tan[target.pos].detach().double() @ enc)

        return read, prep.run.mlp_in[target.layer][0, target.pos].double() @ enc
    if target.kind != "logit":
        raise HeadLoadingError(f"target {target.node_id} is a {target.kind} node; targets are features and logits")
    if target.pos != T - 1:
        raise HeadLoadingError(f"target {target.node_id}: logits are read at the last position ({T - 1})")
    if target.token_id >= lm.vocab_size:  # a custom target: its direction after the final norm
        vec = prep.custom_vectors.get(target.token_id)
        if vec is None:
            raise HeadLoadingError(
                f"target {target.node_id} is a custom target whose vector is not at hand "
                "(graph directories keep it in meta.json's custom_targets; the store does not): use the graph directory"
            )
        vec = vec.double().to(st.embeddings.device)

        def read(logits: Tensor, mlp_in: list[Tensor], pre: list[Tensor]) -> float:
            tan = fwad.unpack_dual(pre[-1]).tangent
            return 0.0 if tan is None else float(tan[0, -1].detach().double() @ vec)

        return read, prep.pre_logits[0, -1].double() @ vec
    clean = st.logits[-1].double()
    grad = torch.full_like(clean, -1.0 / clean.shape[0])
    grad[target.token_id] += 1.0
    cap = lm.adapter.logit_softcap(lm.model)
    if cap:  # the pre-softcap logit, as the engine's logit targets
        grad = grad / (1.0 - (clean / cap) ** 2).clamp(min=1e-12)

    def read(logits: Tensor, mlp_in: list[Tensor], pre: list[Tensor]) -> float:
        tan = fwad.unpack_dual(logits).tangent
        return 0.0 if tan is None else float(tan[-1].detach().double() @ grad)

    return read, prep.run.logits[0, -1].double() @ grad


def _pass(prep: Prepared, read: Any, sources: dict[str, Any], hooks: list[Any]) -> float:
    from circuit_atlas.engine.attribution.replacement import frozen_forward

    pre: list[Tensor] = []
    head = prep.lm.model.get_output_embeddings()
    handle = head.register_forward_pre_hook(lambda m, args: pre.append(args[0]))
    try:
        with _stack(hooks):
            logits, mlp_in = frozen_forward(prep.lm, prep.tc, prep.state, **sources)
        return read(logits, mlp_in, pre)
    finally:
        handle.remove()


@contextmanager
def _stack(managers: list[Any]) -> Iterator[None]:
    if not managers:
        yield
        return
    with managers[0], _stack(managers[1:]):
        yield


def head_loadings(prep: Prepared, source: str, target: str, layers: list[int] | None = None) -> list[HeadLoadings]:
    """The split of edge ``source -> target`` (node ids) at each of ``layers`` (default: every
    layer a path of the edge can pass). A forward pass carries the source's vector as a tangent
    (the edge, and what reaches each layer's heads); the target's gradient at every layer's heads
    comes from one backward pass of the prepared run (cached per target), so head h's part is
    their dot product over head h's slice; per layer, one more forward pass with that layer's
    attention tangent zeroed gives the bypass."""
    n_layers = prep.lm.n_layers
    src, tgt = parse_node(source, n_layers), parse_node(target, n_layers)
    if src.kind == "logit":
        raise HeadLoadingError(f"{source} is a logit node: a target, not a source")
    allowed = valid_layers(src, tgt, n_layers)
    if not len(allowed):
        raise HeadLoadingError(f"no attention layer lies between {source} and {target}: the edge passes no head")
    wanted = list(allowed) if layers is None else [int(x) for x in layers]
    bad = [x for x in wanted if x not in allowed]
    if bad:
        raise HeadLoadingError(
            f"layer {bad[0]} is not between {source} and {target}: layers {allowed.start}..{allowed.stop - 1} "
            "(after the source enters the residual stream, up to where the target reads)"
        )
    read, scalar = _target_reader(prep, tgt)
    if target not in prep._grads:
        with torch.enable_grad():
            got = torch.autograd.grad(scalar, prep.heads_in, retain_graph=True, allow_unused=True)
        prep._grads[target] = [None if g is None else g[0].detach().double() for g in got]
    grads = prep._grads[target]
    n_h = n_heads(prep.lm)
    with fwad.dual_level():
        sources = _source_tangents(prep, src)
        seen: dict[int, Tensor | None] = {}

        def record(layer: int):
            def act(tangent: Tensor | None, primal: Tensor) -> None:
                seen[layer] = None if tangent is None else tangent[0].detach().double()

            return _attention_tangent(prep.lm, layer, act)

        edge = _pass(prep, read, sources, [record(x) for x in wanted])
        out = []
        for layer in wanted:
            delta, g = seen.get(layer), grads[layer]
            if delta is None or g is None:
                heads = torch.zeros(n_h, dtype=torch.float64)
            else:
                heads = (delta * g).sum(0).reshape(n_h, -1).sum(1)

            def zero(tangent: Tensor | None, primal: Tensor) -> Tensor:
                return torch.zeros_like(primal)

            bypass = _pass(prep, read, sources, [_attention_tangent(prep.lm, layer, zero)])
            out.append(HeadLoadings(source, target, layer, heads, bypass, edge))
    return out


def custom_vectors_of(meta: dict[str, Any]) -> dict[int, Tensor]:
    """Custom target directions from a graph's meta.json (``custom_targets`` records)."""
    out = {}
    for rec in meta.get("custom_targets") or []:
        if rec.get("vector") is not None:
            out[int(rec["token_id"])] = torch.tensor(rec["vector"], dtype=torch.float32)
    return out


def graph_head_loadings(lm: Any, tc: Any, graph: Any, source: str, target: str, layers: list[int] | None = None) -> list[HeadLoadings]:
    """Head loadings of an edge of a graph directory's graph (``graph_files.GraphFile``), with
    the graph's own weight of that edge attached (None where the graph pruned it)."""
    check_origin(lm, tc, graph.meta)
    prep = prepare(lm, tc, [int(t) for t in graph.meta["token_ids"]], custom_vectors_of(graph.meta))
    e = graph.edges
    hit = e[(e["source"] == source) & (e["target"] == target)]
    ids = set(graph.nodes["node_id"])
    for name, nid in (("source", source), ("target", target)):
        if nid not in ids:
            raise HeadLoadingError(f"{name} {nid!r} is not a node of graph {graph.graph_id}")
    out = head_loadings(prep, source, target, layers)
    for r in out:
        r.stored_weight = float(hit["weight"].iloc[0]) if len(hit) else None
    return out


def check_origin(lm: Any, tc: Any, meta: dict[str, Any]) -> None:
    """Refuse a graph (its meta) made with other transcoders or a model of another depth."""
    scan = meta.get("scan")
    if scan is not None and str(scan) != str(tc.scan):
        raise HeadLoadingError(f"the graph was made with transcoders {scan!r}, not {tc.scan!r}: load the same ones")
    if int(meta.get("n_layers", lm.n_layers)) != lm.n_layers:
        raise HeadLoadingError(f"the graph has {meta['n_layers']} layers, the model {lm.n_layers}: load the same model")


def stored_head_loadings(lm: Any, tc: Any, store: Any, prompt_id: str, source: str, target: str,
                         layers: list[int] | None = None) -> list[HeadLoadings]:
    """Head loadings of an edge of a prompt in the store (read only)."""
    frame = store.read("MATCH (p:Prompt) WHERE p.id = $pid RETURN p.token_ids AS token_ids, p.scan AS scan", {"pid": prompt_id})
    if frame.empty:
        raise HeadLoadingError(f"no prompt {prompt_id!r} in the store")
    row = frame.iloc[0]
    check_origin(lm, tc, {"scan": row["scan"]})
    weights = store.read(
        "MATCH (p:Prompt)-[:HAS]->(s)-[e:EDGE]->(t) WHERE p.id = $pid AND s.node_id = $s AND t.node_id = $t "
        "RETURN e.weight AS weight",
        {"pid": prompt_id, "s": source, "t": target},
    )
    prep = prepare(lm, tc, [int(t) for t in row["token_ids"]])
    out = head_loadings(prep, source, target, layers)
    for r in out:
        r.stored_weight = float(weights["weight"].iloc[0]) if len(weights) else None
    return out
