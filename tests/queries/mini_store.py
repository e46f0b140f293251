"""Fallback embedded store for the query tests, used only while circuit_atlas.store has no
``open_store``: a real LadybugDB database holding the DESIGN schema, loaded with COPY from
pandas frames, with a read-only ``read``. Once the store lands the tests use the real one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from circuit_atlas.engine.graph_files import GraphFile

SCHEMA = [
    "CREATE NODE TABLE Feature(key STRING, scan STRING, layer INT64, `index` INT64, label STRING, PRIMARY KEY(key))",
    "CREATE NODE TABLE Token(key STRING, model STRING, token_id INT64, text STRING, PRIMARY KEY(key))",
    "CREATE NODE TABLE Prompt(id STRING, text STRING, tokens STRING[], model STRING, scan STRING, replacement_score DOUBLE,"
    " completeness_score DOUBLE, corpus STRING, tags STRING[], prompt_group STRING, expected STRING, correct BOOLEAN,"
    " external_id STRING, n_nodes INT64, n_edges INT64, PRIMARY KEY(id))",
    "CREATE NODE TABLE Active(id STRING, prompt_id STRING, node_id STRING, layer INT64, pos INT64, `index` INT64,"
    " feature_key STRING, activation DOUBLE, influence DOUBLE, PRIMARY KEY(id))",
    "CREATE NODE TABLE Embedding(id STRING, prompt_id STRING, node_id STRING, pos INT64, token_id INT64, token STRING, PRIMARY KEY(id))",
    "CREATE NODE TABLE Error(id STRING, prompt_id STRING, node_id STRING, layer INT64, pos INT64, influence DOUBLE, PRIMARY KEY(id))",
    "CREATE NODE TABLE Logit(id STRING, prompt_id STRING, node_id STRING, pos INT64, token_id INT64, token STRING, prob DOUBLE, PRIMARY KEY(id))",
    "CREATE REL TABLE HAS(FROM Prompt TO Active, FROM Prompt TO Embedding, FROM Prompt TO Error, FROM Prompt TO Logit)",
    "CREATE REL TABLE OF(FROM Active TO Feature, FROM Embedding TO Token, FROM Logit TO Token)",
    "CREATE REL TABLE EDGE(FROM Embedding TO Active, FROM Active TO Active, FROM Error TO Active, FROM Active TO Logit,"
    " FROM Embedding TO Logit, FROM Error TO Logit, weight DOUBLE)",
    "CREATE REL TABLE LINKS(FROM Feature TO Feature, prompts INT64, mean_weight DOUBLE, mean_abs_weight DOUBLE)",
]
TYPE_TABLE = {"feature": "Active", "embedding": "Embedding", "error": "Error", "logit": "Logit"}


class MiniStore:
    backend = "embedded"

    def __init__(self, path: str | Path) -> None:
        import ladybug

        self.db = ladybug.Database(str(path))
        self.conn = ladybug.Connection(self.db)

    def load(self, dirs: list[Path]) -> None:
        for stmt in SCHEMA:
            self.conn.execute(stmt)
        rows, rels = graph_rows(dirs)
        for table, recs in rows.items():
            if recs:
                df = pd.DataFrame(recs)  # noqa: F841 (scanned by COPY)
                self.conn.execute(f"COPY {table} FROM df")
        for (rel, a, b), recs in rels.items():
            df = pd.DataFrame(recs)  # noqa: F841
            self.conn.execute(f"COPY {rel} FROM df (from='{a}', to='{b}')")

    def read(self, cypher: str, params: dict[str, Any] | None = None) -> pd.DataFrame:
        return self.conn.execute(cypher, params or {}).get_as_df()

    def close(self) -> None:
        self.conn.close()
        self.db.close()


def graph_rows(dirs: list[Path]) -> tuple[dict[str, list[dict]], dict[tuple[str, str, str], list[dict]]]:
    """Node rows by table and relationship rows by (type, from table, to table), LINKS included."""
    rows: dict[str, list[dict]] = {k: [] for k in ("Feature", "Token", "Prompt", "Active", "Embedding", "Error", "Logit")}
    rels: dict[tuple[str, str, str], list[dict]] = {}
    feats, toks = {}, {}
    for d in dirs:
        g = GraphFile.load(d)
        m, pid = g.meta, g.meta["graph_id"]
        props = m.get("prompt_props", {})
        rows["Prompt"].append(dict(id=pid, text=m["prompt"], tokens=list(m["tokens"]), model=m["model"], scan=m["scan"],
                                   replacement_score=m["scores"]["replacement_score"], completeness_score=m["scores"]["completeness_score"],
                                   corpus=props.get("corpus"), tags=list(props.get("tags", [])), prompt_group=props.get("group"),
                                   expected=props.get("expected"), correct=props.get("correct"), external_id=props.get("external_id"),
                                   n_nodes=len(g.nodes), n_edges=len(g.edges)))
        table_of = {}
        for n in g.nodes.itertuples():
            nid = f"{pid}:{n.node_id}"
            table = TYPE_TABLE[n.type]
            table_of[n.node_id] = (table, nid)
            rels.setdefault(("HAS", "Prompt", table), []).append({"from": pid, "to": nid})
            if n.type == "feature":
                fk = f"{m['scan']}:{n.layer}:{n.feature}"
                feats[fk] = dict(key=fk, scan=m["scan"], layer=int(n.layer), index=int(n.feature), label=f"f{n.layer}.{n.feature}")
                rows["Active"].append(dict(id=nid, prompt_id=pid, node_id=n.node_id, layer=int(n.layer), pos=int(n.pos), index=int(n.feature),
                                           feature_key=fk, activation=float(n.activation), influence=float(n.influence)))
                rels.setdefault(("OF", "Active", "Feature"), []).append({"from": nid, "to": fk})
            elif n.type == "error":
                rows["Error"].append(dict(id=nid, prompt_id=pid, node_id=n.node_id, layer=int(n.layer), pos=int(n.pos), influence=float(n.influence)))
            else:
                text = m["tokens"][n.pos] if n.type == "embedding" else next(k for k, v in _vocab().items() if v == n.token_id)
                tk = f"{m['model']}:{n.token_id}"
                toks[tk] = dict(key=tk, model=m["model"], token_id=int(n.token_id), text=text)
                rec = dict(id=nid, prompt_id=pid, node_id=n.node_id, pos=int(n.pos), token_id=int(n.token_id), token=text)
                if n.type == "logit":
                    rec["prob"] = float(n.prob)
                rows[table].append(rec)
                rels.setdefault(("OF", table, "Token"), []).append({"from": nid, "to": tk})
        for e in g.edges.itertuples():
            (ts, s), (tt, t) = table_of[e.source], table_of[e.target]
            rels.setdefault(("EDGE", ts, tt), []).append({"from": s, "to": t, "weight": float(e.weight)})
    rows["Feature"] = list(feats.values())
    rows["Token"] = list(toks.values())
    edges = pd.DataFrame(rels.get(("EDGE", "Active", "Active"), []), columns=["from", "to", "weight"])
    if len(edges):
        key_of = {r["id"]: (r["feature_key"], r["prompt_id"]) for r in rows["Active"]}
        edges["f"] = edges["from"].map(lambda x: key_of[x][0])
        edges["t"] = edges["to"].map(lambda x: key_of[x][0])
        edges["p"] = edges["from"].map(lambda x: key_of[x][1])
        edges["aw"] = edges["weight"].abs()
        g = edges.groupby(["f", "t"])
        links = pd.DataFrame({"prompts": g["p"].nunique(), "mean_weight": g["weight"].mean(), "mean_abs_weight": g["aw"].mean()}).reset_index()
        rels[("LINKS", "Feature", "Feature")] = [
            {"from": r.f, "to": r.t, "prompts": int(r.prompts), "mean_weight": float(r.mean_weight), "mean_abs_weight": float(r.mean_abs_weight)}
            for r in links.itertuples()
        ]
    return rows, rels


def _vocab() -> dict[str, int]:
    from planted import VOCAB

    return VOCAB
