"""Fallback Bolt store for the query tests, used only while store/ has no Bolt test server: a
real ArcadeDB server (arcadedb-embedded) on 127.0.0.1 with its Bolt plugin, loaded through the
official neo4j driver, read in read-only transactions. Once store/arcadedb_server.py lands the
tests use the real Bolt backend instead."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from mini_store import graph_rows

PASSWORD = "planted-tests"
KEYS = {"Feature": "key", "Token": "key"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MiniBoltStore:
    backend = "bolt"

    def __init__(self, driver, database: str) -> None:
        self.driver, self.database = driver, database

    def _write(self, cypher: str, params: dict[str, Any] | None = None) -> None:
        with self.driver.session(database=self.database) as s:
            s.run(cypher, params or {}).consume()

    def load(self, dirs: list[Path]) -> None:
        rows, rels = graph_rows(dirs)
        for label in rows:  # unique id/key per label, as on Neo4j; also makes the loads below fast
            key = KEYS.get(label, "id")
            self._write(f"CREATE CONSTRAINT {label.lower()}_{key} IF NOT EXISTS FOR (n:{label}) REQUIRE n.{key} IS UNIQUE")
        for label, recs in rows.items():
            for i in range(0, len(recs), 5000):
                self._write(f"UNWIND $rows AS r CREATE (n:{label}) SET n = r", {"rows": recs[i : i + 5000]})
        for (rel, a, b), recs in rels.items():
            ka, kb = KEYS.get(a, "id"), KEYS.get(b, "id")
            props = [k for k in recs[0] if k not in ("from", "to")] if recs else []
            sets = (" SET " + ", ".join(f"e.{p} = row.{p}" for p in props)) if props else ""
            for i in range(0, len(recs), 5000):
                self._write(
                    f"UNWIND $rows AS row MATCH (x:{a} {{{ka}: row.`from`}}), (y:{b} {{{kb}: row.`to`}}) CREATE (x)-[e:{rel}]->(y){sets}",
                    {"rows": recs[i : i + 5000]},
                )

    def read(self, cypher: str, params: dict[str, Any] | None = None) -> pd.DataFrame:
        def work(tx):
            res = tx.run(cypher, params or {})
            return [r.data() for r in res], list(res.keys())

        with self.driver.session(database=self.database) as s:
            recs, keys = s.execute_read(work)
        return pd.DataFrame(recs, columns=keys)

    def close(self) -> None:
        self.driver.close()


@contextlib.contextmanager
def arcadedb_store(root: Path) -> Iterator[MiniBoltStore]:
    import arcadedb_embedded as arcadedb
    from neo4j import GraphDatabase

    root.mkdir(parents=True, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(root)  # ArcadeDB writes ./log next to the working directory
    try:
        port = _free_port()
        server = arcadedb.create_server(str(root / "databases"), root_password=PASSWORD, config={
            "http_port": _free_port(), "host": "127.0.0.1",
            "server_plugins": "Bolt:com.arcadedb.bolt.BoltProtocolPlugin", "bolt_port": port})
        server.start()
    finally:
        os.chdir(cwd)
    try:
        server.create_database("planted")
        driver = GraphDatabase.driver(f"bolt://127.0.0.1:{port}", auth=("root", PASSWORD))
        store = MiniBoltStore(driver, "planted")
        try:
            yield store
        finally:
            store.close()
    finally:
        server.stop()
