"""The runner: query files, parameter validation, injection safety, and the CLI around it."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest
from planted import key

from circuit_atlas.queries import post
from circuit_atlas.queries.cli import parse_params, refuse_writes
from circuit_atlas.queries.runner import QueryError, list_queries, load_query, parse_query, run_query
from circuit_atlas.store.base import ReadOnlyViolation

ISSUE_QUERIES = {
    "corpus_overview", "recurring_edges", "recurring_paths", "token_to_logit", "feature_profile",
    "prompts_with_circuit", "contrastive", "hubs", "similar_prompts", "motifs",
    "supernode_candidates", "prompt_subgraph", "untrusted_graphs",
}


def test_library_has_every_query_with_a_complete_header():
    queries = {q.name: q for q in list_queries()}
    assert ISSUE_QUERIES <= set(queries)
    for q in queries.values():
        assert q.description and q.columns and q.post
        assert "toFloat" not in q.text and "reduce(" not in q.text and "CALL {" not in q.text
        used = " ".join(t for part in q.parts.values() for t in part.values())
        post_src = inspect.getsource(post)  # post functions share helpers
        for p in q.params:  # every declared parameter reaches the Cypher (as $p) or the post step
            assert f"${p}" in used or f'params["{p}"]' in post_src, (q.name, p)


HEADER = """// name: demo
// description: a demo
// params:
//   n: {type: int, default: 2, help: count}
//   x: {type: float, default: 0.5}
//   s: {type: str, help: needed}
//   b: {type: bool, default: false}
//   l: {type: "list[str]", default: []}
// columns: [a]
// post: demo
"""


def test_parse_header_parts_and_variants():
    q = parse_query(HEADER + "MATCH (n) RETURN 1 AS a\n// @variant bolt\nMATCH (m) RETURN 2 AS a\n// @part more\nRETURN 3 AS a\n")
    assert list(q.parts) == ["main", "more"]
    assert q.cypher_for("embedded") == "MATCH (n) RETURN 1 AS a"
    assert q.cypher_for("bolt") == "MATCH (m) RETURN 2 AS a"
    assert q.cypher_for("bolt", "more") == "RETURN 3 AS a"
    assert q.params["s"].required and not q.params["n"].required


def test_parts_that_run_only_for_some_parameter_values():
    q = parse_query(HEADER + "RETURN 1 AS a\n// @part two when s in x,\nRETURN 2 AS a\n")
    assert q.runs("main", {"s": "anything"})
    assert q.runs("two", {"s": "x"}) and q.runs("two", {"s": ""}) and not q.runs("two", {"s": "y"})
    # the library uses it: hops=2 never runs the 3-hop parts
    paths = load_query("recurring_paths")
    assert not paths.runs("three", {"hops": 2}) and not paths.runs("let_cut3", {"hops": 2}) and paths.runs("main", {"hops": 2})
    with pytest.raises(QueryError, match="not a parameter"):
        parse_query(HEADER + "RETURN 1 AS a\n// @part two when nope in 1\nRETURN 2 AS a\n")
    neg = parse_query(HEADER + "RETURN 1 AS a\n// @part two when n not in 0,1\nRETURN 2 AS a\n")
    assert neg.runs("two", {"n": 2}) and not neg.runs("two", {"n": 1}) and not neg.runs("two", {"n": 0})
    hubs = load_query("hubs")  # the recurring subgraph from 2 prompts up, every instance below
    assert hubs.runs("main", {"min_prompts": 2}) and not hubs.runs("every", {"min_prompts": 2})
    assert hubs.runs("every", {"min_prompts": 1}) and not hubs.runs("main", {"min_prompts": 1})


@pytest.mark.parametrize(
    "text,match",
    [
        ("// name: x\nMATCH (n) RETURN n", "lacks 'description'"),
        ("// name: Bad-Name\n// description: d\n// columns: [a]\nRETURN 1", "lower_snake_case"),
        ("// name: x\n// description: d\n// columns: [a]\n// params:\n//   p: {type: dict}\nRETURN 1", "needs a type"),
        ("// name: x\n// description: d\n// columns: [a]\n", "no Cypher"),
        ("// name: x\n// description: d\n// columns: [a]\nRETURN 1\n// @variant oracle\nRETURN 2", "unknown variant"),
        ("// name: x\n// description: d\n// columns: [a]\nRETURN 1\n// @part two\nRETURN 2", "needs a 'post'"),
        ("// name: x\n// description: [unclosed\n// columns: [a]\nRETURN 1", "not valid YAML"),
        ("// name: x\n// description: d\n// columns: [a]\n// params:\n//   p: {type: str, min: 2}\nRETURN 1", "'min' needs a number"),
        ("// name: x\n// description: d\n// columns: [a]\n// params:\n//   p: {type: int, default: 1, min: 2}\nRETURN 1", "at least 2"),
    ],
)
def test_bad_query_files_are_refused_clearly(text, match):
    with pytest.raises(QueryError, match=match):
        parse_query(text)


def test_parameter_validation_and_coercion():
    q = parse_query(HEADER + "RETURN 1 AS a")
    assert q.validate({"s": "hi"}) == {"n": 2, "x": 0.5, "s": "hi", "b": False, "l": []}
    got = q.validate({"s": "hi", "n": "7", "x": "1e-2", "b": "yes", "l": "a, b,c"})
    assert got == {"n": 7, "x": 0.01, "s": "hi", "b": True, "l": ["a", "b", "c"]}
    assert q.validate({"s": "x", "l": '["p", "q"]'})["l"] == ["p", "q"]
    for bad, match in [
        ({}, "needs parameter 's'"),
        ({"s": "x", "nope": 1}, "no parameter 'nope'"),
        ({"s": "x", "n": "two"}, "parameter 'n' \\(int\\): expected an integer"),
        ({"s": "x", "n": 2.5}, "expected an integer"),
        ({"s": "x", "n": True}, "expected an integer"),
        ({"s": "x", "x": "nan"}, "finite"),
        ({"s": "x", "b": "maybe"}, "true or false"),
        ({"s": 5}, "expected a string"),
        ({"s": "x", "l": [1, 2]}, "list of strings"),
        ({"s": "x", "l": "[oops"}, "not a JSON list"),
    ]:
        with pytest.raises(QueryError, match=match):
            q.validate(bad)


def test_parameter_minimum():
    """A query on the recurring subgraph refuses min_prompts below 2 with a clear error."""
    q = load_query("recurring_paths")
    assert q.params["min_prompts"].min == 2 and q.validate({"min_prompts": 2})["min_prompts"] == 2
    with pytest.raises(QueryError, match="'min_prompts': must be at least 2, got 1"):
        q.validate({"min_prompts": 1})


def test_unknown_query_names():
    with pytest.raises(QueryError, match="no query named 'nope'.*recurring_edges"):
        load_query("nope")
    with pytest.raises(QueryError, match="no query named"):
        load_query("../etc/passwd")


def test_run_query_validates_before_touching_the_store(embedded_store):
    with pytest.raises(QueryError, match="min_prompts"):
        run_query(embedded_store, "recurring_edges", {"min_prompts": "many"})
    with pytest.raises(QueryError, match="needs parameter 'prompt_id'"):
        run_query(embedded_store, "prompt_subgraph")


def _counts(store) -> tuple:
    return tuple(
        int(store.read(f"MATCH (n:{label}) RETURN count(*) AS n")["n"].iloc[0])
        for label in ("Prompt", "Feature", "Active", "Logit")
    ) + (int(store.read("MATCH ()-[e:EDGE]->() RETURN count(*) AS n")["n"].iloc[0]),)


INJECTIONS = [
    "x' OR 1=1 //",
    "x\"}) MATCH (n) DETACH DELETE n //",
    "') DETACH DELETE n RETURN 1 //",
    "$prompt_id",
]


@pytest.mark.parametrize("evil", INJECTIONS)
def test_injection_through_parameters_is_harmless(store, planted, evil):
    before = _counts(store)
    with pytest.raises(QueryError, match="no prompt"):
        run_query(store, "similar_prompts", {"prompt_id": evil})
    assert run_query(store, "recurring_paths", {"token": evil}).empty
    assert run_query(store, "prompts_with_circuit", {"keys": [evil, key("A") + "' OR true //"]}).empty
    with pytest.raises(QueryError, match="no prompt"):
        run_query(store, "contrastive", {"a": evil})
    assert _counts(store) == before


def test_cli_param_parsing_and_write_refusal():
    assert parse_params(["a=1", "b= x=y", "c=[1,2]"], typed=True) == {"a": 1, "b": " x=y", "c": [1, 2]}
    assert parse_params(["a=1"], typed=False) == {"a": "1"}
    with pytest.raises(QueryError, match="NAME=VALUE"):
        parse_params(["novalue"], typed=False)
    for stmt in ("MATCH (n) DETACH DELETE n", "CREATE (:Prompt {id: 'x'})", "MATCH (p:Prompt) SET p.text = 'x'", "merge (n:Feature {key:'k'})"):
        with pytest.raises(ReadOnlyViolation, match="read-only"):
            refuse_writes(stmt)
    refuse_writes("MATCH (p:Prompt) WHERE p.text = 'please CREATE a set' RETURN p.id")  # words inside strings are fine


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "circuit_atlas.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_list_and_errors():
    res = _cli("query", "--list")
    assert res.returncode == 0
    for name in ISSUE_QUERIES:
        assert name in res.stdout
    assert "--param min_prompts=<int>" in res.stdout
    bad = _cli("query", "recurring_edges", "--param", "min_prompts=lots")
    assert bad.returncode == 2 and "expected an integer" in " ".join(bad.stderr.split()) and "Traceback" not in bad.stderr
    w = _cli("cypher", "MATCH (n) DETACH DELETE n")
    assert w.returncode != 0 and "is read-only" in " ".join(w.stderr.split()) and "Traceback" not in w.stderr


def _real_store() -> bool:
    try:
        from circuit_atlas.store import open_store  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _real_store(), reason="store/ open_store has not landed")
def test_cli_runs_queries_on_a_store(planted, tmp_path):
    from circuit_atlas.store import open_store

    url = f"embedded:{tmp_path / 'db'}"
    with open_store(url) as s:
        s.init_schema()
        s.write_graphs(planted.graph_dirs)
        s.rebuild_links()
    res = _cli("query", "hubs", "--param", "limit=1", "--format", "json", "--store", url)
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert rows[0]["key"] == key("H") and rows[0]["prompts"] == 15
    out = tmp_path / "edges.parquet"
    res = _cli("query", "recurring_edges", "-p", "min_prompts=3", "--format", "parquet", "--out", str(out), "--store", url)
    assert res.returncode == 0, res.stderr
    import pandas as pd

    assert len(pd.read_parquet(out)) == 6
    res = _cli("query", "recurring_edges", "-p", "min_prompts=3", "--format", "csv", "--store", url)
    assert res.returncode == 0 and len(res.stdout.strip().splitlines()) == 7
    res = _cli("cypher", "MATCH (p:Prompt) WHERE p.id = $id RETURN count(*) AS n", "--param", f"id={planted.gid('cap0')}", "--format", "json", "--store", url)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == [{"n": 1}]


def test_hints_reach_the_embedded_backend_only():
    """LadybugDB join-order hints stay in the embedded text and are dropped for Bolt servers."""
    q = load_query("recurring_paths")
    emb, bolt = q.cypher_for("embedded", "three"), q.cypher_for("bolt", "three")
    assert "HINT (" in emb and "HINT" not in bolt
    assert bolt == "\n".join(line for line in emb.splitlines() if not line.startswith("HINT ")) + ("\n" if emb.endswith("\n") else "")
