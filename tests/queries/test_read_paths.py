"""The read paths' user errors (issue 21): several statements, --out into a missing folder,
integer parameters out of range. Each is one line and exit 2 from the real entry point, and
nothing runs; what is valid still runs."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from circuit_atlas.queries.cli import parse_params, refuse_writes
from circuit_atlas.queries.runner import QueryError, list_queries, parse_query, run_query
from circuit_atlas.store import ReadOnlyViolation, StoreError
from circuit_atlas.store.synthetic import write_synthetic_corpus

INT64_MAX = 2**63 - 1


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    from circuit_atlas.store import open_store

    root = tmp_path_factory.mktemp("read-paths")
    graphs = write_synthetic_corpus(root / "graphs", 2, n_nodes=40, n_edges=150)
    url = f"embedded:{root / 'store'}"
    with open_store(url) as s:
        s.write_graphs(graphs)
        s.rebuild_links()
    return url


def cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """`circuit-atlas ARGS` through the real entry point, in-process: (exit code, stdout, stderr)."""
    from circuit_atlas.cli import main

    monkeypatch.setattr(sys, "argv", ["circuit-atlas", *args])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(code: int, err: str, *words: str) -> bool:
    text = err.strip()
    return code == 2 and len(text.splitlines()) == 1 and "Traceback" not in err and all(w in text for w in words)


def test_several_statements_are_refused_in_one_line_and_nothing_runs(url, monkeypatch, capsys):
    code, out, err = cli(monkeypatch, capsys, "cypher", "--store", url, "RETURN 11 AS a; RETURN 22 AS b")
    assert one_line_error(code, err, "second statement", "line 1, column 17")
    assert "11" not in out and "22" not in out
    code, out, err = cli(monkeypatch, capsys, "cypher", "--store", url, "RETURN 1 AS a; // the end", "-f", "json")
    assert code == 0 and json.loads(out) == [{"a": 1}]  # a final ';' (and a comment after it) is one statement
    assert refuse_writes("RETURN 1 AS a;\n") == "RETURN 1 AS a\n"


def test_several_statements_from_the_installed_command():
    """As a user runs it: a subprocess of the entry point."""
    res = subprocess.run([sys.executable, "-m", "circuit_atlas.cli", "cypher", "RETURN 1; RETURN 2"],
                         capture_output=True, text=True, timeout=120)
    assert one_line_error(res.returncode, res.stderr, "is read-only", "'RETURN' at line 1, column 11")


def test_out_into_a_missing_folder_is_created(url, tmp_path, monkeypatch, capsys):
    target = tmp_path / "new" / "deeper" / "rows.csv"
    code, _, err = cli(monkeypatch, capsys, "cypher", "--store", url, "MATCH (p:Prompt) RETURN p.id AS id", "-f", "csv", "-o", str(target))
    assert code == 0, err
    assert len(pd.read_csv(target)) == 2
    target = tmp_path / "q" / "hubs.parquet"
    code, _, err = cli(monkeypatch, capsys, "query", "hubs", "--store", url, "-p", "min_prompts=1", "-f", "parquet", "-o", str(target))
    assert code == 0, err
    assert list(pd.read_parquet(target).columns)[0] == "key"
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for out in (blocker / "rows.csv", tmp_path / "new"):  # under a file; a folder
        code, _, err = cli(monkeypatch, capsys, "cypher", "--store", url, "RETURN 1 AS x", "-f", "csv", "-o", str(out))
        assert one_line_error(code, err, "--out"), err
    assert blocker.read_text() == "x"


@pytest.mark.parametrize("args, words", [
    (["query", "hubs", "-p", "limit=-1"], ["limit", "at least 0"]),
    (["query", "recurring_edges", "-p", "limit=9223372036854775808"], ["limit", "64-bit"]),
    (["query", "hubs", "-p", "min_prompts=-9223372036854775809"], ["min_prompts", "64-bit"]),
    (["cypher", "MATCH (p:Prompt) RETURN p.id LIMIT $limit", "-p", "limit=9223372036854775808"], ["limit", "64-bit"]),
    (["cypher", "RETURN $x AS x", "-p", "x=[1, 99999999999999999999]"], ["x", "64-bit"]),
    (["cypher", "RETURN $x AS x", "-p", "x=NaN"], ["x", "finite"]),
])
def test_integer_parameters_out_of_range_are_one_line(url, monkeypatch, capsys, args, words):
    code, out, err = cli(monkeypatch, capsys, *args, "--store", url)
    assert one_line_error(code, err, *words), err
    assert out == ""


def test_negative_limit_in_ad_hoc_cypher_is_the_store_s_one_line_error(url, monkeypatch, capsys):
    code, _, err = cli(monkeypatch, capsys, "cypher", "--store", url, "MATCH (p:Prompt) RETURN p.id LIMIT $n", "-p", "n=-1")
    assert one_line_error(code, err, "non-negative"), err


def test_every_library_limit_is_checked_before_the_store():
    with_limit = [q for q in list_queries() if "limit" in q.params]
    assert len(with_limit) >= 8
    for q in with_limit:
        for bad, words in ((-1, "at least 0"), (INT64_MAX + 1, "64-bit"), ("1e3", "expected an integer")):
            with pytest.raises(QueryError, match=words):
                q.validate({**_filled(q), "limit": bad})
        assert q.validate({**_filled(q), "limit": 0})["limit"] == 0
        assert q.validate({**_filled(q), "limit": str(INT64_MAX)})["limit"] == INT64_MAX


def _filled(q) -> dict:
    return {p.name: (["none"] if p.type == "list[str]" else "none") for p in q.params.values() if p.required and p.type in ("str", "list[str]")}


@pytest.mark.parametrize("limit", [0, INT64_MAX])
def test_every_library_query_takes_the_extreme_limits_without_a_crash(embedded_store, limit):
    """limit=0 and the largest int64: rows, or one of our one-line errors (e.g. an overflow the
    store reports), never another exception."""
    for q in (q for q in list_queries() if "limit" in q.params):
        try:
            frame = run_query(embedded_store, q.name, {**_filled(q), "limit": limit})
        except (QueryError, StoreError) as exc:
            assert "\n" not in str(exc), (q.name, str(exc))
            continue
        assert list(frame.columns) == q.columns
        if limit == 0 and q.name not in ("feature_profile",):  # its occurrences are all listed
            assert frame.empty, q.name


def test_a_library_file_that_is_not_one_pure_read_is_refused():
    head = "// name: x\n// description: d\n// columns: [a]\n"
    for body, token in [("MATCH (n) DETACH DELETE n", "DETACH"), ("RETURN 1 AS a; RETURN 2 AS a", "RETURN"),
                        ("RETURN 1 AS a\n// @variant bolt\nCALL db.labels()", "CALL"),
                        ("UNWIND [1] AS x WITH x LIMIT 1LOAD FROM 'f' RETURN *", "LOAD")]:
        with pytest.raises(QueryError, match=f"not one pure read: '{token}'"):
            parse_query(head + body)


def test_ad_hoc_parameters_parse_as_json_within_range():
    assert parse_params(["a=9223372036854775807", "b=[1, -2]", "c=text"], typed=True) == {"a": INT64_MAX, "b": [1, -2], "c": "text"}
    with pytest.raises(QueryError, match="64-bit"):
        parse_params(['m={"k": [9223372036854775808]}'], typed=True)
    with pytest.raises(ReadOnlyViolation, match="'CHECKPOINT' at line 1, column 11"):
        refuse_writes("RETURN 1; CHECKPOINT")


def test_the_app_console_refuses_in_one_line_and_still_answers(url, tmp_path, monkeypatch):
    """The app's Cypher console (Streamlit AppTest on the real page and store): obfuscated
    statements of the issue are refused with the token named, a secret file is never shown, the
    store's files do not change, and a read with keywords in its names still runs."""
    import hashlib
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:the-secret-line:/root:/bin/bash\n")
    monkeypatch.setenv("CIRCUIT_ATLAS_STORE", url)
    store_dir = Path(url.removeprefix("embedded:"))

    def tree() -> dict[str, str]:
        return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(store_dir.rglob("*")) if p.is_file()}

    before = tree()
    page = Path(__file__).resolve().parents[2] / "app" / "pages" / "cypher_console.py"
    at = AppTest.from_file(str(page), default_timeout=60).run()
    assert not at.exception
    for statement, token in [
        (f"UNWIND [1] AS x WITH x LIMIT 1LOAD FROM '{secret}' (file_format='csv', header=false, delim=':') RETURN *", "'LOAD'"),
        ("MATCH (p:Prompt) //'\rDETACH DELETE p //'", "'DETACH'"),
        (f"CALL READ_CSV_SERIAL('{secret}') RETURN *", "'CALL'"),
        ("RETURN 1; CHECKPOINT", "'CHECKPOINT'"),
        ("MATCH (p:Prompt) RETURN p.id AS id; MATCH (q:Prompt) RETURN q.id AS id", "'MATCH'"),
    ]:
        at.text_area(key="cc_text").input(statement)
        at.button(key="cc_run").click().run()
        assert not at.exception, statement
        errors = [e.value for e in at.error]
        assert len(errors) == 1 and errors[0].startswith("Refused: the console is read-only.") and token in errors[0], (statement, errors)
        assert "the-secret-line" not in str([m.value for m in at.markdown]) + str(errors)
    at.text_area(key="cc_text").input("MATCH (p:Prompt) // DELETE all\r\nRETURN count(p) AS load;")
    at.button(key="cc_run").click().run()
    assert not at.error and int(at.dataframe[0].value["load"].iloc[0]) == 2
    assert tree() == before


def test_query_tables_never_cut_a_key(monkeypatch, capsys):
    """A result wider than the terminal prints as field/value blocks (every key whole); one that
    fits prints as a table whose columns are not wrapped (feature keys were cut to 'gem…')."""
    import pandas as pd

    from circuit_atlas.queries.cli import write_frame

    keys = [f"gemma-2-2b-clt-hp:{layer}:{index}" for layer, index in ((1, 12928), (25, 131071))]
    wide = pd.DataFrame({f"column_{i}": keys for i in range(11)} | {"prompt_ids": [["p" * 20] * 40] * 2})
    monkeypatch.setenv("COLUMNS", "80")
    write_frame(wide, "table", None, title="wide")
    out = capsys.readouterr().out
    assert all(out.count(k) == 11 for k in keys) and "row 2" in out  # every key whole, once per column
    assert "(+" in out and "--format json for all" in out  # the long list is shortened, and says so
    narrow = pd.DataFrame({"key": keys, "prompts": [18, 3]})
    monkeypatch.setenv("COLUMNS", "60")
    write_frame(narrow, "table", None, title="narrow")
    out = capsys.readouterr().out
    assert all(k in out for k in keys) and "┃ key" in out and "row 1" not in out
