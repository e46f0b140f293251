"""The runner of the Cypher library: load `.cypher` files, validate parameters, run read-only.

Every query is one file in this folder. It starts with a header of ``//`` comment lines that
hold YAML (name, description, params, columns, post, uses_links, needs); the Cypher follows. Text
shared by all backends comes first; a line ``// @variant bolt`` (or ``// @variant embedded``)
starts a replacement text for that backend only, used instead of the shared one there. A line
``// @part NAME`` starts another statement of the same query (each runs read-only; the ``post``
function combines their frames). Parts named ``let_*`` run first and their last row's columns
become parameters of the other parts. ``// @part NAME when PARAM in V1,V2`` runs that part only
when the parameter has one of those values (an empty frame otherwise). See
docs/guides/queries.md for the format.

Queries run through ``Store.read`` (read-only transactions that refuse writes), and user values
reach Cypher only as parameters. Some statistics (medians, log-odds, weighted Jaccard) are
easier in pandas: a header ``post: NAME`` names a function in ``queries/post.py`` that takes the
frames of the query's parts (by part name) and the validated parameters and returns the final
frame.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import yaml

from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.store import cypher_guard, dialect

QUERY_DIR = Path(__file__).resolve().parent
BACKENDS = ("embedded", "bolt")
PARAM_TYPES = ("int", "float", "str", "bool", "list[str]")
_VARIANT = re.compile(r"^\s*//\s*@variant\s+(\S+)\s*$")
_PART = re.compile(r"^\s*//\s*@part\s+([a-z][a-z0-9_]*)(?:\s+when\s+([a-z][a-z0-9_]*)\s+(in|not in)\s+(\S+))?\s*$")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
INT64 = (-(2**63), 2**63 - 1)
ROW_COUNTS = ("limit", "skip")  # int parameters that count rows: never negative
_TRUE = {"1", "true", "yes", "y", "on"}
_FALSE = {"0", "false", "no", "n", "off"}


class QueryError(CircuitAtlasError, ValueError):
    """An unknown query, a malformed query file, or parameters that do not fit a query."""


@dataclass(frozen=True)
class Param:
    """One declared parameter: its type, default (None when required) and help text."""

    name: str
    type: str
    default: Any = None
    required: bool = False
    help: str = ""
    min: float | None = None  # the least value a number may take (header `min:`)

    def coerce(self, value: Any, query: str) -> Any:
        """Turn a Python value or a command-line string into this parameter's type."""
        out = self._coerce(value, query)
        if self.min is not None and out < self.min:
            raise QueryError(f"query '{query}', parameter '{self.name}': must be at least {self.min:g}, got {out}")
        return out

    def _coerce(self, value: Any, query: str) -> Any:
        where = f"query '{query}', parameter '{self.name}' ({self.type})"
        if self.type == "list[str]":
            if isinstance(value, str):
                text = value.strip()
                if text.startswith("["):
                    try:
                        value = json.loads(text)
                    except json.JSONDecodeError as exc:
                        raise QueryError(f"{where}: {value!r} is not a JSON list ({exc.msg})") from None
                else:
                    value = [v.strip() for v in text.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise QueryError(f"{where}: expected a list of strings, got {value!r}")
            return list(value)
        if self.type == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
                return value.strip().lower() in _TRUE
            raise QueryError(f"{where}: expected true or false, got {value!r}")
        if self.type == "int":
            if isinstance(value, bool):
                raise QueryError(f"{where}: expected an integer, got {value!r}")
            out: int | None = None
            if isinstance(value, int):
                out = int(value)
            elif isinstance(value, float) and value.is_integer():
                out = int(value)
            elif isinstance(value, str):
                try:
                    out = int(value.strip())
                except ValueError:
                    pass
            if out is None:
                raise QueryError(f"{where}: expected an integer, got {value!r}")
            if not INT64[0] <= out <= INT64[1]:  # the stores take 64-bit integers only
                raise QueryError(f"{where}: {out} is outside the 64-bit integer range")
            if self.name in ROW_COUNTS and out < 0:  # LadybugDB errors, Bolt returns every row
                raise QueryError(f"{where}: must be at least 0, got {out}")
            return out
        if self.type == "float":
            if isinstance(value, bool):
                raise QueryError(f"{where}: expected a number, got {value!r}")
            if isinstance(value, (int, float)):
                out = float(value)
            elif isinstance(value, str):
                try:
                    out = float(value.strip())
                except ValueError:
                    raise QueryError(f"{where}: expected a number, got {value!r}") from None
            else:
                raise QueryError(f"{where}: expected a number, got {value!r}")
            if not math.isfinite(out):
                raise QueryError(f"{where}: expected a finite number, got {value!r}")
            return out
        if not isinstance(value, str):
            raise QueryError(f"{where}: expected a string, got {value!r}")
        return value


@dataclass(frozen=True)
class Query:
    """One library query: header fields plus its Cypher text and per-backend variants."""

    name: str
    description: str
    params: dict[str, Param]
    columns: list[str]
    parts: dict[str, dict[str, str]]
    when: dict[str, tuple[str, frozenset[str], bool]] = field(default_factory=dict)  # part -> (param, values, negated)
    post: str | None = None
    uses_links: bool = False
    needs: tuple[str, ...] = ()  # header `needs: derived`: refuses a store whose derived layer is stale
    notes: str = ""
    examples: list[str] = field(default_factory=list)
    path: Path | None = None

    def cypher_for(self, backend: str, part: str | None = None) -> str:
        """The text of a part on a backend: its variant if the file has one, else the shared text."""
        texts = self.parts[part or next(iter(self.parts))]
        text = texts.get(backend, texts[""])
        return text if backend in ("embedded", "") else dialect.without_hints(text)

    def runs(self, part: str, values: Mapping[str, Any]) -> bool:
        """False when the part's ``when PARAM [not] in V1,V2`` condition does not hold for ``values``."""
        if part not in self.when:
            return True
        name, listed, negated = self.when[part]
        return (str(values.get(name)) in listed) != negated

    @property
    def text(self) -> str:
        """The shared text of the first part (what most queries consist of)."""
        return self.cypher_for("")

    def validate(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """Check names and types, fill defaults; raise QueryError naming the query and parameter."""
        params = dict(params or {})
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            known = ", ".join(self.params) or "none"
            raise QueryError(f"query '{self.name}' has no parameter {', '.join(map(repr, unknown))} (parameters: {known})")
        out: dict[str, Any] = {}
        for name, spec in self.params.items():
            if name in params and params[name] is not None:
                out[name] = spec.coerce(params[name], self.name)
            elif spec.required:
                raise QueryError(f"query '{self.name}' needs parameter '{name}' ({spec.type}): {spec.help}")
            else:
                out[name] = spec.default
        return out


def parse_query(text: str, path: Path | None = None) -> Query:
    """Parse a .cypher file: YAML header in leading ``//`` lines, then Cypher and variants."""
    where = str(path) if path else "<query text>"
    lines = text.splitlines()
    header: list[str] = []
    i = 0
    while i < len(lines) and lines[i].lstrip().startswith("//") and not _VARIANT.match(lines[i]) and not _PART.match(lines[i]):
        line = lines[i].lstrip()[2:]
        header.append(line[1:] if line.startswith(" ") else line)
        i += 1
    try:
        meta = yaml.safe_load("\n".join(header)) or {}
    except yaml.YAMLError as exc:
        raise QueryError(f"{where}: header is not valid YAML ({exc})") from None
    if not isinstance(meta, dict):
        raise QueryError(f"{where}: header must be a mapping of fields")
    for key in ("name", "description", "columns"):
        if key not in meta:
            raise QueryError(f"{where}: header lacks '{key}'")
    name = str(meta["name"])
    if not _NAME.match(name):
        raise QueryError(f"{where}: query name {name!r} must be lower_snake_case")
    params: dict[str, Param] = {}
    for pname, spec in (meta.get("params") or {}).items():
        if not isinstance(spec, dict) or spec.get("type") not in PARAM_TYPES:
            raise QueryError(f"{where}: parameter '{pname}' needs a type in {PARAM_TYPES}")
        required = "default" not in spec
        lowest = spec.get("min")
        if lowest is not None and (spec["type"] not in ("int", "float") or not isinstance(lowest, (int, float))):
            raise QueryError(f"{where}: parameter '{pname}': 'min' needs a number on an int or float parameter")
        param = Param(str(pname), spec["type"], None, required, str(spec.get("help", "")), lowest)
        params[str(pname)] = param if required else replace(param, default=param.coerce(spec["default"], name))
    # parts[part][backend or ""] -> lines; the first part is "main" unless named.
    parts: dict[str, dict[str, list[str]]] = {"main": {"": []}}
    when: dict[str, tuple[str, frozenset[str], bool]] = {}
    part, backend = "main", ""
    for line in lines[i:]:
        m = _PART.match(line)
        if m:
            part, backend = m.group(1), ""
            if m.group(2):
                if m.group(2) not in params:
                    raise QueryError(f"{where}: part '{part}' runs when '{m.group(2)}' ..., which is not a parameter")
                when[part] = (m.group(2), frozenset(m.group(4).split(",")), m.group(3) == "not in")
            if part in parts and any(parts[part][""]):
                raise QueryError(f"{where}: part '{part}' appears twice")
            parts[part] = {"": []}
            continue
        m = _VARIANT.match(line)
        if m:
            backend = m.group(1)
            if backend not in BACKENDS:
                raise QueryError(f"{where}: unknown variant '{backend}' (backends: {', '.join(BACKENDS)})")
            parts[part][backend] = []
            continue
        parts[part][backend].append(line)
    texts = {p: {b: "\n".join(v).strip() for b, v in d.items()} for p, d in parts.items()}
    if not texts["main"][""] and len(texts) > 1:
        texts.pop("main")
    for p, d in texts.items():
        if not d[""]:
            raise QueryError(f"{where}: part '{p}' has no Cypher")
        for backend, text in d.items():  # a library query is one pure read, like any other read
            sent = [text] if backend == "embedded" else [text, dialect.without_hints(text)] if backend == "" else [dialect.without_hints(text)]
            refused = next((r for r in map(cypher_guard.refusal, sent) if r is not None), None)
            if refused is not None:
                raise QueryError(f"{where}: part '{p}'{f' ({backend})' if backend else ''} is not one pure read: {refused}")
    if len(texts) > 1 and not meta.get("post"):
        raise QueryError(f"{where}: a query with several parts needs a 'post' function to combine them")
    columns = meta["columns"]
    if isinstance(columns, dict):
        columns = list(columns)
    return Query(
        name=name,
        description=str(meta["description"]).strip(),
        params=params,
        columns=[str(c) for c in columns],
        parts=texts,
        when=when,
        post=meta.get("post"),
        uses_links=bool(meta.get("uses_links", False)),
        needs=_needs(meta.get("needs"), where),
        notes=str(meta.get("notes", "") or "").strip(),
        examples=[str(e) for e in meta.get("examples", []) or []],
        path=path,
    )


NEEDS = ("derived",)  # what a query may declare it needs (`needs:` in its header)


def _needs(value: Any, where: str) -> tuple[str, ...]:
    """The header's `needs:` (one name or a list) checked against NEEDS."""
    items = [] if value is None else [value] if isinstance(value, str) else value
    if not isinstance(items, list) or any(v not in NEEDS for v in items):
        raise QueryError(f"{where}: 'needs' takes {', '.join(NEEDS)} (one or a list), got {value!r}")
    return tuple(items)


def require_fresh(store: Any, query: Query) -> None:
    """Refuse (DerivedLayerStale, one line saying what to run) a query that needs the derived
    layer on a store where it is stale, rather than answer from an out-of-date one."""
    stale = getattr(store, "derived_stale", None)
    if "derived" in query.needs and callable(stale) and stale():
        from circuit_atlas.store.base import DerivedLayerStale, stale_message

        raise DerivedLayerStale(stale_message(getattr(store, "url", "the store"), f"query '{query.name}'"))


def column_docs(query: Query) -> dict[str, str]:
    """Column name -> description, when the header gives columns as a mapping."""
    text = query.path.read_text() if query.path else ""
    header = []
    for line in text.splitlines():
        if not line.lstrip().startswith("//") or _VARIANT.match(line) or _PART.match(line):
            break
        header.append(line.lstrip()[3:])
    try:
        cols = (yaml.safe_load("\n".join(header)) or {}).get("columns")
    except yaml.YAMLError:
        return {}
    return {str(k): str(v) for k, v in cols.items()} if isinstance(cols, dict) else {}


@lru_cache(maxsize=None)
def _load_file(path: str, mtime: float) -> Query:
    return parse_query(Path(path).read_text(), Path(path))


def load_query(name: str) -> Query:
    """The query called ``name`` (its file ``queries/NAME.cypher``)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise QueryError(f"no query named {name!r}; see `circuit-atlas query --list`")
    path = QUERY_DIR / f"{name}.cypher"
    if not path.is_file():
        names = ", ".join(q.name for q in list_queries())
        raise QueryError(f"no query named '{name}' (queries: {names})")
    query = _load_file(str(path), path.stat().st_mtime)
    if query.name != name:
        raise QueryError(f"{path}: header names the query '{query.name}', file is named '{name}'")
    return query


def list_queries() -> list[Query]:
    """Every query in the library, sorted by name."""
    return [_load_file(str(p), p.stat().st_mtime) for p in sorted(QUERY_DIR.glob("*.cypher"))]


def backend_of(store: Any) -> str:
    """'embedded' or 'bolt': which variant of a query a store runs."""
    name = getattr(store, "backend", None)
    if isinstance(name, str):
        low = name.lower()
        if low in BACKENDS:
            return low
        return "embedded" if ("ladybug" in low or "embedded" in low or "kuzu" in low) else "bolt"
    cls = type(store).__name__.lower()
    return "embedded" if ("ladybug" in cls or "embedded" in cls or "kuzu" in cls) else "bolt"


def _read(store: Any, cypher: str, values: dict[str, Any]) -> Any:
    """``store.read`` behind the read guard (every store's ``read`` checks again; the runner does
    not rely on a store it is given to do so)."""
    cypher_guard.require_read(cypher)
    return store.read(cypher, values)


def let_values(store: Any, query: Query, values: dict[str, Any]) -> dict[str, Any] | None:
    """``values`` plus what the query's ``let_*`` parts compute, or None when one has no rows.

    Parts named let_* run first, in file order; their last row's columns become parameters of
    the later parts (a value computed in its own statement, e.g. a cut-off from ORDER BY ...
    LIMIT). A let_ part with no rows means the query has none."""
    backend = backend_of(store)
    for part in (p for p in query.parts if p.startswith("let_") and query.runs(p, values)):
        frame = _read(store, query.cypher_for(backend, part), values)
        frame = frame if isinstance(frame, pd.DataFrame) else pd.DataFrame(frame)
        if frame.empty:
            return None
        last = frame.iloc[-1]
        values = {**values, **{k: (v.item() if hasattr(v, "item") else v) for k, v in last.items()}}
    return values


def run_query(store: Any, name: str, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Run library query ``name`` on ``store`` read-only and return its result as a DataFrame."""
    query = load_query(name)
    backend = backend_of(store)
    declared = query.validate(params)
    require_fresh(store, query)
    values = let_values(store, query, declared)
    frames = {}
    for part in (p for p in query.parts if not p.startswith("let_")):
        if values is None or not query.runs(part, values):
            frames[part] = pd.DataFrame()
            continue
        frame = _read(store, query.cypher_for(backend, part), values)
        frames[part] = frame if isinstance(frame, pd.DataFrame) else pd.DataFrame(frame)
    values = values if values is not None else declared
    if query.post:
        from circuit_atlas.queries import post

        fn = getattr(post, query.post, None)
        if fn is None:
            raise QueryError(f"query '{name}' names post-processing '{query.post}', which queries/post.py lacks")
        frame = fn(frames, values)
    else:
        frame = next(iter(frames.values()))
    if len(frame) == 0:  # no rows: still give every promised column
        frame = pd.DataFrame({c: frame[c] if c in frame.columns else pd.Series([], dtype=object) for c in query.columns})
    missing = [c for c in query.columns if c not in frame.columns]
    if missing:
        raise QueryError(f"query '{name}' returned no columns {missing}; its header promises them")
    return frame[query.columns].reset_index(drop=True)
