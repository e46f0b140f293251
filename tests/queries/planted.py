"""A synthetic corpus of attribution graphs with PLANTED recurring circuits, and its answers.

Every graph is a real graph directory (engine.formats.graph_files.GraphFile). The corpus holds:

- group ``capitals`` (7 prompts: cap0..cap5 and cap0dup, tag ``geo``): the chain
  embedding(" capital") -> A -> B -> C -> logit(" Paris") with the feed-forward edge A -> C, and a
  pair S1, S2 that co-occur with A and B and, like them, feed C (a supernode candidate).
  Edge B -> C is negative in cap5 (sign consistency 6/7).
- group ``opposites`` (6 prompts, tag ``lex``): embedding(" hot") -> D -> E -> logit(" cold").
- group ``misc`` (2 prompts): noise only; ``untrusted0`` has error nodes carrying most influence
  and low replacement/completeness scores.
- a hub H active in every prompt with high influence, feeding each prompt's top logit.
- ``cap0dup`` is a near-duplicate of cap0 (same features and edges, activations x 0.98).
- noise: every prompt has its own noise features (indices never reused) with random edges;
  every noise edge touches a noise feature, so nothing built from noise recurs in more than
  the prompts of one duplicate pair (2); tests use min_prompts >= 3 to exclude it.

``build_corpus(dir)`` writes the graphs and returns a ``Planted`` with the expected answers,
written down from the construction (not computed by running Cypher).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from circuit_atlas.engine.formats.graph_files import (
    GraphFile,
    embedding_node_id,
    error_node_id,
    feature_node_id,
    graph_id,
    logit_node_id,
)

SCAN = "planted-scan"
MODEL = "planted-model"
N_LAYERS = 4
VOCAB = {
    "<bos>": 0, "The": 1, " capital": 2, " of": 3, " is": 4, " Paris": 5, " the": 6,
    " hot": 7, " opposite": 8, " cold": 9, " now": 10, " France": 11, " Spain": 12, " Italy": 13,
    " Peru": 14, " Chile": 15, " Japan": 16, " big": 17, " fast": 18, " dark": 19, " up": 20,
    " old": 21, " wet": 22, " hello": 23, " world": 24,
}
COUNTRIES = [" France", " Spain", " Italy", " Peru", " Chile", " Japan"]
ADJECTIVES = [" big", " fast", " dark", " up", " old", " wet"]

# Planted features: name -> (layer, index, pos-in-prompt, activation, influence)
A, B, C, S1, S2, D, E, H = "A", "B", "C", "S1", "S2", "D", "E", "H"
FEATURES = {
    A: (0, 10, 2, 2.0, 0.30),
    B: (1, 11, 4, 1.5, 0.30),
    C: (2, 12, 5, 3.0, 0.40),
    S1: (1, 40, 5, 1.0, 0.20),
    S2: (1, 41, 5, 1.2, 0.20),
    D: (0, 20, 1, 1.8, 0.30),
    E: (1, 21, 3, 2.2, 0.35),
    H: (2, 99, -1, 0.5, 0.90),  # pos -1: the last position
}
# Planted feature->feature edges by group, weight per edge
CAPITAL_EDGES = {(A, B): 0.6, (B, C): 0.8, (A, C): 0.4, (S1, C): 0.5, (S2, C): 0.45}
OPPOSITE_EDGES = {(D, E): 0.7}
LOGIT_EDGES = {"capitals": {C: 0.9}, "opposites": {E: 0.85}}  # feature -> group logit
EMBED_EDGES = {"capitals": (" capital", A, 0.3), "opposites": (" hot", D, 0.35)}
HUB_LOGIT_WEIGHT = 0.2


def key(name: str) -> str:
    layer, index = FEATURES[name][:2]
    return f"{SCAN}:{layer}:{index}"


@dataclass
class PlantedPrompt:
    name: str
    group: str
    tags: list[str]
    tokens: list[str]
    graph_id: str = ""
    features: dict[str, float] = field(default_factory=dict)  # feature key -> activation
    feature_edges: dict[tuple[str, str], float] = field(default_factory=dict)  # planted, by key
    logit_edges: dict[tuple[str, str], float] = field(default_factory=dict)  # (feature key, token)
    top_token: str = ""
    correct: bool | None = None  # None: capitals and misc right, opp0..opp2 right, opp3..opp5 wrong


@dataclass
class Planted:
    """The corpus on disk plus what every query must find in it."""

    root: Path
    graph_dirs: list[Path]
    prompts: dict[str, PlantedPrompt]  # by name (meta prompt_props.external_id)

    def gid(self, name: str) -> str:
        return self.prompts[name].graph_id

    def ids(self, names) -> set[str]:
        return {self.gid(n) for n in names}

    @property
    def capitals(self) -> list[str]:
        return [n for n, p in self.prompts.items() if p.group == "capitals"]

    @property
    def opposites(self) -> list[str]:
        return [n for n, p in self.prompts.items() if p.group == "opposites"]

    def recurring_edges(self, min_prompts: int) -> dict[tuple[str, str], list[tuple[str, float]]]:
        """(source key, target key) -> [(prompt id, weight)] for planted edges in >= min_prompts."""
        out: dict[tuple[str, str], list[tuple[str, float]]] = {}
        for p in self.prompts.values():
            for pair, w in p.feature_edges.items():
                out.setdefault(pair, []).append((p.graph_id, w))
        return {k: v for k, v in out.items() if len(v) >= min_prompts}

    def paths(self, min_prompts: int) -> dict[tuple[str, ...], set[str]]:
        """(f1, f2[, f3], token) -> prompt ids, for 2- and 3-hop planted paths to a logit."""
        out: dict[tuple[str, ...], set[str]] = {}
        for p in self.prompts.values():
            for (f, tok) in p.logit_edges:
                for (a, b) in p.feature_edges:
                    if b == f:
                        out.setdefault((a, f, tok), set()).add(p.graph_id)
                        for (z, y) in p.feature_edges:
                            if y == a:
                                out.setdefault((z, a, f, tok), set()).add(p.graph_id)
        return {k: v for k, v in out.items() if len(v) >= min_prompts}

    def motifs(self, min_prompts: int) -> dict[tuple[str, str, str, str], set[str]]:
        """(kind, x, y, z) -> prompt ids for feed_forward (x->y->z, x->z), fan_in (x->z, y->z,
        x<y) and fan_out (x->y, x->z, y<z) among planted feature edges."""
        out: dict[tuple[str, str, str, str], set[str]] = {}
        for p in self.prompts.values():
            e = set(p.feature_edges)
            for (x, y) in e:
                for (y2, z) in e:
                    if y2 == y and (x, z) in e:
                        out.setdefault(("feed_forward", x, y, z), set()).add(p.graph_id)
            for (x, z), (y, z2) in itertools.product(e, e):
                if z == z2 and x < y:
                    out.setdefault(("fan_in", x, y, z), set()).add(p.graph_id)
            for (x, y), (x2, z) in itertools.product(e, e):
                if x == x2 and y < z:
                    out.setdefault(("fan_out", x, y, z), set()).add(p.graph_id)
        return {k: v for k, v in out.items() if len(v) >= min_prompts}


def _prompt_specs() -> list[PlantedPrompt]:
    specs = []
    for i, country in enumerate(COUNTRIES):
        specs.append(PlantedPrompt(f"cap{i}", "capitals", ["geo"], ["<bos>", "The", " capital", " of", country, " is"]))
    for i, adj in enumerate(ADJECTIVES):
        specs.append(PlantedPrompt(f"opp{i}", "opposites", ["lex"], ["<bos>", " hot", " opposite", adj, " is"]))
    specs.append(PlantedPrompt("untrusted0", "misc", ["noise"], ["<bos>", " hello", " world", " the"]))
    specs.append(PlantedPrompt("misc1", "misc", ["noise"], ["<bos>", " world", " hello", " now"]))
    return specs


def build_corpus(root: str | Path, seed: int = 0, noise_features: int = 12, noise_edges: int = 30) -> Planted:
    """Write the planted corpus under ``root`` and return it with its expected answers."""
    rng = random.Random(seed)
    root = Path(root)
    next_noise = iter(range(1000, 10**9))
    prompts: dict[str, PlantedPrompt] = {}
    dirs: list[Path] = []
    graphs: dict[str, GraphFile] = {}
    for spec in _prompt_specs():
        graph = _build_graph(spec, rng, next_noise, noise_features, noise_edges)
        graphs[spec.name] = graph
        prompts[spec.name] = spec
    # cap0dup: a near-duplicate of cap0 (same nodes and edges, activations x 0.98, one more token)
    src = graphs["cap0"]
    dup = PlantedPrompt("cap0dup", "capitals", ["geo"], prompts["cap0"].tokens + [" now"])
    nodes = src.nodes.copy()
    nodes["activation"] = (nodes["activation"] * 0.98).astype("float32")
    meta = dict(src.meta)
    meta["tokens"] = dup.tokens
    meta["token_ids"] = [VOCAB[t] for t in dup.tokens]
    meta["prompt"] = "".join(dup.tokens[1:])
    meta["graph_id"] = graph_id(MODEL, SCAN, meta["token_ids"], meta["settings"])
    meta["prompt_props"] = dict(meta["prompt_props"], external_id="cap0dup")
    dup.graph_id = meta["graph_id"]
    dup.features = {k: v * 0.98 for k, v in prompts["cap0"].features.items()}
    dup.feature_edges = dict(prompts["cap0"].feature_edges)
    dup.logit_edges = dict(prompts["cap0"].logit_edges)
    dup.top_token = prompts["cap0"].top_token
    graphs["cap0dup"] = GraphFile(meta=meta, nodes=nodes, edges=src.edges.copy())
    prompts["cap0dup"] = dup
    for name, graph in graphs.items():
        dirs.append(graph.save(root / name))
    return Planted(root=root, graph_dirs=dirs, prompts=prompts)


def _build_graph(spec: PlantedPrompt, rng: random.Random, next_noise, n_noise: int, n_edges: int) -> GraphFile:
    last = len(spec.tokens) - 1
    token_ids = [VOCAB[t] for t in spec.tokens]
    nodes: list[dict] = []
    edges: list[tuple[str, str, float]] = []

    def add(node_id, type_, layer, pos, feature=-1, token_id=-1, activation=None, influence=None, prob=None):
        nodes.append(dict(node_id=node_id, type=type_, layer=layer, pos=pos, feature=feature, token_id=token_id,
                          activation=activation, influence=influence, prob=prob, label=None))
        return node_id

    emb = {pos: add(embedding_node_id(t, pos), "embedding", -1, pos, token_id=t) for pos, t in enumerate(token_ids)}
    untrusted = spec.name == "untrusted0"
    errors = [add(error_node_id(layer, last), "error", layer, last, influence=5.0 if untrusted else 0.01) for layer in range(N_LAYERS)]
    top = {"capitals": " Paris", "opposites": " cold"}.get(spec.group, " the")
    spec.top_token = top
    logits = {top: add(logit_node_id(N_LAYERS, VOCAB[top], last), "logit", N_LAYERS, last, token_id=VOCAB[top], prob=0.7)}
    if top != " the":
        logits[" the"] = add(logit_node_id(N_LAYERS, VOCAB[" the"], last), "logit", N_LAYERS, last, token_id=VOCAB[" the"], prob=0.1)

    planted_names = {"capitals": [A, B, C, S1, S2], "opposites": [D, E]}.get(spec.group, []) + [H]
    fid: dict[str, str] = {}
    for name in planted_names:
        layer, index, pos, act, infl = FEATURES[name]
        pos = last if pos < 0 else pos
        fid[name] = add(feature_node_id(layer, index, pos), "feature", layer, pos, feature=index, activation=act, influence=infl)
        spec.features[key(name)] = act
    group_edges = {"capitals": dict(CAPITAL_EDGES), "opposites": dict(OPPOSITE_EDGES)}.get(spec.group, {})
    if spec.name == "cap5":
        group_edges[(B, C)] = -group_edges[(B, C)]
    for (s, t), w in group_edges.items():
        edges.append((fid[s], fid[t], w))
        spec.feature_edges[(key(s), key(t))] = w
    for f, w in LOGIT_EDGES.get(spec.group, {}).items():
        edges.append((fid[f], logits[top], w))
        spec.logit_edges[(key(f), top)] = w
    edges.append((fid[H], logits[top], HUB_LOGIT_WEIGHT))
    spec.logit_edges[(key(H), top)] = HUB_LOGIT_WEIGHT
    if spec.group in EMBED_EDGES:
        tok, f, w = EMBED_EDGES[spec.group]
        edges.append((emb[spec.tokens.index(tok)], fid[f], w))

    # noise: features whose index is never reused, edges that always touch one of them
    noise = []
    used = {n["node_id"] for n in nodes}
    while len(noise) < n_noise:
        layer, pos = rng.randrange(N_LAYERS), rng.randrange(1, last + 1)
        index = next(next_noise)
        nid = feature_node_id(layer, index, pos)
        if nid in used:
            continue
        used.add(nid)
        act = round(rng.uniform(0.1, 1.0), 3)
        noise.append(add(nid, "feature", layer, pos, feature=index, activation=act, influence=round(rng.uniform(0.0, 0.1), 3)))
        spec.features[f"{SCAN}:{layer}:{index}"] = act
    sources = list(emb.values()) + errors + list(fid.values()) + noise  # embeddings/errors only send
    targets = list(fid.values()) + noise + list(logits.values())  # logits only receive
    seen = {(s, t) for s, t, _ in edges}
    added = tries = 0
    while added < n_edges and tries < 50 * n_edges:
        tries += 1
        n = rng.choice(noise)
        if rng.random() < 0.5:
            s, t = n, rng.choice(targets)
        else:
            s, t = rng.choice(sources), n
        if s == t or (s, t) in seen:
            continue
        seen.add((s, t))
        edges.append((s, t, round(rng.uniform(-0.5, 0.5), 3) or 0.01))
        added += 1

    settings = {"node_threshold": 0.8, "edge_threshold": 0.98, "max_feature_nodes": None, "pruned": True, "logit_targets": None}
    gid = graph_id(MODEL, SCAN, token_ids, settings)
    spec.graph_id = gid
    n_correct = spec.correct if spec.correct is not None else (spec.group != "opposites" or int(spec.name[3:]) < 3)
    meta = {
        "graph_id": gid,
        "prompt": "".join(spec.tokens[1:]),
        "tokens": spec.tokens,
        "token_ids": token_ids,
        "model": MODEL,
        "scan": SCAN,
        "n_layers": N_LAYERS,
        "settings": settings,
        "scores": {"replacement_score": 0.2 if untrusted else 0.9, "completeness_score": 0.3 if untrusted else 0.95},
        "prompt_props": {
            "corpus": "planted",
            "group": spec.group,
            "tags": spec.tags,
            "expected": top,
            "correct": bool(n_correct),
            "external_id": spec.name,
        },
        "logit_tokens": {str(VOCAB[t]): t for t in logits},  # store reads logit texts from here
        "supernodes": [],
        "created_at": "2026-01-01T00:00:00Z",
    }
    node_df = pd.DataFrame(nodes)
    for col in ("activation", "influence", "prob"):
        node_df[col] = node_df[col].astype("float32")
    edge_df = pd.DataFrame(edges, columns=["source", "target", "weight"]).astype({"weight": "float32"})
    return GraphFile(meta=meta, nodes=node_df, edges=edge_df)


def build_scaled_corpus(root: str | Path, n_prompts: int, edges_per_prompt: int, seed: int = 0) -> list[Path]:
    """Many prompts for benchmarks: the planted groups repeated with noise to reach the size."""
    rng = random.Random(seed)
    root = Path(root)
    next_noise = iter(range(1000, 10**12))
    groups = ["capitals", "opposites", "misc"]
    dirs = []
    n_noise = max(12, edges_per_prompt // 8)
    for i in range(n_prompts):
        g = groups[i % 3]
        toks = {"capitals": ["<bos>", "The", " capital", " of", COUNTRIES[i % 6], " is"],
                "opposites": ["<bos>", " hot", " opposite", ADJECTIVES[i % 6], " is"],
                "misc": ["<bos>", " hello", " world", " the"]}[g]
        spec = PlantedPrompt(f"p{i}", g, [g[:3]], toks, correct=(i // 3) % 2 == 0)
        graph = _build_graph(spec, rng, next_noise, n_noise, edges_per_prompt)
        graph.meta["settings"] = dict(graph.meta["settings"], max_feature_nodes=i)
        graph.meta["graph_id"] = graph_id(MODEL, SCAN, graph.meta["token_ids"], graph.meta["settings"])
        graph.meta["prompt_props"]["external_id"] = spec.name
        dirs.append(graph.save(root / spec.name))
    return dirs


# --- The hub corpus: what a real corpus does to recurrence counts ------------------------------
# Two tasks whose prompts share a template ("The capital of X is" / "The opposite of X is"), each
# prompt with its own answer, plus a few prompts without "The". Planted on top of the circuits:
# - BOS hubs HUB1 -> HUB2, active at position 0 of every prompt, feeding " the" (among the logits
#   of every prompt) and every prompt's answer, and the first feature of each task's circuit;
# - PRE, active on "The" (position 1) in every prompt that starts with it, feeding both tasks;
# - THE, the feature 4:135: active on "The" with the same activation 1.6658 wherever it is
#   active, but kept by pruning only in the capital prompts and in one opposite prompt (opp0);
# - the capital circuit CAP_A -> CAP_B -> CAP_C -> answer (and CAP_A -> CAP_C, CAP_S -> CAP_C),
#   the opposite circuit OPP_D -> OPP_E -> answer (and OPP_F -> OPP_E).
HUB_VOCAB = {
    "<bos>": 0, "The": 1, " capital": 2, " of": 3, " is": 4, " the": 5, " opposite": 6, "When": 7, " hello": 8,
    " world": 9, **{f" country{i}": 100 + i for i in range(10)}, **{f" city{i}": 200 + i for i in range(10)},
    **{f" adj{i}": 300 + i for i in range(10)}, **{f" anti{i}": 400 + i for i in range(10)},
}
HUB1, HUB2, PRE, THE = "HUB1", "HUB2", "PRE", "THE"
CAP_A, CAP_B, CAP_C, CAP_S = "CAP_A", "CAP_B", "CAP_C", "CAP_S"
OPP_D, OPP_E, OPP_F = "OPP_D", "OPP_E", "OPP_F"
THE_ACTIVATION = 1.6658
HUB_FEATURES = {  # name -> (layer, index, pos, activation)
    HUB1: (0, 500, 0, 5.0), HUB2: (1, 501, 0, 4.0), PRE: (1, 502, 1, 0.9), THE: (2, 503, 1, THE_ACTIVATION),
    CAP_A: (0, 510, 2, 2.0), CAP_B: (1, 511, 4, 1.5), CAP_C: (2, 512, 5, 3.0), CAP_S: (1, 513, 4, 1.1),
    OPP_D: (0, 520, 2, 1.8), OPP_E: (2, 521, 5, 2.2), OPP_F: (1, 522, 4, 1.3),
}
HUB_EDGES = {
    "capitals": {(HUB1, HUB2): 0.5, (HUB2, CAP_B): 0.3, (PRE, CAP_B): 0.2, (THE, CAP_B): 0.3, (CAP_A, CAP_B): 0.6,
                 (CAP_B, CAP_C): 0.8, (CAP_A, CAP_C): 0.4, (CAP_S, CAP_C): 0.5},
    "opposites": {(HUB1, HUB2): 0.5, (HUB2, OPP_E): 0.3, (PRE, OPP_E): 0.2, (OPP_D, OPP_E): 0.7, (OPP_F, OPP_E): 0.5},
    "misc": {(HUB1, HUB2): 0.5},
}
HUB_ANSWER_FEEDERS = {"capitals": CAP_C, "opposites": OPP_E}
N_HUB_TASK = 10  # prompts per task
N_HUB_MISC = 4


def hub_key(name: str) -> str:
    layer, index = HUB_FEATURES[name][:2]
    return f"{SCAN}:{layer}:{index}"


@dataclass
class HubCorpus:
    root: Path
    graph_dirs: list[Path]
    prompts: dict[str, PlantedPrompt]
    answers: dict[str, str]  # prompt name -> its expected answer ('' for misc)

    def ids(self, group: str) -> set[str]:
        return {p.graph_id for p in self.prompts.values() if p.group == group}


def build_hub_corpus(root: str | Path, seed: int = 0, noise_features: int = 6, noise_edges: int = 10) -> HubCorpus:
    """Write the hub corpus under ``root`` (see the comment above HUB_VOCAB)."""
    rng = random.Random(seed)
    root = Path(root)
    next_noise = iter(range(5000, 10**9))
    specs: list[tuple[PlantedPrompt, str]] = []
    for i in range(N_HUB_TASK):
        specs.append((PlantedPrompt(f"cap{i}", "capitals", ["geo"], ["<bos>", "The", " capital", " of", f" country{i}", " is"]), f" city{i}"))
    for i in range(N_HUB_TASK):
        specs.append((PlantedPrompt(f"opp{i}", "opposites", ["lex"], ["<bos>", "The", " opposite", " of", f" adj{i}", " is"]), f" anti{i}"))
    for i in range(N_HUB_MISC):
        specs.append((PlantedPrompt(f"misc{i}", "misc", ["noise"], ["<bos>", "When", " hello", " world"] + [" world"] * i), ""))
    prompts, dirs, answers = {}, [], {}
    for spec, answer in specs:
        graph = _hub_graph(spec, answer, rng, next_noise, noise_features, noise_edges)
        prompts[spec.name] = spec
        answers[spec.name] = answer
        dirs.append(graph.save(root / spec.name))
    return HubCorpus(root=root, graph_dirs=dirs, prompts=prompts, answers=answers)


def _hub_graph(spec: PlantedPrompt, answer: str, rng: random.Random, next_noise, n_noise: int, n_edges: int) -> GraphFile:
    last = len(spec.tokens) - 1
    token_ids = [HUB_VOCAB[t] for t in spec.tokens]
    nodes: list[dict] = []
    edges: list[tuple[str, str, float]] = []

    def add(node_id, type_, layer, pos, feature=-1, token_id=-1, activation=None, influence=None, prob=None):
        nodes.append(dict(node_id=node_id, type=type_, layer=layer, pos=pos, feature=feature, token_id=token_id,
                          activation=activation, influence=influence, prob=prob, label=None))
        return node_id

    for pos, t in enumerate(token_ids):
        add(embedding_node_id(t, pos), "embedding", -1, pos, token_id=t)
    for layer in range(N_LAYERS):
        add(error_node_id(layer, last), "error", layer, last, influence=0.01)
    top = answer or " the"
    spec.top_token = top
    logits = {top: add(logit_node_id(N_LAYERS, HUB_VOCAB[top], last), "logit", N_LAYERS, last, token_id=HUB_VOCAB[top], prob=0.6)}
    if top != " the":
        logits[" the"] = add(logit_node_id(N_LAYERS, HUB_VOCAB[" the"], last), "logit", N_LAYERS, last, token_id=HUB_VOCAB[" the"], prob=0.1)
    i = int("".join(ch for ch in spec.name if ch.isdigit()))
    names = {"capitals": [HUB1, HUB2, PRE, THE, CAP_A, CAP_B, CAP_C, CAP_S],
             "opposites": [HUB1, HUB2, PRE, OPP_D, OPP_E, OPP_F] + ([THE] if i == 0 else []),
             "misc": [HUB1, HUB2]}[spec.group]
    fid: dict[str, str] = {}
    for name in names:
        layer, index, pos, act = HUB_FEATURES[name]
        if pos >= 4:  # after the prompt's own word the activations differ a little (before it, the
            act = act + 0.05 * i  # prefix is shared, and so is the activation: a causal model)
        fid[name] = add(feature_node_id(layer, index, pos), "feature", layer, pos, feature=index, activation=act, influence=0.2)
        spec.features[hub_key(name)] = act
    group_edges = dict(HUB_EDGES[spec.group])
    if THE in fid and spec.group == "opposites":
        group_edges[(THE, OPP_E)] = 0.3
    for (s, t), w in group_edges.items():
        edges.append((fid[s], fid[t], w))
        spec.feature_edges[(hub_key(s), hub_key(t))] = w
    feeder = HUB_ANSWER_FEEDERS.get(spec.group)
    if feeder:
        edges.append((fid[feeder], logits[top], 0.9))
        spec.logit_edges[(hub_key(feeder), top)] = 0.9
    for hub, w in ((HUB2, 0.3), (HUB1, 0.2)):
        edges.append((fid[hub], logits[" the"], w))
        spec.logit_edges[(hub_key(hub), " the")] = w
    if top != " the":
        edges.append((fid[HUB2], logits[top], 0.1))
        spec.logit_edges[(hub_key(HUB2), top)] = 0.1
    noise = []
    used = {n["node_id"] for n in nodes}
    while len(noise) < n_noise:
        layer, pos, index = rng.randrange(N_LAYERS), rng.randrange(1, last + 1), next(next_noise)
        nid = feature_node_id(layer, index, pos)
        if nid not in used:
            used.add(nid)
            noise.append(add(nid, "feature", layer, pos, feature=index, activation=round(rng.uniform(0.1, 1.0), 3), influence=0.01))
    targets = list(fid.values()) + list(logits.values())
    for _ in range(n_edges):
        n = rng.choice(noise)
        edges.append((n, rng.choice(targets), round(rng.uniform(0.05, 0.3), 3)) if rng.random() < 0.5 else (rng.choice(list(fid.values())), n, 0.05))
    edge_df = pd.DataFrame(edges, columns=["source", "target", "weight"]).drop_duplicates(["source", "target"]).astype({"weight": "float32"})
    settings = {"node_threshold": 0.8, "edge_threshold": 0.98, "max_feature_nodes": None, "pruned": True, "logit_targets": None}
    gid = graph_id(MODEL, SCAN, token_ids, settings)
    spec.graph_id = gid
    meta = {
        "graph_id": gid, "prompt": "".join(spec.tokens[1:]), "tokens": spec.tokens, "token_ids": token_ids, "model": MODEL,
        "scan": SCAN, "n_layers": N_LAYERS, "settings": settings,
        "scores": {"replacement_score": 0.8, "completeness_score": 0.9},
        "prompt_props": {"corpus": "hubs", "group": spec.group, "tags": spec.tags, "expected": answer or None,
                         "correct": True, "external_id": spec.name, "top_token": top},
        "logit_tokens": {str(HUB_VOCAB[t]): t for t in logits},
        "supernodes": [],
        "created_at": "2026-01-01T00:00:00Z",
    }
    node_df = pd.DataFrame(nodes)
    for col in ("activation", "influence", "prob"):
        node_df[col] = node_df[col].astype("float32")
    return GraphFile(meta=meta, nodes=node_df, edges=edge_df)
