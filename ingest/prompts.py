"""Prompt corpora for ingest: read rows, validate each one, and report bad rows without stopping.

A corpus is a ``.txt`` file (one prompt per line; blank lines are skipped) or a ``.jsonl`` /
``.csv`` / ``.parquet`` file with a ``prompt`` column (another name with ``field``) and the
optional columns ``id``, ``tags``, ``expected`` and ``group``. Reading the formats is
``engine.training.corpus.iter_records``'s job; this module turns records into :class:`PromptRow` and
checks what ingest needs: the prompt is text, decodable, not empty, and (with a model) not
longer than the model's context. A bad row becomes a :class:`RowFailure` (row number, id,
reason, raw value) that goes to the failures file; ``fail_fast`` raises at the first instead.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from circuit_atlas.engine.training.corpus import CorpusError, CorpusRowError, iter_records
from circuit_atlas.errors import CircuitAtlasError

OPTIONAL_COLUMNS = ("id", "tags", "expected", "group")


class PromptRowError(CircuitAtlasError, ValueError):
    """A bad corpus row met with ``--fail-fast``; names the file, the row and the reason."""


@dataclass
class PromptRow:
    """One usable prompt of a corpus, with the properties ingest stores on its Prompt node."""

    row: int  # 1-based: the line number for .txt/.jsonl, the data row for .csv/.parquet
    text: str
    external_id: str | None = None
    tags: list[str] = field(default_factory=list)
    expected: str | None = None
    group: str | None = None
    token_ids: list[int] | None = None  # filled by validation against a model


@dataclass
class RowFailure:
    """A row that could not be used (or whose attribution failed), and why."""

    row: int
    id: str | None
    reason: str
    raw: Any = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=_jsonable, ensure_ascii=False)


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="backslashreplace")
    if hasattr(v, "tolist"):
        return v.tolist()
    if hasattr(v, "item"):
        return v.item()
    return str(v)


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _text_value(name: str, v: Any) -> str:
    """A text cell as str; bytes must be UTF-8. Raises ValueError with the reason."""
    if isinstance(v, bytes):
        try:
            v = v.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{name} is not valid UTF-8") from None
    if not isinstance(v, str):
        raise ValueError(f"{name} is {type(v).__name__}, not text")
    if any("\udc80" <= ch <= "\udcff" for ch in v):
        raise ValueError(f"{name} is not valid UTF-8")
    return v


def _optional_text(name: str, v: Any) -> str | None:
    if _is_missing(v):
        return None
    if isinstance(v, bool):
        raise ValueError(f"{name} is bool, not text")
    if isinstance(v, int):  # numeric ids / expected tokens in CSV-like data are fine
        return str(v)
    text = _text_value(name, v)
    return text if text != "" else None  # an empty CSV cell is a missing value


def _tags(v: Any) -> list[str]:
    """A list of strings, or one string of comma-separated tags (CSV cells)."""
    if _is_missing(v):
        return []
    if isinstance(v, (str, bytes)):
        return [t.strip() for t in _text_value("tags", v).split(",") if t.strip()]
    if hasattr(v, "tolist") and not isinstance(v, (list, tuple)):
        v = v.tolist()
    if isinstance(v, (list, tuple)):
        out = []
        for t in v:
            if not isinstance(t, (str, int)) or isinstance(t, bool):
                raise ValueError(f"tags holds a {type(t).__name__}; expected strings")
            out.append(str(t))
        return out
    raise ValueError(f"tags is {type(v).__name__}; expected a list of strings or a comma-separated string")


def parse_record(row: int, record: dict, field_name: str = "prompt") -> PromptRow:
    """A PromptRow from one record; ValueError names what is wrong with it."""
    if field_name not in record:
        raise ValueError(f"no field {field_name!r} (fields: {', '.join(map(str, record)) or 'none'})")
    if _is_missing(record[field_name]):
        raise ValueError(f"{field_name} is empty")
    text = _text_value(field_name, record[field_name])
    if not text.strip():
        raise ValueError(f"{field_name} is empty")
    return PromptRow(
        row=row,
        text=text,
        external_id=_optional_text("id", record.get("id")),
        tags=_tags(record.get("tags")),
        expected=_optional_text("expected", record.get("expected")),
        group=_optional_text("group", record.get("group")),
    )


def _raw_lines(path: Path, rows: set[int]) -> dict[int, str]:
    """The raw text of some lines of a line-based file, undecodable bytes escaped."""
    out: dict[int, str] = {}
    if not rows:
        return out
    with open(path, "rb") as fh:
        for n, line in enumerate(fh, start=1):
            if n in rows:
                out[n] = line.rstrip(b"\r\n").decode("utf-8", errors="backslashreplace")
                if len(out) == len(rows):
                    break
    return out


def iter_prompt_rows(
    corpus: str | os.PathLike,
    *,
    field_name: str = "prompt",
    limit: int | None = None,
) -> Iterator[PromptRow | RowFailure]:
    """Every row of the corpus as a PromptRow, or a RowFailure saying why it is unusable.

    A missing file or unknown format raises ``CorpusError`` at once (nothing to continue with).
    ``limit`` counts rows read, good or bad."""
    path = Path(os.fspath(corpus)).expanduser()
    line_based = path.suffix.lower() in (".txt", ".text", ".jsonl", ".ndjson")
    n_read = 0
    for row, rec in iter_records(path, field_name if path.suffix.lower() in (".txt", ".text") else None):
        if limit is not None and n_read >= limit:
            return
        n_read += 1
        if isinstance(rec, CorpusRowError):
            raw = _raw_lines(path, {row}).get(row) if line_based else None
            yield RowFailure(row=row, id=None, reason=rec.message, raw=raw)
            continue
        try:
            yield parse_record(row, rec, field_name)
        except ValueError as exc:
            rid = rec.get("id")
            yield RowFailure(row=row, id=None if _is_missing(rid) else str(rid), reason=str(exc), raw=rec)


def check_corpus(corpus: str | os.PathLike, *, field_name: str = "prompt") -> None:
    """Raise ``CorpusError`` now if the corpus cannot be read at all (missing file, a folder,
    unknown format, missing column), by reading its first row: before a model takes seconds to
    load, not after."""
    next(iter(iter_prompt_rows(corpus, field_name=field_name, limit=1)), None)


def validate_tokens(prompt: PromptRow, tokenize: Callable[[str], list[int]]) -> PromptRow | RowFailure:
    """Tokenize with the model (``LoadedModel.tokenize``): empty or over-long prompts fail."""
    try:
        prompt.token_ids = [int(t) for t in tokenize(prompt.text)]
    except CircuitAtlasError as exc:  # PromptError: empty / longer than the context / undecodable
        return RowFailure(row=prompt.row, id=prompt.external_id, reason=str(exc), raw=prompt.text)
    return prompt


class FailureLog:
    """The failures file: one JSON object per line (row, id, reason, raw), written as they come
    so a killed run still leaves what it found. ``fail_fast`` raises at the first failure."""

    def __init__(self, path: str | os.PathLike | None, *, source: str = "", fail_fast: bool = False) -> None:
        self.path = Path(path) if path is not None else None
        self.source = source
        self.fail_fast = fail_fast
        self.failures: list[RowFailure] = []
        self._fh = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "w", encoding="utf-8")

    def add(self, failure: RowFailure) -> None:
        self.failures.append(failure)
        if self._fh is not None:
            self._fh.write(failure.to_json() + "\n")
            self._fh.flush()
        if self.fail_fast:
            self.close()
            ident = f" (id {failure.id})" if failure.id else ""
            raise PromptRowError(f"{self.source}: row {failure.row}{ident}: {failure.reason} (--fail-fast)")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __len__(self) -> int:
        return len(self.failures)


def read_failures(path: str | os.PathLike) -> list[dict]:
    """The failures file back as dicts (for tests and reports)."""
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


__all__ = [
    "CorpusError",
    "FailureLog",
    "PromptRow",
    "PromptRowError",
    "RowFailure",
    "iter_prompt_rows",
    "parse_record",
    "read_failures",
    "validate_tokens",
]
