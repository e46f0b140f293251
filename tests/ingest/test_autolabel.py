"""Automatic feature labels: the rule on hand-made evidence, labels computed for every feature of a
tiny real model, a user's (and an import's) label never replaced, and the upgrade of a store from
before label_source, on the embedded store and over Bolt (a real ArcadeDB server)."""

from __future__ import annotations

import json
import math
import random

import pandas as pd
import pytest
import torch

from circuit_atlas.ingest.autolabel import ARROW, MORE, WEAK, LabelRule, auto_label, token_form, z_min
from circuit_atlas.ingest.features import compute_feature_contexts
from circuit_atlas.store import open_store
from circuit_atlas.store.base import SCHEMA_VERSION
from circuit_atlas.store.synthetic import synthetic_graph

models = pytest.importorskip("circuit_atlas.engine.models.loading", reason="engine.models.loading not in the tree yet")
from circuit_atlas.engine.transcoders.transcoder_set import random_transcoders  # noqa: E402

TEXT = "\n".join(f"the {w} number {i} sat on the mat and looked at the {w}" for i, w in
                 enumerate(["cat", "dog", "bird", "fish", "fox"] * 8))
VOCAB = 50_000


def _ctx(token: str, act: float, prev: str = "") -> dict:
    return {"token": token, "activation": act, "prev": prev}


def _effects(*promoted: tuple[str, float], std: float = 1.0) -> dict:
    return {"promoted": [list(p) for p in promoted], "suppressed": [], "std": std, "vocab": VOCAB}


STRONG = z_min(VOCAB) + 2  # a logit that stands out of the vocabulary
FLAT = z_min(VOCAB) - 1  # one that does not


# -- the rule ---------------------------------------------------------------------------------
def test_inputs_then_outputs_most_frequent_first():
    ctx = [_ctx(" Texas", 5.0)] * 4 + [_ctx(" Dallas", 6.0)] * 3 + [_ctx("Texas", 4.0), _ctx(" Houston", 1.0)]
    lab = auto_label(ctx, _effects((" Austin", STRONG), (" Houston", STRONG - 0.5), (" the", FLAT)))
    # " Texas" and "Texas" are one form (5 of 9), then Dallas (3), then Houston (1); the flat " the" is left out
    assert lab.text == "Texas, Dallas, Houston" + ARROW + "Austin, Houston"
    assert not lab.weak and lab.coverage == pytest.approx(1.0)


def test_label_does_not_depend_on_the_order_of_the_evidence():
    ctx = [_ctx(t, a) for t, a in [(" a", 1.0), (" b", 1.0), (" c", 2.0), (" b", 0.5), (" a", 0.7), (" d", 3.0)]]
    want = auto_label(ctx, _effects((" x", STRONG))).text
    rng = random.Random(0)
    for _ in range(20):
        rng.shuffle(ctx)
        assert auto_label(ctx, _effects((" x", STRONG))).text == want
    # ties on count broken by the strongest activation, then alphabetically: a and b (2 each;
    # a's best 1.0 = b's best 1.0, so a first), then d (3.0) before c (2.0)
    assert want == "a, b, d" + ARROW + "x"


def test_whitespace_tokens_are_visible():
    ctx = [_ctx(" ", 2.0)] * 3 + [_ctx("\n", 1.0)] * 2 + [_ctx("\t", 0.5)]
    lab = auto_label(ctx, _effects((",", STRONG)))
    assert lab.text == '␣, ↵, ⇥' + ARROW + '","'  # a comma is quoted: it would read as a separator
    assert token_form("  ") == "␣␣" and token_form(" word") == "word" and token_form("a\nb") == "a↵b"
    quoted = auto_label([_ctx('"', 2.0)] * 4 + [_ctx(',"', 1.0)] * 2, {})
    assert quoted.text == """'"', ',"'"""  # a double quote inside single ones, never a backslash


def test_few_contexts_are_marked_weak():
    lab = auto_label([_ctx(" Paris", 3.0), _ctx(" Paris", 2.0)], _effects((" France", STRONG)))
    assert lab.weak and lab.text == WEAK + "Paris" + ARROW + "France" and "only 2 contexts" in lab.why


def test_diffuse_inputs_with_flat_logits_are_weak():
    ctx = [_ctx(f" w{i}", 10.0 - i) for i in range(10)]
    lab = auto_label(ctx, _effects((" x", FLAT)))
    assert lab.weak and lab.text == WEAK + "w0, w1, w2, " + MORE and ARROW not in lab.text
    # the same inputs with a strong output: not weak, but the inputs still say there is more
    lab = auto_label(ctx, _effects((" x", STRONG)))
    assert not lab.weak and lab.text == "w0, w1, w2, " + MORE + ARROW + "x"


def test_consistent_previous_token_reads_after():
    ctx = [_ctx(f" w{i}", 10.0 - i, prev=" of") for i in range(6)] + [_ctx(" w9", 1.0, prev=" in")]
    lab = auto_label(ctx, _effects((" x", FLAT)))
    assert lab.text == "after of, in" and not lab.weak


def test_flat_logits_give_no_arrow_and_no_contexts_no_label():
    ctx = [_ctx(" cat", 1.0)] * 6
    assert auto_label(ctx, _effects((" dog", FLAT))).text == "cat"
    assert auto_label(ctx, {"promoted": [[" dog", 99.0]]}).text == "cat"  # no spread stored: not judged
    assert auto_label([], _effects((" dog", STRONG))).text is None


def test_z_min_grows_with_the_vocabulary():
    assert z_min(100) < z_min(VOCAB) and z_min(VOCAB) == pytest.approx(math.sqrt(2 * math.log(VOCAB)) + LabelRule().z_margin)
    # a looser margin lets a weaker output through
    ctx = [_ctx(" cat", 1.0)] * 6
    weaker = _effects((" dog", z_min(VOCAB) - 0.5))
    assert auto_label(ctx, weaker).text == "cat"
    assert auto_label(ctx, weaker, LabelRule(z_margin=LabelRule().z_margin - 1)).text == "cat" + ARROW + "dog"


# -- on a tiny real model ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    lm = models.tiny_model("llama", n_layers=2, d_model=32, vocab_size=97, seed=0)
    tc = random_transcoders(lm.n_layers, lm.d_model, 48, kind="clt", activation="relu", seed=1, scan="tiny-clt")
    return lm, tc


def _labels(store) -> dict[str, dict]:
    df = store.read("MATCH (f:Feature) RETURN f.key AS key, f.label AS label, f.label_source AS src, "
                    "f.auto_label AS auto, f.contexts AS ctx, f.logit_effects AS eff")
    return {r["key"]: r for r in df.to_dict("records")}


def _run(lm, tc, store, corpus, top_k=5, tokens=1500):
    return compute_feature_contexts(corpus, lm, tc, store, top_k=top_k, max_tokens=tokens, seq_len=32, batch_size=8,
                                    context_window=4, progress=False)


def test_every_feature_with_contexts_is_labelled_from_its_evidence(tmp_path, tiny):
    lm, tc = tiny
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT)
    with open_store(f"embedded:{tmp_path / 'store'}") as s:
        rep = _run(lm, tc, s, corpus)
        feats = _labels(s)
    assert rep.stored == len(feats) > 0 and rep.labelled == len(feats) and rep.kept == 0 and rep.unlabelled == 0
    weak = 0
    for key, f in feats.items():
        ctx, eff = json.loads(f["ctx"]), json.loads(f["eff"])
        assert all("prev" in c for c in ctx)
        want = auto_label(ctx, eff)  # the stored evidence gives the stored label
        assert f["auto"] == f["label"] == want.text and f["src"] == "auto"
        weak += int(want.weak)
    assert rep.weak == weak
    # the spread stored with the logit effects is the de-meaned logit vector's
    layer, idx = 1, int(next(k for k in feats if k.startswith("tiny-clt:1:")).rsplit(":", 1)[1])
    with torch.no_grad():
        w_u = lm.model.get_output_embeddings().weight.float()
        dec = tc.decoder_vectors(layer, 1, torch.tensor([idx])).float()[0]
        logits = w_u @ dec
    eff = json.loads(feats[f"tiny-clt:1:{idx}"]["eff"])
    assert eff["vocab"] == 97 and eff["std"] == pytest.approx(float((logits - logits.mean()).std()), rel=1e-4)


def test_weak_evidence_is_marked(tmp_path, tiny):
    lm, tc = tiny
    (tmp_path / "c.txt").write_text(TEXT)
    with open_store(f"embedded:{tmp_path / 'store'}") as s:
        rep = _run(lm, tc, s, tmp_path / "c.txt", top_k=2)  # 2 contexts each: fewer than the rule trusts
        feats = _labels(s)
    assert feats and all(f["label"].startswith(WEAK) for f in feats.values()) and rep.weak == rep.labelled == len(feats)


def test_a_users_label_survives_a_recompute(tmp_path, tiny):
    lm, tc = tiny
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT)
    url = f"embedded:{tmp_path / 'store'}"
    with open_store(url) as s:
        _run(lm, tc, s, corpus)
        first = _labels(s)
        mine, theirs, other = sorted(first)[:3]
        s.set_feature_labels({mine: "my cat feature"})
        s.set_feature_labels({theirs: "a clerp"}, source="import")
        rep = _run(lm, tc, s, corpus, top_k=3)  # other evidence: other automatic labels
        second = _labels(s)
    assert rep.kept == 2 and rep.labelled == len(second) - 2
    assert second[mine]["label"] == "my cat feature" and second[mine]["src"] == "user"
    assert second[theirs]["label"] == "a clerp" and second[theirs]["src"] == "import"
    # the automatic label is still computed beside them, from the new evidence
    assert second[mine]["auto"] == auto_label(json.loads(second[mine]["ctx"]), json.loads(second[mine]["eff"])).text
    assert second[other]["src"] == "auto" and second[other]["label"] == second[other]["auto"]
    with open_store(url) as s:
        s.set_feature_labels({mine: ""})  # cleared: the automatic label shows again
        third = _labels(s)
    assert third[mine]["label"] == second[mine]["auto"] and third[mine]["src"] == "auto"


def test_labels_are_deterministic(tmp_path, tiny):
    lm, tc = tiny
    (tmp_path / "c.txt").write_text(TEXT)
    got = []
    for name in ("a", "b"):
        with open_store(f"embedded:{tmp_path / name}") as s:
            _run(lm, tc, s, tmp_path / "c.txt")
            got.append({k: f["label"] for k, f in _labels(s).items()})
    assert got[0] == got[1] and len(set(got[0].values())) > 1


# -- the store: imports, user labels and the upgrade, on both backends ------------------------
BACKENDS = [pytest.param("embedded", id="embedded"), pytest.param("bolt", id="bolt", marks=pytest.mark.bolt)]


@pytest.fixture(scope="module")
def arcadedb():
    pytest.importorskip("arcadedb_embedded", reason="arcadedb-embedded is not installed")
    from circuit_atlas.store.arcadedb_server import arcadedb_server

    with arcadedb_server() as server:
        yield server


@pytest.fixture(params=BACKENDS)
def any_store(request, tmp_path, monkeypatch):
    if request.param == "embedded":
        yield f"embedded:{tmp_path / 'store'}"
        return
    server = request.getfixturevalue("arcadedb")
    monkeypatch.setenv("NEO4J_USER", server.user)
    monkeypatch.setenv("NEO4J_PASSWORD", server.password)
    monkeypatch.setenv("NEO4J_DATABASE", server.default_database)
    with open_store(server.url) as s:
        s._wipe()
    yield server.url


def _info(keys: list[str], auto: dict[str, str | None]) -> pd.DataFrame:
    return pd.DataFrame([{"key": k, "scan": k.split(":")[0], "layer": int(k.split(":")[1]), "index": int(k.split(":")[2]),
                          "frequency": 0.1, "max_activation": 1.0, "contexts": "[]", "logit_effects": "{}",
                          "auto_label": auto.get(k)} for k in keys])


def test_imports_replace_automatic_labels_never_users(any_store, tmp_path):
    g0 = synthetic_graph(0, n_nodes=60, n_edges=100)
    with open_store(any_store) as s:
        s.write_graphs([g0.save(tmp_path / "g0")])
        stored = _labels(s)
        clerped = {k for k, f in stored.items() if isinstance(f["label"], str)}
        assert clerped and all(stored[k]["src"] == "import" for k in clerped)
        plain = sorted(set(stored) - clerped)
        user_key, auto_key = plain[:2]
        kept = s.write_feature_info(_info(sorted(stored), {k: f"auto {k}" for k in stored}))
        assert set(kept) == clerped  # the imported labels stay, with their automatic label beside them
        s.set_feature_labels({user_key: "mine"})
        # a second graph labels both features: the import replaces the automatic label only
        g1 = synthetic_graph(0, n_nodes=60, n_edges=100)  # the same graph stored as another prompt
        g1.meta["graph_id"] = g0.meta["graph_id"] + "-again"
        for k, text in ((user_key, "clerp for user's"), (auto_key, "clerp for auto")):
            layer, idx = k.split(":")[1:]
            hit = (g1.nodes["type"] == "feature") & (g1.nodes["layer"] == int(layer)) & (g1.nodes["feature"] == int(idx))
            g1.nodes.loc[hit, "label"] = text
        s.write_graphs([g1.save(tmp_path / "g1")])
        after = _labels(s)
    assert (after[user_key]["label"], after[user_key]["src"]) == ("mine", "user")
    assert (after[auto_key]["label"], after[auto_key]["src"]) == ("clerp for auto", "import")
    assert after[auto_key]["auto"] == f"auto {auto_key}"
    assert all(after[k]["src"] == "auto" and after[k]["label"] == f"auto {k}" for k in plain[2:])


def test_upgrade_of_a_store_without_label_sources_keeps_labels(any_store, tmp_path):
    g0 = synthetic_graph(0, n_nodes=60, n_edges=100)
    with open_store(any_store) as s:
        s.write_graphs([g0.save(tmp_path / "g0")])
        labelled = {k: f["label"] for k, f in _labels(s).items() if isinstance(f["label"], str)}
        plain = sorted(k for k in _labels(s) if k not in labelled)
        s.set_feature_labels({plain[0]: "saved by hand"})
        labelled[plain[0]] = "saved by hand"
        # back to schema 3: no label_source, no auto_label
        if s.backend == "embedded":
            s._exec("ALTER TABLE Feature DROP label_source")
            s._exec("ALTER TABLE Feature DROP auto_label")
        else:
            s._run("MATCH (f:Feature) REMOVE f.label_source, f.auto_label")
        s._set_schema_version(3)
    with open_store(any_store) as s:
        assert s.schema_version() == SCHEMA_VERSION
        after = _labels(s)
        assert {k: f["label"] for k, f in after.items() if isinstance(f["label"], str)} == labelled
        assert {after[k]["src"] for k in labelled} == {"user"}  # origin unknown: protected as the user's
        kept = s.write_feature_info(_info(sorted(after), {k: "auto" for k in after}))
        final = _labels(s)
    assert set(kept) == set(labelled)
    assert all(final[k]["label"] == labelled[k] for k in labelled)
    assert all(final[k]["label"] == "auto" and final[k]["src"] == "auto" for k in final if k not in labelled)


def test_bad_label_source_is_refused(tmp_path):
    from circuit_atlas.store.base import StoreError

    with open_store(f"embedded:{tmp_path / 'store'}") as s:
        with pytest.raises(StoreError, match="label source 'auto'"):
            s.set_feature_labels({"x:0:1": "y"}, source="auto")


def test_csv_export_carries_label_sources(tmp_path):
    from circuit_atlas.store.export_csv import export_csv

    g0 = synthetic_graph(0, n_nodes=60, n_edges=100)
    with open_store(f"embedded:{tmp_path / 'store'}") as s:
        s.write_graphs([g0.save(tmp_path / "g0")])
        keys = sorted(_labels(s))
        s.write_feature_info(_info(keys, {k: f"auto {k}" for k in keys}))
        s.set_feature_labels({keys[0]: "mine"})
        export_csv(s, tmp_path / "csv")
        want = {k: (f["label"], f["src"], f["auto"]) for k, f in _labels(s).items()}
    df = pd.read_csv(tmp_path / "csv" / "Feature.csv")
    got = {k: (lab, src, auto) for k, lab, src, auto in
           zip(df["key:ID(Feature)"], df["label:string"], df["label_source:string"], df["auto_label:string"])}
    assert got == want and got[keys[0]] == ("mine", "user", f"auto {keys[0]}")
    assert {src for _, src, _ in got.values()} == {"user", "import", "auto"}
