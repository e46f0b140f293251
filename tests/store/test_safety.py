"""What the store promises beyond loading: commands that only read never create or change a
store, paths never enter Cypher text, a database that is not ours is refused, bad graphs are
listed while the good ones are written, an import's supernodes share their graph's transaction,
the derived layer is fresh after every write (and a stale one is refused, not used), and a
reader notices another process's writes. Real LadybugDB and the ArcadeDB Bolt server."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from circuit_atlas.queries.runner import run_query
from circuit_atlas.store import StoreError, open_store
from circuit_atlas.store.base import DerivedLayerStale
from circuit_atlas.store.synthetic import synthetic_graph, write_synthetic_corpus


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "circuit_atlas", *args], capture_output=True, text=True, timeout=300, **kw)


def one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr[-500:])
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


def digest(directory: Path) -> dict[str, str]:
    """Every file under a directory and the hash of its bytes."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def small(tmp_path) -> list[Path]:
    return write_synthetic_corpus(tmp_path / "g", 4, n_nodes=70, n_edges=350, n_features_vocab=40)


# -- commands that only read ---------------------------------------------------------------

@pytest.mark.parametrize("command", [["store", "stats"], ["doctor"]])
def test_read_commands_do_not_create_a_store(tmp_path, command):
    missing = tmp_path / "typo" / "store"
    line = one_line_error(cli(*command, "--store", f"embedded:{missing}"))
    assert "no store here" in line
    assert not missing.exists() and not missing.parent.exists()


def test_read_commands_change_no_byte_and_run_beside_a_writer(tmp_path, small):
    store = tmp_path / "store"
    url = f"embedded:{store}"
    with open_store(url) as s:
        s.write_graphs(small)
    before = digest(store)
    for command in (["store", "stats", "--json"], ["doctor"]):
        r = cli(*command, "--store", url)
        assert r.returncode == 0, r.stderr
    assert digest(store) == before
    # a writer holding the store open in another process does not stop them
    holder = subprocess.Popen([sys.executable, "-c", f"from circuit_atlas.store import open_store; s = open_store({url!r}); "
                               "print('open', flush=True); import time; time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        r = cli("store", "stats", "--json", "--store", url)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["Prompt"] == len(small)
    finally:
        holder.kill()
        holder.wait()


def test_quote_in_the_store_path(tmp_path, small):
    path = tmp_path / "it" / "bob's store"
    url = f"embedded:{path}"
    with open_store(url) as s:
        report = s.write_graphs(small)
        assert len(report.written) == len(small) and not report.failed
        assert s.stats()["Prompt"] == len(small)


def test_a_database_that_is_not_ours_is_refused(tmp_path):
    import ladybug

    store = tmp_path / "other"
    store.mkdir()
    db = ladybug.Database(str(store / "atlas.lbdb"))
    conn = ladybug.Connection(db)
    conn.execute("CREATE NODE TABLE Person(name STRING, PRIMARY KEY(name))")
    conn.close()
    db.close()
    for read_only in (False, True):
        with pytest.raises(StoreError, match="not a circuit-atlas store"):
            open_store(f"embedded:{store}", read_only=read_only)
    assert "not a circuit-atlas store" in one_line_error(cli("store", "stats", "--store", f"embedded:{store}"))
    db = ladybug.Database(str(store / "atlas.lbdb"), read_only=True)
    tables = set(ladybug.Connection(db).execute("CALL show_tables() RETURN name").get_as_df()["name"])
    assert tables == {"Person"}  # not stamped with our schema


# -- bad graph inputs ------------------------------------------------------------------------

def _broken(tmp_path: Path, name: str, i: int, nodes=None, edges=None, meta=None) -> Path:
    g = synthetic_graph(100 + i, n_nodes=50, n_edges=200)
    path = g.save(tmp_path / "bad" / name)
    if nodes is not None:
        t = pq.read_table(path / "nodes.parquet")
        pq.write_table(nodes(t), path / "nodes.parquet")
    if edges is not None:
        t = pq.read_table(path / "edges.parquet")
        pq.write_table(edges(t), path / "edges.parquet")
    if meta is not None:
        m = json.loads((path / "meta.json").read_text())
        meta(m)
        (path / "meta.json").write_text(json.dumps(m))
    return path


def _set(t: pa.Table, col: str, row: int, value) -> pa.Table:
    values = t.column(col).to_pylist()
    values[row] = value
    return t.set_column(t.column_names.index(col), col, pa.array(values, t.schema.field(col).type))


def bad_graphs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Graph directories a load must refuse, and a word the reason must hold."""
    return {
        "null-layer": (_broken(tmp_path, "null-layer", 0, nodes=lambda t: _set(t, "layer", 5, None)), "layer"),
        "null-node-id": (_broken(tmp_path, "null-node-id", 1, nodes=lambda t: _set(t, "node_id", 3, None)), "node_id"),
        "null-source": (_broken(tmp_path, "null-source", 2, edges=lambda t: _set(t, "source", 0, None)), "source"),
        "nan-weight": (_broken(tmp_path, "nan-weight", 3, edges=lambda t: _set(t, "weight", 1, math.nan)), "weight"),
        "inf-weight": (_broken(tmp_path, "inf-weight", 4, edges=lambda t: _set(t, "weight", 2, math.inf)), "infinite"),
        "-inf-weight": (_broken(tmp_path, "-inf-weight", 5, edges=lambda t: _set(t, "weight", 2, -math.inf)), "infinite"),
        "graph-id-list": (_broken(tmp_path, "graph-id-list", 6, meta=lambda m: m.update(graph_id=["x"])), "graph_id"),
        "settings-str": (_broken(tmp_path, "settings-str", 7, meta=lambda m: m.update(settings="fast")), "settings"),
        "token-ids-str": (_broken(tmp_path, "token-ids-str", 8, meta=lambda m: m.update(token_ids=["1", "2"])), "token_ids"),
    }


def test_bad_graphs_are_listed_and_the_good_ones_written(store_url, tmp_path, small):
    bad = bad_graphs(tmp_path)
    dirs = [small[0], *[p for p, _ in bad.values()], *small[1:]]
    with open_store(store_url) as s:
        report = s.write_graphs(dirs)
        assert len(report.written) == len(small)
        failed = dict(report.failed)
        assert set(failed) == {str(p) for p, _ in bad.values()}
        for path, word in bad.values():
            reason = failed[str(path)]
            assert reason.startswith(str(path)) and word in reason and "\n" not in reason, reason
        assert s.stats()["Prompt"] == len(small)
        weights = s.read("MATCH ()-[e:EDGE]->() RETURN e.weight AS w")["w"].astype(float)
        assert np.isfinite(weights).all()


def test_store_load_lists_bad_graphs_and_exits_2(tmp_path, small):
    bad = bad_graphs(tmp_path)
    url = f"embedded:{tmp_path / 'store'}"
    r = cli("store", "load", *map(str, small), str(bad["nan-weight"][0]), str(bad["graph-id-list"][0]), "--store", url)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"failed: {bad['nan-weight'][0]}" in r.stderr and f"failed: {bad['graph-id-list'][0]}" in r.stderr
    assert "written 4" in r.stdout
    with open_store(url, read_only=True) as s:
        assert len(s.prompt_ids()) == len(small)


# -- an import's supernodes, in the graph's transaction --------------------------------------

def _with_supernodes(tmp_path: Path, i: int) -> Path:
    g = synthetic_graph(200 + i, n_nodes=60, n_edges=300, n_features_vocab=40)
    feats = g.nodes[g.nodes["type"] == "feature"].head(4)
    keys = sorted({f"{g.meta['scan']}:{int(l)}:{int(f)}" for l, f in zip(feats["layer"], feats["feature"])})
    g.meta["supernode_records"] = [{"key": f"{g.graph_id}:import:s", "scan": g.meta["scan"], "label": "a group",
                                    "method": "import", "score": None, "prompt_id": g.graph_id,
                                    "node_ids": [str(x) for x in feats["node_id"]], "members": keys}]
    return g.save(tmp_path / "sn" / f"g{i}")


def test_supernode_records_are_written_with_their_graph(store_url, tmp_path):
    dirs = [_with_supernodes(tmp_path, i) for i in range(2)]
    with open_store(store_url) as s:
        s.write_graphs(dirs)
        rows = s.read("MATCH (s:Supernode)-[:CONTAINS]->(f:Feature) RETURN s.prompt_id AS pid, s.label AS label, "
                      "f.key AS key")
    for d in dirs:
        meta = json.loads((d / "meta.json").read_text())
        mine = rows[rows["pid"] == meta["graph_id"]]
        assert set(mine["key"]) == set(meta["supernode_records"][0]["members"]) and set(mine["label"]) == {"a group"}


def test_a_failure_after_the_supernodes_leaves_neither(store_url, tmp_path, monkeypatch):
    d = _with_supernodes(tmp_path, 9)
    with open_store(store_url) as s:
        if s.backend == "embedded":
            real = s._write_supernodes

            def boom(records):
                real(records)
                raise StoreError("injected failure after the supernodes")

            monkeypatch.setattr(s, "_write_supernodes", boom)
        else:
            from circuit_atlas.store import bolt

            real = bolt._write_supernodes

            def boom(tx, records):
                real(tx, records)
                raise StoreError("injected failure after the supernodes")

            monkeypatch.setattr(bolt, "_write_supernodes", boom)
        report = s.write_graphs([d])
        assert not report.written and report.failed and "injected" in report.failed[0][1]
        assert s.stats()["Prompt"] == 0
        assert s.read("MATCH (s:Supernode) RETURN count(s) AS c")["c"].iloc[0] == 0


def test_replacing_auto_supernodes_is_one_transaction(store_url, tmp_path):
    """write_supernodes(replace=(method, scan)) deletes the old set and writes the new one together:
    a failure half-way through the new set leaves the old set whole (two calls lost it for good)."""
    d = _with_supernodes(tmp_path, 3)
    with open_store(store_url) as s:
        s.write_graphs([d])
        meta = json.loads((d / "meta.json").read_text())
        scan, members = meta["scan"], meta["supernode_records"][0]["members"]
        old = [{"key": f"{scan}:auto:{i}", "scan": scan, "label": f"old {i}", "method": "auto", "members": members}
               for i in range(3)]
        s.write_supernodes(old)
        new = [{"key": f"{scan}:auto:new", "scan": scan, "label": "new", "method": "auto", "members": members},
               {"scan": scan, "label": "no key: fails inside the transaction", "method": "auto"}]
        with pytest.raises(Exception):
            s.write_supernodes(new, replace=("auto", scan))
        kept = s.read("MATCH (s:Supernode) WHERE s.method = 'auto' RETURN s.label AS label")["label"]
        assert sorted(kept) == ["old 0", "old 1", "old 2"]
        s.write_supernodes(new[:1], replace=("auto", scan))
        after = s.read("MATCH (s:Supernode) RETURN s.method AS m, s.label AS label")
        assert sorted(after[after["m"] == "auto"]["label"]) == ["new"]
        assert (after["m"] == "import").sum() == 1  # other methods' supernodes are left alone


# -- the derived layer after every write ---------------------------------------------------

def _answers(store) -> dict:
    edges = run_query(store, "recurring_edges", {"limit": 1000})
    hubs = run_query(store, "hubs", {"limit": 1000})
    return {"edges": sorted(zip(edges["source_key"], edges["target_key"], edges["prompts"])),
            "hubs": sorted(zip(hubs["key"], hubs["prompts"]))}


def test_fresh_after_every_write(store_url, small):
    with open_store(store_url) as s:
        s.write_graphs(small[:2])
        assert not s.derived_stale()
        first = _answers(s)
        assert first["edges"], "the small corpus has recurring edges"
        s.write_graphs(small[2:])
        after_load = _answers(s)
        s.rebuild_links()
        assert after_load == _answers(s) != first
        s.delete_prompt(sorted(s.prompt_ids())[0])
        after_delete = _answers(s)
        s.rebuild_links()
        assert after_delete == _answers(s) and not s.derived_stale()


def test_deferred_writes_rebuild_once(store_url, small, monkeypatch):
    """Past the incremental budget (embedded: max(stored prompts // 8, delta_min) graphs; Bolt has
    none), writes inside a deferral mark the layer stale and it is rebuilt once on leaving."""
    with open_store(store_url) as s:
        calls = []
        real = s.rebuild_links
        monkeypatch.setattr(s, "rebuild_links", lambda progress=False: calls.append(1) or real())
        # embedded: an empty store, delta_min 1: the first graph goes in incrementally, the others past the budget
        with s.deferred_derived():
            for d in small:
                s.write_graphs([d])
            assert s.derived_stale() and not calls
        assert calls == [1] and not s.derived_stale()


def test_deferred_writes_within_the_budget_keep_the_layer_fresh_with_no_rebuild(tmp_path, small, monkeypatch):
    with open_store(f"embedded:{tmp_path / 'store'}") as s:
        s.delta_min = len(small)  # the budget: these writes all go in incrementally
        calls = []
        real = s.rebuild_links
        monkeypatch.setattr(s, "rebuild_links", lambda progress=False: calls.append(1) or real())
        with s.deferred_derived():
            for d in small:
                s.write_graphs([d])
                assert not s.derived_stale()
        assert not calls
        incremental = _answers(s)
        real()
        assert _answers(s) == incremental and incremental["edges"]


def test_the_incremental_budget_follows_the_stored_prompts(tmp_path, monkeypatch):
    """A delta costs more per graph written than a rebuild per graph stored, so a write goes in
    incrementally only while it adds at most 1/8 of the prompts stored (or delta_min graphs)."""
    graphs = write_synthetic_corpus(tmp_path / "g", 21, n_nodes=40, n_edges=150, n_features_vocab=30)
    with open_store(f"embedded:{tmp_path / 'store'}") as s:
        calls = []
        real = s.rebuild_links
        monkeypatch.setattr(s, "rebuild_links", lambda progress=False: calls.append(1) or real())
        s.write_graphs(graphs[:16])  # an empty store: past delta_min (1), one rebuild after the write
        assert calls == [1] and not s.derived_stale()
        s.write_graphs(graphs[16:18])  # 16 stored: 2 = 16 // 8, a delta, no rebuild
        assert calls == [1] and not s.derived_stale()
        with s.deferred_derived():  # 18 stored: 2 = 18 // 8 graphs may go in as deltas, not 3
            s.write_graphs(graphs[18:20])
            assert not s.derived_stale()
            s.write_graphs(graphs[20:21])
            assert s.derived_stale() and calls == [1]
        assert calls == [1, 1] and not s.derived_stale()


def test_a_stale_derived_layer_is_refused_then_rebuilt_by_the_next_writer(tmp_path, small):
    url = f"embedded:{tmp_path / 'store'}"
    with open_store(url) as s:
        s.write_graphs(small)
        s._mark_stale()  # what a kill between a load's commit and its rebuild leaves
    with open_store(url, read_only=True) as s:
        assert s.derived_stale()
        with pytest.raises(DerivedLayerStale, match="rebuild-links"):
            run_query(s, "recurring_edges")
        assert len(run_query(s, "corpus_overview")) > 0  # a query of the per-prompt graphs still answers
    line = one_line_error(cli("query", "recurring_edges", "--store", url))
    assert "stale" in line and "circuit-atlas store rebuild-links" in line
    r = cli("store", "init", "--store", url)  # any writer open rebuilds it, and says so
    assert r.returncode == 0, r.stderr
    assert "derived layer was left stale" in r.stderr
    assert "derived layer was left stale" in (tmp_path / "store" / "recovery.log").read_text()
    with open_store(url, read_only=True) as s:
        assert not s.derived_stale() and len(run_query(s, "recurring_edges")) > 0


def test_app_pages_show_the_stale_message(tmp_path, small, monkeypatch):
    from streamlit.testing.v1 import AppTest

    url = f"embedded:{tmp_path / 'store'}"
    with open_store(url) as s:
        s.write_graphs(small)
        s._mark_stale()
    monkeypatch.setenv("CIRCUIT_ATLAS_STORE", url)
    pages = Path(__file__).resolve().parents[2] / "app" / "pages"
    for name in ("overview", "circuit_search"):
        at = AppTest.from_file(str(pages / f"{name}.py"), default_timeout=120).run()
        if name == "circuit_search":  # its searches run on "Run"
            at = at.button[0].click().run()
        assert not at.exception, [e.value for e in at.exception]
        shown = [w.value for w in at.warning] + [e.value for e in at.error]
        assert any("rebuild-links" in m for m in shown), (name, shown)


# -- a reader and another process's writer ----------------------------------------------------

def test_a_reader_sees_another_process_write(tmp_path, small):
    url = f"embedded:{tmp_path / 'store'}"
    with open_store(url) as s:
        s.write_graphs(small[:2])
    reader = open_store(url, read_only=True)
    try:
        assert len(reader.prompt_ids()) == 2
        token = reader.version_token()
        r = cli("store", "load", *map(str, small[2:]), "--store", url)
        assert r.returncode == 0, r.stderr
        assert len(reader.prompt_ids()) == len(small)  # reopened on what is there now, not the old snapshot
        assert reader.version_token() != token
        assert len(run_query(reader, "recurring_edges")) > 0
    finally:
        reader.close()
