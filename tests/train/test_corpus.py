"""Corpus readers: every format, bad rows reported with row numbers, bad sources refused early."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from circuit_atlas.engine.training.corpus import (
    CorpusError,
    CorpusRowError,
    CorpusStats,
    default_corpus,
    demo_prompt_texts,
    docs_corpus,
    iter_records,
    iter_texts,
    load_texts,
)
from circuit_atlas.errors import CircuitAtlasError


def _split(records):
    good = [(n, r) for n, r in records if not isinstance(r, CorpusRowError)]
    bad = [(n, r) for n, r in records if isinstance(r, CorpusRowError)]
    return good, bad


def test_txt_lines_and_whole_file(tmp_path: Path) -> None:
    p = tmp_path / "a.txt"
    p.write_bytes(b"first doc\n\nsecond doc\n\xff\xfe broken\nthird\n")
    good, bad = _split(list(iter_records(p)))
    assert [r["text"] for _, r in good] == ["first doc", "second doc", "third"]
    assert [n for n, _ in good] == [1, 3, 5]
    assert len(bad) == 1 and bad[0][0] == 4 and "UTF-8" in bad[0][1].message
    whole = list(iter_records(tmp_path / "a.txt", whole_file=True))
    assert len(whole) == 1 and isinstance(whole[0][1], CorpusRowError)  # undecodable whole file
    q = tmp_path / "b.txt"
    q.write_text("line one\nline two\n")
    (n, rec), = list(iter_records(q, whole_file=True))
    assert rec["text"] == "line one\nline two\n"


def test_jsonl_field_and_bad_rows(tmp_path: Path) -> None:
    p = tmp_path / "c.jsonl"
    rows = [json.dumps({"body": "hello there", "id": 1}), "{not json", json.dumps([1, 2]), json.dumps({"id": 3}),
            json.dumps({"body": 5}), json.dumps({"body": "  "}), json.dumps({"body": "last one", "tag": "x"})]
    p.write_text("\n".join(rows) + "\n")
    good, bad = _split(list(iter_records(p, "body")))
    assert [(n, r["body"]) for n, r in good] == [(1, "hello there"), (7, "last one")]
    assert good[1][1]["tag"] == "x"  # other columns kept
    assert [n for n, _ in bad] == [2, 3, 4, 5, 6]
    msgs = [str(e) for _, e in bad]
    assert "row 2" in msgs[0] and "JSON" in msgs[0]
    assert "no field 'body'" in msgs[2]
    stats = CorpusStats()
    assert list(iter_texts(p, "body", stats=stats)) == ["hello there", "last one"]
    assert stats.good == 2 and stats.bad == 5


def test_csv_and_parquet(tmp_path: Path) -> None:
    c = tmp_path / "d.csv"
    c.write_text('prompt,group\n"The capital of France is",capital\nonly-one-cell\n"Hot, cold",antonym\n')
    good, bad = _split(list(iter_records(c, "prompt")))
    assert [r["prompt"] for _, r in good] == ["The capital of France is", "Hot, cold"]
    assert good[1][1]["group"] == "antonym"
    assert [n for n, _ in bad] == [2] and "cells" in bad[0][1].message
    pq = tmp_path / "e.parquet"
    pd.DataFrame({"text": ["a b c", None, "d e f"], "n": [1, 2, 3]}).to_parquet(pq)
    good, bad = _split(list(iter_records(pq, "text")))
    assert [(n, r["text"], r["n"]) for n, r in good] == [(1, "a b c", 1), (3, "d e f", 3)]
    assert [n for n, _ in bad] == [2]
    with pytest.raises(CorpusError, match="no column 'body'.*text, n"):
        list(iter_records(pq, "body"))


def test_bad_sources_raise_before_reading(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="not found"):
        list(iter_records(tmp_path / "missing.jsonl"))
    (tmp_path / "x.docx").write_text("x")
    with pytest.raises(CorpusError, match="format"):
        list(iter_records(tmp_path / "x.docx"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(CorpusError, match="empty"):
        load_texts(empty)
    wrong = tmp_path / "w.jsonl"
    wrong.write_text(json.dumps({"prompt": "a"}) + "\n" + json.dumps({"prompt": "b"}) + "\n")
    with pytest.raises(CorpusError, match="none of its 2 rows.*no field 'text'") as exc:
        load_texts(wrong)
    assert isinstance(exc.value, CircuitAtlasError)
    assert load_texts(wrong, field="prompt") == ["a", "b"]


def test_hf_without_datasets_or_network_is_a_clear_error() -> None:
    with pytest.raises(CorpusError, match="hf:nobody/none"):
        list(iter_records("hf:nobody/none"))


def test_docs_corpus_is_english_deduplicated_and_seeded(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CIRCUIT_ATLAS_HOME", str(tmp_path / "home"))
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    para = "This function returns the number of items that are in the queue and is safe to call from any thread."
    (pkg / "m.py").write_text(f'"""{para}"""\n\ndef f():\n    """{para}"""\n\ndef g():\n    """x = {{1: 2}}; y = [3]"""\n')
    (pkg / "README.md").write_text(
        "# Title\n\nThe library reads a file and writes it to the store, so that a second run of the tool is fast and cheap.\n\n"
        "```\ncode = 1\n```\n"
    )
    (pkg / "LICENSE.md").write_text("Permission is hereby granted, free of charge, to any person obtaining a copy of this software and the files.")
    a = docs_corpus(1000, seed=1, roots=[pkg], progress=False)
    b = docs_corpus(1000, seed=1, roots=[pkg], progress=False)
    assert a == b
    assert sorted(a) == sorted([para, "The library reads a file and writes it to the store, so that a second run of the tool is fast and cheap."])
    real = docs_corpus(3000, seed=0, progress=False)  # the installed packages; cached afterwards
    assert sum(map(len, real)) >= 3000 * 4 * 0.9
    assert (tmp_path / "home" / "corpora" / "docs-3000-seed0.jsonl").exists()
    assert docs_corpus(3000, seed=0, progress=False) == real


def test_default_corpus_is_the_pinned_corpus_plus_the_demo_prompts() -> None:
    """`default` (and None) is the pinned Brown corpus, prompts first so a token budget keeps them; `docs` stays an option."""
    prompts = demo_prompt_texts()
    assert "The capital of France is Paris" in prompts
    a = load_texts("default", tokens=5000, seed=3)
    assert a == load_texts(None, tokens=5000, seed=3) == default_corpus(5000, seed=3)
    assert a[: len(prompts)] == prompts
    brown = a[len(prompts):]
    assert 5000 * 4 <= sum(map(len, brown)) < 5000 * 4 + 4000  # the budget, overshot by at most one document
    assert not any("/nn" in t or "``" in t for t in brown)  # tags and Form C quotes are gone
    assert load_texts("default", tokens=5000, seed=4)[len(prompts):] != brown
    extra = default_corpus(1000, seed=0, extra_texts=["A stored prompt is here", prompts[0]])
    assert extra[len(prompts)] == "A stored prompt is here" and extra.count(prompts[0]) == 1
