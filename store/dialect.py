"""Where the Cypher of the backends differs; everything else in store/ is shared text.

- LadybugDB (Kùzu family): fixed schema (node tables with primary keys, rel tables with
  FROM/TO pairs), one label per node, `CAST(x AS DOUBLE)` instead of `toFloat`, no list
  comprehensions, `reduce` or `CALL {}`; bulk loads by `COPY T FROM 'file.parquet'`.
- Neo4j / ArcadeDB over Bolt: schema-free, unique constraints instead of primary keys,
  `toFloat`; bulk loads by `UNWIND $rows`.
- `index` is a keyword in LadybugDB: write the property as `` n.`index` `` (backquotes work on
  every backend).
- `group` is a keyword in some dialects, so the Prompt property is named `prompt_group`.
- Counting list members: `UNWIND xs AS x` then `sum(CASE WHEN x IN $ys THEN 1 ELSE 0 END)`, on
  both backends. Not LadybugDB's `size(list_filter(xs, x -> x IN ys))`: in 0.22 it returns NULL
  for some rows when the scan feeding it is filtered (seen on Feature, WHERE f.prompts >= $m).
- `HINT (...)` lines fix LadybugDB's join order (its planner may start a long pattern from the
  wrong end); the runner drops them for the Bolt backends (`without_hints`).
- LadybugDB planner traits the queries are written around: after `WITH`, an `EDGE` pattern that
  starts at a bound node and walks backwards is planned as a scan of all edges (walk forwards);
  an `ORDER BY ... LIMIT` in a `WITH` that feeds an aggregation directly is dropped (put
  `UNWIND [1] AS keep_order` in between); a `WITH` that redefines a name orders by its old value.
  A property of a node reached through a relationship is read by a scan of the node's whole table
  (with a mask), so LINKS repeats its endpoints' keys (`source_key`, `target_key`) and queries
  read those instead of `Feature.key`; a list parameter filters (`x IN $list`) where the same list
  bound by `WITH` would change the plan for the worse. A comparison with a literal lets a scan skip
  whole column chunks (zone maps), one with a parameter does not: `f.prompts >= 2 AND f.prompts
  >= $min_prompts` reads the recurring features only (150 ms -> 10 ms at 1.25M features).
"""

from __future__ import annotations

import re

from circuit_atlas.store.cypher_guard import require_read  # noqa: F401  (the read guard of every store's `read`)

GROUP_PROPERTY = "prompt_group"

def writes(cypher: str) -> str | None:
    """The token that keeps a statement from being a pure read (a write, a second statement, a
    function off the allow-list, ...), or None: kept for callers of the old name; the guard is
    `cypher_guard` (a tokenizer, not a keyword regex)."""
    from circuit_atlas.store.cypher_guard import offending_token

    return offending_token(cypher)


_HINT = re.compile(r"^\s*HINT\b.*\n?", re.M)


def without_hints(cypher: str) -> str:
    """The statement without its `HINT` lines: LadybugDB's join-order hints, which Neo4j and
    ArcadeDB do not parse. A hint line holds nothing but the hint."""
    return _HINT.sub("", cypher)


def to_float(expr: str, backend: str) -> str:
    """Cast to a float in the backend's spelling."""
    return f"CAST({expr} AS DOUBLE)" if backend == "embedded" else f"toFloat({expr})"
