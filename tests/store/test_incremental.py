"""The derived layer kept fresh incrementally (store/derived_delta.py) equals a full rebuild.

Real graphs made by others (../shared/real-np: 20 Neuronpedia graphs, heavily overlapping
features) are imported one folder or file at a time, so every case of the delta occurs: features
new to the store, features that start to recur (their old instances and edges join the
recurring subgraph), pairs that gain a LINKS row and pairs whose row is updated. After each step
the derived layer is read, then rebuilt from scratch, and the two must be equal.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from circuit_atlas.ingest.importers import import_path
from circuit_atlas.store import open_store

REAL = Path(__file__).resolve().parents[3] / "shared" / "real-np"
pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason="../shared/real-np is not here")

FEATURES = "MATCH (f:Feature) WHERE f.prompts IS NOT NULL RETURN f.key AS k, f.prompts AS n, f.prompt_ids AS ps"
RACTIVE = ("MATCH (r:RActive) RETURN r.id AS id, r.prompt_id AS p, r.feature_key AS k, r.layer AS l, r.pos AS pos, "
           "r.activation AS a, r.influence AS i")
REDGE = "MATCH (a:RActive)-[e:REDGE]->(b) RETURN a.id AS s, b.id AS t, e.weight AS w"
LINKS = ("MATCH (a:Feature)-[l:LINKS]->(b:Feature) RETURN a.key AS s, b.key AS t, l.prompts AS n, l.prompt_ids AS ps, "
         "l.mean_weight AS mw, l.mean_abs_weight AS maw, l.source_key AS sk, l.target_key AS tk")


def _rows(store, cypher: str) -> list[tuple]:
    df = store.read(cypher)
    out = []
    for r in df.itertuples(index=False):
        out.append(tuple(tuple(v) if hasattr(v, "__len__") and not isinstance(v, str) else v for v in r))
    return sorted(out, key=repr)


def snapshot(store) -> dict[str, list[tuple]]:
    return {name: _rows(store, q) for name, q in (("features", FEATURES), ("ractive", RACTIVE), ("redge", REDGE),
                                                   ("links", LINKS))}


def assert_same(incremental: dict, rebuilt: dict) -> None:
    for name in ("features", "ractive", "redge"):
        assert incremental[name] == rebuilt[name], name
    a, b = incremental["links"], rebuilt["links"]
    assert [(r[0], r[1], r[2], r[3], r[6], r[7]) for r in a] == [(r[0], r[1], r[2], r[3], r[6], r[7]) for r in b]
    for x, y in zip(a, b):  # the means: the same edges, summed in another order
        assert math.isclose(x[4], y[4], rel_tol=1e-9, abs_tol=1e-12) and math.isclose(x[5], y[5], rel_tol=1e-9, abs_tol=1e-12)


def test_incremental_refresh_equals_a_full_rebuild_on_real_graphs(tmp_path):
    files = sorted(REAL.glob("gemma-2-2b-clt-hp/*.json"))
    steps = [[files[0]], [files[1]], files[2:6], [files[6]], files[7:], sorted(REAL.glob("gemma-2-2b-clt-hp-dup/*.json")),
             sorted(REAL.glob("anthropic-jackl/*.json"))]
    url = f"embedded:{tmp_path / 'store'}"
    cases = {"updated_links": 0, "new_links": 0, "started_to_recur": 0}
    with open_store(url) as s:
        s.delta_min = 10**6  # every step goes in incrementally, whatever the store's size: that is what is checked
        rebuilds = []
        full = s.rebuild_links
        s.rebuild_links = lambda *a, **k: (rebuilds.append(1), full(*a, **k))[1]  # counts, then runs the real one
        before = {"links": [], "features": []}
        stored: set[str] = set()
        for i, step in enumerate(steps):
            folder = tmp_path / f"step{i}"
            folder.mkdir()
            for f in step:
                (folder / f.name).symlink_to(f)
            rep = import_path(folder, s, progress=False)
            assert len(rep.written) == len(step) and not rep.failed
            assert not s.derived_stale() and not rebuilds  # the write kept it fresh, no rebuild ran
            incremental = snapshot(s)
            was = {r[0] for r in before["features"]}
            cases["started_to_recur"] += sum(1 for r in incremental["features"] if r[0] not in was and set(r[2]) & stored)
            stored |= set(rep.written)
            old_pairs = {(r[0], r[1]): r for r in before["links"]}
            for r in incremental["links"]:
                if (r[0], r[1]) in old_pairs:
                    cases["updated_links"] += old_pairs[(r[0], r[1])] != r
                else:
                    cases["new_links"] += 1
            full()
            assert_same(incremental, snapshot(s))
            before = incremental
    # every kind of change happened along the way (else the test proves less than it says)
    assert cases["updated_links"] > 0 and cases["new_links"] > 0 and cases["started_to_recur"] > 0, cases
    assert len(before["features"]) > 0 and len(before["redge"]) > 0
