"""Reading prompt corpora: every format, the optional columns, and every kind of bad row."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from circuit_atlas.engine.training.corpus import CorpusError
from circuit_atlas.ingest.prompts import (
    FailureLog,
    PromptRow,
    PromptRowError,
    RowFailure,
    iter_prompt_rows,
    read_failures,
)


def _split(items):
    good = [i for i in items if isinstance(i, PromptRow)]
    bad = [i for i in items if isinstance(i, RowFailure)]
    return good, bad


def test_txt_one_prompt_per_line_blank_lines_skipped(tmp_path):
    f = tmp_path / "p.txt"
    f.write_bytes(b"The capital of France is\n\n  Dallas is in  \nbad \xff byte\n")
    good, bad = _split(list(iter_prompt_rows(f)))
    assert [(p.row, p.text) for p in good] == [(1, "The capital of France is"), (3, "  Dallas is in  ")]
    assert [(b.row, b.reason) for b in bad] == [(4, "not valid UTF-8")]
    assert bad[0].raw == "bad \\xff byte"


def test_jsonl_columns_and_bad_rows(tmp_path):
    f = tmp_path / "p.jsonl"
    lines = [
        json.dumps({"id": "a", "prompt": "one", "tags": ["x", "y"], "expected": " Paris", "group": "capital"}),
        json.dumps({"id": 7, "prompt": "two", "tags": "u, v"}),
        json.dumps({"id": "c", "prompt": ""}),
        json.dumps({"id": "d", "prompt": 3}),
        json.dumps({"id": "e", "text": "wrong field"}),
        json.dumps({"id": "f", "prompt": "ok", "tags": {"no": 1}}),
        "{not json",
        json.dumps(["a list"]),
    ]
    f.write_text("\n".join(lines) + "\n")
    good, bad = _split(list(iter_prompt_rows(f)))
    assert good[0] == PromptRow(row=1, text="one", external_id="a", tags=["x", "y"], expected=" Paris", group="capital")
    assert (good[1].external_id, good[1].tags, good[1].expected) == ("7", ["u", "v"], None)
    reasons = {b.row: (b.id, b.reason) for b in bad}
    assert reasons[3] == ("c", "prompt is empty")
    assert reasons[4] == ("d", "prompt is int, not text")
    assert reasons[5][1].startswith("no field 'prompt'")
    assert reasons[6][1].startswith("tags is dict")
    assert reasons[7][1].startswith("not valid JSON")
    assert reasons[8][1] == "a JSON list, not an object"
    assert len(good) + len(bad) == len(lines)


def test_csv_and_parquet_with_field_option(tmp_path):
    df = pd.DataFrame({"text": ["alpha", "", "gamma"], "id": ["1", "2", "3"], "group": ["g", "g", ""],
                       "tags": ["a,b", "", "c"]})
    csv = tmp_path / "p.csv"
    df.to_csv(csv, index=False)
    good, bad = _split(list(iter_prompt_rows(csv, field_name="text")))
    assert [(p.row, p.text, p.tags, p.group) for p in good] == [(1, "alpha", ["a", "b"], "g"), (3, "gamma", ["c"], None)]
    assert [(b.row, b.id) for b in bad] == [(2, "2")]
    pqf = tmp_path / "p.parquet"
    pq.write_table(pa.table({"text": pa.array([b"ok", b"\xff\xfe"], pa.binary()), "id": ["x", "y"]}), pqf)
    good, bad = _split(list(iter_prompt_rows(pqf, field_name="text")))
    assert [p.text for p in good] == ["ok"]
    assert (bad[0].row, bad[0].reason) == (2, "text is not valid UTF-8")


def test_limit_counts_rows_read(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("\n".join(f"prompt {i}" for i in range(10)))
    assert len(list(iter_prompt_rows(f, limit=4))) == 4


def test_missing_or_unknown_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(CorpusError, match="not found"):
        list(iter_prompt_rows(tmp_path / "none.jsonl"))
    (tmp_path / "p.xml").write_text("<a/>")
    with pytest.raises(CorpusError, match="cannot tell the corpus format"):
        list(iter_prompt_rows(tmp_path / "p.xml"))


def test_failure_log_writes_as_it_goes_and_fail_fast_raises(tmp_path):
    log = FailureLog(tmp_path / "f.jsonl", source="c.jsonl")
    log.add(RowFailure(row=3, id="x", reason="prompt is empty", raw={"prompt": ""}))
    assert read_failures(tmp_path / "f.jsonl") == [{"row": 3, "id": "x", "reason": "prompt is empty", "raw": {"prompt": ""}}]
    log.close()
    strict = FailureLog(tmp_path / "g.jsonl", source="c.jsonl", fail_fast=True)
    with pytest.raises(PromptRowError, match=r"c.jsonl: row 5 \(id y\): too long"):
        strict.add(RowFailure(row=5, id="y", reason="too long"))
    assert read_failures(tmp_path / "g.jsonl")[0]["row"] == 5
