"""The Bolt store: Neo4j (or a Bolt-compatible server) through the official `neo4j` driver.

One explicit transaction per prompt: global Feature/Token nodes are MERGEd, then ONE statement
creates the Prompt, its nodes (collected into a list) and its edges by list position, which is
~3x faster than matching edge endpoints by id. A transaction is atomic, so a prompt is written
whole or not at all, and a killed loader leaves nothing behind (the server rolls back).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any, Iterable

import numpy as np
import pandas as pd
from tqdm import tqdm

from circuit_atlas.engine.graph_files import GraphFile
from circuit_atlas.store import dialect
from circuit_atlas.store.base import SCHEMA_VERSION, ReadOnlyViolation, Store, StoreError, WriteReport

LABEL_KEYS = {"Prompt": "id", "Active": "id", "Embedding": "id", "Error": "id", "Logit": "id",
              "Feature": "key", "Token": "key", "Supernode": "key", "Meta": "key"}
PER_PROMPT = ("Active", "Embedding", "Error", "Logit")
RELS = ("HAS", "OF", "EDGE", "LINKS", "CONTAINS")


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
        if version is not None and version != SCHEMA_VERSION:
            self.close()
            raise StoreError(f"{url}: schema version {version}, this circuit-atlas needs {SCHEMA_VERSION}; "
                             "use a new database or re-ingest")
        if not read_only:
            self.init_schema()

    # -- low level -------------------------------------------------------------------------
    def _session(self, write: bool):
        import neo4j

        mode = neo4j.WRITE_ACCESS if write else neo4j.READ_ACCESS
        return self._driver.session(database=self.database, default_access_mode=mode)

    def _run(self, cypher: str, params: dict[str, Any] | None = None, write: bool = True) -> list[dict]:
        from neo4j import exceptions as nex

        if write and self.read_only:
            raise ReadOnlyViolation(f"{self.url}: store opened read-only")
        try:
            with self._session(write) as s:
                fn = s.execute_write if write else s.execute_read
                return fn(lambda tx: [r.data() for r in tx.run(cypher, params or {})])
        except nex.ClientError as exc:
            if "read" in (exc.message or "").lower() and "access" in (exc.message or "").lower():
                raise ReadOnlyViolation(f"{self.url}: {exc.message}") from exc
            raise StoreError(f"{self.url}: {exc.message or exc}") from exc
        except (nex.ServiceUnavailable, nex.SessionExpired) as exc:
            raise StoreError(f"{self.url}: connection lost ({exc})") from exc
        except nex.Neo4jError as exc:
            raise StoreError(f"{self.url}: {exc.message or exc}") from exc

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
        self._run("MERGE (m:Meta {key: 'schema'}) ON CREATE SET m.schema_version = $v, m.write_token = $t",
                  {"v": SCHEMA_VERSION, "t": uuid.uuid4().hex})

    def schema_version(self) -> int | None:
        rows = self._run("MATCH (m:Meta {key: 'schema'}) RETURN m.schema_version AS v", write=False)
        return None if not rows or rows[0]["v"] is None else int(rows[0]["v"])

    def version_token(self) -> str:
        rows = self._run("MATCH (m:Meta {key: 'schema'}) RETURN m.write_token AS t", write=False)
        return "" if not rows else str(rows[0]["t"])

    def prompt_ids(self) -> set[str]:
        return {r["id"] for r in self._run("MATCH (p:Prompt) RETURN p.id AS id", write=False)}

    def delete_prompt(self, prompt_id: str) -> bool:
        rows = self._run("MATCH (p:Prompt {id: $id}) OPTIONAL MATCH (p)-[:HAS]->(n) DETACH DELETE n "
                         "WITH DISTINCT p DETACH DELETE p RETURN count(p) AS c", {"id": prompt_id})
        self._run("MATCH (s:Supernode {prompt_id: $id}) DETACH DELETE s", {"id": prompt_id})
        self._touch()
        return bool(rows and rows[0]["c"])

    def read(self, cypher: str, params: dict[str, Any] | None = None) -> pd.DataFrame:
        word = dialect.writes(cypher)
        if word:
            raise ReadOnlyViolation(f"refused: read-only statement contains {word}")
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
        if self.read_only:
            raise ReadOnlyViolation(f"{self.url}: store opened read-only")
        t0 = time.perf_counter()
        report = WriteReport()
        present = self.prompt_ids()
        dirs = list(graph_dirs)
        for d in tqdm(dirs, desc="loading graphs", unit="graph", disable=not progress):
            g = GraphFile.load(d)
            if g.graph_id in present:
                report.skipped.append(g.graph_id)
                continue
            n_nodes, n_edges = self._write_one(g)
            present.add(g.graph_id)
            report.written.append(g.graph_id)
            report.nodes += n_nodes
            report.edges += n_edges
        if report.written:
            self._touch()
        report.seconds = time.perf_counter() - t0
        return report

    def _load_nodes_edges(self, tx, g: GraphFile) -> tuple[int, int]:
        """Everything of one prompt inside transaction `tx`."""
        m = g.meta
        pid = g.graph_id
        props = m.get("prompt_props") or {}
        settings = m.get("settings") or {}
        scores = m.get("scores") or {}
        tokens = list(m.get("tokens") or [])
        logit_tokens = m.get("logit_tokens") or {}
        nodes = g.nodes_table().to_pandas()
        edges = g.edges_table().to_pandas()
        model, scan = m.get("model"), m.get("scan")
        groups: dict[str, list[dict]] = {t: [] for t in PER_PROMPT}
        order: dict[str, int] = {}
        feats: dict[str, dict] = {}
        toks: dict[str, dict] = {}
        recs = nodes.to_dict("records")
        by_type = {"feature": "Active", "embedding": "Embedding", "error": "Error", "logit": "Logit"}
        for r in recs:
            groups[by_type[r["type"]]].append(r)
        ordered = [r for t in PER_PROMPT for r in groups[t]]
        for i, r in enumerate(ordered):
            order[r["node_id"]] = i
        rows: dict[str, list[dict]] = {t: [] for t in PER_PROMPT}
        for r in groups["Active"]:
            key = f"{scan}:{int(r['layer'])}:{int(r['feature'])}"
            feats.setdefault(key, {"key": key, "scan": scan, "layer": int(r["layer"]), "index": int(r["feature"]),
                                   "label": _nn(r["label"])})
            rows["Active"].append({"p": {"id": f"{pid}/{r['node_id']}", "prompt_id": pid, "node_id": r["node_id"],
                                         "layer": int(r["layer"]), "pos": int(r["pos"]), "index": int(r["feature"]),
                                         "feature_key": key, "activation": _nn(r["activation"]), "influence": _nn(r["influence"])},
                                   "k": key})
        for typ in ("Embedding", "Logit"):
            for r in groups[typ]:
                tid = int(r["token_id"])
                pos = int(r["pos"])
                text = (tokens[pos] if 0 <= pos < len(tokens) else None) if typ == "Embedding" else logit_tokens.get(str(tid))
                key = f"{model}:{tid}"
                if key not in toks or toks[key]["text"] is None:
                    toks[key] = {"key": key, "model": model, "token_id": tid, "text": text}
                p = {"id": f"{pid}/{r['node_id']}", "prompt_id": pid, "node_id": r["node_id"], "pos": pos,
                     "token_id": tid, "token": text}
                if typ == "Logit":
                    p["prob"] = _nn(r["prob"])
                rows[typ].append({"p": p, "k": key})
        for r in groups["Error"]:
            rows["Error"].append({"p": {"id": f"{pid}/{r['node_id']}", "prompt_id": pid, "node_id": r["node_id"],
                                        "layer": int(r["layer"]), "pos": int(r["pos"]), "influence": _nn(r["influence"])}})
        if feats:
            tx.run("UNWIND $rows AS r MERGE (f:Feature {key: r.key}) "
                   "ON CREATE SET f.scan = r.scan, f.layer = r.layer, f.`index` = r.`index` "
                   "SET f.label = coalesce(f.label, r.label)", rows=list(feats.values())).consume()
        if toks:
            tx.run("UNWIND $rows AS r MERGE (t:Token {key: r.key}) "
                   "ON CREATE SET t.model = r.model, t.token_id = r.token_id "
                   "SET t.text = coalesce(t.text, r.text)", rows=list(toks.values())).consume()
        prompt = {
            "id": pid, "text": m.get("prompt"), "tokens": tokens, "token_ids": [int(t) for t in m.get("token_ids") or []],
            "model": model, "scan": scan, "node_threshold": settings.get("node_threshold"),
            "edge_threshold": settings.get("edge_threshold"), "replacement_score": scores.get("replacement_score"),
            "completeness_score": scores.get("completeness_score"), "corpus": props.get("corpus"),
            "tags": [str(t) for t in props.get("tags") or []], dialect.GROUP_PROPERTY: _s(props.get("group")),
            "expected": _s(props.get("expected")), "correct": props.get("correct"), "top_token": _s(props.get("top_token")),
            "external_id": _s(props.get("external_id")), "n_nodes": len(nodes), "n_edges": len(edges),
            "settings": json.dumps(settings, default=str), "created_at": _s(m.get("created_at")), "complete": True,
        }
        parts = ["CREATE (p:Prompt) SET p = $prompt WITH p, [] AS nodes"]
        params: dict[str, Any] = {"prompt": {k: v for k, v in prompt.items() if v is not None}}
        for i, t in enumerate(PER_PROMPT):
            if not rows[t]:
                continue
            params[f"g{i}"] = rows[t]
            of = {"Active": "MATCH (o:Feature {key: r.k}) ", "Embedding": "MATCH (o:Token {key: r.k}) ",
                  "Logit": "MATCH (o:Token {key: r.k}) ", "Error": ""}[t]
            link = "CREATE (n)-[:OF]->(o) " if of else ""
            parts.append(f"UNWIND $g{i} AS r {of}CREATE (p)-[:HAS]->(n:{t}) SET n = r.p {link}"
                         f"WITH p, nodes, collect(n) AS c WITH p, nodes + c AS nodes")
        if len(edges):
            src = edges["source"].map(order).to_numpy()
            dst = edges["target"].map(order).to_numpy()
            w = edges["weight"].astype(np.float64).to_numpy()
            params["edges"] = [[int(a), int(b), float(c)] for a, b, c in zip(src, dst, w)]
            parts.append("UNWIND $edges AS e WITH nodes[e[0]] AS s, nodes[e[1]] AS t, e[2] AS w "
                         "CREATE (s)-[:EDGE {weight: w}]->(t)")
        parts.append("RETURN count(*) AS c")
        tx.run(" ".join(parts), params).consume()
        return len(nodes), len(edges)

    def _write_one(self, g: GraphFile) -> tuple[int, int]:
        from neo4j import exceptions as nex

        try:
            with self._session(True) as s:
                return s.execute_write(lambda tx: self._load_nodes_edges(tx, g))
        except nex.Neo4jError as exc:
            raise StoreError(f"{self.url}: writing prompt {g.graph_id} failed: {exc.message or exc}") from exc
        except (nex.ServiceUnavailable, nex.SessionExpired) as exc:
            raise StoreError(f"{self.url}: connection lost while writing {g.graph_id} ({exc})") from exc

    # -- derived layer and annotations ----------------------------------------------------
    def rebuild_links(self) -> int:
        self._run("MATCH ()-[l:LINKS]->() DELETE l")
        rows = self._run(
            "MATCH (a:Active)-[e:EDGE]->(b:Active) "
            "WITH a.feature_key AS s, b.feature_key AS t, count(DISTINCT a.prompt_id) AS n, "
            "avg(toFloat(e.weight)) AS mw, avg(abs(toFloat(e.weight))) AS maw "
            "MATCH (fa:Feature {key: s}) MATCH (fb:Feature {key: t}) "
            "CREATE (fa)-[:LINKS {prompts: n, mean_weight: mw, mean_abs_weight: maw}]->(fb) RETURN count(*) AS c")
        self._touch()
        return int(rows[0]["c"]) if rows else 0

    def set_feature_labels(self, labels: dict[str, str]) -> None:
        if labels:
            self._run("UNWIND $rows AS r MATCH (f:Feature {key: r.k}) SET f.label = r.l",
                      {"rows": [{"k": k, "l": v} for k, v in labels.items()]})
            self._touch()

    def write_feature_info(self, df: pd.DataFrame) -> None:
        rows = []
        for r in df.to_dict("records"):
            rows.append({"key": r["key"], "scan": r.get("scan"), "layer": int(r["layer"]), "index": int(r["index"]),
                         "frequency": _nn(r.get("frequency")), "max_activation": _nn(r.get("max_activation")),
                         "contexts": r.get("contexts"), "logit_effects": r.get("logit_effects")})
        self._run("UNWIND $rows AS r MERGE (f:Feature {key: r.key}) SET f.scan = r.scan, f.layer = r.layer, "
                  "f.`index` = r.`index`, f.frequency = r.frequency, f.max_activation = r.max_activation, "
                  "f.contexts = r.contexts, f.logit_effects = r.logit_effects", {"rows": rows})
        self._touch()

    def write_supernodes(self, supernodes: list[dict]) -> None:
        for s in supernodes:
            props = {"key": s["key"], "scan": s.get("scan"), "label": s.get("label"), "method": s.get("method", "user"),
                     "score": None if s.get("score") is None else float(s["score"]), "prompt_id": s.get("prompt_id"),
                     "node_ids": [str(x) for x in s.get("node_ids") or []]}
            self._run("MATCH (s:Supernode {key: $key}) DETACH DELETE s", {"key": s["key"]})
            self._run("CREATE (s:Supernode) SET s = $p WITH s MATCH (f:Feature) WHERE f.key IN $m "
                      "CREATE (s)-[:CONTAINS]->(f)",
                      {"p": {k: v for k, v in props.items() if v is not None}, "m": list(s.get("members") or [])})
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


def _nn(v: Any) -> Any:
    """None for NaN/None, else a plain Python scalar (the driver rejects numpy types)."""
    if v is None:
        return None
    if isinstance(v, (float, np.floating)) and np.isnan(v):
        return None
    return v.item() if hasattr(v, "item") else v


def _s(v: Any) -> str | None:
    return None if v is None else str(v)
