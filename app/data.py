"""Store access for the app: one cached read-only connection per store URL, query results
cached per store version, and short-lived writer connections for user annotations.

Another process may write the store while the app reads it (an ingest, an import). The cached
reader notices (an embedded store compares its files' size and time before every statement;
every write changes Meta.write_token) and reopens on what is there now, so pages never show the
old data as current; while a write is in the middle of a checkpoint, or the derived layer is
being rebuilt, a page says so and when to retry instead of failing (``NoData`` of kind
``busy`` / ``stale``).

Pages never speak a database API: they read through ``run_query`` (the query library) or
``read`` (a few small statements of their own, read-only), and write only labels and
supernodes through the store's annotation helpers.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import streamlit as st

from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.store import Store, StoreError, default_url, open_store
from circuit_atlas.store.base import DerivedLayerStale, StoreBusy

EMPTY_HELP = (
    "Load some attribution graphs first:\n\n"
    "- `circuit-atlas demo` builds a demo model, transcoders and corpus and serves this app, or\n"
    "- `circuit-atlas ingest CORPUS --model M --transcoders T` attributes your prompts into the store, or\n"
    "- `circuit-atlas import PATH` loads graphs you already have (graph directories, Neuronpedia JSON, "
    "circuit-tracer .pt).\n\n"
    "You can load while this app runs: the pages show the new graphs on their next run (reload the page); "
    "while a load is being written they may say so and ask you to retry in a few seconds. "
    "Pick another store with `circuit-atlas app --store URL`."
)


class NoData(Exception):
    """The store holds no prompts (an empty state), cannot be reached (``unreachable``: an
    error the user must fix, such as a stopped server or wrong credentials), is being written by
    another process (kind ``busy``: retry shortly) or its derived layer is stale (``stale``)."""

    def __init__(self, message: str, unreachable: bool = False, kind: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind or ("unreachable" if unreachable else "empty")
        self.unreachable = self.kind != "empty"


@contextmanager
def _answering() -> Iterator[None]:
    """A busy store or a stale derived layer as NoData, which every page shows as a message."""
    try:
        yield
    except StoreBusy as exc:
        raise NoData(str(exc), kind="busy") from exc
    except DerivedLayerStale as exc:
        raise NoData(str(exc), kind="stale") from exc


def store_url() -> str:
    """The store this app serves: CIRCUIT_ATLAS_STORE (set by `circuit-atlas app`) or the default."""
    return os.environ.get("CIRCUIT_ATLAS_STORE") or default_url()


@st.cache_resource(show_spinner=False)
def _reader(url: str) -> Store:
    return open_store(url, read_only=True)


def get_store(url: str | None = None) -> Store:
    """The cached read-only store; raises NoData with a message a user can act on."""
    url = url or store_url()
    if url.startswith("embedded:"):
        from circuit_atlas.store.embedded import DB_FILE

        if not (Path(url[len("embedded:"):]).expanduser() / DB_FILE).exists():
            raise NoData(f"There is no store at `{url}` yet.")
    try:
        return _reader(url)
    except StoreBusy as exc:
        raise NoData(str(exc), kind="busy") from exc
    except (CircuitAtlasError, OSError, RuntimeError) as exc:
        raise NoData(f"Cannot open the store `{url}`: {exc}", unreachable=True) from exc


def version(store: Store) -> str:
    """A token that changes on every write, so cached results stay fresh (falls back to counts)."""
    token = getattr(store, "version_token", None)
    with _answering():
        if token is not None:
            try:
                return str(token())
            except StoreBusy:
                raise
            except CircuitAtlasError:
                pass
        return json.dumps(store.stats(), sort_keys=True, default=str)


@st.cache_data(show_spinner=False, max_entries=512)
def _cached_query(url: str, ver: str, name: str, params: dict[str, Any]) -> pd.DataFrame:
    from circuit_atlas.queries.runner import run_query

    return run_query(_reader(url), name, params)


@st.cache_data(show_spinner=False, max_entries=512)
def _cached_read(url: str, ver: str, cypher: str, params: dict[str, Any]) -> pd.DataFrame:
    return _reader(url).read(cypher, params)


@st.cache_data(show_spinner=False, max_entries=16)
def _cached_stats(url: str, ver: str) -> dict[str, Any]:
    return _reader(url).stats()


def query(name: str, params: dict[str, Any] | None = None) -> pd.DataFrame:
    """A library query's result, cached per store URL and version; every feature label column it
    returns comes with where that label came from (``with_label_sources``)."""
    store = get_store()
    with _answering():
        return with_label_sources(_cached_query(store.url, version(store), name, dict(params or {})))


LABEL_SOURCES = "UNWIND $keys AS k MATCH (f:Feature {key: k}) RETURN f.key AS key, f.label_source AS label_source"


def label_columns(df: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(label column, its feature-key column, the source column to add) of a query's frame:
    ``label`` with ``key`` or ``feature_key``, ``X_label`` with ``X_key`` (source_label, f1_label, ...)."""
    out = []
    for col in df.columns:
        if col == "label":
            key = next((k for k in ("feature_key", "key") if k in df.columns), None)
        elif col.endswith("_label"):
            key = col[: -len("label")] + "key"
            key = key if key in df.columns else None
        else:
            continue
        if key is not None and f"{col}_source" not in df.columns:
            out.append((col, key, f"{col}_source"))
    return out


def with_label_sources(df: pd.DataFrame) -> pd.DataFrame:
    """The frame with a ``<label column>_source`` column (user | import | auto, empty where no
    label) after each feature label column that lacks one, read from the store by key; the library
    queries return the labels, and a reader must be able to tell an automatic one from a user's."""
    cols = label_columns(df)
    if not cols or df.empty:
        return df
    keys = sorted({k for _, key, _ in cols for k in df[key] if isinstance(k, str) and k})
    found = read(LABEL_SOURCES, {"keys": keys}) if keys else pd.DataFrame(columns=["key", "label_source"])
    source = dict(zip(found["key"], found["label_source"])) if len(found) else {}
    out = df.copy()
    for label, key, name in cols:
        values = [source.get(k) if isinstance(lab, str) and lab and isinstance(k, str) else None
                  for lab, k in zip(out[label], out[key])]
        out.insert(out.columns.get_loc(label) + 1, name, pd.Series(values, index=out.index, dtype=object))
    return out


def read(cypher: str, params: dict[str, Any] | None = None) -> pd.DataFrame:
    """A small read-only statement of the app's own, cached like `query`."""
    store = get_store()
    with _answering():
        return _cached_read(store.url, version(store), cypher, dict(params or {}))


def stats() -> dict[str, Any]:
    store = get_store()
    with _answering():
        return _cached_stats(store.url, version(store))


PROMPTS = (
    "MATCH (p:Prompt) RETURN p.id AS prompt_id, p.text AS text, p.prompt_group AS grp, p.tags AS tags, "
    "p.corpus AS corpus, p.correct AS correct, p.model AS model, p.scan AS scan, p.tokens AS tokens, "
    "p.token_ids AS token_ids, p.replacement_score AS replacement_score, "
    "p.completeness_score AS completeness_score, p.n_nodes AS n_nodes, p.n_edges AS n_edges"
)


def prompts() -> pd.DataFrame:
    """Every prompt with its metadata, sorted by group then text."""
    df = read(PROMPTS)
    if df.empty:
        return df
    return df.sort_values(["grp", "text"], na_position="last").reset_index(drop=True)


def require_prompts() -> pd.DataFrame:
    """The prompts table, or NoData when the store is empty."""
    df = prompts()
    if df.empty:
        raise NoData(f"The store `{store_url()}` holds no prompts yet.")
    return df


def prompt_label(row: pd.Series | dict) -> str:
    text = str(row["text"])
    text = text if len(text) <= 60 else text[:57] + "..."
    grp = row.get("grp")
    return f"{text}  [{grp}]" if isinstance(grp, str) and grp else text


def empty_state(exc: NoData) -> None:
    """What to do when there is nothing to show, or the store cannot be reached."""
    if exc.kind == "busy":
        st.info(str(exc))
        st.markdown("Another process is writing this store. Reload the page in a few seconds.")
        return
    if exc.kind == "stale":
        st.warning(str(exc))
        return
    if exc.unreachable:
        st.error(str(exc))
        st.markdown("Check that the server is running and the URL is right (credentials come from `NEO4J_USER` / "
                    "`NEO4J_PASSWORD`), or that no other process is writing to an embedded store; then reload. "
                    "Choose a store with `circuit-atlas app --store URL`.")
        return
    st.warning(str(exc))
    st.markdown(EMPTY_HELP)


@contextmanager
def writer() -> Iterator[Store]:
    """A read-write connection for user annotations. The cached reader is closed first (an
    embedded store allows one writer and no readers at the same time) and reopened later."""
    url = store_url()
    try:
        old = _reader(url)
        old.close()
    except Exception:
        pass
    _reader.clear()
    try:
        with open_store(url) as store:
            yield store
    finally:
        _reader.clear()
        st.cache_data.clear()


def save_label(key: str, label: str) -> None:
    """Set a feature's label (a user annotation, never replaced by an automatic label); an empty
    one clears it, and the automatic label shows again."""
    with writer() as store:
        store.set_feature_labels({key: label})


def save_supernode(record: dict[str, Any]) -> None:
    """Create or replace one user supernode (record as in store.write_supernodes)."""
    with writer() as store:
        store.write_supernodes([record])


def link(page: str, **params: Any) -> str:
    """A URL to another page with query parameters (pages read them on load)."""
    from urllib.parse import urlencode

    return f"./{page}?{urlencode(params, safe=':')}" if params else f"./{page}"


def linkify(df: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Feature-key columns link to the feature page and prompt ids to the prompt graph; a
    ``prompt_ids`` list gets a link to its first prompt. Returns the frame and column_config."""
    out = df.copy()
    config: dict[str, Any] = {}
    for col in out.columns:
        if col == "key" or col.endswith("_key"):
            out[col] = [link("feature", key=k) if isinstance(k, str) and k else None for k in out[col]]
            config[col] = st.column_config.LinkColumn(col, display_text=r"key=(.*)$")
        elif col == "prompt_id":
            out[col] = [link("prompt_graph", prompt=p) if isinstance(p, str) and p else None for p in out[col]]
            config[col] = st.column_config.LinkColumn(col, display_text=r"prompt=(.*)$")
    if "prompt_ids" in out.columns:
        first = [list(v)[0] if v is not None and not isinstance(v, float) and len(v) else None for v in out["prompt_ids"]]
        out.insert(0, "example", [link("prompt_graph", prompt=p) if p else None for p in first])
        config["example"] = st.column_config.LinkColumn("example", display_text="graph")
    return out, config


__all__ = ["NoData", "StoreError", "empty_state", "get_store", "label_columns", "link", "linkify", "prompt_label", "prompts",
           "query", "read", "require_prompts", "save_label", "save_supernode", "stats", "store_url", "version",
           "with_label_sources", "writer"]
