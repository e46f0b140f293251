"""The one interface every graph store offers; nothing outside store/ speaks a database API.

Backends: the embedded default (LadybugDB, a directory on disk) and Bolt (Neo4j, or any
Neo4j-compatible Bolt server). `open_store(url)` picks one from a URL:
``embedded:PATH`` | ``bolt://host:port`` | ``neo4j://host:port`` (credentials from
``NEO4J_USER`` / ``NEO4J_PASSWORD``, database from ``NEO4J_DATABASE``); with no URL,
``CIRCUIT_ATLAS_STORE`` or the default embedded store.
"""

from __future__ import annotations

import abc
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import pandas as pd

from circuit_atlas.errors import CircuitAtlasError

SCHEMA_VERSION = 4
# LINKS holds the feature pairs that recur: seen in at least this many prompts. A pair seen in one
# prompt only stays in that prompt's EDGEs; on large corpora such pairs are almost every pair
# (one-off features), and keeping them would make every LINKS scan pay for them.
LINKS_MIN_PROMPTS = 2
# Versions a writer upgrades in place, since only derived data changed (rebuilt from EDGE and OF):
# 1 -> 2 added LINKS.prompt_ids; 2 -> 3 added LINKS.source_key/target_key, the recurrence of each
# feature (Feature.prompts, Feature.prompt_ids), the recurring subgraph (RActive, REDGE) and
# Prompt.feature_weight (computed from the stored instances by the upgrade, at load after it);
# 3 -> 4 added Feature.label_source and Feature.auto_label (labels already there are taken as
# the user's: their origin is unknown, and a user's label must never be replaced).
UPGRADABLE = {1, 2, 3}
# Feature.label_source: where the shown Feature.label came from. A user's label (the app, the
# `set_feature_labels` default) and an imported one (Neuronpedia clerps) are never replaced by an
# automatic one; an automatic one (LABEL_AUTO) is replaced by every recompute of feature contexts.
LABEL_USER, LABEL_IMPORT, LABEL_AUTO = "user", "import", "auto"
LABEL_SOURCES = (LABEL_USER, LABEL_IMPORT, LABEL_AUTO)


class StoreError(CircuitAtlasError, RuntimeError):
    """Any store failure a user can act on: unreachable, bad credentials, wrong schema, full."""


def version_error(url: str, version: int, read_only: bool) -> StoreError:
    """The error for a store of another schema version, saying how to go on."""
    if version in UPGRADABLE and read_only:
        how = "open it once for writing to upgrade it in place (e.g. `circuit-atlas store rebuild-links`)"
    else:
        how = "use a new store or re-ingest"
    return StoreError(f"{url}: schema version {version}, this circuit-atlas needs {SCHEMA_VERSION}; {how}")


class ReadOnlyViolation(StoreError):
    """A write statement was sent down a read-only path (the console, the query runner)."""


class StoreBusy(StoreError):
    """Another process is writing the store right now: retry once it has finished."""


class DerivedLayerStale(StoreError):
    """A query needs the derived layer (LINKS, the recurring features and subgraph), and graphs
    were written or deleted since it was last built (or a write was interrupted)."""


def stale_message(url: str, what: str) -> str:
    """The one line a query that needs the derived layer prints on a stale store."""
    return (f"{what} needs the derived layer of {url}, which is stale (graphs were written or deleted since "
            f"it was built, or a write was interrupted): run `circuit-atlas store rebuild-links --store {url}` "
            "(or wait for the write in progress to finish)")


@dataclass
class WriteReport:
    """What a bulk write did: graphs written, graphs skipped as already present, graphs refused
    (directory, one-line reason: the others are still written), and counts."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    nodes: int = 0
    edges: int = 0
    seconds: float = 0.0


class Store(abc.ABC):
    """A graph store holding the schema of shared/DESIGN.md ("Graph schema")."""

    url: str

    @abc.abstractmethod
    def init_schema(self) -> None:
        """Create node/rel tables or constraints and indexes; record SCHEMA_VERSION. Idempotent."""

    @abc.abstractmethod
    def schema_version(self) -> int | None:
        """The schema version recorded in the store, or None for an empty store."""

    @abc.abstractmethod
    def write_graphs(self, graph_dirs: Iterable[str | os.PathLike], progress: bool = False) -> WriteReport:
        """Bulk-load graph directories (engine.formats.graph_files format). Each graph is written whole or
        not at all; graphs whose id is already stored are skipped, so re-running is harmless."""

    @abc.abstractmethod
    def prompt_ids(self) -> set[str]:
        """Ids (graph ids) of every stored prompt."""

    @abc.abstractmethod
    def delete_prompt(self, prompt_id: str) -> bool:
        """Remove a prompt and all its per-prompt nodes and edges; True if it existed."""

    @abc.abstractmethod
    def rebuild_links(self, progress: bool = False) -> int:
        """Recompute the derived layer from the per-prompt graphs: on each Feature active in >=
        LINKS_MIN_PROMPTS prompts, `prompts` and `prompt_ids` (NULL on the others); the recurring
        subgraph (RActive: those features' instances; REDGE: their edges to each other and to
        logits); and Feature-[:LINKS]->Feature, aggregated from REDGE (pairs in >=
        LINKS_MIN_PROMPTS prompts, with their endpoints' keys, so a scan of LINKS reads no Feature
        node). Returns the number of links; `progress` shows a bar where it runs in steps."""

    @abc.abstractmethod
    def read(self, cypher: str, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Run one read-only Cypher statement with parameters; refuse writes (ReadOnlyViolation)."""

    @abc.abstractmethod
    def stats(self) -> dict[str, Any]:
        """Counts of every node and relationship type, plus schema version and backend name."""

    @abc.abstractmethod
    def close(self) -> None: ...

    # -- freshness of the derived layer ----------------------------------------------------
    # Every write that changes the per-prompt graphs marks the derived layer stale in Meta in the
    # same transaction, and the write command rebuilds it before it returns (rebuild_links marks
    # it fresh as its last step); a kill in between leaves it marked stale, and the next writer
    # open rebuilds it. Queries that need it refuse a stale one (queries/runner.py).
    _defer_derived = 0
    _delta_open = False  # a store that updates the layer incrementally: a deferral's budget is open

    def derived_stale(self) -> bool:
        """True when Meta says the derived layer is stale (a store written before the mark
        existed is taken as fresh)."""
        return False

    @contextmanager
    def deferred_derived(self) -> Iterator["Store"]:
        """Writes inside only mark the derived layer stale; it is rebuilt once on leaving (a
        loader that writes batch after batch rebuilds once, not after every batch). On an
        exception it stays marked stale, and the next writer open rebuilds it."""
        self._defer_derived += 1
        try:
            yield self
        finally:
            self._defer_derived -= 1
            if not self._defer_derived:
                self._delta_open = False
        if not self._defer_derived and self.derived_stale():
            self.rebuild_links()

    def _refresh_derived(self) -> None:
        """After a write of per-prompt graphs: rebuild the derived layer unless deferred, or
        unless the write kept it fresh (an incremental update in the write's own transaction)."""
        if not self._defer_derived and self.derived_stale():
            self.rebuild_links()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
