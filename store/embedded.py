"""The embedded store: LadybugDB (Kùzu fork) in a directory, bulk loads by COPY FROM parquet.

Whole-or-nothing per batch: a batch of graphs is one transaction (the Prompt rows with
`complete=false`, nodes, relationships, then the prompts marked complete, COMMIT); a failure
rolls it back. A writer that opens the store also deletes every incomplete prompt, so re-running
gives exact counts. Several prompts go into one COPY (parquet files, never pandas: per-call COPY
from Arrow leaks). Graph files are read and the COPY tables built with pyarrow only (no pandas):
validation, id prefixes and the split of edges by endpoint table are vectorised.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from circuit_atlas.engine.formats.graph_files import EDGE_SCHEMA, NODE_SCHEMA, NODE_TYPES, GraphFileError
from circuit_atlas.store import derived_delta, dialect, recovery
from circuit_atlas.store.base import (LABEL_AUTO, LABEL_IMPORT, LABEL_USER, LINKS_MIN_PROMPTS, SCHEMA_VERSION,
                                     UPGRADABLE, ReadOnlyViolation, Store, StoreBusy, StoreError, WriteReport, version_error)

PER_PROMPT = ("Active", "Embedding", "Error", "Logit")
DB_FILE = "atlas.lbdb"
DELTA_SHARE = 8  # see EmbeddedStore._begin_delta

# (table, columns with types); the first column is the primary key. Column order = parquet order.
NODE_TABLES: dict[str, list[tuple[str, str]]] = {
    # derived_stale: set in the transaction of every write of per-prompt graphs, cleared when the
    # derived layer has been rebuilt (NULL on stores written before it existed: taken as fresh)
    "Meta": [("key", "STRING"), ("schema_version", "INT64"), ("write_token", "STRING"), ("derived_stale", "BOOLEAN")],
    "Feature": [("key", "STRING"), ("scan", "STRING"), ("layer", "INT64"), ("index", "INT64"), ("label", "STRING"),
                ("frequency", "DOUBLE"), ("max_activation", "DOUBLE"), ("contexts", "STRING"), ("logit_effects", "STRING"),
                ("prompts", "INT64"), ("prompt_ids", "STRING[]"),  # these two: derived (rebuild_links)
                # where `label` came from (store/base.py LABEL_SOURCES) and the latest automatic label
                # (ingest/autolabel.py), kept even while a user's label is shown; last, since an upgrade
                # appends them (COPY matches columns by position)
                ("label_source", "STRING"), ("auto_label", "STRING")],
    "Token": [("key", "STRING"), ("model", "STRING"), ("token_id", "INT64"), ("text", "STRING")],
    "Prompt": [("id", "STRING"), ("text", "STRING"), ("tokens", "STRING[]"), ("token_ids", "INT64[]"), ("model", "STRING"),
               ("scan", "STRING"), ("node_threshold", "DOUBLE"), ("edge_threshold", "DOUBLE"),
               ("replacement_score", "DOUBLE"), ("completeness_score", "DOUBLE"), ("corpus", "STRING"),
               ("tags", "STRING[]"), (dialect.GROUP_PROPERTY, "STRING"), ("expected", "STRING"), ("correct", "BOOLEAN"),
               ("top_token", "STRING"), ("external_id", "STRING"), ("n_nodes", "INT64"), ("n_edges", "INT64"),
               ("settings", "STRING"), ("created_at", "STRING"), ("complete", "BOOLEAN"), ("feature_weight", "DOUBLE")],
    "Active": [("id", "STRING"), ("prompt_id", "STRING"), ("node_id", "STRING"), ("layer", "INT64"), ("pos", "INT64"),
               ("index", "INT64"), ("feature_key", "STRING"), ("activation", "DOUBLE"), ("influence", "DOUBLE")],
    "Embedding": [("id", "STRING"), ("prompt_id", "STRING"), ("node_id", "STRING"), ("pos", "INT64"),
                  ("token_id", "INT64"), ("token", "STRING")],
    "Error": [("id", "STRING"), ("prompt_id", "STRING"), ("node_id", "STRING"), ("layer", "INT64"), ("pos", "INT64"),
              ("influence", "DOUBLE")],
    "Logit": [("id", "STRING"), ("prompt_id", "STRING"), ("node_id", "STRING"), ("pos", "INT64"), ("token_id", "INT64"),
              ("token", "STRING"), ("prob", "DOUBLE")],
    # derived (rebuild_links): the instances of recurring features, see RECURRING below
    "RActive": [("id", "STRING"), ("prompt_id", "STRING"), ("feature_key", "STRING"), ("layer", "INT64"), ("pos", "INT64"),
                ("activation", "DOUBLE"), ("influence", "DOUBLE")],
    "Supernode": [("key", "STRING"), ("scan", "STRING"), ("label", "STRING"), ("method", "STRING"), ("score", "DOUBLE"),
                  ("prompt_id", "STRING"), ("node_ids", "STRING[]")],
}
_ARROW = {"STRING": pa.string(), "INT64": pa.int64(), "DOUBLE": pa.float64(), "BOOLEAN": pa.bool_(),
          "STRING[]": pa.list_(pa.string()), "INT64[]": pa.list_(pa.int64()), "FLOAT": pa.float32()}
# source_key/target_key repeat the endpoints' keys: LadybugDB reads a property of a node reached
# through a relationship by scanning its whole table, and Feature holds every one-off feature.
LINKS_COLUMNS = ("FROM Feature TO Feature, prompts INT64, mean_weight DOUBLE, mean_abs_weight DOUBLE, prompt_ids STRING[], "
                 "source_key STRING, target_key STRING")
# The recurring subgraph (derived): every Active whose feature is active in >= LINKS_MIN_PROMPTS
# prompts, copied as an RActive, with its EDGEs to other such instances and to logits as REDGE.
# A path, edge or motif seen in two or more prompts runs through recurring features only, so the
# cross-prompt queries match it here; on a large corpus of mostly one-off features it is a small
# fraction of the graph, and LadybugDB reads a node property by scanning its whole table.
RECURRING = (
    "COPY RActive FROM (MATCH (a:Active)-[:OF]->(f:Feature) WHERE f.prompts >= {m} "
    "RETURN a.id, a.prompt_id, a.feature_key, a.layer, a.pos, a.activation, a.influence)",
    "COPY REDGE FROM (MATCH (a:Active)-[e:EDGE]->(b:Active), (a)-[:OF]->(fa:Feature), (b)-[:OF]->(fb:Feature) "
    "WHERE fa.prompts >= {m} AND fb.prompts >= {m} RETURN a.id, b.id, e.weight) (from='RActive', to='RActive')",
    "COPY REDGE FROM (MATCH (a:Active)-[e:EDGE]->(t:Logit), (a)-[:OF]->(fa:Feature) WHERE fa.prompts >= {m} "
    "RETURN a.id, t.id, e.weight) (from='RActive', to='Logit')",
)
# Prompt.feature_weight of stores written before it existed (new prompts get it at load)
FEATURE_WEIGHT = ("MATCH (a:Active) WITH a.prompt_id AS pid, a.feature_key AS k, max(a.activation) AS w "
                  "WITH pid, sum(w) AS total MATCH (p:Prompt {id: pid}) SET p.feature_weight = total")
# a store from before Feature.label_source: its labels' origin is unknown, and a user's must never be replaced
LABELS_OF_OLD_STORE = (f"MATCH (f:Feature) WHERE f.label IS NOT NULL AND f.label <> '' AND f.label_source IS NULL "
                       f"SET f.label_source = '{LABEL_USER}'")
# the automatic label may be shown: no label, or the shown one is an automatic one
AUTO_MAY_SHOW = f"(f.label IS NULL OR f.label = '' OR f.label_source = '{LABEL_AUTO}')"
DERIVED_TABLES = ("LINKS", "REDGE", "RActive")  # dropped and recreated by rebuild_links, in this order
TYPE_TABLE = {"feature": "Active", "embedding": "Embedding", "error": "Error", "logit": "Logit"}


def _schema_statements() -> list[str]:
    out = []
    for name, cols in NODE_TABLES.items():
        body = ", ".join(f"`{c}` {t}" for c, t in cols)
        out.append(f"CREATE NODE TABLE IF NOT EXISTS {name}({body}, PRIMARY KEY (`{cols[0][0]}`))")
    has = ", ".join(f"FROM Prompt TO {t}" for t in PER_PROMPT)
    out.append(f"CREATE REL TABLE IF NOT EXISTS HAS({has})")
    out.append("CREATE REL TABLE IF NOT EXISTS OF(FROM Active TO Feature, FROM Embedding TO Token, FROM Logit TO Token)")
    pairs = ", ".join(f"FROM {a} TO {b}" for a in PER_PROMPT for b in PER_PROMPT)
    out.append(f"CREATE REL TABLE IF NOT EXISTS EDGE({pairs}, weight FLOAT)")
    out.append(f"CREATE REL TABLE IF NOT EXISTS LINKS({LINKS_COLUMNS})")
    out.append("CREATE REL TABLE IF NOT EXISTS REDGE(FROM RActive TO RActive, FROM RActive TO Logit, weight FLOAT)")
    out.append("CREATE REL TABLE IF NOT EXISTS CONTAINS(FROM Supernode TO Feature)")
    return out


class EmbeddedStore(Store):
    """LadybugDB store in a directory; one writer process, any number of read-only readers."""

    backend = "embedded"
    accepts_tables = True  # write_graphs also takes in-memory graphs (engine.formats.graph_files.GraphTables)

    def __init__(self, path: str | os.PathLike, read_only: bool = False, batch_prompts: int = 64,
                 batch_edges: int = 3_000_000) -> None:
        self.path = Path(path).expanduser()
        self.url = f"embedded:{self.path}"
        self.read_only = read_only
        # A batch (one transaction, one checkpoint) closes at batch_prompts graphs or batch_edges
        # edges: each checkpoint rewrites the partly filled node groups of the rel tables, so
        # fewer, larger batches load faster; the cap bounds the memory a batch holds.
        self.batch_prompts = batch_prompts
        self.batch_edges = batch_edges
        # Incremental derived-layer updates (see _begin_delta) for at most max(stored prompts //
        # DELTA_SHARE, delta_min) graphs per write or deferral; past that one rebuild is cheaper.
        self.delta_min = 1
        self._db = self._conn = None
        self._delta_budget: int | None = None  # see _begin_delta
        self._delta_written, self._delta_old = 0, True
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"{self.url}: not a directory (an embedded store is a directory)")
        if read_only and not (self.path / DB_FILE).exists():
            raise StoreError(f"{self.url}: no store here (run an ingest first, or check the path and CIRCUIT_ATLAS_STORE)")
        self._open()
        try:
            self._check_ours()
            version = self.schema_version()
            if version is not None and version != SCHEMA_VERSION and (read_only or version not in UPGRADABLE):
                raise version_error(self.url, version, read_only)
            if not read_only:
                self.init_schema()  # IF NOT EXISTS: adds what an older store lacks, changes nothing else
                if version is not None and version != SCHEMA_VERSION:
                    self._upgrade(version)
                self._cleanup_incomplete()
                shutil.rmtree(self.path / "staging", ignore_errors=True)  # left by a killed load (recovered above)
                if self.derived_stale():
                    recovery.note(self.path, f"{self.url}: the derived layer was left stale (a write was interrupted "
                                             "before it was rebuilt); rebuilding it now")
                    self.rebuild_links()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        """Open the database (recovering an interrupted checkpoint first, see store/recovery.py)."""
        import ladybug

        db = self.path / DB_FILE
        recovery.ensure_openable(db, self.url)
        try:
            if not self.read_only:
                self.path.mkdir(parents=True, exist_ok=True)
            self._db = ladybug.Database(str(db), read_only=self.read_only)
            self._conn = ladybug.Connection(self._db)
        except (RuntimeError, OSError) as exc:
            self.close()
            msg = " ".join(str(exc).split())
            if "lock" in msg.lower() or "checkpoint" in msg.lower():
                raise StoreBusy(f"{self.url}: another process is writing the store ({msg}); retry once it has "
                                "finished") from exc
            raise StoreError(f"{self.url}: cannot open the embedded store ({msg})") from exc
        self._seen = self._signature()

    def _signature(self) -> tuple:
        """What changes on disk when another process writes: the database file's and the WAL's
        size and time, and which checkpoint files exist."""
        out: list[Any] = []
        for suffix in ("", ".wal", *recovery.CHECKPOINT_FILES):
            try:
                st = os.stat(f"{self.path / DB_FILE}{suffix}")
                out.append((st.st_size, st.st_mtime_ns))
            except OSError:
                out.append(None)
        return tuple(out)

    def _fresh(self) -> bool:
        """A reader: reopen when another process has written since this one opened (LadybugDB
        lets a writer in beside readers, whose open snapshot then goes stale). True if reopened."""
        if not self.read_only or self._conn is None or self._signature() == self._seen:
            return False
        self.close()
        self._open()
        return True

    def _check_ours(self) -> None:
        """Refuse a LadybugDB database that is not a circuit-atlas store (other tables, or tables
        and no Meta), rather than add our schema to it."""
        try:
            names = set(self._conn.execute("CALL show_tables() RETURN name").get_as_df()["name"])
        except RuntimeError as exc:
            raise StoreError(f"{self.url}: cannot read the database's tables ({exc})") from exc
        ours = set(NODE_TABLES) | {"HAS", "OF", "EDGE", "LINKS", "REDGE", "CONTAINS"}
        if names and ("Meta" not in names or names - ours):
            other = sorted(names - ours) or sorted(names)
            raise StoreError(f"{self.url}: a LadybugDB database that is not a circuit-atlas store (tables "
                             f"{', '.join(other[:5])}{' ...' if len(other) > 5 else ''}); use another path")

    # -- low level -------------------------------------------------------------------------
    def _exec(self, cypher: str, params: dict[str, Any] | None = None) -> Any:
        self._fresh()
        try:
            return self._conn.execute(cypher, params or {})
        except RuntimeError as exc:
            if self._fresh():  # a reader whose store was written meanwhile: once more, on what is there now
                try:
                    return self._conn.execute(cypher, params or {})
                except RuntimeError as again:
                    exc = again
            raise self._error(exc) from exc

    def _error(self, exc: RuntimeError) -> StoreError:
        msg = " ".join(str(exc).split())
        if "read-only" in msg:
            return ReadOnlyViolation(f"{self.url}: store opened read-only: {msg}")
        if "No space" in msg or "disk" in msg.lower() and "full" in msg.lower():
            return StoreError(f"{self.url}: disk full ({msg})")
        if self.read_only and msg.startswith(("Storage exception", "IO exception")):
            # pages changed under a reader by a writer in another process
            return StoreBusy(f"{self.url}: the store is being written by another process ({msg}); retry in a few "
                             "seconds")
        return StoreError(f"{self.url}: {msg}")

    def _df(self, cypher: str, params: dict[str, Any] | None = None) -> pd.DataFrame:
        return self._exec(cypher, params).get_as_df()

    def _arrow(self, cypher: str, params: dict[str, Any] | None = None) -> pa.Table:
        return self._exec(cypher, params).get_as_arrow()

    def _set_schema_version(self, version: int) -> None:
        """For tests and migrations: record another schema version."""
        self._exec("MATCH (m:Meta {key: 'schema'}) SET m.schema_version = $v", {"v": version})

    def _touch(self) -> None:
        self._exec("MATCH (m:Meta {key: 'schema'}) SET m.write_token = $t", {"t": uuid.uuid4().hex})

    # -- interface -------------------------------------------------------------------------
    def init_schema(self) -> None:
        if self.read_only:
            raise ReadOnlyViolation(f"{self.url}: store opened read-only")
        for stmt in _schema_statements():
            self._exec(stmt)
        cols = set(self._df("CALL table_info('Meta') RETURN name")["name"])
        for col, typ in NODE_TABLES["Meta"]:
            if col not in cols:  # a store of schema 3 written before the column existed
                self._exec(f"ALTER TABLE Meta ADD IF NOT EXISTS {col} {typ}")
        self._exec("MERGE (m:Meta {key: 'schema'}) ON CREATE SET m.schema_version = $v, m.write_token = $t",
                   {"v": SCHEMA_VERSION, "t": uuid.uuid4().hex})

    def derived_stale(self) -> bool:
        try:
            df = self._df("MATCH (m:Meta {key: 'schema'}) RETURN m.derived_stale AS s")
        except StoreError:
            return False  # no Meta, or a store from before the mark: nothing known to be stale
        value = None if df.empty else df["s"].iloc[0]
        return bool(value) if value is not None and not pd.isna(value) else False

    def _mark_stale(self) -> None:
        """Mark the derived layer stale (inside the transaction of a write of prompts)."""
        self._exec("MATCH (m:Meta {key: 'schema'}) SET m.derived_stale = true, m.write_token = $t",
                   {"t": uuid.uuid4().hex})

    def _upgrade(self, version: int) -> None:
        """Bring an older store to SCHEMA_VERSION in place (only derived data changes)."""
        feature_types = dict(NODE_TABLES["Feature"])
        if version < 3:  # Feature gained the derived prompts/prompt_ids, Prompt its feature_weight
            for col in ("prompts", "prompt_ids"):
                self._exec(f"ALTER TABLE Feature ADD IF NOT EXISTS {col} {feature_types[col]}")
            col, typ = NODE_TABLES["Prompt"][-1]
            self._exec(f"ALTER TABLE Prompt ADD IF NOT EXISTS {col} {typ}")
            self._exec(FEATURE_WEIGHT)
        if version < 4:  # Feature gained label_source and auto_label; the labels there are the user's
            for col in ("label_source", "auto_label"):
                self._exec(f"ALTER TABLE Feature ADD IF NOT EXISTS {col} {feature_types[col]}")
            self._exec(LABELS_OF_OLD_STORE)
        self.rebuild_links()  # drops and recreates the derived tables with their current columns
        self._set_schema_version(SCHEMA_VERSION)

    def schema_version(self) -> int | None:
        try:
            df = self._conn.execute("MATCH (m:Meta {key: 'schema'}) RETURN m.schema_version AS v").get_as_df()
        except RuntimeError:
            return None  # no Meta table yet: empty store
        return None if df.empty else int(df["v"].iloc[0])

    def version_token(self) -> str:
        df = self._df("MATCH (m:Meta {key: 'schema'}) RETURN m.write_token AS t")
        return "" if df.empty else str(df["t"].iloc[0])

    def prompt_ids(self) -> set[str]:
        df = self._df("MATCH (p:Prompt) WHERE p.complete RETURN p.id AS id")
        return set(df["id"].tolist())

    def _cleanup_incomplete(self) -> None:
        df = self._df("MATCH (p:Prompt) WHERE p.complete IS NULL OR NOT p.complete RETURN p.id AS id")
        if not df.empty:
            self._delete_ids(df["id"].tolist())

    def _delete_ids(self, ids: list[str]) -> None:
        for table in (*PER_PROMPT, "RActive"):
            self._exec(f"MATCH (n:{table}) WHERE n.prompt_id IN $ids DETACH DELETE n", {"ids": ids})
        self._exec("MATCH (p:Prompt) WHERE p.id IN $ids DETACH DELETE p", {"ids": ids})
        self._exec("MATCH (s:Supernode) WHERE s.prompt_id IN $ids DETACH DELETE s", {"ids": ids})

    def delete_prompt(self, prompt_id: str) -> bool:
        self._require_writer()
        exists = not self._df("MATCH (p:Prompt {id: $id}) RETURN p.id", {"id": prompt_id}).empty
        if not exists:
            return False
        self._transaction(lambda: (self._mark_stale(), self._delete_ids([prompt_id])))
        self._refresh_derived()
        return True

    def _transaction(self, work: Any) -> Any:
        """`work()` in one transaction: committed whole, or rolled back (a kill included)."""
        self._exec("BEGIN TRANSACTION")
        try:
            out = work()
            self._exec("COMMIT")
        except BaseException:
            try:
                self._conn.execute("ROLLBACK")
            except RuntimeError:
                pass  # LadybugDB already rolled back the transaction that failed
            raise
        return out

    def _require_writer(self) -> None:
        if self.read_only:
            raise ReadOnlyViolation(f"{self.url}: store opened read-only")

    def read(self, cypher: str, params: dict[str, Any] | None = None) -> pd.DataFrame:
        dialect.require_read(cypher)  # one pure read (store/cypher_guard.py), else ReadOnlyViolation
        return self._df(cypher, params)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"backend": self.backend, "url": self.url, "schema_version": self.schema_version()}
        for t in NODE_TABLES:
            if t != "Meta":
                out[t] = int(self._df(f"MATCH (n:{t}) RETURN count(n) AS c")["c"].iloc[0])
        for r in ("HAS", "OF", "EDGE", "LINKS", "REDGE", "CONTAINS"):
            out[r] = int(self._df(f"MATCH ()-[r:{r}]->() RETURN count(r) AS c")["c"].iloc[0])
        return out

    def close(self) -> None:
        for obj in ("_conn", "_db"):
            o = getattr(self, obj, None)
            if o is not None:
                try:
                    o.close()
                except Exception:
                    pass
                setattr(self, obj, None)

    # -- bulk write ------------------------------------------------------------------------
    def write_graphs(self, graph_dirs: Iterable[str | os.PathLike], progress: bool = False) -> WriteReport:
        self._require_writer()
        t0 = time.perf_counter()
        report = WriteReport()
        if not (self._defer_derived and self._delta_open):  # a deferral shares one budget
            self._begin_delta()
            self._delta_open = bool(self._defer_derived)
        present = self.prompt_ids()
        dirs = list(graph_dirs)
        batch: list[LoadedGraph] = []
        queued: set[str] = set()
        batch_edges = 0
        bar = tqdm(total=len(dirs), desc="loading graphs", unit="graph", disable=not progress)
        for d in dirs:
            try:
                in_memory = not isinstance(d, (str, os.PathLike))
                meta = check_graph_meta(d.meta) if in_memory else read_graph_meta(d)
                gid = meta["graph_id"]
                if gid in present or gid in queued:
                    report.skipped.append(gid)
                    bar.update(1)
                    continue
                batch.append(loaded_graph(d) if in_memory else read_graph_dir(d, meta))
            except GraphFileError as exc:  # a bad graph is reported; the others are still written
                report.failed.append((str(d), one_line(exc)))
                bar.update(1)
                continue
            queued.add(gid)
            batch_edges += batch[-1].edges.num_rows
            if len(batch) >= self.batch_prompts or batch_edges >= self.batch_edges:
                self._write_isolating(batch, report)
                bar.update(len(batch))
                batch, batch_edges = [], 0
        if batch:
            self._write_isolating(batch, report)
            bar.update(len(batch))
        bar.close()
        if report.written:
            self._refresh_derived()
        report.seconds = time.perf_counter() - t0
        return report

    def _write_isolating(self, graphs: list[LoadedGraph], report: WriteReport) -> None:
        """Write a batch; if the database refuses it, write its graphs one by one so that only the
        graphs it refuses are left out (and listed in report.failed)."""
        try:
            self._write_batch(graphs, report)
            return
        except StoreError as exc:
            if not _graphs_fault(exc):
                raise
            if len(graphs) == 1:
                report.failed.append((graphs[0].directory, one_line(exc)))
                return
        for g in graphs:
            try:
                self._write_batch([g], report)
            except StoreError as exc:
                if not _graphs_fault(exc):
                    raise
                report.failed.append((g.directory, one_line(exc)))

    def _copy(self, table: str, data: pa.Table | pd.DataFrame, types: list[tuple[str, str]], options: str = "") -> None:
        """COPY `data` (its columns named by `types`, in that order) into `table` via a staging parquet file."""
        if len(data) == 0:
            return
        schema = pa.schema([(c, _ARROW[t]) for c, t in types])
        if isinstance(data, pd.DataFrame):
            arrow = pa.Table.from_pandas(data[[c for c, _ in types]], schema=schema, preserve_index=False)
        else:
            arrow = data.select([c for c, _ in types]).cast(schema)
        staging = self.path / "staging"
        staging.mkdir(exist_ok=True)
        f = staging / f"{table}-{uuid.uuid4().hex}.parquet"
        # Uncompressed, no dictionaries: the file lives for one COPY; encoding it costs more than it saves.
        pq.write_table(arrow, f, compression="none", use_dictionary=False, write_statistics=False)
        try:
            self._exec(f"COPY {table} FROM {_literal(f.as_posix())}{options}")
        finally:
            f.unlink(missing_ok=True)

    def _write_batch(self, graphs: list[LoadedGraph], report: WriteReport) -> None:
        prompts = [_prompt_row(g) for g in graphs]
        nodes, edges = _prepare_batch(graphs)
        ids = [g.graph_id for g in graphs]
        supernodes = [r for g in graphs for r in g.meta.get("supernode_records") or []]
        # One transaction per batch: every COPY of a batch commits (and checkpoints) once, not
        # ~30 times, and a failure or a kill rolls the whole batch back, with the supernodes the
        # graphs' meta.json carries (an import's) and the mark that the derived layer is stale.
        # The `complete` flag stays as a second line of defence (a store written by an older
        # version, a failed rollback).
        incremental = self._delta_allowed(len(graphs))

        def work() -> None:
            delta = None
            if incremental:  # the derived layer's change goes in this transaction: it stays fresh
                self._touch()
                delta = self._derived_delta(nodes, edges)
            else:  # marked stale here, rebuilt after (see Store.deferred_derived)
                self._mark_stale()
            self._copy("Prompt", pa.Table.from_pylist(prompts, schema=_PROMPT_SCHEMA), NODE_TABLES["Prompt"])
            self._load_nodes_edges(nodes, edges, delta)
            if delta is not None:
                self._write_delta(delta)
            if supernodes:
                self._write_supernodes(supernodes)
            self._exec("MATCH (p:Prompt) WHERE p.id IN $ids SET p.complete = true", {"ids": ids})

        try:
            self._transaction(work)
        except BaseException:
            try:
                self._delete_ids(ids)
            except Exception:
                pass  # the next writer's cleanup removes them
            raise
        if incremental:
            self._delta_written += len(graphs)
        self._delta_old = True
        report.written.extend(ids)
        report.nodes += sum(g.nodes.num_rows for g in graphs)
        report.edges += sum(g.edges.num_rows for g in graphs)

    def _load_nodes_edges(self, nodes: dict[str, pa.Table], edges: list[tuple[str, str, pa.Table]],
                          delta: derived_delta.Delta | None = None) -> None:
        """COPY one prepared batch (see `_prepare_batch`): global nodes not yet present (new
        features with their derived `prompts`/`prompt_ids` from ``delta``), per-prompt nodes,
        HAS, OF and EDGE (one COPY per endpoint-table pair)."""
        feats = nodes["Active"]
        # Global nodes: create the ones not yet present (first occurrence in the batch wins).
        fkeys = feats.column("feature_key")
        ukeys = pc.unique(fkeys)
        existing = self._existing("Feature", ukeys)
        first = feats.take(pc.index_in(ukeys, value_set=fkeys))
        if existing:
            is_new = pc.invert(pc.is_in(first.column("feature_key"), value_set=pa.array(sorted(existing), pa.string())))
            old = first.filter(pc.invert(is_new))
            first = first.filter(is_new)
            labelled = old.filter(pc.is_valid(old.column("label")))
            if labelled.num_rows:  # an imported label fills an empty one or replaces an automatic one
                self._exec(f"UNWIND $rows AS r MATCH (f:Feature {{key: r.k}}) WHERE {AUTO_MAY_SHOW} "
                           f"SET f.label = r.l, f.label_source = '{LABEL_IMPORT}'",
                           {"rows": [{"k": k, "l": l} for k, l in zip(labelled.column("feature_key").to_pylist(),
                                                                        labelled.column("label").to_pylist())]})
        n = first.num_rows
        nulls_d, nulls_s = pa.nulls(n, pa.float64()), pa.nulls(n, pa.string())
        prompts, prompt_ids = self._derived_of_new(first.column("feature_key"), delta, existing)
        self._copy("Feature", pa.table({"key": first.column("feature_key"), "scan": first.column("scan"),
                                        "layer": first.column("layer"), "index": first.column("index"),
                                        "label": first.column("label"), "frequency": nulls_d, "max_activation": nulls_d,
                                        "contexts": nulls_s, "logit_effects": nulls_s, "prompts": prompts,
                                        "prompt_ids": prompt_ids,
                                        "label_source": pc.if_else(pc.is_valid(first.column("label")), LABEL_IMPORT, nulls_s),
                                        "auto_label": nulls_s}), NODE_TABLES["Feature"])
        toks = nodes["Token"]
        existing_t = self._existing("Token", toks.column("key"))
        if existing_t:
            toks = toks.filter(pc.invert(pc.is_in(toks.column("key"), value_set=pa.array(sorted(existing_t), pa.string()))))
        self._copy("Token", toks, NODE_TABLES["Token"])
        # Per-prompt nodes, then their relationships.
        for table in PER_PROMPT:
            self._copy(table, nodes[table], NODE_TABLES[table])
        rel2 = [("from", "STRING"), ("to", "STRING")]
        for table in PER_PROMPT:
            t = nodes[table]
            self._copy("HAS", pa.table({"from": t.column("prompt_id"), "to": t.column("id")}), rel2,
                       f" (from='Prompt', to='{table}')")
        self._copy("OF", pa.table({"from": feats.column("id"), "to": feats.column("feature_key")}), rel2,
                   " (from='Active', to='Feature')")
        for table in ("Embedding", "Logit"):
            t = nodes[table]
            self._copy("OF", pa.table({"from": t.column("id"), "to": t.column("token_key")}), rel2,
                       f" (from='{table}', to='Token')")
        for ft, tt, grp in edges:
            self._copy("EDGE", grp, rel2 + [("weight", "FLOAT")], f" (from='{ft}', to='{tt}')")

    # -- incremental derived layer (store/derived_delta.py) ----------------------------------
    def _begin_delta(self) -> None:
        """At the start of a write (or of a deferral): batches may update the derived layer
        incrementally while it is fresh and the graphs so written stay within max(prompts stored
        now // DELTA_SHARE, delta_min); beyond that the layer is marked stale and rebuilt once after.
        A delta reads the touched features' old rows and updates every LINKS pair the batch shares
        with the store, which costs more per graph than a rebuild costs per stored graph: on the
        demo corpus 8 graphs into a store of 8 took 24 s more than their COPY, against 21 s to
        rebuild the layer of all 64 prompts (~3 s per graph written vs ~0.33 s per graph stored),
        so deltas pay only for small additions to a large store."""
        n = int(self._df("MATCH (p:Prompt) RETURN count(p) AS c")["c"].iloc[0])
        self._delta_budget = None if self.derived_stale() else max(n // DELTA_SHARE, self.delta_min)
        self._delta_old = n > 0
        self._delta_written = 0

    def _delta_allowed(self, n: int) -> bool:
        """Whether a batch of ``n`` graphs updates the derived layer in its own transaction."""
        if self._delta_budget is None or self._delta_written + n > self._delta_budget:
            self._delta_budget = None  # from here on the layer is stale until rebuilt
            return False
        return True

    def _derived_delta(self, nodes: dict[str, pa.Table], edges: list[tuple[str, str, pa.Table]]) -> derived_delta.Delta:
        """The derived layer's change for a prepared batch, read before its COPY (the store holds
        the old state only): the batch's features' old prompts, the old instances of those in
        one old prompt, the old edges of newly recurring instances and of the batch's pairs."""
        active = nodes["Active"]
        empty = pa.table({"from": pa.array([], pa.string()), "to": pa.array([], pa.string()), "weight": pa.array([], pa.float32())})
        aa = pa.concat_tables([g for f, t, g in edges if (f, t) == ("Active", "Active")] or [empty])
        al = pa.concat_tables([g for f, t, g in edges if (f, t) == ("Active", "Logit")] or [empty])
        new = derived_delta.batch_features(active)
        old = derived_delta.OldState()
        if self._delta_old:
            keys = list(new)
            rec = self._arrow("UNWIND $k AS x MATCH (f:Feature {key: x}) WHERE f.prompts IS NOT NULL "
                              "RETURN f.key AS k, f.prompt_ids AS ps", {"k": keys})
            old.recurring = dict(zip(rec.column("k").to_pylist(), rec.column("ps").to_pylist()))
            rest = [k for k in keys if k not in old.recurring]
            old.instances = self._arrow(
                "UNWIND $k AS x MATCH (a:Active)-[:OF]->(f:Feature {key: x}) RETURN a.id AS id, a.prompt_id AS prompt_id, "
                "a.feature_key AS feature_key, a.layer AS layer, a.pos AS pos, a.activation AS activation, "
                "a.influence AS influence", {"k": rest})
            n_set = derived_delta.newly_recurring(derived_delta.prompt_sets(new, old), old)
            ids = derived_delta.old_instances_of(old, n_set).column("id").to_pylist()
            if ids:  # "from"/"to" are keywords: the queries say src/dst
                old.edges_out = self._arrow(
                    "UNWIND $ids AS x MATCH (a:Active {id: x})-[e:EDGE]->(b:Active)-[:OF]->(fb:Feature) RETURN a.id AS src, "
                    "b.id AS dst, a.feature_key AS sk, fb.key AS tk, fb.prompts AS tp, a.prompt_id AS p, e.weight AS weight",
                    {"ids": ids}).rename_columns(["from", "to", "sk", "tk", "tp", "p", "weight"])
                old.edges_in = self._arrow(
                    "UNWIND $ids AS x MATCH (b:Active)-[e:EDGE]->(a:Active {id: x}), (b)-[:OF]->(fb:Feature) RETURN b.id AS src, "
                    "a.id AS dst, fb.key AS sk, a.feature_key AS tk, fb.prompts AS sp, a.prompt_id AS p, e.weight AS weight",
                    {"ids": ids}).rename_columns(["from", "to", "sk", "tk", "sp", "p", "weight"])
                old.edges_logit = self._arrow(
                    "UNWIND $ids AS x MATCH (a:Active {id: x})-[e:EDGE]->(t:Logit) RETURN a.id AS src, t.id AS dst, "
                    "e.weight AS weight", {"ids": ids}).rename_columns(["from", "to", "weight"])
            pairs = derived_delta.batch_pairs(active, aa)
            both = pa.array(sorted(old.recurring), pa.string())
            pairs = pairs.filter(pc.and_(pc.is_in(pairs.column("s"), value_set=both), pc.is_in(pairs.column("t"), value_set=both)))
            if pairs.num_rows:  # the old edges of pairs whose ends both recurred: all in REDGE, read via OF
                pe = self._arrow("UNWIND $k AS x MATCH (a:Active)-[:OF]->(f:Feature {key: x}) MATCH (a)-[e:EDGE]->(b:Active) "
                                 "RETURN a.feature_key AS s, b.feature_key AS t, a.prompt_id AS p, e.weight AS w",
                                 {"k": pc.unique(pairs.column("s")).to_pylist()})
                old.pair_edges = pe.filter(pc.is_in(pe.column("t"), value_set=both))
        return derived_delta.compute(active, aa, al, new, old)

    def _derived_of_new(self, keys: pa.Array, delta: derived_delta.Delta | None, existing: set[str]) -> tuple[pa.Array, pa.Array]:
        """`prompts` and `prompt_ids` of the features a batch creates (null without a delta); the
        delta remembers which of its features were already stored (their values are SET)."""
        n = len(keys)
        if delta is None:
            return pa.nulls(n, pa.int64()), pa.nulls(n, pa.list_(pa.string()))
        delta.existing = existing
        at = pc.index_in(keys, value_set=delta.feature_rows.column("key"))
        return delta.feature_rows.column("prompts").take(at), delta.feature_rows.column("prompt_ids").take(at)

    def _write_delta(self, delta: derived_delta.Delta) -> None:
        """Apply a delta inside the batch's transaction (after its nodes and edges are in)."""
        rows = delta.feature_rows
        if delta.existing and rows.num_rows:
            rows = rows.filter(pc.is_in(rows.column("key"), value_set=pa.array(sorted(delta.existing), pa.string())))
            if rows.num_rows:
                self._exec("UNWIND $rows AS r MATCH (f:Feature {key: r.k}) SET f.prompts = r.n, f.prompt_ids = r.ps",
                           {"rows": [{"k": k, "n": c, "ps": ps} for k, c, ps in zip(
                               rows.column("key").to_pylist(), rows.column("prompts").to_pylist(),
                               rows.column("prompt_ids").to_pylist())]})
        self._copy("RActive", delta.ractive, NODE_TABLES["RActive"])
        rel = [("from", "STRING"), ("to", "STRING"), ("weight", "FLOAT")]
        self._copy("REDGE", delta.redge_active, rel, " (from='RActive', to='RActive')")
        self._copy("REDGE", delta.redge_logit, rel, " (from='RActive', to='Logit')")
        links = delta.links
        was = links.filter(links.column("old"))
        if was.num_rows:
            self._exec("UNWIND $rows AS r MATCH (a:Feature {key: r.s})-[l:LINKS]->(b:Feature {key: r.t}) SET l.prompts = r.n, "
                       "l.mean_weight = r.mw, l.mean_abs_weight = r.maw, l.prompt_ids = r.ps",
                       {"rows": [{"s": s_, "t": t, "n": n, "mw": mw, "maw": maw, "ps": ps} for s_, t, n, mw, maw, ps in zip(
                           *(was.column(c).to_pylist() for c in ("s", "t", "prompts", "mean_weight", "mean_abs_weight",
                                                                  "prompt_ids")))]})
        fresh = links.filter(pc.invert(links.column("old")))
        self._copy("LINKS", pa.table({"from": fresh.column("s"), "to": fresh.column("t"), "prompts": fresh.column("prompts"),
                                      "mean_weight": fresh.column("mean_weight"),
                                      "mean_abs_weight": fresh.column("mean_abs_weight"),
                                      "prompt_ids": fresh.column("prompt_ids"), "source_key": fresh.column("s"),
                                      "target_key": fresh.column("t")}),
                   [("from", "STRING"), ("to", "STRING"), ("prompts", "INT64"), ("mean_weight", "DOUBLE"),
                    ("mean_abs_weight", "DOUBLE"), ("prompt_ids", "STRING[]"), ("source_key", "STRING"),
                    ("target_key", "STRING")])

    def _existing(self, table: str, keys: pa.Array | pa.ChunkedArray) -> set[str]:
        """Which of `keys` are already stored in `table` (skips the query on an empty table)."""
        if len(keys) == 0 or self._df(f"MATCH (n:{table}) RETURN count(n) AS c")["c"].iloc[0] == 0:
            return set()
        # UNWIND + primary-key lookup: `WHERE n.key IN $k` scans the table and tests every row
        # against the whole list (quadratic; 1.6 s for 20k keys against 18k features).
        return set(self._df(f"UNWIND $k AS x MATCH (n:{table} {{key: x}}) RETURN n.key AS k", {"k": keys.to_pylist()})["k"])

    # -- derived layer and annotations ----------------------------------------------------
    def rebuild_links(self, progress: bool = False) -> int:
        self._require_writer()  # a few whole-table statements: nothing to show progress on
        self._mark_stale()  # until the last step: a rebuild killed half-way stays marked stale
        # drop and recreate rather than DELETE: deleted rels stay in the table's storage and every
        # later scan of LINKS pays for them (and deleting millions of rels takes minutes)
        for table in DERIVED_TABLES:
            self._exec(f"DROP TABLE IF EXISTS {table}")
        for stmt in _schema_statements():  # IF NOT EXISTS: only the dropped tables are created
            self._exec(stmt)
        # Built from the recurring features outwards: a pair in >= LINKS_MIN_PROMPTS prompts joins two
        # such features, so LINKS aggregates the recurring subgraph's edges, not every edge (on a
        # corpus of one-off features an aggregate over all pairs fills the buffer pool).
        m = LINKS_MIN_PROMPTS
        self._exec("MATCH (f:Feature) WHERE f.prompts IS NOT NULL SET f.prompts = NULL, f.prompt_ids = NULL")
        self._exec(f"MATCH (a:Active) WITH a.feature_key AS k, count(DISTINCT a.prompt_id) AS n WHERE n >= {m} "
                   "MATCH (f:Feature {key: k}) SET f.prompts = n")
        for stmt in RECURRING:  # a literal bound: LadybugDB skips the chunks of one-off features
            self._exec(stmt.format(m=m))
        self._exec("MATCH (r:RActive) WITH r.feature_key AS k, list_sort(collect(DISTINCT r.prompt_id)) AS ps "
                   "MATCH (f:Feature {key: k}) SET f.prompt_ids = ps")
        # COPY from a subquery: the aggregate goes straight into the rel table, never through Python
        self._exec(
            "COPY LINKS FROM (MATCH (a:RActive)-[e:REDGE]->(b:RActive) "
            "WITH a.feature_key AS s, b.feature_key AS t, a.prompt_id AS p, e.weight AS w "
            "WITH s, t, count(DISTINCT p) AS n, avg(CAST(w AS DOUBLE)) AS mw, avg(abs(CAST(w AS DOUBLE))) AS maw, "
            "list_sort(collect(DISTINCT p)) AS ps "
            f"WHERE n >= {m} RETURN s, t, n, mw, maw, ps, s AS sk, t AS tk)")
        self._exec("MATCH (m:Meta {key: 'schema'}) SET m.derived_stale = false, m.write_token = $t", {"t": uuid.uuid4().hex})
        return int(self._df("MATCH ()-[l:LINKS]->() RETURN count(l) AS c")["c"].iloc[0])

    def set_feature_labels(self, labels: dict[str, str], source: str = LABEL_USER) -> None:
        """Set Feature.label by key, with its source (``user``: the app's editable labels;
        ``import``: clerps). An empty label clears it: the automatic label, if any, shows again."""
        self._require_writer()
        if source not in (LABEL_USER, LABEL_IMPORT):
            raise StoreError(f"label source {source!r}: set_feature_labels writes 'user' or 'import' labels "
                             "(automatic ones come with write_feature_info)")
        rows = [{"k": k, "l": (v or "").strip()} for k, v in labels.items()]
        if rows:
            def work() -> None:
                self._exec("UNWIND $rows AS r MATCH (f:Feature {key: r.k}) WHERE r.l <> '' SET f.label = r.l, "
                           "f.label_source = $s", {"rows": rows, "s": source})
                self._exec(f"UNWIND $rows AS r MATCH (f:Feature {{key: r.k}}) WHERE r.l = '' SET f.label = f.auto_label, "
                           f"f.label_source = CASE WHEN f.auto_label IS NULL THEN NULL ELSE '{LABEL_AUTO}' END", {"rows": rows})
                self._touch()

            self._transaction(work)

    def write_feature_info(self, df: pd.DataFrame) -> list[str]:
        """Store per-feature statistics on Feature nodes, creating Features that are absent. With an
        ``auto_label`` column, that is stored too and shown as the label unless a user or an import
        labelled the feature; returns the keys of those (their label kept)."""
        self._require_writer()
        rows = []
        for r in df.to_dict("records"):
            rows.append({k: (None if isinstance(r.get(k), float) and np.isnan(r.get(k)) else r.get(k)) for k in
                         ("key", "scan", "layer", "index", "frequency", "max_activation", "contexts", "logit_effects",
                          "auto_label")})
        for r in rows:
            r["layer"] = int(r["layer"]); r["index"] = int(r["index"])
            r["frequency"] = None if r["frequency"] is None else float(r["frequency"])
            r["max_activation"] = None if r["max_activation"] is None else float(r["max_activation"])

        def work() -> list[str]:
            self._exec("UNWIND $rows AS r MERGE (f:Feature {key: r.key}) SET f.scan = r.scan, f.layer = r.layer, "
                       "f.`index` = r.`index`, f.frequency = r.frequency, f.max_activation = r.max_activation, "
                       "f.contexts = r.contexts, f.logit_effects = r.logit_effects", {"rows": rows})
            kept: list[str] = []
            if "auto_label" in df.columns:  # in the same transaction: a kill never leaves half the labels
                self._exec("UNWIND $rows AS r MATCH (f:Feature {key: r.key}) SET f.auto_label = r.auto_label", {"rows": rows})
                self._exec(f"UNWIND $rows AS r MATCH (f:Feature {{key: r.key}}) WHERE {AUTO_MAY_SHOW} "
                           f"SET f.label = r.auto_label, "
                           f"f.label_source = CASE WHEN r.auto_label IS NULL THEN NULL ELSE '{LABEL_AUTO}' END", {"rows": rows})
                kept = self._df("UNWIND $k AS k MATCH (f:Feature {key: k}) WHERE f.label_source IN $s RETURN f.key AS key",
                                {"k": [r["key"] for r in rows], "s": [LABEL_USER, LABEL_IMPORT]})["key"].tolist()
            self._touch()
            return sorted(kept)

        return self._transaction(work)

    def write_supernodes(self, supernodes: list[dict], replace: tuple[str, str] | None = None) -> None:
        """Create or replace supernodes by key, each -[:CONTAINS]-> its member features; all of
        them in one transaction. ``replace=(method, scan)`` first deletes that method's supernodes
        of that scan in the same transaction, so a kill never leaves the old set gone and the new
        one missing."""
        self._require_writer()
        if not supernodes and replace is None:
            return

        def work() -> None:
            if replace is not None:
                self._exec("MATCH (s:Supernode) WHERE s.method = $m AND s.scan = $s DETACH DELETE s",
                           {"m": replace[0], "s": replace[1]})
            self._write_supernodes(supernodes)

        self._transaction(work)
        self._touch()

    def _write_supernodes(self, supernodes: list[dict]) -> None:
        """The statements of write_supernodes, inside the caller's transaction."""
        for s in supernodes:
            self._exec("MATCH (s:Supernode {key: $key}) DETACH DELETE s", {"key": s["key"]})
            self._exec("CREATE (s:Supernode {key: $key, scan: $scan, label: $label, method: $method, score: $score, "
                       "prompt_id: $pid, node_ids: $nids})",
                       {"key": s["key"], "scan": s.get("scan"), "label": s.get("label"), "method": s.get("method", "user"),
                        "score": None if s.get("score") is None else float(s["score"]), "pid": s.get("prompt_id"),
                        "nids": [str(x) for x in s.get("node_ids") or []]})
            if s.get("members"):
                self._exec("UNWIND $m AS k MATCH (s:Supernode {key: $key}), (f:Feature {key: k}) CREATE (s)-[:CONTAINS]->(f)",
                           {"key": s["key"], "m": [str(k) for k in s["members"]]})

    def delete_supernodes(self, method: str | None = None, scan: str | None = None) -> int:
        self._require_writer()
        conds, params = ["true"], {}
        if method is not None:
            conds.append("s.method = $m"); params["m"] = method
        if scan is not None:
            conds.append("s.scan = $s"); params["s"] = scan
        where = " AND ".join(conds)
        n = int(self._df(f"MATCH (s:Supernode) WHERE {where} RETURN count(s) AS c", params)["c"].iloc[0])
        if n:
            self._exec(f"MATCH (s:Supernode) WHERE {where} DETACH DELETE s", params)
            self._touch()
        return n


def _s(v: Any) -> str | None:
    return None if v is None else str(v)


def _literal(text: str) -> str:
    """A Cypher string literal (COPY FROM takes no parameter for its file): backslashes and
    quotes escaped, so a store path holding a quote cannot end the literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def one_line(exc: BaseException) -> str:
    """An error's message on one line."""
    return " ".join(str(exc).split())


def _graphs_fault(exc: StoreError) -> bool:
    """Whether a failed write is the graphs' fault (retry them one by one), not the store's
    (busy, disk full: stop)."""
    return not isinstance(exc, StoreBusy) and "disk full" not in str(exc)


# -- reading graph directories and preparing COPY tables (pyarrow only, no pandas) -------------

_PROMPT_SCHEMA = pa.schema([(c, _ARROW[t]) for c, t in NODE_TABLES["Prompt"]])
_TYPE_CODES = pa.array(list(TYPE_TABLE))  # node type -> position in PER_PROMPT
assert [TYPE_TABLE[t] for t in TYPE_TABLE] == list(PER_PROMPT)


@dataclass
class LoadedGraph:
    """One graph directory read for loading: meta.json, the node and edge tables (cast to the
    graph-file schemas) and each edge endpoint's node row (found while validating)."""

    meta: dict[str, Any]
    nodes: pa.Table
    edges: pa.Table
    src_row: pa.Array
    dst_row: pa.Array
    directory: str = ""

    @property
    def graph_id(self) -> str:
        return self.meta["graph_id"]


# meta.json fields a load reads, and the types they must have (None: may be absent or null)
_META_TYPES: dict[str, tuple[type, ...]] = {"graph_id": (str,), "prompt": (str,), "tokens": (list,), "token_ids": (list,),
                                            "model": (str,), "scan": (str,), "n_layers": (int,)}
_META_OPTIONAL: dict[str, tuple[type, ...]] = {"settings": (dict,), "scores": (dict,), "prompt_props": (dict,),
                                               "logit_tokens": (dict,), "supernode_records": (list,)}


def _in(directory: str | os.PathLike, exc: GraphFileError) -> GraphFileError:
    """The error with the graph directory in front of its message (once)."""
    text = one_line(exc)
    return exc if text.startswith(str(directory)) else GraphFileError(f"{directory}: {text}")


def read_graph_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """meta.json of a graph directory (enough to know whether the graph is already stored), its
    fields checked for the types a load needs; errors name the directory."""
    from circuit_atlas.engine.formats.graph_files import read_meta

    try:
        return check_graph_meta(read_meta(directory))
    except GraphFileError as exc:
        raise _in(directory, exc) from None


def check_graph_meta(meta: Any) -> dict[str, Any]:
    """``meta`` (a graph's meta.json, or an in-memory graph's meta) checked for the types a load
    needs (see read_graph_meta)."""
    if not isinstance(meta, dict):
        raise GraphFileError("meta.json is not a JSON object")
    for key, types in _META_TYPES.items():
        if key not in meta:
            raise GraphFileError(f"meta.json lacks '{key}'")
        if not isinstance(meta[key], types) or isinstance(meta[key], bool):
            raise GraphFileError(f"meta.json '{key}' must be {_kind(types)}, not {json.dumps(meta[key])[:60]}")
    for key, types in _META_OPTIONAL.items():
        if meta.get(key) is not None and not isinstance(meta[key], types):
            raise GraphFileError(f"meta.json '{key}' must be {_kind(types)}, not {json.dumps(meta[key])[:60]}")
    if not meta["graph_id"]:
        raise GraphFileError("meta.json 'graph_id' is empty")
    if not all(isinstance(t, str) for t in meta["tokens"]):
        raise GraphFileError("meta.json 'tokens' must be a list of strings")
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in meta["token_ids"]):
        raise GraphFileError("meta.json 'token_ids' must be a list of integers")
    tags = (meta.get("prompt_props") or {}).get("tags")
    if tags is not None and not isinstance(tags, list):
        raise GraphFileError("meta.json 'prompt_props.tags' must be a list")
    for r in meta.get("supernode_records") or []:
        if not isinstance(r, dict) or not isinstance(r.get("key"), str):
            raise GraphFileError("meta.json 'supernode_records' must be objects with a string 'key'")
    return meta


def _kind(types: tuple[type, ...]) -> str:
    return {"str": "a string", "list": "a list", "int": "an integer", "dict": "an object"}[types[0].__name__]


# Columns that may not hold nulls (a node's id, type, place and indices; an edge's ends and weight)
_NOT_NULL = {"nodes": ("node_id", "type", "layer", "pos", "feature", "token_id"), "edges": ("source", "target", "weight")}


def _read_table(path: Path, schema: pa.Schema, what: str) -> pa.Table:
    try:
        t = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise GraphFileError(f"{path.parent}: corrupt parquet file ({exc})") from exc
    return _cast_table(t, schema, what)


def _cast_table(t: pa.Table, schema: pa.Schema, what: str) -> pa.Table:
    missing = [name for name in schema.names if name not in t.column_names]
    if missing:
        raise GraphFileError(f"{what} table lacks columns {missing}")
    try:
        t = t.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise GraphFileError(f"{what} table has wrongly typed columns: {exc}") from exc
    # NaN means missing (as it did through pandas); the store holds nulls.
    cols = [pc.if_else(pc.is_nan(c), None, c) if pa.types.is_floating(c.type) and pc.any(pc.is_nan(c)).as_py() else c
            for c in t.columns]
    return pa.Table.from_arrays(cols, schema=schema)


def read_graph_dir(directory: str | os.PathLike, meta: dict[str, Any] | None = None) -> LoadedGraph:
    """Read and validate one graph directory with the checks of `GraphFile.validate` (node types,
    unique node ids, no dangling edges), vectorised in pyarrow, plus no nulls where a value is
    needed and finite numbers only (a NaN or infinite edge weight is refused); errors name the
    directory."""
    path = Path(directory)
    meta = read_graph_meta(path) if meta is None else meta
    try:
        return _read_graph_dir(path, meta)
    except GraphFileError as exc:
        raise _in(directory, exc) from None


def loaded_graph(graph: Any) -> LoadedGraph:
    """An in-memory graph (engine.formats.graph_files.GraphTables: meta and Arrow tables) checked as
    `read_graph_dir` checks a directory, with no files in between; errors name its source."""
    where = str(getattr(graph, "source", "") or "<in-memory graph>")
    try:
        meta = check_graph_meta(graph.meta)
        nodes = _cast_table(graph.nodes, NODE_SCHEMA, "nodes")
        edges = _cast_table(graph.edges, EDGE_SCHEMA, "edges")
        return _checked(nodes, edges, meta, where)
    except GraphFileError as exc:
        raise _in(where, exc) from None


def _read_graph_dir(path: Path, meta: dict[str, Any]) -> LoadedGraph:
    nodes = _read_table(path / "nodes.parquet", NODE_SCHEMA, "nodes")
    edges = _read_table(path / "edges.parquet", EDGE_SCHEMA, "edges")
    return _checked(nodes, edges, meta, str(path))


def _checked(nodes: pa.Table, edges: pa.Table, meta: dict[str, Any], where: str) -> LoadedGraph:
    """The checks of `GraphFile.validate`, vectorised, on tables cast to the graph-file schemas."""
    for what, table in (("nodes", nodes), ("edges", edges)):
        for col in _NOT_NULL[what]:
            n = table.column(col).null_count
            if n:
                extra = " (NaN or null)" if col == "weight" else ""
                raise GraphFileError(f"{what}.parquet: {n} null value(s){extra} in column '{col}', which needs a value")
        for col in table.column_names:
            c = table.column(col)
            if pa.types.is_floating(c.type) and len(c) and pc.any(pc.is_inf(c)).as_py():
                raise GraphFileError(f"{what}.parquet: infinite value(s) in column '{col}' (values must be finite)")
    code = pc.index_in(nodes.column("type"), value_set=_TYPE_CODES)
    if code.null_count:
        bad = pc.unique(nodes.column("type").filter(pc.is_null(code))).to_pylist()
        raise GraphFileError(f"unknown node types {sorted(map(str, bad))}; expected {NODE_TYPES}")
    ids = nodes.column("node_id")
    if ids.null_count or pc.count_distinct(ids).as_py() != len(ids):
        raise GraphFileError("node ids are not unique")
    src = pc.index_in(edges.column("source"), value_set=ids)
    dst = pc.index_in(edges.column("target"), value_set=ids)
    if src.null_count or dst.null_count:
        dangling = set(edges.column("source").filter(pc.is_null(src)).to_pylist())
        dangling |= set(edges.column("target").filter(pc.is_null(dst)).to_pylist())
        raise GraphFileError(f"edges refer to unknown nodes, e.g. {sorted(map(str, dangling))[:3]}")
    return LoadedGraph(meta, nodes.append_column("code", code), edges, src, dst, where)


def _prompt_row(g: LoadedGraph) -> dict[str, Any]:
    m = g.meta
    props = m.get("prompt_props") or {}
    settings = m.get("settings") or {}
    scores = m.get("scores") or {}
    return {
        "id": g.graph_id, "text": m.get("prompt"), "tokens": list(m.get("tokens") or []),
        "token_ids": [int(t) for t in m.get("token_ids") or []],
        "model": m.get("model"), "scan": m.get("scan"), "node_threshold": settings.get("node_threshold"),
        "edge_threshold": settings.get("edge_threshold"), "replacement_score": scores.get("replacement_score"),
        "completeness_score": scores.get("completeness_score"), "corpus": props.get("corpus"),
        "tags": [str(t) for t in props.get("tags") or []], dialect.GROUP_PROPERTY: _s(props.get("group")),
        "expected": _s(props.get("expected")), "correct": props.get("correct"), "top_token": _s(props.get("top_token")),
        "external_id": _s(props.get("external_id")), "n_nodes": g.nodes.num_rows, "n_edges": g.edges.num_rows,
        "settings": json.dumps(settings, default=str), "created_at": _s(m.get("created_at")), "complete": False,
        "feature_weight": feature_weight(g.nodes),
    }


def feature_weight(nodes: pa.Table) -> float:
    """The sum over a prompt's features of their largest activation (over positions): the mass
    that `similar_prompts`' weighted Jaccard divides by, stored on the Prompt at load so that no
    query reads every instance of every prompt for it."""
    feats = nodes.filter(pc.equal(nodes.column("type"), "feature"))
    if feats.num_rows == 0:
        return 0.0
    act = pa.table({"layer": feats.column("layer"), "feature": feats.column("feature"),
                    "a": pc.cast(feats.column("activation"), pa.float64())})
    return float(pc.sum(act.group_by(["layer", "feature"]).aggregate([("a", "max")]).column("a_max")).as_py() or 0.0)


def _prepare_batch(graphs: list[LoadedGraph]) -> tuple[dict[str, pa.Table], list[tuple[str, str, pa.Table]]]:
    """The COPY tables of a batch: per-prompt node tables (plus `Token`), and the edges split by
    (source table, target table), ids prefixed with the prompt id."""
    parts: dict[str, list[pa.Table]] = {t: [] for t in PER_PROMPT}
    tokens_seen: dict[str, tuple[str, int, str | None]] = {}
    e_from, e_to, e_w, e_code = [], [], [], []
    for g in graphs:
        pid, m = g.graph_id, g.meta
        model, scan = m.get("model"), m.get("scan")
        nodes = g.nodes
        n = nodes.num_rows
        code = nodes.column("code").combine_chunks()
        pid_col = pa.array([pid], pa.string()).take(pa.array(np.zeros(n, np.int8)))
        nodes = nodes.append_column("prompt_id", pid_col)
        nodes = nodes.append_column("id", pc.binary_join_element_wise(pid_col, nodes.column("node_id"), "/"))
        codes = code.to_numpy(zero_copy_only=False)
        for i, table in enumerate(PER_PROMPT):
            sub = nodes.filter(pa.array(codes == i))
            if table == "Active":
                sub = sub.append_column("index", sub.column("feature"))
                sub = sub.append_column("scan", pa.array([scan] * sub.num_rows, pa.string()))
                sub = sub.append_column("feature_key", pc.binary_join_element_wise(
                    sub.column("scan"), pc.cast(sub.column("layer"), pa.string()), pc.cast(sub.column("feature"), pa.string()), ":"))
            elif table in ("Embedding", "Logit"):
                tok_ids = sub.column("token_id").to_pylist()
                if table == "Embedding":
                    tokens = list(m.get("tokens") or [])
                    text = [tokens[p] if 0 <= p < len(tokens) else None for p in sub.column("pos").to_pylist()]
                else:
                    logit_tokens = m.get("logit_tokens") or {}
                    text = [logit_tokens.get(str(t)) for t in tok_ids]
                keys = [f"{model}:{t}" for t in tok_ids]
                for k, t, x in zip(keys, tok_ids, text):
                    if k not in tokens_seen or (tokens_seen[k][2] is None and x is not None):
                        tokens_seen[k] = (model, t, x)
                sub = sub.append_column("token", pa.array(text, pa.string()))
                sub = sub.append_column("token_key", pa.array(keys, pa.string()))
            parts[table].append(sub)
        if g.edges.num_rows:
            e_from.append(pc.binary_join_element_wise(pid, g.edges.column("source"), "/"))
            e_to.append(pc.binary_join_element_wise(pid, g.edges.column("target"), "/"))
            e_w.append(g.edges.column("weight"))
            e_code.append(codes[g.src_row.to_numpy(zero_copy_only=False)] * len(PER_PROMPT)
                          + codes[g.dst_row.to_numpy(zero_copy_only=False)])
    out = {t: pa.concat_tables(parts[t]) for t in PER_PROMPT}
    out["Token"] = pa.table({"key": list(tokens_seen), "model": [v[0] for v in tokens_seen.values()],
                             "token_id": pa.array([v[1] for v in tokens_seen.values()], pa.int64()),
                             "text": pa.array([v[2] for v in tokens_seen.values()], pa.string())})
    groups: list[tuple[str, str, pa.Table]] = []
    if e_code:
        code = np.concatenate(e_code)
        order = np.argsort(code, kind="stable")
        counts = np.bincount(code, minlength=len(PER_PROMPT) ** 2)
        edges = pa.table({"from": _chunks(e_from), "to": _chunks(e_to), "weight": _chunks(e_w)}).take(pa.array(order))
        start = 0
        for c, k in enumerate(counts):
            if k:
                groups.append((PER_PROMPT[c // len(PER_PROMPT)], PER_PROMPT[c % len(PER_PROMPT)], edges.slice(start, k)))
            start += k
    return out, groups



def _chunks(parts: list[pa.ChunkedArray]) -> pa.ChunkedArray:
    """One chunked array of the chunks of `parts` (no copy)."""
    return pa.chunked_array([c for p in parts for c in p.chunks], type=parts[0].type)
