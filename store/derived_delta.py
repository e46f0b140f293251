"""The derived layer's change for one batch of new graphs, computed instead of a full rebuild.

A full rebuild (``rebuild_links``) reads every instance and edge of the store. When a batch of
graphs is added to a store whose derived layer is fresh, only what the batch touches changes:

- ``Feature.prompts``/``prompt_ids`` of the features the batch holds (set K);
- ``RActive``: the batch's instances of features recurring after the batch, plus the old
  instances of the features that become recurring with it (set N; each was in one old prompt);
- ``REDGE``: the batch's edges between recurring instances (and to logits), plus the old edges
  that touch an old instance of an N feature and whose other end recurs;
- ``LINKS``: only pairs the batch holds (a pair that touches an N feature and is not in the
  batch was in at most one old prompt, so it stays out of LINKS). Each such pair is aggregated
  again over all its edges: the old ones (read from the store) and the batch's.

Everything here is Arrow over the batch plus the few old rows the store hands in (``OldState``),
so the result equals a full rebuild (tests/store/test_incremental.py compares them) at a cost
that follows the batch and the features it touches, not the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from circuit_atlas.store.base import LINKS_MIN_PROMPTS

RACTIVE_COLUMNS = ("id", "prompt_id", "feature_key", "layer", "pos", "activation", "influence")
_EDGE_SCHEMA = pa.schema([("from", pa.string()), ("to", pa.string()), ("weight", pa.float32())])
_PAIR_SCHEMA = pa.schema([("s", pa.string()), ("t", pa.string()), ("p", pa.string()), ("w", pa.float64())])


@dataclass
class OldState:
    """What the store held before the batch, for the batch's features only."""

    recurring: dict[str, list[str]] = field(default_factory=dict)  # key -> prompt_ids (prompts >= 2)
    instances: pa.Table | None = None  # old Active rows (RACTIVE_COLUMNS) of the other keys: <= 1 prompt each
    # set by `needs_edges`' answer: old edges touching old instances of newly recurring features
    edges_out: pa.Table | None = None  # from, to, sk, tk, tp (target feature's old prompts), weight
    edges_in: pa.Table | None = None  # from, to, sk, tk, sp (source feature's old prompts), weight
    edges_logit: pa.Table | None = None  # from, to, weight
    pair_edges: pa.Table | None = None  # s, t, p, w: old edges of batch pairs whose ends recurred before


@dataclass
class Delta:
    """The rows to add or change (see the module docstring)."""

    feature_rows: pa.Table  # key, prompts, prompt_ids: every batch feature that recurs after the batch
    ractive: pa.Table  # RACTIVE_COLUMNS
    redge_active: pa.Table  # from, to, weight (RActive -> RActive)
    redge_logit: pa.Table  # from, to, weight (RActive -> Logit)
    links: pa.Table  # s, t, prompts, mean_weight, mean_abs_weight, prompt_ids, old (bool: the row exists)
    existing: set[str] = field(default_factory=set)  # batch features already stored (the store sets it)


def batch_features(active: pa.Table) -> dict[str, set[str]]:
    """Feature key -> the batch prompts holding it."""
    out: dict[str, set[str]] = {}
    grouped = pa.table({"k": active.column("feature_key"), "p": active.column("prompt_id")}).group_by("k").aggregate(
        [("p", "distinct")])
    for k, ps in zip(grouped.column("k").to_pylist(), grouped.column("p_distinct").to_pylist()):
        out[k] = set(ps)
    return out


def prompt_sets(new: dict[str, set[str]], old: OldState) -> dict[str, set[str]]:
    """Each batch feature's prompts after the batch (old ones and the batch's)."""
    out = {k: set(ps) for k, ps in new.items()}
    for k, ps in old.recurring.items():
        out[k] |= set(ps)
    if old.instances is not None and old.instances.num_rows:
        for k, p in zip(old.instances.column("feature_key").to_pylist(), old.instances.column("prompt_id").to_pylist()):
            out[k].add(p)
    return out


def newly_recurring(after: dict[str, set[str]], old: OldState) -> set[str]:
    """Batch features that recur after the batch and did not before."""
    return {k for k, ps in after.items() if len(ps) >= LINKS_MIN_PROMPTS and k not in old.recurring}


def old_instances_of(old: OldState, keys: set[str]) -> pa.Table:
    """The old instances (RACTIVE_COLUMNS) of ``keys``."""
    if old.instances is None or old.instances.num_rows == 0 or not keys:
        return _empty_ractive()
    return old.instances.filter(pc.is_in(old.instances.column("feature_key"), value_set=pa.array(sorted(keys), pa.string())))


def _empty_ractive() -> pa.Table:
    return pa.table({c: pa.array([], t) for c, t in zip(RACTIVE_COLUMNS, (pa.string(),) * 3 + (pa.int64(),) * 2
                                                       + (pa.float64(),) * 2)})


def compute(active: pa.Table, aa: pa.Table, al: pa.Table, new: dict[str, set[str]], old: OldState) -> Delta:
    """The delta for a batch: ``active`` its Active rows (RACTIVE_COLUMNS at least), ``aa`` and
    ``al`` its Active->Active and Active->Logit edges (from, to, weight), ``old`` the store's."""
    after = prompt_sets(new, old)
    rec = {k for k, ps in after.items() if len(ps) >= LINKS_MIN_PROMPTS}
    rec_a = pa.array(sorted(rec), pa.string())
    n_set = newly_recurring(after, old)
    n_a = pa.array(sorted(n_set), pa.string())
    keys = sorted(rec)
    feature_rows = pa.table({"key": pa.array(keys, pa.string()),
                             "prompts": pa.array([len(after[k]) for k in keys], pa.int64()),
                             "prompt_ids": pa.array([sorted(after[k]) for k in keys], pa.list_(pa.string()))})

    def recurs_after(key: pa.Array, old_prompts: pa.Array | None = None) -> pa.Array:
        """A key recurs after the batch: a batch feature that does, or (not a batch feature) did before."""
        yes = pc.is_in(key, value_set=rec_a)
        if old_prompts is None:
            return yes
        outside = pc.invert(pc.is_in(key, value_set=pa.array(list(after), pa.string())))
        return pc.or_(yes, pc.and_(outside, pc.fill_null(pc.greater_equal(old_prompts, LINKS_MIN_PROMPTS), False)))

    # RActive: the batch's recurring instances, and the old instances of the newly recurring
    batch_ract = active.select(list(RACTIVE_COLUMNS)).filter(recurs_after(active.column("feature_key")))
    ractive = pa.concat_tables([batch_ract.cast(_empty_ractive().schema), old_instances_of(old, n_set)])

    # REDGE: batch edges between recurring instances, batch edges from one to a logit
    ids, fkeys, pids = active.column("id"), active.column("feature_key"), active.column("prompt_id")
    sk = pc.take(fkeys, pc.index_in(aa.column("from"), value_set=ids))
    tk = pc.take(fkeys, pc.index_in(aa.column("to"), value_set=ids))
    ep = pc.take(pids, pc.index_in(aa.column("from"), value_set=ids))
    keep = pc.and_(recurs_after(sk), recurs_after(tk))
    batch_aa = aa.filter(keep)
    pairs_new = pa.table({"s": sk.filter(keep), "t": tk.filter(keep), "p": ep.filter(keep),
                          "w": pc.cast(batch_aa.column("weight"), pa.float64())})
    lk = pc.take(fkeys, pc.index_in(al.column("from"), value_set=ids))
    parts_aa, parts_al = [batch_aa.select(["from", "to", "weight"])], [al.filter(recurs_after(lk)).select(["from", "to", "weight"])]
    pairs_old = [old.pair_edges] if old.pair_edges is not None else []
    if old.edges_out is not None and old.edges_out.num_rows:  # from old instances of N features
        o = old.edges_out.filter(recurs_after(old.edges_out.column("tk"), old.edges_out.column("tp")))
        parts_aa.append(o.select(["from", "to", "weight"]))
        pairs_old.append(o.select(["sk", "tk", "p", "weight"]).rename_columns(["s", "t", "p", "w"]))
    if old.edges_in is not None and old.edges_in.num_rows:  # into them, from instances outside N (no repeats)
        i = old.edges_in.filter(pc.and_(pc.invert(pc.is_in(old.edges_in.column("sk"), value_set=n_a)),
                                        recurs_after(old.edges_in.column("sk"), old.edges_in.column("sp"))))
        parts_aa.append(i.select(["from", "to", "weight"]))
        pairs_old.append(i.select(["sk", "tk", "p", "weight"]).rename_columns(["s", "t", "p", "w"]))
    if old.edges_logit is not None and old.edges_logit.num_rows:
        parts_al.append(old.edges_logit.select(["from", "to", "weight"]))
    redge_active = pa.concat_tables([t.cast(_EDGE_SCHEMA) for t in parts_aa])
    redge_logit = pa.concat_tables([t.cast(_EDGE_SCHEMA) for t in parts_al])
    links = _links(pairs_new, [t.cast(_PAIR_SCHEMA) for t in pairs_old])
    return Delta(feature_rows, ractive, redge_active, redge_logit, links)


def batch_pairs(active: pa.Table, aa: pa.Table) -> pa.Table:
    """The distinct feature pairs (s, t) of a batch's Active->Active edges."""
    ids, fkeys = active.column("id"), active.column("feature_key")
    sk = pc.take(fkeys, pc.index_in(aa.column("from"), value_set=ids))
    tk = pc.take(fkeys, pc.index_in(aa.column("to"), value_set=ids))
    return pa.table({"s": sk, "t": tk}).group_by(["s", "t"]).aggregate([])


def _links(pairs_new: pa.Table, pairs_old: list[pa.Table]) -> pa.Table:
    """LINKS rows of the batch's pairs, over their old edges and the batch's: pairs in >=
    LINKS_MIN_PROMPTS prompts, with ``old`` saying whether the pair had a row already."""
    cols = ["s", "t", "prompts", "mean_weight", "mean_abs_weight", "prompt_ids", "old"]
    if pairs_new.num_rows == 0:
        return pa.table({c: pa.array([], t) for c, t in zip(cols, (pa.string(), pa.string(), pa.int64(), pa.float64(),
                                                                    pa.float64(), pa.list_(pa.string()), pa.bool_()))})
    wanted = pairs_new.group_by(["s", "t"]).aggregate([])
    old = pa.concat_tables(pairs_old) if pairs_old else pairs_new.schema.empty_table()
    if old.num_rows:  # only the batch's pairs
        key = pc.binary_join_element_wise(old.column("s"), old.column("t"), "\x1f")
        want = pc.binary_join_element_wise(wanted.column("s"), wanted.column("t"), "\x1f")
        old = old.filter(pc.is_in(key, value_set=want))
    old_counts = old.group_by(["s", "t"]).aggregate([("p", "count_distinct")]) if old.num_rows else None
    every = pa.concat_tables([pairs_new.cast(_PAIR_SCHEMA), old.cast(_PAIR_SCHEMA)])
    every = every.append_column("aw", pc.abs(every.column("w")))
    agg = every.group_by(["s", "t"]).aggregate([("p", "count_distinct"), ("w", "mean"), ("aw", "mean"), ("p", "distinct")])
    agg = agg.filter(pc.greater_equal(agg.column("p_count_distinct"), LINKS_MIN_PROMPTS))
    ps = [sorted(x) for x in agg.column("p_distinct").to_pylist()]
    was = np.zeros(agg.num_rows, bool)
    if old_counts is not None and agg.num_rows:
        rows = {(s, t): n for s, t, n in zip(old_counts.column("s").to_pylist(), old_counts.column("t").to_pylist(),
                                             old_counts.column("p_count_distinct").to_pylist())}
        was = np.array([rows.get((s, t), 0) >= LINKS_MIN_PROMPTS for s, t in
                        zip(agg.column("s").to_pylist(), agg.column("t").to_pylist())], bool)
    return pa.table({"s": agg.column("s"), "t": agg.column("t"), "prompts": pc.cast(agg.column("p_count_distinct"), pa.int64()),
                     "mean_weight": agg.column("w_mean"), "mean_abs_weight": agg.column("aw_mean"),
                     "prompt_ids": pa.array(ps, pa.list_(pa.string())), "old": pa.array(was, pa.bool_())})
