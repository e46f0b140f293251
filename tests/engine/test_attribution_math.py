"""The edge bookkeeping of engine.attribution.attribute on a small hand-built frozen network.

The network has the structure of a local replacement model (embeddings; per layer a linear
position-mixing "attention" with fixed weights, an MLP input, transcoder features read from it,
and an MLP output = skip + decoded features + error; linear unembedding) and is *re-run* with a
source perturbed while activations, errors and the BOS output stay frozen. So every edge is
checked against a true finite difference, independently of autograd, of the batching and of the
vectorised source reader. The same is checked on real model architectures in
test_attribution.py.
"""

from __future__ import annotations

import types

import pytest
import torch

from circuit_atlas.engine.attribution import pruning
from circuit_atlas.engine.attribution.attribute import LogitTargets, graph_from_run

L, D, V, T, F = 3, 16, 23, 6, 24
IDS = [1, 2, 3, 4, 5, 6]


class ToyTranscoders:
    def __init__(self, kind: str) -> None:
        g = torch.Generator().manual_seed(0)
        self.kind = kind
        self.W_enc = [torch.randn(F, D, generator=g) / D**0.5 for _ in range(L)]
        self.b_enc = [torch.randn(F, generator=g) * 0.3 - 0.5 for _ in range(L)]
        self.W_dec = [
            torch.randn(F, D, generator=g) / F**0.5 if kind == "plt" else torch.randn(F, L - l, D, generator=g) / F**0.5
            for l in range(L)
        ]

    def encode(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.W_enc[layer].T + self.b_enc[layer])

    def encoder_vectors(self, layer: int, feats: torch.Tensor) -> torch.Tensor:
        return self.W_enc[layer][feats]

    def decoder_vectors(self, source: int, target: int, feats: torch.Tensor) -> torch.Tensor:
        return self.W_dec[source][feats] if self.kind == "plt" else self.W_dec[source][feats, target - source]

    def decode(self, acts: list[torch.Tensor], target: int) -> torch.Tensor:
        if self.kind == "plt":
            return acts[target] @ self.W_dec[target]
        return sum(acts[l] @ self.W_dec[l][:, target - l] for l in range(target + 1))


class ToyModel:
    def __init__(self, kind: str) -> None:
        g = torch.Generator().manual_seed(1)
        self.tc = ToyTranscoders(kind)
        self.W_mlp = [torch.randn(D, D, generator=g) / D**0.5 for _ in range(L)]
        self.W_attn = [torch.randn(D, D, generator=g) / D**0.5 for _ in range(L)]
        self.W_U = torch.randn(V, D, generator=g)
        self.E = torch.randn(V, D, generator=g)
        mix = torch.tril(torch.rand(T, T, generator=g))
        self.mix = mix / mix.sum(1, keepdim=True)  # frozen "attention pattern"
        self.frozen = None

    def run(self, batch: int, perturb: tuple | None = None) -> types.SimpleNamespace:
        """Forward pass; with self.frozen set, activations/errors/BOS outputs are those of the
        unperturbed run, and ``perturb`` adds a source: ("emb", delta), ("err", layer, delta)
        or ("feat", layer, pos, feature, factor)."""
        emb = self.E[torch.tensor(IDS)].unsqueeze(0).repeat(batch, 1, 1).clone().requires_grad_(True)
        resid = emb + (perturb[1] if perturb and perturb[0] == "emb" else 0)
        mlp_in, mlp_out, acts, errs, bos = [], [], [], [], []
        for l in range(L):
            resid = resid + torch.einsum("ts,bsd->btd", self.mix, resid) @ self.W_attn[l]
            x = resid @ self.W_mlp[l]
            mlp_in.append(x)
            a = self.tc.encode(l, x[0].detach())
            a[0] = 0
            acts.append(a)
            used = acts if self.frozen is None else [t.clone() for t in self.frozen["acts"][: l + 1]]
            if perturb and perturb[0] == "feat" and perturb[1] <= l:
                used = [t.clone() for t in used]
                used[perturb[1]][perturb[2], perturb[3]] *= perturb[4]
            rec = self.tc.decode(used, l)
            true = torch.tanh(x[0].detach())  # the "real MLP"
            err = (true - rec) if self.frozen is None else self.frozen["errs"][l]
            err = err.clone()
            err[0] = 0
            errs.append(err)
            bos.append(true[0])
            rec = rec.clone()
            rec[0] = true[0] if self.frozen is None else self.frozen["bos"][l]
            out = 0.1 * x @ self.W_mlp[l].T + rec + err  # skip + reconstruction + error
            if perturb and perturb[0] == "err" and perturb[1] == l:
                out = out + perturb[2]
            mlp_out.append(out)
            resid = resid + out
        self.last = {"acts": acts, "errs": errs, "bos": bos}
        return types.SimpleNamespace(
            embeddings=emb, mlp_in=mlp_in, mlp_out=mlp_out, logits=resid @ self.W_U.T, activations=acts, errors=errs
        )


def logit_targets(run, k: int = 3) -> LogitTargets:
    last = run.logits[0, -1].detach()
    probs = torch.softmax(last, -1)
    ids = probs.topk(k).indices
    grads = torch.full((k, V), -1.0 / V)
    grads[torch.arange(k), ids] += 1.0
    return LogitTargets(ids, probs[ids], grads)


def target_values(model: ToyModel, run, raw) -> torch.Tensor:
    n_feat, n_nodes, k = raw.feat_layer.shape[0], raw.kinds.shape[0], raw.logits.token_ids.shape[0]
    out = []
    for node in raw.row_nodes.tolist():
        if node < n_feat:
            l, p, f = int(raw.feat_layer[node]), int(raw.feat_pos[node]), int(raw.feat_index[node])
            out.append(run.mlp_in[l][0, p] @ model.tc.W_enc[l][f])
        else:
            logits = run.logits[0, -1]
            out.append(logits[raw.logits.token_ids[node - (n_nodes - k)]] - logits.mean())
    return torch.stack(out).detach()


@pytest.mark.parametrize("kind,batch", [("plt", 1), ("clt", 5), ("plt", 64)])
def test_every_edge_equals_the_frozen_finite_difference(kind: str, batch: int) -> None:
    model = ToyModel(kind)
    run = model.run(batch)
    raw = graph_from_run(run, model.tc, logit_targets(run), IDS, batch_size=batch)
    n_feat = raw.feat_layer.shape[0]
    assert 10 < n_feat < L * (T - 1) * F  # some features fire, not all
    base = model.run(1)
    model.frozen = model.last
    before = target_values(model, model.run(1), raw)
    checked = 0
    for p in range(T):  # embeddings: add the embedding again (scale 1 -> 2)
        delta = torch.zeros(1, T, D)
        delta[0, p] = base.embeddings[0, p].detach()
        change = target_values(model, model.run(1, ("emb", delta)), raw) - before
        assert torch.allclose(raw.rows[:, n_feat + L * (T - 1) + p], change, rtol=1e-4, atol=1e-4)
        checked += 1
    for l in range(L):  # errors: add the error vector again
        for p in range(1, T):
            delta = torch.zeros(1, T, D)
            delta[0, p] = base.errors[l][p]
            change = target_values(model, model.run(1, ("err", l, delta)), raw) - before
            assert torch.allclose(raw.rows[:, n_feat + l * (T - 1) + p - 1], change, rtol=1e-4, atol=1e-4)
            checked += 1
    for i in range(n_feat):  # features: double the activation
        l, p, f = int(raw.feat_layer[i]), int(raw.feat_pos[i]), int(raw.feat_index[i])
        change = target_values(model, model.run(1, ("feat", l, p, f, 2.0)), raw) - before
        assert torch.allclose(raw.rows[:, i], change, rtol=1e-4, atol=1e-4)
        checked += 1
    assert checked == raw.rows.shape[1] - raw.logits.token_ids.shape[0]


def test_greedy_subset_rows_equal_full_rows_and_pick_influential_features() -> None:
    model = ToyModel("clt")
    run = model.run(8)
    targets = logit_targets(run)
    full = graph_from_run(run, model.tc, targets, IDS)
    n_feat = full.feat_layer.shape[0]
    k = n_feat // 3
    part = graph_from_run(model.run(4), model.tc, targets, IDS, max_feature_nodes=k)
    assert part.feat_layer.shape[0] == k
    key = lambda g: list(zip(g.feat_layer.tolist(), g.feat_pos.tolist(), g.feat_index.tolist()))  # noqa: E731
    index = {f: i for i, f in enumerate(key(full))}
    chosen = torch.tensor([index[f] for f in key(part)])
    cols = torch.cat([chosen, torch.arange(n_feat, full.rows.shape[1])])
    full_rows = {int(n): full.rows[i] for i, n in enumerate(full.row_nodes)}
    for i, node in enumerate(part.row_nodes.tolist()):
        expected = full_rows[int(chosen[node])] if node < k else full_rows[node - k + n_feat]
        assert torch.allclose(part.rows[i], expected[cols], rtol=1e-5, atol=1e-6)
    infl = pruning.node_influence(full.rows, full.row_nodes, full.logit_weights)[:n_feat]
    top = set(torch.argsort(infl, descending=True)[:k].tolist())
    assert len(top & set(chosen.tolist())) >= 0.8 * k


def test_node_table_names_every_node_once_in_matrix_order() -> None:
    from circuit_atlas.engine.attribution.attribute import node_table

    model = ToyModel("plt")
    run = model.run(4)
    raw = graph_from_run(run, model.tc, logit_targets(run), IDS)
    infl = pruning.node_influence(raw.rows, raw.row_nodes, raw.logit_weights)
    nodes = node_table(raw, infl)
    n_feat = raw.feat_layer.shape[0]
    assert len(nodes) == raw.kinds.shape[0] == raw.rows.shape[1]
    assert nodes["node_id"].is_unique
    kinds = {pruning.FEATURE: "feature", pruning.ERROR: "error", pruning.EMBEDDING: "embedding", pruning.LOGIT: "logit"}
    assert nodes["type"].tolist() == [kinds[int(k)] for k in raw.kinds]
    i = 5
    l, p, f = int(raw.feat_layer[i]), int(raw.feat_pos[i]), int(raw.feat_index[i])
    assert nodes.loc[i, "node_id"] == f"{l}_{f}_{p}"
    assert nodes.loc[i, "activation"] == pytest.approx(float(run.activations[l][p, f]))
    assert nodes.loc[n_feat, "node_id"] == "0_-1_1"  # first error: layer 0, position 1
    assert nodes.loc[n_feat + L * (T - 1), "node_id"] == f"E_{IDS[0]}_0"
    logit = nodes.iloc[-3]
    assert logit["node_id"] == f"{L + 1}_{int(raw.logits.token_ids[0])}_{T - 1}" and logit["layer"] == L
    assert logit["prob"] == pytest.approx(float(raw.logits.probs[0]))
    assert nodes["influence"].to_numpy() == pytest.approx(infl.numpy())
