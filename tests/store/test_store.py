"""The store's promises, on every backend: exact counts, idempotent loads, whole-or-nothing
batches, recovery after SIGKILL, read-only reads, parameters for user values, clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from circuit_atlas.engine.formats.graph_files import GraphFile
from circuit_atlas.store import ReadOnlyViolation, SCHEMA_VERSION, StoreError, open_store
from circuit_atlas.store.embedded import feature_weight, read_graph_dir
from circuit_atlas.store.synthetic import synthetic_graph


def expected_counts(paths) -> dict[str, int]:
    n = e = 0
    feats = set()
    for p in paths:
        nodes = pq.read_table(Path(p) / "nodes.parquet").to_pandas()
        meta = json.loads((Path(p) / "meta.json").read_text())
        n += len(nodes)
        e += pq.read_table(Path(p) / "edges.parquet").num_rows
        f = nodes[nodes["type"] == "feature"]
        feats |= {f"{meta['scan']}:{l}:{i}" for l, i in zip(f["layer"], f["feature"])}
    return {"Prompt": len(paths), "HAS": n, "EDGE": e, "Feature": len(feats)}


def check_exact(store, paths) -> None:
    stats = store.stats()
    exp = expected_counts(paths)
    for k, v in exp.items():
        assert stats[k] == v, (k, stats[k], v)
    per_prompt = stats["Active"] + stats["Embedding"] + stats["Error"] + stats["Logit"]
    assert per_prompt == exp["HAS"]
    ids = store.read("MATCH (a:Active) RETURN a.id AS id")["id"]
    assert ids.is_unique


def test_load_exact_and_idempotent(store_url, corpus):
    with open_store(store_url) as s:
        assert s.schema_version() == SCHEMA_VERSION
        rep = s.write_graphs(corpus)
        assert len(rep.written) == len(corpus) and rep.edges == expected_counts(corpus)["EDGE"]
        check_exact(s, corpus)
        token = s.version_token()
        rep2 = s.write_graphs(corpus)
        assert rep2.written == [] and len(rep2.skipped) == len(corpus)
        check_exact(s, corpus)
        assert s.version_token() == token  # nothing written, same version
        assert s.prompt_ids() == {json.loads((Path(p) / "meta.json").read_text())["graph_id"] for p in corpus}


def test_prompt_properties_and_denormalised_keys(store_url, corpus):
    with open_store(store_url) as s:
        s.write_graphs(corpus[:1])
        meta = json.loads((Path(corpus[0]) / "meta.json").read_text())
        p = s.read("MATCH (p:Prompt {id: $id}) RETURN p.text AS text, p.prompt_group AS g, p.correct AS c, "
                   "p.tokens AS tokens, p.n_edges AS ne", {"id": meta["graph_id"]}).iloc[0]
        assert p["text"] == meta["prompt"] and p["g"] == meta["prompt_props"]["group"]
        assert bool(p["c"]) == meta["prompt_props"]["correct"] and list(p["tokens"]) == meta["tokens"]
        df = s.read("MATCH (a:Active)-[:OF]->(f:Feature) RETURN a.feature_key AS k, f.key AS fk, a.node_id AS nid, a.id AS id")
        assert len(df) > 0 and (df["k"] == df["fk"]).all()
        assert (df["id"] == meta["graph_id"] + "/" + df["nid"]).all()


def test_whole_or_nothing(store_url, corpus, monkeypatch):
    with open_store(store_url) as s:
        cls = type(s)
        original = cls._load_nodes_edges if hasattr(cls, "_load_nodes_edges") else None

        def failing(self, *a, **k):
            original(self, *a, **k)  # everything is written, then the batch fails before completion
            raise RuntimeError("injected failure")

        monkeypatch.setattr(cls, "_load_nodes_edges", failing)
        with pytest.raises(RuntimeError, match="injected"):
            s.write_graphs(corpus[:3])
        monkeypatch.setattr(cls, "_load_nodes_edges", original)
        st = s.stats()
        assert st["Prompt"] == 0 and st["EDGE"] == 0 and st["HAS"] == 0 and s.prompt_ids() == set()
        s.write_graphs(corpus)
        check_exact(s, corpus)


def test_sigkill_mid_load_then_rerun(store_url, tmp_path):
    from circuit_atlas.store.synthetic import write_synthetic_corpus

    paths = write_synthetic_corpus(tmp_path / "big", 12, n_nodes=600, n_edges=8000)
    marker = tmp_path / "started"
    script = textwrap.dedent(f"""
        import sys
        from circuit_atlas.store import open_store
        s = open_store({store_url!r})
        cls = type(s)
        orig = cls._load_nodes_edges
        def hook(self, *a, **k):
            open({str(marker)!r}, 'a').write('x')
            return orig(self, *a, **k)
        cls._load_nodes_edges = hook
        s.write_graphs({[str(p) for p in paths]!r})
        s.close()
    """)
    s0 = open_store(store_url)  # schema exists and the loader starts writing at once
    s0.write_graphs(paths[:1])
    s0.close()
    proc = subprocess.Popen([sys.executable, "-c", script], env=os.environ.copy())
    deadline = time.time() + 120
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL or proc.returncode == 0
    with open_store(store_url) as s:
        s.write_graphs(paths)
        check_exact(s, paths)


def test_read_only(store_url, corpus):
    with open_store(store_url) as s:
        s.write_graphs(corpus[:1])
        with pytest.raises(ReadOnlyViolation):
            s.read("MATCH (p:Prompt) DETACH DELETE p")
        with pytest.raises(ReadOnlyViolation):
            s.read("CREATE (p:Prompt {id: 'x'})")
        # keywords inside strings are not writes
        assert s.read("MATCH (p:Prompt) WHERE p.text <> 'CREATE (x) DELETE' RETURN count(p) AS c")["c"].iloc[0] == 1
        assert s.stats()["Prompt"] == 1
    with open_store(store_url, read_only=True) as r:
        assert r.read("MATCH (p:Prompt) RETURN count(p) AS c")["c"].iloc[0] == 1
        with pytest.raises(ReadOnlyViolation):
            r.delete_prompt(next(iter(r.prompt_ids())))
    with open_store(store_url) as s:
        assert s.stats()["Prompt"] == 1


def test_injection_text_stored_verbatim(store_url, tmp_path):
    evil = "x'}) MATCH (n) DETACH DELETE n //\"; DROP TABLE Prompt; --"
    g = synthetic_graph(0, n_nodes=60, n_edges=100, text=evil)
    path = g.save(tmp_path / "evil")
    with open_store(store_url) as s:
        s.write_graphs([path])
        df = s.read("MATCH (p:Prompt) WHERE p.text = $t RETURN p.text AS text", {"t": evil})
        assert df["text"].tolist() == [evil]
        assert s.stats()["EDGE"] == len(g.edges)


def test_delete_prompt_and_links(store_url, corpus):
    with open_store(store_url) as s:
        s.write_graphs(corpus)
        n_links = s.rebuild_links()
        assert n_links > 0 and s.stats()["LINKS"] == n_links
        top = s.read("MATCH (a:Feature)-[l:LINKS]->(b:Feature) RETURN a.key AS a, b.key AS b, l.prompts AS n, "
                     "l.prompt_ids AS ids ORDER BY n DESC LIMIT 1").iloc[0]
        direct = s.read("MATCH (x:Active)-[:EDGE]->(y:Active) WHERE x.feature_key = $a AND y.feature_key = $b "
                        "RETURN DISTINCT x.prompt_id AS p", {"a": top["a"], "b": top["b"]})["p"]
        assert top["n"] == len(direct) > 1
        assert sorted(top["ids"]) == sorted(direct)
        # each prompt's feature mass, set at load: the sum over its features of their largest activation
        mass = s.read("MATCH (x:Active) WITH x.prompt_id AS p, x.feature_key AS k, max(x.activation) AS w RETURN p, sum(w) AS w")
        stored = s.read("MATCH (p:Prompt) RETURN p.id AS p, p.feature_weight AS w")
        assert dict(zip(stored["p"], stored["w"])) == {p: pytest.approx(w) for p, w in zip(mass["p"], mass["w"])}
        keys = s.read("MATCH (a:Feature)-[l:LINKS]->(b:Feature) RETURN a.key AS a, b.key AS b, l.source_key AS s, l.target_key AS t")
        assert (keys["a"] == keys["s"]).all() and (keys["b"] == keys["t"]).all()
        # each feature's recurrence, set on the features in >= 2 prompts only
        occ = s.read("MATCH (x:Active) RETURN x.feature_key AS k, x.prompt_id AS p").groupby("k")["p"].agg(lambda v: sorted(set(v)))
        got = s.read("MATCH (f:Feature) RETURN f.key AS k, f.prompts AS n, f.prompt_ids AS ids").set_index("k")
        recurring = occ[occ.map(len) >= 2]
        assert len(recurring) > 0
        assert set(got.index[got["n"].notna()]) == set(recurring.index)
        for k, ids in recurring.items():
            assert int(got.loc[k, "n"]) == len(ids) and sorted(got.loc[k, "ids"]) == ids
        # the recurring subgraph: their instances, with the edges among them and to logits
        rec = list(recurring.index)
        ract = s.read("MATCH (r:RActive) RETURN r.id AS id, r.feature_key AS k")
        inst = s.read("MATCH (x:Active) WHERE x.feature_key IN $rec RETURN x.id AS id, x.feature_key AS k", {"rec": rec})
        assert sorted(zip(ract["id"], ract["k"])) == sorted(zip(inst["id"], inst["k"]))
        redge = s.read("MATCH (a:RActive)-[e:REDGE]->(b) RETURN a.id AS a, b.id AS b, e.weight AS w")
        direct = pd.concat([s.read("MATCH (a:Active)-[e:EDGE]->(b:Active) WHERE a.feature_key IN $rec AND b.feature_key IN $rec "
                                   "RETURN a.id AS a, b.id AS b, e.weight AS w", {"rec": rec}),
                            s.read("MATCH (a:Active)-[e:EDGE]->(b:Logit) WHERE a.feature_key IN $rec "
                                   "RETURN a.id AS a, b.id AS b, e.weight AS w", {"rec": rec})])
        assert len(redge) > 0 and sorted(zip(redge["a"], redge["b"], redge["w"])) == sorted(zip(direct["a"], direct["b"], direct["w"]))
        pid = sorted(s.prompt_ids())[0]
        assert s.delete_prompt(pid) is True
        assert s.delete_prompt(pid) is False
        rest = [p for p in corpus if json.loads((Path(p) / "meta.json").read_text())["graph_id"] != pid]
        st = s.stats()
        exp = expected_counts(rest)
        assert st["Prompt"] == exp["Prompt"] and st["EDGE"] == exp["EDGE"] and st["HAS"] == exp["HAS"]
        assert s.read("MATCH (r:RActive {prompt_id: $p}) RETURN count(*) AS n", {"p": pid})["n"].iloc[0] == 0


def test_annotations(store_url, corpus):
    with open_store(store_url) as s:
        s.write_graphs(corpus[:2])
        keys = s.read("MATCH (f:Feature) RETURN f.key AS k ORDER BY k LIMIT 3")["k"].tolist()
        t0 = s.version_token()
        s.set_feature_labels({keys[0]: "says Paris"})
        assert s.version_token() != t0
        assert s.read("MATCH (f:Feature {key: $k}) RETURN f.label AS l", {"k": keys[0]})["l"].iloc[0] == "says Paris"
        info = pd.DataFrame([{"key": "other:1:2", "scan": "other", "layer": 1, "index": 2, "frequency": 0.5,
                              "max_activation": 3.0, "contexts": json.dumps([{"text": "a"}]),
                              "logit_effects": json.dumps({"promoted": [["a", 1.0]], "suppressed": []})}])
        s.write_feature_info(info)
        got = s.read("MATCH (f:Feature {key: 'other:1:2'}) RETURN f.frequency AS fr, f.contexts AS c").iloc[0]
        assert got["fr"] == 0.5 and json.loads(got["c"]) == [{"text": "a"}]
        sn = [{"key": "sn1", "scan": "synthetic-scan", "label": "group", "method": "auto", "score": 0.9, "members": keys[:2]}]
        s.write_supernodes(sn)
        s.write_supernodes(sn)
        assert s.stats()["Supernode"] == 1 and s.stats()["CONTAINS"] == 2
        assert s.delete_supernodes(method="user") == 0
        assert s.delete_supernodes(method="auto") == 1 and s.stats()["Supernode"] == 0


def test_wrong_schema_version(store_url):
    with open_store(store_url) as s:
        s._set_schema_version(SCHEMA_VERSION + 98)
    with pytest.raises(StoreError, match="schema version"):
        open_store(store_url)


@pytest.mark.parametrize("version", [1, 2])
def test_upgrade_from_older_schema(store_url, corpus, version):
    """An older store (1: LINKS without prompt_ids; 2: without the endpoint keys, and Feature
    without its recurrence) is refused read-only with the way out, and a writer upgrades it in
    place: the derived layer rebuilt, nothing else lost."""
    with open_store(store_url) as s:
        s.write_graphs(corpus[:3])
        before = s.stats()
        if s.backend == "embedded":
            s._exec("DROP TABLE LINKS")
            s._exec("CREATE REL TABLE LINKS(FROM Feature TO Feature, prompts INT64, mean_weight DOUBLE, mean_abs_weight DOUBLE"
                    + (", prompt_ids STRING[])" if version == 2 else ")"))
            s._exec("DROP TABLE REDGE")
            s._exec("DROP TABLE RActive")
            s._exec("ALTER TABLE Feature DROP prompts")
            s._exec("ALTER TABLE Feature DROP prompt_ids")
            s._exec("ALTER TABLE Prompt DROP feature_weight")
        else:
            s._run("MATCH (p:Prompt) REMOVE p.feature_weight")
        weights = {json.loads((Path(p) / "meta.json").read_text())["graph_id"]: feature_weight(read_graph_dir(p).nodes) for p in corpus[:3]}
        s._set_schema_version(version)
    with pytest.raises(StoreError, match=f"schema version {version}.*open it once for writing"):
        open_store(store_url, read_only=True)
    with open_store(store_url) as s:
        assert s.schema_version() == SCHEMA_VERSION
        after = s.stats()
        derived = ("LINKS", "RActive", "REDGE")
        assert after["LINKS"] > 0 and after["RActive"] > 0 and after["REDGE"] > 0
        assert {k: v for k, v in after.items() if k not in derived} == {k: v for k, v in before.items() if k not in derived}
        ids = s.read("MATCH (a:Feature)-[l:LINKS]->(b:Feature) RETURN l.prompts AS n, l.prompt_ids AS ids, "
                     "a.key = l.source_key AND b.key = l.target_key AS keyed")
        assert all(len(set(i)) == n for n, i in zip(ids["n"], ids["ids"])) and ids["keyed"].all()
        got = s.read("MATCH (p:Prompt) RETURN p.id AS id, p.feature_weight AS w")
        assert {i: pytest.approx(w) for i, w in weights.items()} == dict(zip(got["id"], got["w"]))
        rec = s.read("MATCH (f:Feature) WHERE f.prompts >= 2 RETURN f.prompts AS n, f.prompt_ids AS ids")
        assert len(rec) > 0 and all(len(set(i)) == n for n, i in zip(rec["n"], rec["ids"]))


def test_embedded_missing_store_read_only(tmp_path):
    with pytest.raises(StoreError, match="no store"):
        open_store(f"embedded:{tmp_path / 'nothing'}", read_only=True)


def test_unknown_url():
    with pytest.raises(StoreError, match="unknown store URL"):
        open_store("ftp://x")


def test_edges_join_the_right_nodes(store_url, corpus):
    with open_store(store_url) as s:
        s.write_graphs(corpus[:2])
        for p in corpus[:2]:
            g = GraphFile.load(p)
            got = s.read("MATCH (a)-[e:EDGE]->(b) WHERE a.prompt_id = $id "
                         "RETURN a.node_id AS source, b.node_id AS target, e.weight AS w", {"id": g.graph_id})
            want = {(a, b, round(float(w), 4)) for a, b, w in zip(g.edges["source"], g.edges["target"], g.edges["weight"])}
            assert {(a, b, round(float(w), 4)) for a, b, w in zip(got["source"], got["target"], got["w"])} == want


@pytest.mark.bolt
def test_bolt_wrong_password_and_unreachable(arcadedb, monkeypatch):
    monkeypatch.setenv("NEO4J_USER", arcadedb.user)
    monkeypatch.setenv("NEO4J_PASSWORD", "wrong-" + arcadedb.password)
    monkeypatch.setenv("NEO4J_DATABASE", arcadedb.default_database)
    with pytest.raises(StoreError, match="authentication failed"):
        open_store(arcadedb.url)
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(StoreError, match="cannot reach"):
        open_store(f"bolt://127.0.0.1:{port}")


@pytest.mark.bolt
def test_bolt_rebuild_in_small_transactions_matches_embedded(arcadedb, corpus, tmp_path, monkeypatch):
    """The Bolt rebuild runs in bounded transactions (chunks of deletes, one prompt, a chunk of
    source features); with tiny chunks, twice over (the second deletes the first), it gives the
    embedded store's derived layer exactly."""
    from circuit_atlas.store import bolt

    for k, v in {"NEO4J_USER": arcadedb.user, "NEO4J_PASSWORD": arcadedb.password,
                 "NEO4J_DATABASE": arcadedb.default_database}.items():
        monkeypatch.setenv(k, v)
    import neo4j

    with neo4j.GraphDatabase.driver(arcadedb.url, auth=(arcadedb.user, arcadedb.password)) as d, \
            d.session(database=arcadedb.default_database) as session:
        session.run("MATCH (n) DETACH DELETE n").consume()  # whatever earlier tests left
    monkeypatch.setattr(bolt, "LINKS_CHUNK_EDGES", 10)
    monkeypatch.setattr(bolt, "DELETE_CHUNK", 7)
    links = "MATCH (a:Feature)-[l:LINKS]->(b:Feature) RETURN a.key AS a, b.key AS b, l.prompts AS n, l.prompt_ids AS ids, l.mean_weight AS w"
    derived = {
        "links": links,
        "features": "MATCH (f:Feature) WHERE f.prompts IS NOT NULL RETURN f.key AS k, f.prompts AS n, f.prompt_ids AS ids",
        "redge": "MATCH (a:RActive)-[e:REDGE]->(b) RETURN a.id AS a, b.id AS b, e.weight AS w",
    }

    def snapshot(s):
        out = {}
        for name, q in derived.items():
            df = s.read(q)
            out[name] = sorted(tuple(tuple(v) if isinstance(v, list) else (round(v, 5) if isinstance(v, float) else v)
                                     for v in row) for row in df.itertuples(index=False))
        return out

    with open_store(f"embedded:{tmp_path / 'emb'}") as s:
        s.write_graphs(corpus)
        n_emb = s.rebuild_links()
        want = snapshot(s)
    with open_store(arcadedb.url) as s:
        s.write_graphs(corpus)
        assert s.rebuild_links(progress=True) == n_emb
        assert s.rebuild_links() == n_emb  # again: the old layer is deleted first, in chunks
        assert snapshot(s) == want
        assert s.stats()["LINKS"] == n_emb and n_emb > 7  # several chunks of each kind were used
