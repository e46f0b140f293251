"""Wrongly typed graph files give one-line GraphFileErrors naming the file and the field, never
a traceback: meta.json fields through `read_meta` (and so the store's `read_graph_meta`) and
`GraphFile.load`, nulls in nodes.parquet / edges.parquet through the pandas path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from circuit_atlas.engine.formats import graph_files as gf

TOKENS = ["<bos>", " The", " cat"]
TOKEN_IDS = [1, 450, 3290]


def _good_graph() -> gf.GraphFile:
    """A tiny but complete graph: an embedding, a feature, an error node and a logit, three edges."""
    nodes = pd.DataFrame([
        dict(node_id=gf.embedding_node_id(450, 1), type="embedding", layer=-1, pos=1, feature=-1, token_id=450,
             activation=None, influence=0.5, prob=None, label=None),
        dict(node_id=gf.feature_node_id(0, 7, 1), type="feature", layer=0, pos=1, feature=7, token_id=-1,
             activation=1.5, influence=0.4, prob=None, label="cat-ish"),
        dict(node_id=gf.error_node_id(0, 2), type="error", layer=0, pos=2, feature=-1, token_id=-1,
             activation=None, influence=0.1, prob=None, label=None),
        dict(node_id=gf.logit_node_id(2, 3290, 2), type="logit", layer=2, pos=2, feature=-1, token_id=3290,
             activation=None, influence=None, prob=0.7, label=None),
    ])
    edges = pd.DataFrame({"source": [nodes.node_id[0], nodes.node_id[1], nodes.node_id[2]],
                          "target": [nodes.node_id[1], nodes.node_id[3], nodes.node_id[3]],
                          "weight": np.array([0.5, 1.25, -0.25], dtype=np.float32)})
    settings = {"node_threshold": 0.8, "edge_threshold": 0.98, "pruned": True}
    meta = {"graph_id": gf.graph_id("m", "s", TOKEN_IDS, settings, nodes, edges), "prompt": "The cat",
            "tokens": TOKENS, "token_ids": TOKEN_IDS, "model": "m", "scan": "s", "n_layers": 2,
            "settings": settings, "scores": {"replacement_score": 0.5, "completeness_score": None},
            "prompt_props": {"corpus": "t", "tags": ["a"], "group": "g"}}
    return gf.GraphFile(meta=meta, nodes=nodes, edges=edges)


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory) -> Path:
    return _good_graph().save(tmp_path_factory.mktemp("good") / "g")


def _copy(good_dir: Path, into: Path) -> Path:
    target = into / "bad-graph"
    shutil.copytree(good_dir, target)
    return target


def _with_meta(good_dir: Path, into: Path, change) -> Path:
    target = _copy(good_dir, into)
    meta = json.loads((target / "meta.json").read_text())
    change(meta)
    (target / "meta.json").write_text(json.dumps(meta))
    return target


def _set(key, value):
    def change(meta):
        meta[key] = value
    return change


def _set_prop(key, value):
    def change(meta):
        meta["prompt_props"][key] = value
    return change


def _drop(key):
    def change(meta):
        del meta[key]
    return change


# (id, change, the field the message must name)
BAD_META = [
    ("graph_id-list", _set("graph_id", ["a", "b"]), "graph_id"),
    ("graph_id-int", _set("graph_id", 17), "graph_id"),
    ("graph_id-null", _set("graph_id", None), "graph_id"),
    ("graph_id-empty", _set("graph_id", ""), "graph_id"),
    ("graph_id-missing", _drop("graph_id"), "graph_id"),
    ("settings-string", _set("settings", "node_threshold=0.8"), "settings"),
    ("scores-list", _set("scores", [0.5, 0.9]), "scores"),
    ("scores-string-value", _set("scores", {"replacement_score": "high"}), "scores"),
    ("tags-int", _set_prop("tags", 3), "prompt_props.tags"),
    ("tags-of-ints", _set_prop("tags", [1, 2]), "prompt_props.tags"),
    ("token_ids-strings", _set("token_ids", ["1", "450", "3290"]), "token_ids"),
    ("token_ids-bools", _set("token_ids", [True, False, True]), "token_ids"),
    ("token_ids-null", _set("token_ids", None), "token_ids"),
    ("tokens-string", _set("tokens", "The cat"), "tokens"),
    ("tokens-length", _set("tokens", ["<bos>", " The"]), "tokens"),
    ("prompt-int", _set("prompt", 42), "prompt"),
    ("prompt-list", _set("prompt", ["The", "cat"]), "prompt"),
    ("model-null", _set("model", None), "model"),
    ("scan-list", _set("scan", ["s"]), "scan"),
    ("n_layers-string", _set("n_layers", "2"), "n_layers"),
    ("n_layers-negative", _set("n_layers", -1), "n_layers"),
    ("n_layers-bool", _set("n_layers", True), "n_layers"),
    ("prompt_props-string", _set("prompt_props", "corpus=t"), "prompt_props"),
    ("group-list", _set_prop("group", ["g"]), "prompt_props.group"),
    ("correct-string", _set_prop("correct", "yes"), "prompt_props.correct"),
    ("supernodes-string", _set("supernodes", "none"), "supernodes"),
    ("supernode_records-strings", _set("supernode_records", ["x"]), "supernode_records"),
    ("logit_tokens-list", _set("logit_tokens", [" cat"]), "logit_tokens"),
    ("created_at-int", _set("created_at", 20260101), "created_at"),
]


def _assert_one_line(exc: BaseException, *needles: str) -> None:
    text = str(exc)
    assert "\n" not in text, text
    for needle in needles:
        assert needle in text, (needle, text)


def test_the_good_graph_passes(good_dir):
    graph = gf.GraphFile.load(good_dir)
    assert gf.read_meta(good_dir)["graph_id"] == graph.graph_id


@pytest.mark.parametrize("change,field", [c[1:] for c in BAD_META], ids=[c[0] for c in BAD_META])
def test_bad_meta_field_is_one_line_naming_file_and_field(good_dir, tmp_path, change, field):
    bad = _with_meta(good_dir, tmp_path, change)
    meta_file = str(bad / "meta.json")
    with pytest.raises(gf.GraphFileError) as by_read_meta:
        gf.read_meta(bad)
    _assert_one_line(by_read_meta.value, meta_file, f"'{field}'")
    with pytest.raises(gf.GraphFileError) as by_load:
        gf.GraphFile.load(bad)
    _assert_one_line(by_load.value, meta_file, f"'{field}'")


@pytest.mark.parametrize("change,field", [c[1:] for c in BAD_META[:12]], ids=[c[0] for c in BAD_META[:12]])
def test_the_store_reader_gets_the_same_check(good_dir, tmp_path, change, field):
    from circuit_atlas.store.embedded import read_graph_meta

    bad = _with_meta(good_dir, tmp_path, change)
    with pytest.raises(gf.GraphFileError) as err:
        read_graph_meta(bad)
    _assert_one_line(err.value, str(bad), f"'{field}'")


def test_meta_that_is_not_an_object(good_dir, tmp_path):
    bad = _copy(good_dir, tmp_path)
    (bad / "meta.json").write_text("[1, 2, 3]")
    with pytest.raises(gf.GraphFileError) as err:
        gf.read_meta(bad)
    _assert_one_line(err.value, str(bad / "meta.json"), "JSON object")


def test_in_memory_meta_is_checked_before_save(tmp_path):
    graph = _good_graph()
    graph.meta["scores"] = [1, 2]
    with pytest.raises(gf.GraphFileError) as err:
        graph.save(tmp_path / "never")
    _assert_one_line(err.value, "'scores'")
    assert not (tmp_path / "never").exists()


def _rewrite(path: Path, column: str, values: list) -> None:
    """Replace one column of a parquet file, keeping its type, with values that may be null/NaN."""
    table = pq.read_table(path)
    i = table.schema.get_field_index(column)
    table = table.set_column(i, table.schema.field(i), pa.array(values, type=table.schema.field(i).type))
    pq.write_table(table, path)


# (file, column, values, what the message must name)
BAD_TABLES = [
    ("nodes", "layer", [-1, None, 0, 2], "'layer'"),
    ("nodes", "pos", [1, 1, None, 2], "'pos'"),
    ("nodes", "node_id", ["E_450_1", None, "0_-1_2", "3_3290_2"], "'node_id'"),
    ("nodes", "type", ["embedding", "feature", None, "logit"], "'type'"),
    ("nodes", "feature", [-1, None, -1, -1], "'feature'"),
    ("edges", "source", [None, "0_7_1", "0_-1_2"], "'source'"),
    ("edges", "weight", [0.5, float("nan"), -0.25], "'weight'"),
    ("edges", "weight", [0.5, None, -0.25], "'weight'"),
    ("edges", "weight", [0.5, float("inf"), -0.25], "'weight'"),
]


@pytest.mark.parametrize("what,column,values,needle", BAD_TABLES,
                         ids=[f"{w}-{c}-{i}" for i, (w, c, _, _) in enumerate(BAD_TABLES)])
def test_nulls_in_the_tables_are_one_line_naming_file_and_column(good_dir, tmp_path, what, column, values, needle):
    bad = _copy(good_dir, tmp_path)
    _rewrite(bad / f"{what}.parquet", column, values)
    with pytest.raises(gf.GraphFileError) as err:
        gf.GraphFile.load(bad)
    _assert_one_line(err.value, str(bad), f"{what}.parquet", needle)


# Through the command line: no traceback, no crash. (Whether the run goes on past the bad graph,
# lists it and with which exit code is the store's and import's to say: tests/store, tests/ingest.)

def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, CIRCUIT_ATLAS_HOME=str(cwd / "home"), CIRCUIT_ATLAS_STORE=f"embedded:{cwd / 'store'}")
    exe = shutil.which("circuit-atlas")
    cmd = [exe, *args] if exe else [sys.executable, "-m", "circuit_atlas", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_store_load_of_a_bad_graph_names_it_without_traceback(good_dir, tmp_path):
    bad = _with_meta(good_dir, tmp_path, _set("token_ids", ["1", "450", "3290"]))
    proc = _cli("store", "load", str(bad), "--store", f"embedded:{tmp_path / 'store'}", cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out
    assert proc.returncode in (0, 1, 2), out  # not killed by a signal
    assert "loading graphs" in out or "error:" in out  # it ran


def test_import_of_a_folder_with_one_bad_graph_names_it_without_traceback(good_dir, tmp_path):
    folder = tmp_path / "graphs"
    folder.mkdir()
    shutil.copytree(good_dir, folder / "good")
    bad = _with_meta(good_dir, folder, _set("settings", "node_threshold=0.8"))
    proc = _cli("import", str(folder), "--store", f"embedded:{tmp_path / 'store'}", cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out
    assert proc.returncode in (0, 1, 2), out
    assert "settings" in out  # the reason reaches the user, whatever else is reported


def test_graph_id_is_the_same_under_float_noise_and_differs_beyond_rounding():
    """The id hashes weights and activations rounded to WEIGHT_DIGITS significant digits: float32
    noise (1e-7 relative, what another thread count gives) leaves it, a change of 1% does not."""
    import numpy as np
    import pyarrow as pa

    from circuit_atlas.engine.formats.graph_files import EDGE_SCHEMA, NODE_SCHEMA, graph_id, round_significant, weights_close

    rng = np.random.default_rng(3)
    n = 60
    ids = [f"{i % 4}_{i}_{i % 5}" for i in range(n)]
    acts = rng.uniform(0.5, 3, n).astype(np.float32)

    def graph(weights, activations):
        nodes = pa.table({"node_id": ids, "type": ["feature"] * n, "layer": pa.array([i % 4 for i in range(n)], pa.int32()),
                          "pos": pa.array([i % 5 for i in range(n)], pa.int32()), "feature": pa.array(range(n), pa.int64()),
                          "token_id": pa.array([-1] * n, pa.int64()), "activation": pa.array(activations, pa.float32()),
                          "influence": pa.nulls(n, pa.float32()), "prob": pa.nulls(n, pa.float32()),
                          "label": pa.nulls(n, pa.string())}, schema=NODE_SCHEMA)
        src, dst = rng.integers(0, n, 200), rng.integers(0, n, 200)
        edges = pa.table({"source": [ids[i] for i in src], "target": [ids[j] for j in dst],
                          "weight": pa.array(weights, pa.float32())}, schema=EDGE_SCHEMA)
        return nodes, edges

    w = rng.normal(0, 1, 200).astype(np.float32)
    # values away from rounding boundaries: noise below a thousandth of a unit cannot cross one
    mant = np.abs(w) / 10.0 ** (np.floor(np.log10(np.abs(w))) - 2)
    w = w[np.abs(mant - np.floor(mant) - 0.5) < 0.4][:150]
    w = np.concatenate([w, w[:50]])
    rng = np.random.default_rng(4)
    a = graph(w, acts)
    rng = np.random.default_rng(4)
    noisy = graph(w * (1 + np.float32(1e-6) * np.sign(w)), acts * np.float32(1 + 1e-6))
    rng = np.random.default_rng(4)
    changed = graph(np.where(np.arange(200) == 7, w * 1.01, w), acts)
    key = ("m", "s", [1, 2, 3], {"node_threshold": 0.8})
    assert graph_id(*key, *a) == graph_id(*key, *noisy) != graph_id(*key, *changed)
    assert graph_id(*key, *a) != graph_id("m", "s", [1, 2, 4], {"node_threshold": 0.8}, *a)
    mant, exp = round_significant([0.0012345, -9.996, 0.0])
    assert mant.tolist() == [123, -100, 0] and exp.tolist() == [-5, -1, 0]
    assert weights_close([1.0001, 0.5], [1.0004, 0.5006]).all() and not weights_close([1.0], [1.02]).any()
