"""The embedded store: LadybugDB (Kùzu fork) in a directory, bulk loads by COPY FROM parquet.

Whole-or-nothing per batch: the batch's Prompt rows are copied first with `complete=false`,
then nodes and edges, then the prompts are marked complete. A writer that opens the store
deletes every incomplete prompt (left by a killed load), so re-running gives exact counts.
Several prompts go into one COPY (parquet files, never pandas: per-call COPY from Arrow leaks).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from circuit_atlas.engine.graph_files import GraphFile
from circuit_atlas.store import dialect
from circuit_atlas.store.base import SCHEMA_VERSION, ReadOnlyViolation, Store, StoreError, WriteReport

PER_PROMPT = ("Active", "Embedding", "Error", "Logit")
DB_FILE = "atlas.lbdb"

# (table, columns with types); the first column is the primary key. Column order = parquet order.
NODE_TABLES: dict[str, list[tuple[str, str]]] = {
    "Meta": [("key", "STRING"), ("schema_version", "INT64"), ("write_token", "STRING")],
    "Feature": [("key", "STRING"), ("scan", "STRING"), ("layer", "INT64"), ("index", "INT64"), ("label", "STRING"),
                ("frequency", "DOUBLE"), ("max_activation", "DOUBLE"), ("contexts", "STRING"), ("logit_effects", "STRING")],
    "Token": [("key", "STRING"), ("model", "STRING"), ("token_id", "INT64"), ("text", "STRING")],
    "Prompt": [("id", "STRING"), ("text", "STRING"), ("tokens", "STRING[]"), ("token_ids", "INT64[]"), ("model", "STRING"),
               ("scan", "STRING"), ("node_threshold", "DOUBLE"), ("edge_threshold", "DOUBLE"),
               ("replacement_score", "DOUBLE"), ("completeness_score", "DOUBLE"), ("corpus", "STRING"),
               ("tags", "STRING[]"), (dialect.GROUP_PROPERTY, "STRING"), ("expected", "STRING"), ("correct", "BOOLEAN"),
               ("top_token", "STRING"), ("external_id", "STRING"), ("n_nodes", "INT64"), ("n_edges", "INT64"),
               ("settings", "STRING"), ("created_at", "STRING"), ("complete", "BOOLEAN")],
    "Active": [("id", "STRING"), ("prompt_id", "STRING"), ("node_id", "STRING"), ("layer", "INT64"), ("pos", "INT64"),
               ("index", "INT64"), ("feature_key", "STRING"), ("activation", "DOUBLE"), ("influence", "DOUBLE")],
    "Embedding": [("id", "STRING"), ("prompt_id", "STRING"), ("node_id", "STRING"), ("pos", "INT64"),
                  ("token_id", "INT64"), ("token", "STRING")],
    "Error": [("id", "STRING"), ("prompt_id", "STRING"), ("node_id", "STRING"), ("layer", "INT64"), ("pos", "INT64"),
              ("influence", "DOUBLE")],
    "Logit": [("id", "STRING"), ("prompt_id", "STRING"), ("node_id", "STRING"), ("pos", "INT64"), ("token_id", "INT64"),
              ("token", "STRING"), ("prob", "DOUBLE")],
    "Supernode": [("key", "STRING"), ("scan", "STRING"), ("label", "STRING"), ("method", "STRING"), ("score", "DOUBLE"),
                  ("prompt_id", "STRING"), ("node_ids", "STRING[]")],
}
_ARROW = {"STRING": pa.string(), "INT64": pa.int64(), "DOUBLE": pa.float64(), "BOOLEAN": pa.bool_(),
          "STRING[]": pa.list_(pa.string()), "INT64[]": pa.list_(pa.int64()), "FLOAT": pa.float32()}
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
    out.append("CREATE REL TABLE IF NOT EXISTS LINKS(FROM Feature TO Feature, prompts INT64, mean_weight DOUBLE, mean_abs_weight DOUBLE)")
    out.append("CREATE REL TABLE IF NOT EXISTS CONTAINS(FROM Supernode TO Feature)")
    return out


class EmbeddedStore(Store):
    """LadybugDB store in a directory; one writer process, any number of read-only readers."""

    backend = "embedded"

    def __init__(self, path: str | os.PathLike, read_only: bool = False, batch_prompts: int = 32) -> None:
        import ladybug

        self.path = Path(path).expanduser()
        self.url = f"embedded:{self.path}"
        self.read_only = read_only
        self.batch_prompts = batch_prompts
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"{self.url}: not a directory (an embedded store is a directory)")
        if read_only and not (self.path / DB_FILE).exists():
            raise StoreError(f"{self.url}: no store here (run an ingest first, or check CIRCUIT_ATLAS_STORE)")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._db = ladybug.Database(str(self.path / DB_FILE), read_only=read_only)
            self._conn = ladybug.Connection(self._db)
        except (RuntimeError, OSError) as exc:
            raise StoreError(f"{self.url}: cannot open the embedded store ({exc}); is another process writing to it?") from exc
        version = self.schema_version()
        if version is not None and version != SCHEMA_VERSION:
            self.close()
            raise StoreError(f"{self.url}: schema version {version}, this circuit-atlas needs {SCHEMA_VERSION}; "
                             "re-ingest into a new store")
        if not read_only:
            self.init_schema()
            self._cleanup_incomplete()

    # -- low level -------------------------------------------------------------------------
    def _exec(self, cypher: str, params: dict[str, Any] | None = None) -> Any:
        try:
            return self._conn.execute(cypher, params or {})
        except RuntimeError as exc:
            msg = str(exc)
            if "read-only" in msg:
                raise ReadOnlyViolation(f"{self.url}: store opened read-only: {msg}") from exc
            if "No space" in msg or "disk" in msg.lower() and "full" in msg.lower():
                raise StoreError(f"{self.url}: disk full ({msg})") from exc
            raise StoreError(f"{self.url}: {msg}") from exc

    def _df(self, cypher: str, params: dict[str, Any] | None = None) -> pd.DataFrame:
        return self._exec(cypher, params).get_as_df()

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
        self._exec("MERGE (m:Meta {key: 'schema'}) ON CREATE SET m.schema_version = $v, m.write_token = $t",
                   {"v": SCHEMA_VERSION, "t": uuid.uuid4().hex})

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
        for table in PER_PROMPT:
            self._exec(f"MATCH (n:{table}) WHERE n.prompt_id IN $ids DETACH DELETE n", {"ids": ids})
        self._exec("MATCH (p:Prompt) WHERE p.id IN $ids DETACH DELETE p", {"ids": ids})
        self._exec("MATCH (s:Supernode) WHERE s.prompt_id IN $ids DETACH DELETE s", {"ids": ids})

    def delete_prompt(self, prompt_id: str) -> bool:
        self._require_writer()
        exists = not self._df("MATCH (p:Prompt {id: $id}) RETURN p.id", {"id": prompt_id}).empty
        self._delete_ids([prompt_id])
        self._touch()
        return exists

    def _require_writer(self) -> None:
        if self.read_only:
            raise ReadOnlyViolation(f"{self.url}: store opened read-only")

    def read(self, cypher: str, params: dict[str, Any] | None = None) -> pd.DataFrame:
        word = dialect.writes(cypher)
        if word:
            raise ReadOnlyViolation(f"refused: read-only statement contains {word}")
        return self._df(cypher, params)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"backend": self.backend, "url": self.url, "schema_version": self.schema_version()}
        for t in NODE_TABLES:
            if t != "Meta":
                out[t] = int(self._df(f"MATCH (n:{t}) RETURN count(n) AS c")["c"].iloc[0])
        for r in ("HAS", "OF", "EDGE", "LINKS", "CONTAINS"):
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
        present = self.prompt_ids()
        dirs = list(graph_dirs)
        batch: list[GraphFile] = []
        bar = tqdm(total=len(dirs), desc="loading graphs", unit="graph", disable=not progress)
        for d in dirs:
            g = GraphFile.load(d)
            if g.graph_id in present or any(b.graph_id == g.graph_id for b in batch):
                report.skipped.append(g.graph_id)
                bar.update(1)
                continue
            batch.append(g)
            if len(batch) >= self.batch_prompts:
                self._write_batch(batch, report)
                bar.update(len(batch))
                batch = []
        if batch:
            self._write_batch(batch, report)
            bar.update(len(batch))
        bar.close()
        if report.written:
            self._touch()
        report.seconds = time.perf_counter() - t0
        return report

    def _copy(self, table: str, df: pd.DataFrame, types: list[tuple[str, str]], options: str = "") -> None:
        if df.empty:
            return
        schema = pa.schema([(c, _ARROW[t]) for c, t in types])
        arrow = pa.Table.from_pandas(df[[c for c, _ in types]], schema=schema, preserve_index=False)
        staging = self.path / "staging"
        staging.mkdir(exist_ok=True)
        f = staging / f"{table}-{uuid.uuid4().hex}.parquet"
        pq.write_table(arrow, f)
        try:
            self._exec(f"COPY {table} FROM '{f.as_posix()}'{options}")
        finally:
            f.unlink(missing_ok=True)

    def _write_batch(self, graphs: list[GraphFile], report: WriteReport) -> None:
        prompts, nodes_all, edges_all = [], [], []
        for g in graphs:
            pid = g.graph_id
            m = g.meta
            props = m.get("prompt_props") or {}
            settings = m.get("settings") or {}
            scores = m.get("scores") or {}
            n = g.nodes_table().to_pandas()
            e = g.edges_table().to_pandas()
            tokens = list(m.get("tokens") or [])
            prompts.append({
                "id": pid, "text": m.get("prompt"), "tokens": tokens, "token_ids": [int(t) for t in m.get("token_ids") or []],
                "model": m.get("model"), "scan": m.get("scan"), "node_threshold": settings.get("node_threshold"),
                "edge_threshold": settings.get("edge_threshold"), "replacement_score": scores.get("replacement_score"),
                "completeness_score": scores.get("completeness_score"), "corpus": props.get("corpus"),
                "tags": [str(t) for t in props.get("tags") or []], dialect.GROUP_PROPERTY: _s(props.get("group")),
                "expected": _s(props.get("expected")), "correct": props.get("correct"), "top_token": _s(props.get("top_token")),
                "external_id": _s(props.get("external_id")), "n_nodes": len(n), "n_edges": len(e),
                "settings": json.dumps(settings, default=str), "created_at": _s(m.get("created_at")), "complete": False,
            })
            n["prompt_id"] = pid
            n["id"] = pid + "/" + n["node_id"]
            n["model"] = m.get("model")
            n["scan"] = m.get("scan")
            pos = n["pos"].to_numpy()
            n["token"] = [tokens[p] if 0 <= p < len(tokens) else None for p in pos]
            logit_tokens = m.get("logit_tokens") or {}
            is_logit = n["type"] == "logit"
            n.loc[is_logit, "token"] = [logit_tokens.get(str(t)) for t in n.loc[is_logit, "token_id"]]
            nodes_all.append(n)
            e["source"] = pid + "/" + e["source"]
            e["target"] = pid + "/" + e["target"]
            edges_all.append(e)
            report.written.append(pid)
        nodes = pd.concat(nodes_all, ignore_index=True)
        edges = pd.concat(edges_all, ignore_index=True)
        self._copy("Prompt", pd.DataFrame(prompts), NODE_TABLES["Prompt"])
        try:
            self._load_nodes_edges(nodes, edges)
            self._exec("MATCH (p:Prompt) WHERE p.id IN $ids SET p.complete = true", {"ids": [g.graph_id for g in graphs]})
        except BaseException:
            try:
                self._delete_ids([g.graph_id for g in graphs])
            except Exception:
                pass  # the next writer's cleanup removes them
            del report.written[-len(graphs):]
            raise
        report.nodes += len(nodes)
        report.edges += len(edges)

    def _load_nodes_edges(self, nodes: pd.DataFrame, edges: pd.DataFrame) -> None:
        feats = nodes[nodes["type"] == "feature"].copy()
        feats["feature_key"] = feats["scan"] + ":" + feats["layer"].astype(str) + ":" + feats["feature"].astype(str)
        feats["index"] = feats["feature"]
        # Global nodes: create the ones not yet present.
        fk = feats.drop_duplicates("feature_key")
        existing = set(self._df("MATCH (f:Feature) WHERE f.key IN $k RETURN f.key AS k", {"k": fk["feature_key"].tolist()})["k"])
        new_f = fk[~fk["feature_key"].isin(existing)].rename(columns={"feature_key": "key"})
        for c in ("frequency", "max_activation", "contexts", "logit_effects"):
            new_f[c] = None
        self._copy("Feature", new_f, NODE_TABLES["Feature"])
        labelled = fk[fk["feature_key"].isin(existing) & fk["label"].notna()]
        if not labelled.empty:
            self._exec("UNWIND $rows AS r MATCH (f:Feature {key: r.k}) WHERE f.label IS NULL SET f.label = r.l",
                       {"rows": [{"k": k, "l": l} for k, l in zip(labelled["feature_key"], labelled["label"])]})
        toks = nodes[nodes["type"].isin(["embedding", "logit"])].copy()
        toks["key"] = toks["model"] + ":" + toks["token_id"].astype(str)
        toks["text"] = toks["token"]
        toks = toks.sort_values("text", na_position="last").drop_duplicates("key")
        existing_t = set(self._df("MATCH (t:Token) WHERE t.key IN $k RETURN t.key AS k", {"k": toks["key"].tolist()})["k"])
        self._copy("Token", toks[~toks["key"].isin(existing_t)], NODE_TABLES["Token"])
        # Per-prompt nodes.
        self._copy("Active", feats, NODE_TABLES["Active"])
        for typ, table in (("embedding", "Embedding"), ("error", "Error"), ("logit", "Logit")):
            self._copy(table, nodes[nodes["type"] == typ], NODE_TABLES[table])
        ntype = nodes[["id", "type", "prompt_id"]].copy()
        ntype["table"] = ntype["type"].map(TYPE_TABLE)
        rel2 = [("from", "STRING"), ("to", "STRING")]
        for table in PER_PROMPT:
            sub = ntype[ntype["table"] == table]
            self._copy("HAS", pd.DataFrame({"from": sub["prompt_id"], "to": sub["id"]}), rel2, f" (from='Prompt', to='{table}')")
        self._copy("OF", pd.DataFrame({"from": feats["id"], "to": feats["feature_key"]}), rel2, " (from='Active', to='Feature')")
        for typ, table in (("embedding", "Embedding"), ("logit", "Logit")):
            t = toks_all = nodes[nodes["type"] == typ]
            self._copy("OF", pd.DataFrame({"from": t["id"], "to": t["model"] + ":" + t["token_id"].astype(str)}), rel2,
                       f" (from='{table}', to='Token')")
        kind = dict(zip(ntype["id"], ntype["table"]))
        e = edges.rename(columns={"source": "from", "target": "to"})
        e["ft"] = e["from"].map(kind)
        e["tt"] = e["to"].map(kind)
        for (ft, tt), grp in e.groupby(["ft", "tt"], sort=False):
            self._copy("EDGE", grp, rel2 + [("weight", "FLOAT")], f" (from='{ft}', to='{tt}')")

    # -- derived layer and annotations ----------------------------------------------------
    def rebuild_links(self) -> int:
        self._require_writer()
        self._exec("MATCH ()-[l:LINKS]->() DELETE l")
        df = self._df(
            "MATCH (a:Active)-[e:EDGE]->(b:Active) "
            "WITH a.feature_key AS s, b.feature_key AS t, a.prompt_id AS p, e.weight AS w "
            "RETURN s, t, count(DISTINCT p) AS prompts, avg(CAST(w AS DOUBLE)) AS mean_weight, "
            "avg(abs(CAST(w AS DOUBLE))) AS mean_abs_weight")
        df = df[df["s"] != df["t"]] if False else df
        self._copy("LINKS", df.rename(columns={"s": "from", "t": "to"}),
                   [("from", "STRING"), ("to", "STRING"), ("prompts", "INT64"), ("mean_weight", "DOUBLE"), ("mean_abs_weight", "DOUBLE")])
        self._touch()
        return len(df)

    def set_feature_labels(self, labels: dict[str, str]) -> None:
        """Set Feature.label by key (the app's editable labels, imported clerps)."""
        self._require_writer()
        if labels:
            self._exec("UNWIND $rows AS r MATCH (f:Feature {key: r.k}) SET f.label = r.l",
                       {"rows": [{"k": k, "l": v} for k, v in labels.items()]})
            self._touch()

    def write_feature_info(self, df: pd.DataFrame) -> None:
        """Store per-feature statistics on Feature nodes, creating Features that are absent."""
        self._require_writer()
        rows = []
        for r in df.to_dict("records"):
            rows.append({k: (None if isinstance(r.get(k), float) and np.isnan(r.get(k)) else r.get(k)) for k in
                         ("key", "scan", "layer", "index", "frequency", "max_activation", "contexts", "logit_effects")})
        for r in rows:
            r["layer"] = int(r["layer"]); r["index"] = int(r["index"])
            r["frequency"] = None if r["frequency"] is None else float(r["frequency"])
            r["max_activation"] = None if r["max_activation"] is None else float(r["max_activation"])
        self._exec("UNWIND $rows AS r MERGE (f:Feature {key: r.key}) SET f.scan = r.scan, f.layer = r.layer, "
                   "f.`index` = r.`index`, f.frequency = r.frequency, f.max_activation = r.max_activation, "
                   "f.contexts = r.contexts, f.logit_effects = r.logit_effects", {"rows": rows})
        self._touch()

    def write_supernodes(self, supernodes: list[dict]) -> None:
        """Create or replace supernodes by key, each -[:CONTAINS]-> its member features."""
        self._require_writer()
        for s in supernodes:
            self._exec("MATCH (s:Supernode {key: $key}) DETACH DELETE s", {"key": s["key"]})
            self._exec("CREATE (s:Supernode {key: $key, scan: $scan, label: $label, method: $method, score: $score, "
                       "prompt_id: $pid, node_ids: $nids})",
                       {"key": s["key"], "scan": s.get("scan"), "label": s.get("label"), "method": s.get("method", "user"),
                        "score": None if s.get("score") is None else float(s["score"]), "pid": s.get("prompt_id"),
                        "nids": [str(x) for x in s.get("node_ids") or []]})
            self._exec("MATCH (s:Supernode {key: $key}), (f:Feature) WHERE f.key IN $m CREATE (s)-[:CONTAINS]->(f)",
                       {"key": s["key"], "m": list(s.get("members") or [])})
        self._touch()

    def delete_supernodes(self, method: str | None = None, scan: str | None = None) -> int:
        self._require_writer()
        conds, params = ["true"], {}
        if method is not None:
            conds.append("s.method = $m"); params["m"] = method
        if scan is not None:
            conds.append("s.scan = $s"); params["s"] = scan
        where = " AND ".join(conds)
        n = int(self._df(f"MATCH (s:Supernode) WHERE {where} RETURN count(s) AS c", params)["c"].iloc[0])
        self._exec(f"MATCH (s:Supernode) WHERE {where} DETACH DELETE s", params)
        self._touch()
        return n


def _s(v: Any) -> str | None:
    return None if v is None else str(v)
