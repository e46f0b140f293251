"""The Bolt store: Neo4j (or a Bolt-compatible server) through the official `neo4j` driver.

One explicit transaction per prompt: global Feature/Token nodes are MERGEd, then ONE statement
creates the Prompt, its nodes (collected into a list) and its edges by list position, which is
~3x faster than matching edge endpoints by id. A transaction is atomic, so a prompt is written
whole or not at all, and a killed loader leaves nothing behind (the server rolls back). Graph
files are read with pyarrow and the next prompts' parameters are prepared in a thread while the
server writes the current one. Concurrent transactions are not used: prompts share Feature and
Token nodes, and concurrent MERGEs / OF edges on them conflict (duplicate keys, page conflicts).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
from tqdm import tqdm

from circuit_atlas.store import dialect
from circuit_atlas.store.base import (LABEL_AUTO, LABEL_IMPORT, LABEL_USER, LINKS_MIN_PROMPTS, SCHEMA_VERSION, UPGRADABLE,
                                     ReadOnlyViolation, Store, StoreError, WriteReport, version_error)
from circuit_atlas.engine.formats.graph_files import GraphFileError
from circuit_atlas.store import recovery
from circuit_atlas.store.embedded import (AUTO_MAY_SHOW, FEATURE_WEIGHT, LABELS_OF_OLD_STORE, feature_weight, one_line,
                                         read_graph_dir, read_graph_meta)

LABEL_KEYS = {"Prompt": "id", "Active": "id", "Embedding": "id", "Error": "id", "Logit": "id",
              "Feature": "key", "Token": "key", "Supernode": "key", "Meta": "key", "RActive": "id"}
PER_PROMPT = ("Active", "Embedding", "Error", "Logit")
# lookups by a non-key property: rebuild_links aggregates LINKS per chunk of feature keys, and
# delete_prompt finds a prompt's RActive nodes
INDEXES = (("RActive", "feature_key"), ("RActive", "prompt_id"))
RELS = ("HAS", "OF", "EDGE", "LINKS", "REDGE", "CONTAINS")


class BoltStore(Store):
    """A store on a Bolt server; credentials from NEO4J_USER / NEO4J_PASSWORD."""

    backend = "bolt"

    def __init__(self, url: str, read_only: bool = False) -> None:
        import neo4j
        from neo4j import exceptions as nex

        self.url = url
        self.read_only = read_only
        self.database = os.environ.get("NEO4J_DATABASE") or None
        user = os.environ.get("NEO4J_USER", "neo4j")
        password = os.environ.get("NEO4J_PASSWORD", "")
        if not read_only:  # a deployment may serve reads as a reader account and write as another
            if os.environ.get("NEO4J_WRITE_USER") and os.environ.get("NEO4J_WRITE_PASSWORD"):
                user, password = os.environ["NEO4J_WRITE_USER"], os.environ["NEO4J_WRITE_PASSWORD"]
            elif os.environ.get("NEO4J_READER_ONLY", "").strip().lower() in ("1", "true", "yes"):
                raise StoreError(f"{url}: writes are disabled here: the account {user!r} is read-only "
                                 "(NEO4J_READER_ONLY); set NEO4J_WRITE_USER and NEO4J_WRITE_PASSWORD to a writer "
                                 "account to save labels and supernodes")
        try:
            self._driver = neo4j.GraphDatabase.driver(url, auth=(user, password))
            self._driver.verify_connectivity()
            self._driver.verify_authentication()
        except nex.AuthError as exc:
            raise StoreError(f"{url}: authentication failed for user {user!r} (check NEO4J_USER / NEO4J_PASSWORD)") from exc
        except (nex.ServiceUnavailable, OSError, ValueError, nex.ConfigurationError) as exc:
            raise StoreError(f"{url}: cannot reach the Bolt server ({' '.join(str(exc).split())})") from exc
        except nex.Neo4jError as exc:
            raise StoreError(f"{url}: {exc.message or exc}") from exc
        version = self.schema_version()
        if version is not None and version != SCHEMA_VERSION and (read_only or version not in UPGRADABLE):
            self.close()
            raise version_error(url, version, read_only)
        if not read_only:
            self.init_schema()
            if version is not None and version != SCHEMA_VERSION:
                self._upgrade(version)
            elif self.derived_stale():
                recovery.note(None, f"{url}: the derived layer was left stale (a write was interrupted before it was "
                                    "rebuilt); rebuilding it now")
                self.rebuild_links()

    # -- low level -------------------------------------------------------------------------
    def _session(self, write: bool):
        import neo4j

        mode = neo4j.WRITE_ACCESS if write else neo4j.READ_ACCESS
        return self._driver.session(database=self.database, default_access_mode=mode)

    def _transaction(self, work: Callable[[Any], Any], write: bool = True, doing: str = "") -> Any:
        """`work(tx)` in one managed transaction (retried by the driver on transient errors), with
        the driver's errors as StoreError / ReadOnlyViolation; `doing` names the work in them."""
        from neo4j import exceptions as nex

        if write and self.read_only:
            raise ReadOnlyViolation(f"{self.url}: store opened read-only")
        what = f" while {doing}" if doing else ""
        try:
            with self._session(write) as s:
                return (s.execute_write if write else s.execute_read)(work)
        except nex.ClientError as exc:
            if "read" in (exc.message or "").lower() and "access" in (exc.message or "").lower():
                raise ReadOnlyViolation(f"{self.url}: {exc.message}") from exc
            raise StoreError(f"{self.url}: {exc.message or exc}{what}") from exc
        except (nex.ServiceUnavailable, nex.SessionExpired) as exc:
            raise StoreError(f"{self.url}: connection lost{what} ({exc})") from exc
        except nex.Neo4jError as exc:
            raise StoreError(f"{self.url}: {exc.message or exc}{what}") from exc

    def _run(self, cypher: str, params: dict[str, Any] | None = None, write: bool = True) -> list[dict]:
        return self._transaction(lambda tx: [r.data() for r in tx.run(cypher, params or {})], write)

    def _touch(self) -> None:
        self._run("MATCH (m:Meta {key: 'schema'}) SET m.write_token = $t", {"t": uuid.uuid4().hex})

    def _wipe(self) -> None:
        """Empty the database (tests)."""
        self._run("MATCH (n) DETACH DELETE n")

    def _set_schema_version(self, version: int) -> None:
        self._run("MATCH (m:Meta {key: 'schema'}) SET m.schema_version = $v", {"v": version})

    # -- interface -------------------------------------------------------------------------
    def init_schema(self) -> None:
        for label, key in LABEL_KEYS.items():
            self._run(f"CREATE CONSTRAINT {label.lower()}_{key} IF NOT EXISTS FOR (n:{label}) REQUIRE n.{key} IS UNIQUE")
        for label, prop in INDEXES:
            self._run(f"CREATE INDEX {label.lower()}_{prop} IF NOT EXISTS FOR (n:{label}) ON (n.{prop})")
        self._run("MERGE (m:Meta {key: 'schema'}) ON CREATE SET m.schema_version = $v, m.write_token = $t",
                  {"v": SCHEMA_VERSION, "t": uuid.uuid4().hex})

    def _upgrade(self, version: int) -> None:
        """Bring an older store to SCHEMA_VERSION in place (only derived data changes)."""
        if version < 3:
            self._run(FEATURE_WEIGHT)  # Prompt.feature_weight, set at load since version 3
        if version < 4:
            self._run(LABELS_OF_OLD_STORE)  # Feature.label_source: the labels there are taken as the user's
        self.rebuild_links()  # 1 -> 2: LINKS.prompt_ids; 2 -> 3: LINKS keys, Feature.prompts/prompt_ids, RActive/REDGE
        self._set_schema_version(SCHEMA_VERSION)

    def schema_version(self) -> int | None:
        rows = self._run("MATCH (m:Meta {key: 'schema'}) RETURN m.schema_version AS v", write=False)
        return None if not rows or rows[0]["v"] is None else int(rows[0]["v"])

    def version_token(self) -> str:
        rows = self._run("MATCH (m:Meta {key: 'schema'}) RETURN m.write_token AS t", write=False)
        return "" if not rows else str(rows[0]["t"])

    def prompt_ids(self) -> set[str]:
        return {r["id"] for r in self._run("MATCH (p:Prompt) RETURN p.id AS id", write=False)}

    def delete_prompt(self, prompt_id: str) -> bool:
        """The prompt, its nodes, supernodes and derived instances in one transaction (with the
        stale mark), then the derived layer rebuilt."""
        if not self._run("MATCH (p:Prompt {id: $id}) RETURN p.id AS id", {"id": prompt_id}, write=False):
            return False

        def work(tx) -> None:
            tx.run(STALE, t=uuid.uuid4().hex).consume()
            tx.run("MATCH (p:Prompt {id: $id}) OPTIONAL MATCH (p)-[:HAS]->(n) DETACH DELETE n "
                   "WITH DISTINCT p DETACH DELETE p", id=prompt_id).consume()
            tx.run("MATCH (s:Supernode {prompt_id: $id}) DETACH DELETE s", id=prompt_id).consume()
            tx.run("MATCH (r:RActive {prompt_id: $id}) DETACH DELETE r", id=prompt_id).consume()

        self._transaction(work, doing=f"deleting prompt {prompt_id}")
        self._refresh_derived()
        return True

    def derived_stale(self) -> bool:
        rows = self._run("MATCH (m:Meta {key: 'schema'}) RETURN m.derived_stale AS s", write=False)
        return bool(rows and rows[0]["s"])

    def read(self, cypher: str, params: dict[str, Any] | None = None) -> pd.DataFrame:
        dialect.require_read(cypher)  # one pure read (store/cypher_guard.py), else ReadOnlyViolation
        rows = self._run(cypher, params, write=False)
        return pd.DataFrame(rows)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"backend": self.backend, "url": self.url, "schema_version": self.schema_version()}
        for label in LABEL_KEYS:
            if label != "Meta":
                out[label] = self._run(f"MATCH (n:{label}) RETURN count(n) AS c", write=False)[0]["c"]
        for r in RELS:
            out[r] = self._run(f"MATCH ()-[r:{r}]->() RETURN count(r) AS c", write=False)[0]["c"]
        return out

    def close(self) -> None:
        d = getattr(self, "_driver", None)
        if d is not None:
            d.close()
            self._driver = None

    # -- bulk write ------------------------------------------------------------------------
    def write_graphs(self, graph_dirs: Iterable[str | os.PathLike], progress: bool = False) -> WriteReport:
        """One transaction per prompt; while the server runs one prompt's transaction, a thread
        reads and prepares the next graph (file reading, validation, parameter lists). A bad
        graph is listed in report.failed and the others are written."""
        if self.read_only:
            raise ReadOnlyViolation(f"{self.url}: store opened read-only")
        t0 = time.perf_counter()
        report = WriteReport()
        present = self.prompt_ids()
        todo: list[tuple[str | os.PathLike, dict]] = []
        for d in graph_dirs:
            try:
                meta = read_graph_meta(d)
            except GraphFileError as exc:
                report.failed.append((str(d), one_line(exc)))
                continue
            if meta["graph_id"] in present:
                report.skipped.append(meta["graph_id"])
                continue
            present.add(meta["graph_id"])  # a graph listed twice is written once
            todo.append((d, meta))
        done = len(report.skipped) + len(report.failed)
        bar = tqdm(total=len(todo) + done, initial=done, desc="loading graphs", unit="graph", disable=not progress)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bolt-prepare") as pool:
            ahead = [pool.submit(_prepare, d, meta) for d, meta in todo[:PREFETCH]]
            for i in range(len(todo)):
                future = ahead.pop(0)
                if i + PREFETCH < len(todo):
                    ahead.append(pool.submit(_prepare, *todo[i + PREFETCH]))
                bar.update(1)
                try:
                    prepared = future.result()
                except GraphFileError as exc:
                    report.failed.append((str(todo[i][0]), one_line(exc)))
                    continue
                try:
                    self._write_one(prepared)
                except StoreError as exc:
                    if "connection lost" in str(exc) or isinstance(exc, ReadOnlyViolation):
                        raise
                    report.failed.append((str(todo[i][0]), one_line(exc)))
                    continue
                report.written.append(prepared.graph_id)
                report.nodes += prepared.n_nodes
                report.edges += prepared.n_edges
            for f in ahead:
                f.cancel()
        bar.close()
        if report.written:
            self._refresh_derived()
        report.seconds = time.perf_counter() - t0
        return report

    def _load_nodes_edges(self, tx, g: "PreparedGraph") -> tuple[int, int]:
        """Everything of one prompt inside transaction `tx`: MERGE its features and tokens, then ONE
        statement creates the Prompt, its nodes (collected into a list) and its edges by list
        position (three flat parameter lists: source position, target position, weight)."""
        if g.feats:
            tx.run("UNWIND $rows AS r MERGE (f:Feature {key: r.key}) "
                   "ON CREATE SET f.scan = r.scan, f.layer = r.layer, f.`index` = r.`index` "
                   # an imported label fills an empty one or replaces an automatic one
                   f"WITH f, r, r.label IS NOT NULL AND {AUTO_MAY_SHOW} AS imported "
                   "SET f.label = CASE WHEN imported THEN r.label ELSE f.label END, "
                   f"f.label_source = CASE WHEN imported THEN '{LABEL_IMPORT}' ELSE f.label_source END",
                   rows=g.feats).consume()
        if g.toks:
            tx.run("UNWIND $rows AS r MERGE (t:Token {key: r.key}) "
                   "ON CREATE SET t.model = r.model, t.token_id = r.token_id "
                   "SET t.text = coalesce(t.text, r.text)", rows=g.toks).consume()
        parts = ["CREATE (p:Prompt) SET p = $prompt WITH p, [] AS nodes"]
        params: dict[str, Any] = {"prompt": g.prompt}
        for i, t in enumerate(PER_PROMPT):
            if not g.rows[t]:
                continue
            params[f"g{i}"] = g.rows[t]
            of = {"Active": "MATCH (o:Feature {key: r.k}) ", "Embedding": "MATCH (o:Token {key: r.k}) ",
                  "Logit": "MATCH (o:Token {key: r.k}) ", "Error": ""}[t]
            link = "CREATE (n)-[:OF]->(o) " if of else ""
            parts.append(f"UNWIND $g{i} AS r {of}CREATE (p)-[:HAS]->(n:{t}) SET n = r.p {link}"
                         f"WITH p, nodes, collect(n) AS c WITH p, nodes + c AS nodes")
        if g.n_edges:
            params.update(es=g.src, et=g.dst, ew=g.weight)
            parts.append("UNWIND range(0, size($es) - 1) AS i WITH nodes[$es[i]] AS s, nodes[$et[i]] AS t, $ew[i] AS w "
                         "CREATE (s)-[:EDGE {weight: w}]->(t)")
        parts.append("RETURN count(*) AS c")
        tx.run(" ".join(parts), params).consume()
        if g.supernodes:  # an import's supernodes, in the graph's own transaction
            _write_supernodes(tx, g.supernodes)
        tx.run(STALE, t=uuid.uuid4().hex).consume()
        return g.n_nodes, g.n_edges

    def _write_one(self, g: "PreparedGraph") -> tuple[int, int]:
        return self._transaction(lambda tx: self._load_nodes_edges(tx, g), doing=f"writing prompt {g.graph_id}")

    # -- derived layer and annotations ----------------------------------------------------
    def rebuild_links(self, progress: bool = False) -> int:
        """The derived layer, from the recurring features outwards as on the embedded store (see
        EmbeddedStore.rebuild_links), in bounded transactions: a server holds a transaction's
        changes in memory, so one statement over a large corpus runs out of heap (ArcadeDB with a
        1 GB heap failed at 100 prompts x 50k edges); here the old layer is deleted in chunks, each
        feature's recurrence and the recurring subgraph are built one prompt per transaction, and
        LINKS is aggregated a chunk of source features (at most LINKS_CHUNK_EDGES of their edges)
        per transaction. Idempotent: a failed rebuild is completed by running it again."""
        m = LINKS_MIN_PROMPTS
        self._run(STALE, {"t": uuid.uuid4().hex})  # until the last step: a rebuild cut short stays marked stale
        # ArcadeDB caches a statement's plan by its text, and a plan made while RActive was empty
        # scans RActive instead of using its indexes: the REDGE step of a rebuild that follows a
        # rebuild of one prompt took > 100 s per prompt instead of 2 s. A text that names this
        # rebuild gets a plan made now (a comment: every Bolt server ignores it).
        fresh_plan = f" // rebuild {uuid.uuid4().hex[:12]}"
        self._delete_chunked("MATCH ()-[x:LINKS]->()", "DELETE x")
        self._delete_chunked("MATCH ()-[x:REDGE]->()", "DELETE x")
        self._delete_chunked("MATCH (x:RActive)", "DETACH DELETE x")
        self._delete_chunked("MATCH (x:Feature) WHERE x.prompt_ids IS NOT NULL", "SET x.prompts = null, x.prompt_ids = null")
        # Each feature's prompts, one prompt per transaction (in order, so the lists are sorted);
        # then, per prompt, its features are settled (recurring: `prompts` set; one-off: cleared;
        # a one-off is in that prompt only) and its share of the recurring subgraph is copied:
        # instances of recurring features (RActive) and their edges (REDGE).
        prompts = sorted(self.prompt_ids())
        for pid in tqdm(prompts, desc="feature recurrence", unit="prompt", disable=not progress):
            self._run_many(["MATCH (:Prompt {id: $p})-[:HAS]->(:Active)-[:OF]->(f:Feature) WITH DISTINCT f "
                            "SET f.prompt_ids = coalesce(f.prompt_ids, []) + [$p]"], {"p": pid})
        for pid in tqdm(prompts, desc="recurring subgraph", unit="prompt", disable=not progress):
            self._run_many([
                ("MATCH (:Prompt {id: $p})-[:HAS]->(:Active)-[:OF]->(f:Feature) WHERE f.prompts IS NULL "
                 "WITH DISTINCT f WITH f, size(f.prompt_ids) AS n "
                 "SET f.prompts = CASE WHEN n >= $m THEN n END, f.prompt_ids = CASE WHEN n >= $m THEN f.prompt_ids END"),
                ("MATCH (:Prompt {id: $p})-[:HAS]->(a:Active)-[:OF]->(f:Feature) WHERE f.prompts >= $m "
                 "CREATE (:RActive {id: a.id, prompt_id: a.prompt_id, feature_key: a.feature_key, layer: a.layer, "
                 "pos: a.pos, activation: a.activation, influence: a.influence})"),
                ("MATCH (:Prompt {id: $p})-[:HAS]->(a:Active)-[e:EDGE]->(b:Active) "
                 "MATCH (ra:RActive {id: a.id}) MATCH (rb:RActive {id: b.id}) CREATE (ra)-[:REDGE {weight: e.weight}]->(rb)"),
                ("MATCH (:Prompt {id: $p})-[:HAS]->(a:Active)-[e:EDGE]->(t:Logit) "
                 "MATCH (ra:RActive {id: a.id}) CREATE (ra)-[:REDGE {weight: e.weight}]->(t)"),
            ], {"p": pid, "m": m}, fresh_plan)
        # LINKS a chunk of source features at a time, each chunk holding at most LINKS_CHUNK_EDGES of
        # their REDGEs: the server groups a chunk's edges in memory (ArcadeDB caps that per query)
        out_edges = self._run("MATCH (a:RActive)-[:REDGE]->(:RActive) RETURN a.feature_key AS k, count(*) AS c ORDER BY k",
                              write=False)
        chunks: list[list[str]] = []
        size = 0
        for r in out_edges:
            if not chunks or size + r["c"] > LINKS_CHUNK_EDGES:
                chunks.append([])
                size = 0
            chunks[-1].append(r["k"])
            size += r["c"]
        n = 0
        for chunk in tqdm(chunks, desc="LINKS", unit="chunk", disable=not progress):
            rows = self._run(
                "UNWIND $keys AS k MATCH (a:RActive {feature_key: k})-[e:REDGE]->(b:RActive) "
                "WITH a.feature_key AS s, b.feature_key AS t, a.prompt_id AS p, e.weight AS w ORDER BY p "
                "WITH s, t, count(DISTINCT p) AS n, avg(toFloat(w)) AS mw, avg(abs(toFloat(w))) AS maw, "
                "collect(DISTINCT p) AS ps WHERE n >= $m "
                "MATCH (fa:Feature {key: s}) MATCH (fb:Feature {key: t}) "
                "CREATE (fa)-[:LINKS {prompts: n, mean_weight: mw, mean_abs_weight: maw, prompt_ids: ps, "
                "source_key: s, target_key: t}]->(fb) RETURN count(*) AS c" + fresh_plan, {"keys": chunk, "m": m})
            n += int(rows[0]["c"]) if rows else 0
        self._run("MATCH (m:Meta {key: 'schema'}) SET m.derived_stale = false, m.write_token = $t", {"t": uuid.uuid4().hex})
        return n

    def _delete_chunked(self, match: str, action: str) -> None:
        """`match` binds x; apply `action` to DELETE_CHUNK of them per transaction until none is left."""
        while self._run(f"{match} WITH x LIMIT {DELETE_CHUNK} {action} RETURN count(*) AS c")[0]["c"]:
            pass

    def _run_many(self, statements: list[str], params: dict[str, Any], suffix: str = "") -> None:
        """Several write statements (each + `suffix`) in one transaction (one prompt's share of a rebuild)."""
        self._transaction(lambda tx: [tx.run(q + suffix, params).consume() for q in statements],
                          doing="rebuilding the derived layer (run `circuit-atlas store rebuild-links` again once "
                                "the cause is fixed)")

    def set_feature_labels(self, labels: dict[str, str], source: str = LABEL_USER) -> None:
        """As EmbeddedStore.set_feature_labels: a user's or imported label; '' clears it."""
        if source not in (LABEL_USER, LABEL_IMPORT):
            raise StoreError(f"label source {source!r}: set_feature_labels writes 'user' or 'import' labels "
                             "(automatic ones come with write_feature_info)")
        rows = [{"k": k, "l": (v or "").strip()} for k, v in labels.items()]
        if rows:
            def work(tx) -> None:
                tx.run("UNWIND $rows AS r MATCH (f:Feature {key: r.k}) WHERE r.l <> '' SET f.label = r.l, "
                       "f.label_source = $s", rows=rows, s=source).consume()
                tx.run(f"UNWIND $rows AS r MATCH (f:Feature {{key: r.k}}) WHERE r.l = '' SET f.label = f.auto_label, "
                       f"f.label_source = CASE WHEN f.auto_label IS NULL THEN NULL ELSE '{LABEL_AUTO}' END", rows=rows).consume()
                tx.run("MATCH (m:Meta {key: 'schema'}) SET m.write_token = $t", t=uuid.uuid4().hex).consume()

            self._transaction(work, doing="saving labels")

    def write_feature_info(self, df: pd.DataFrame) -> list[str]:
        """As EmbeddedStore.write_feature_info; returns the keys whose user/imported label stays."""
        rows = []
        for r in df.to_dict("records"):
            rows.append({"key": r["key"], "scan": r.get("scan"), "layer": int(r["layer"]), "index": int(r["index"]),
                         "frequency": _nn(r.get("frequency")), "max_activation": _nn(r.get("max_activation")),
                         "contexts": r.get("contexts"), "logit_effects": r.get("logit_effects"),
                         "auto_label": _s(_nn(r.get("auto_label")))})
        with_labels = "auto_label" in df.columns

        def work(tx) -> list[str]:
            tx.run("UNWIND $rows AS r MERGE (f:Feature {key: r.key}) SET f.scan = r.scan, f.layer = r.layer, "
                   "f.`index` = r.`index`, f.frequency = r.frequency, f.max_activation = r.max_activation, "
                   "f.contexts = r.contexts, f.logit_effects = r.logit_effects", rows=rows).consume()
            kept: list[str] = []
            if with_labels:  # in the same transaction: a failure never leaves half the labels
                tx.run("UNWIND $rows AS r MATCH (f:Feature {key: r.key}) SET f.auto_label = r.auto_label", rows=rows).consume()
                tx.run(f"UNWIND $rows AS r MATCH (f:Feature {{key: r.key}}) WHERE {AUTO_MAY_SHOW} "
                       "SET f.label = r.auto_label, "
                       f"f.label_source = CASE WHEN r.auto_label IS NULL THEN NULL ELSE '{LABEL_AUTO}' END", rows=rows).consume()
                kept = [rec["key"] for rec in tx.run("UNWIND $k AS k MATCH (f:Feature {key: k}) WHERE f.label_source IN $s "
                                                     "RETURN f.key AS key", k=[r["key"] for r in rows],
                                                     s=[LABEL_USER, LABEL_IMPORT])]
            tx.run("MATCH (m:Meta {key: 'schema'}) SET m.write_token = $t", t=uuid.uuid4().hex).consume()
            return sorted(kept)

        return self._transaction(work, doing="writing feature contexts")

    def write_supernodes(self, supernodes: list[dict], replace: tuple[str, str] | None = None) -> None:
        """Create or replace supernodes by key, all in one transaction; ``replace=(method, scan)``
        first deletes that method's supernodes of that scan in the same transaction."""
        if not supernodes and replace is None:
            return

        def work(tx) -> None:
            if replace is not None:
                tx.run("MATCH (s:Supernode) WHERE s.method = $m AND s.scan = $s DETACH DELETE s",
                       {"m": replace[0], "s": replace[1]}).consume()
            _write_supernodes(tx, supernodes)

        self._transaction(work, doing="writing supernodes")
        self._touch()

    def delete_supernodes(self, method: str | None = None, scan: str | None = None) -> int:
        conds, params = ["true"], {}
        if method is not None:
            conds.append("s.method = $m"); params["m"] = method
        if scan is not None:
            conds.append("s.scan = $s"); params["s"] = scan
        where = " AND ".join(conds)
        n = self._run(f"MATCH (s:Supernode) WHERE {where} RETURN count(s) AS c", params, write=False)[0]["c"]
        self._run(f"MATCH (s:Supernode) WHERE {where} DETACH DELETE s", params)
        self._touch()
        return int(n)


STALE = "MATCH (m:Meta {key: 'schema'}) SET m.derived_stale = true, m.write_token = $t"
PREFETCH = 2  # graphs read and prepared ahead of the one being written
DELETE_CHUNK = 20_000  # derived nodes / relationships deleted per transaction by rebuild_links
LINKS_CHUNK_EDGES = 20_000  # recurring-subgraph edges whose LINKS are aggregated per transaction


@dataclass
class PreparedGraph:
    """The statement parameters of one graph (built off the writing thread)."""

    graph_id: str
    prompt: dict[str, Any]
    feats: list[dict]
    toks: list[dict]
    rows: dict[str, list[dict]]
    src: list[int]
    dst: list[int]
    weight: list[float]
    n_nodes: int
    n_edges: int
    supernodes: list[dict]


def _write_supernodes(tx, supernodes: list[dict]) -> None:
    """Create or replace supernodes by key inside transaction `tx`, each -[:CONTAINS]-> its members."""
    for s in supernodes:
        props = {"key": s["key"], "scan": s.get("scan"), "label": s.get("label"), "method": s.get("method", "user"),
                 "score": None if s.get("score") is None else float(s["score"]), "prompt_id": s.get("prompt_id"),
                 "node_ids": [str(x) for x in s.get("node_ids") or []]}
        tx.run("MATCH (s:Supernode {key: $key}) DETACH DELETE s", key=s["key"]).consume()
        tx.run("CREATE (s:Supernode) SET s = $p WITH s MATCH (f:Feature) WHERE f.key IN $m CREATE (s)-[:CONTAINS]->(f)",
               p={k: v for k, v in props.items() if v is not None}, m=[str(k) for k in s.get("members") or []]).consume()


def _prepare(directory: str | os.PathLike, meta: dict[str, Any]) -> PreparedGraph:
    """Read one graph directory (pyarrow, validated) into the parameters of `_load_nodes_edges`.
    Nodes are listed grouped by table in PER_PROMPT order; an edge names its endpoints by their
    position in that list."""
    g = read_graph_dir(directory, meta)
    m, pid = g.meta, g.graph_id
    props = m.get("prompt_props") or {}
    settings = m.get("settings") or {}
    scores = m.get("scores") or {}
    tokens = list(m.get("tokens") or [])
    logit_tokens = m.get("logit_tokens") or {}
    model, scan = m.get("model"), m.get("scan")
    code = g.nodes.column("code").to_numpy()
    order = np.argsort(code, kind="stable")  # node rows grouped by table, file order within a table
    position = np.empty(len(order), np.int64)
    position[order] = np.arange(len(order))
    cols = {c: g.nodes.column(c).to_pylist() for c in
            ("node_id", "layer", "pos", "feature", "token_id", "activation", "influence", "prob", "label")}
    rows: dict[str, list[dict]] = {t: [] for t in PER_PROMPT}
    feats: dict[str, dict] = {}
    toks: dict[str, dict] = {}
    for r in order.tolist():
        table = PER_PROMPT[code[r]]
        nid, pos = cols["node_id"][r], cols["pos"][r]
        if table == "Active":
            layer, index = cols["layer"][r], cols["feature"][r]
            key = f"{scan}:{layer}:{index}"
            if key not in feats:
                feats[key] = {"key": key, "scan": scan, "layer": layer, "index": index, "label": cols["label"][r]}
            rows[table].append({"p": _props({"id": f"{pid}/{nid}", "prompt_id": pid, "node_id": nid, "layer": layer,
                                             "pos": pos, "index": index, "feature_key": key,
                                             "activation": cols["activation"][r], "influence": cols["influence"][r]}),
                                "k": key})
        elif table == "Error":
            rows[table].append({"p": _props({"id": f"{pid}/{nid}", "prompt_id": pid, "node_id": nid,
                                             "layer": cols["layer"][r], "pos": pos, "influence": cols["influence"][r]})})
        else:
            tid = cols["token_id"][r]
            text = (tokens[pos] if 0 <= pos < len(tokens) else None) if table == "Embedding" else logit_tokens.get(str(tid))
            key = f"{model}:{tid}"
            if key not in toks or toks[key]["text"] is None:
                toks[key] = {"key": key, "model": model, "token_id": tid, "text": text}
            p = {"id": f"{pid}/{nid}", "prompt_id": pid, "node_id": nid, "pos": pos, "token_id": tid, "token": text}
            if table == "Logit":
                p["prob"] = cols["prob"][r]
            rows[table].append({"p": _props(p), "k": key})
    n_nodes, n_edges = g.nodes.num_rows, g.edges.num_rows
    prompt = {
        "id": pid, "text": m.get("prompt"), "tokens": tokens, "token_ids": [int(t) for t in m.get("token_ids") or []],
        "model": model, "scan": scan, "node_threshold": settings.get("node_threshold"),
        "edge_threshold": settings.get("edge_threshold"), "replacement_score": scores.get("replacement_score"),
        "completeness_score": scores.get("completeness_score"), "corpus": props.get("corpus"),
        "tags": [str(t) for t in props.get("tags") or []], dialect.GROUP_PROPERTY: _s(props.get("group")),
        "expected": _s(props.get("expected")), "correct": props.get("correct"), "top_token": _s(props.get("top_token")),
        "external_id": _s(props.get("external_id")), "n_nodes": n_nodes, "n_edges": n_edges,
        "settings": json.dumps(settings, default=str), "created_at": _s(m.get("created_at")), "complete": True,
        "feature_weight": feature_weight(g.nodes),
    }
    src = position[g.src_row.to_numpy(zero_copy_only=False)].tolist() if n_edges else []
    dst = position[g.dst_row.to_numpy(zero_copy_only=False)].tolist() if n_edges else []
    weight = g.edges.column("weight").cast(pa.float64()).to_pylist() if n_edges else []
    return PreparedGraph(pid, _props(prompt), list(feats.values()), list(toks.values()), rows, src, dst, weight,
                         n_nodes, n_edges, [dict(r) for r in m.get("supernode_records") or []])


def _props(d: dict[str, Any]) -> dict[str, Any]:
    """A property map without nulls (SET n = map stores no null properties anyway)."""
    return {k: v for k, v in d.items() if v is not None}


def _nn(v: Any) -> Any:
    """None for NaN/None, else a plain Python scalar (the driver rejects numpy types)."""
    if v is None:
        return None
    if isinstance(v, (float, np.floating)) and np.isnan(v):
        return None
    return v.item() if hasattr(v, "item") else v


def _s(v: Any) -> str | None:
    return None if v is None else str(v)
