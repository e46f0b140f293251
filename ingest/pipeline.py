"""From a corpus of prompts to graphs in the store: validate, skip, attribute, write, load.

``ingest_corpus`` runs the stages in this order, so a re-run after any crash (even SIGKILL)
finishes the rest with exact counts and no duplicates:

1. read and validate every row (``ingest.prompts``); bad rows go to the failures file;
2. tokenize and compute each prompt's request key *before* any model work (``jobs.request_key``:
   model, scan, token ids, settings; a graph id also hashes the graph's content, so it is only
   known afterwards): prompts whose request key a stored Prompt has (recomputed from its model,
   scan, token_ids and settings columns) are skipped, prompts whose graph file already exists in
   the graphs directory (from a killed run; one folder per request key) are loaded, not recomputed;
3. attribute the rest (``scaleout``: in this process, a local process pool or Ray actors);
4. write each graph file atomically (``GraphFile.save``: temp directory renamed into place);
5. bulk-load graph files into the store in batches on a loader thread, so batch k loads while
   batch k+1 computes. The store writes each prompt whole or not at all and skips ids it has.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from tqdm.auto import tqdm

from circuit_atlas.engine.formats import graph_files as gf
from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.ingest.jobs import AttributionJob, AttributionSettings, JobResult, request_key
from circuit_atlas.ingest.prompts import FailureLog, PromptRow, RowFailure, iter_prompt_rows, validate_tokens
from circuit_atlas.ingest.scaleout import ModelSpec, make_attributor
from circuit_atlas.paths import home


class IngestError(CircuitAtlasError, RuntimeError):
    """An ingest run that cannot go on (a failed store load, bad settings)."""


def default_graphs_dir() -> Path:
    return home() / "graphs"


@dataclass
class IngestSummary:
    """What a run did. ``rows == succeeded + skipped + failed`` always holds."""

    corpus: str
    rows: int = 0
    succeeded: int = 0  # graphs loaded into the store by this run
    skipped: int = 0  # already in the store, or a repeat of an earlier row of the corpus
    failed: int = 0  # bad rows and prompts whose attribution failed (see the failures file)
    computed: int = 0  # attributed by this run
    reused: int = 0  # graph files found from an earlier (interrupted) run, loaded without recomputing
    skipped_present: int = 0
    skipped_duplicate: int = 0
    nodes: int = 0
    edges: int = 0
    mean_replacement_score: float | None = None
    mean_completeness_score: float | None = None
    seconds: float = 0.0
    graphs_dir: str = ""
    failures_path: str | None = None
    store_url: str = ""
    prompt_ids: list[str] = field(default_factory=list)  # written by this run

    @property
    def prompts_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["prompts_per_second"] = self.prompts_per_second
        return d

    def table(self) -> Any:
        """The end-of-run summary as a rich Table."""
        from rich.table import Table

        def score(v: float | None) -> str:
            return "-" if v is None else f"{v:.3f}"

        t = Table(title=f"ingest {Path(self.corpus).name} -> {self.store_url}", show_header=True)
        t.add_column("what")
        t.add_column("value", justify="right")
        rows = [
            ("prompts (rows read)", str(self.rows)),
            ("succeeded", f"{self.succeeded} ({self.computed} attributed, {self.reused} from earlier graph files)"),
            ("skipped", f"{self.skipped} ({self.skipped_present} already stored, {self.skipped_duplicate} repeated)"),
            ("failed", str(self.failed) + (f" (see {self.failures_path})" if self.failed and self.failures_path else "")),
            ("nodes", f"{self.nodes:,}"),
            ("edges", f"{self.edges:,}"),
            ("mean replacement score", score(self.mean_replacement_score)),
            ("mean completeness score", score(self.mean_completeness_score)),
            ("time", f"{self.seconds:.1f} s ({self.prompts_per_second:.2f} prompts/s attributed)"),
            ("graph files", self.graphs_dir),
        ]
        for k, v in rows:
            t.add_row(k, v)
        return t


class _Loader:
    """The store load on its own thread: batches of graph directories go in through a queue
    and are written while the next batch computes. An error stops it and is re-raised in the
    driver at the next ``put``/``finish``."""

    def __init__(self, store: Any, on_loaded: Any = None) -> None:
        self.store = store
        self.on_loaded = on_loaded
        self.q: queue.Queue = queue.Queue(maxsize=2)  # bounded: compute never runs far ahead
        self.reports: list[Any] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="ingest-loader", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            batch = self.q.get()
            if batch is None:
                return
            if self.error is not None:
                continue
            try:
                report = self.store.write_graphs(batch)
                self.reports.append(report)
                if self.on_loaded:
                    self.on_loaded(report)
            except BaseException as exc:  # handed to the driver
                self.error = exc

    def _check(self) -> None:
        if self.error is not None:
            err = self.error
            if isinstance(err, CircuitAtlasError):
                raise err
            raise IngestError(f"loading graphs into the store failed: {type(err).__name__}: {err}") from err

    def put(self, batch: list[Path]) -> None:
        self._check()
        if batch:
            self.q.put(list(batch))

    def finish(self) -> None:
        self.q.put(None)
        self.thread.join()
        self._check()


def _clean_partial(graphs_dir: Path) -> None:
    """Remove temporary directories a killed ``GraphFile.save`` left behind (never a finished graph)."""
    if not graphs_dir.is_dir():
        return
    for p in graphs_dir.iterdir():
        if p.name.startswith(".") and p.is_dir() and not gf.is_graph_dir(p):
            shutil.rmtree(p, ignore_errors=True)


def _meta_request_key(meta: dict[str, Any]) -> str:
    return gf.request_key(str(meta.get("model")), str(meta.get("scan")), list(meta.get("token_ids") or []),
                          meta.get("settings") or {})


def _graph_meta(path: Path) -> dict[str, Any] | None:
    """meta.json of a finished graph directory, or None if it is not one (or unreadable)."""
    if not gf.is_graph_dir(path):
        return None
    try:
        return json.loads((path / "meta.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


_STORED_REQUESTS = "MATCH (p:Prompt) RETURN p.model AS model, p.scan AS scan, p.token_ids AS token_ids, p.settings AS settings"


def stored_request_keys(store: Any) -> set[str]:
    """The request keys of every stored prompt, recomputed from its columns (no schema change:
    the Prompt keeps model, scan, token_ids and its settings as JSON)."""
    df = store.read(_STORED_REQUESTS)
    keys = set()
    for model, scan, token_ids, settings in zip(df.get("model", []), df.get("scan", []), df.get("token_ids", []),
                                                 df.get("settings", [])):
        try:
            s = json.loads(settings) if isinstance(settings, str) and settings else {}
        except json.JSONDecodeError:
            s = {}
        ids = [] if token_ids is None else [int(t) for t in list(token_ids)]
        keys.add(gf.request_key(str(model), str(scan), ids, s if isinstance(s, dict) else {}))
    return keys


def _props(row: PromptRow, corpus_name: str, extra_tags: Sequence[str]) -> dict[str, Any]:
    tags = list(dict.fromkeys([*row.tags, *extra_tags]))
    props: dict[str, Any] = {"corpus": corpus_name, "tags": tags}
    for k, v in (("group", row.group), ("expected", row.expected), ("external_id", row.external_id)):
        if v is not None:
            props[k] = v
    return props


def ingest_corpus(
    corpus: str | os.PathLike,
    lm: Any,
    tc: Any,
    store: Any,
    *,
    graphs_dir: str | os.PathLike | None = None,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    max_feature_nodes: int | None = None,
    batch_size: int = 64,
    max_memory: str | None = None,
    workers: int = 1,
    backend: str = "local",
    limit: int | None = None,
    tags: Sequence[str] = (),
    fail_fast: bool = False,
    progress: bool = True,
    field_name: str = "prompt",
    corpus_name: str | None = None,
    failures_path: str | os.PathLike | None = None,
    load_batch: int = 16,
    model_spec: ModelSpec | None = None,
    ray_address: str | None = None,
    threads: int | None = None,
) -> IngestSummary:
    """Attribute every prompt of ``corpus`` and load the graphs into ``store``; see the module
    docstring for the stages. ``lm`` tokenizes in the driver (and attributes when ``workers``
    is 1); workers get ``model_spec`` (sources to load) or, without it, pickled ``lm``/``tc``.
    ``threads``: torch threads per attribution worker (default: in this process its cores less one,
    left to the store loader; N local workers share the cores)."""
    t0 = time.perf_counter()
    for name, v in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= float(v) <= 1.0:
            raise IngestError(f"{name} must be between 0 and 1, got {v}")
    if load_batch < 1:
        raise IngestError(f"load_batch must be >= 1, got {load_batch}")
    if threads is not None and threads < 1:
        raise IngestError(f"threads must be >= 1, got {threads}")
    corpus_path = Path(os.fspath(corpus))
    corpus_name = corpus_name or corpus_path.stem
    gdir = Path(graphs_dir) if graphs_dir is not None else default_graphs_dir()
    gdir.mkdir(parents=True, exist_ok=True)
    _clean_partial(gdir)
    fpath = Path(failures_path) if failures_path is not None else gdir / f"failures-{corpus_name}.jsonl"
    settings = AttributionSettings(node_threshold, edge_threshold, max_feature_nodes, batch_size, max_memory)
    summary = IngestSummary(corpus=str(corpus_path), graphs_dir=str(gdir), failures_path=str(fpath),
                            store_url=str(getattr(store, "url", "")))
    log = FailureLog(fpath, source=str(corpus_path), fail_fast=fail_fast)
    try:
        return _run(corpus_path, corpus_name, lm, tc, store, gdir, settings, summary, log, t0, workers=workers,
                    backend=backend, limit=limit, tags=tags, progress=progress, field_name=field_name,
                    load_batch=load_batch, model_spec=model_spec, ray_address=ray_address, threads=threads)
    finally:
        log.close()


def _run(corpus_path: Path, corpus_name: str, lm: Any, tc: Any, store: Any, gdir: Path, settings: AttributionSettings,
         summary: IngestSummary, log: FailureLog, t0: float, *, workers: int, backend: str, limit: int | None,
         tags: Sequence[str], progress: bool, field_name: str, load_batch: int, model_spec: ModelSpec | None,
         ray_address: str | None, threads: int | None) -> IngestSummary:
    # 1-2: read, validate, tokenize, identify; decide skip / reuse / compute
    present = stored_request_keys(store)
    seen: dict[str, int] = {}
    reuse: list[tuple[str, Path, dict]] = []
    jobs: list[AttributionJob] = []
    # delay: no bar for a corpus read in under a second (it printed a stuck "0row" line that the
    # next error glued onto); closed whatever happens, so an error starts on a line of its own
    rows_bar = tqdm(desc="reading prompts", unit="row", disable=not progress, leave=False, delay=1.0)
    try:
        for item in iter_prompt_rows(corpus_path, field_name=field_name, limit=limit):
            summary.rows += 1
            rows_bar.update(1)
            if isinstance(item, PromptRow):
                item = validate_tokens(item, lm.tokenize)
            if isinstance(item, RowFailure):
                summary.failed += 1
                log.add(item)
                continue
            key = request_key(lm.model_id, tc.scan, item.token_ids or [], settings)
            if key in seen:
                summary.skipped += 1
                summary.skipped_duplicate += 1
                continue
            seen[key] = item.row
            if key in present:
                summary.skipped += 1
                summary.skipped_present += 1
                continue
            meta = _graph_meta(gdir / key)
            if meta is not None and _meta_request_key(meta) == key:
                reuse.append((str(meta.get("graph_id")), gdir / key, meta))
                continue
            jobs.append(AttributionJob(index=len(jobs), row=item.row, external_id=item.external_id, text=item.text,
                                       token_ids=list(item.token_ids or []), request_key=key,
                                       prompt_props=_props(item, corpus_name, tags)))
    finally:
        rows_bar.close()

    scores: dict[str, tuple[float | None, float | None]] = {}
    computed: list[str] = []
    for gid, _, meta in reuse:
        sc = meta.get("scores") or {}
        scores[gid] = (sc.get("replacement_score"), sc.get("completeness_score"))

    # 3-5: compute (map over prompts) while the loader thread loads finished batches
    bar = tqdm(total=len(jobs), desc="attributing", unit="prompt", disable=not progress or not jobs, smoothing=0.1)
    loaded = {"n": 0}

    def on_loaded(report: Any) -> None:
        loaded["n"] += len(report.written)
        bar.set_postfix(loaded=loaded["n"], refresh=False)
        if progress:  # a line per load: what a killed run had finished is visible in its log
            tqdm.write(f"loaded {len(report.written)} graphs into the store ({loaded['n']} this run)", file=sys.stderr)

    # the derived layer: updated incrementally in each batch's transaction while the batches stay
    # within the store's budget (embedded: as many graphs as it held, at least one batch), else
    # one rebuild when every batch is in, never one per batch (n full rebuilds grow with the
    # square of the corpus)
    with store.deferred_derived():
        loader = _Loader(store, on_loaded)
        attributor = None
        try:
            for i in range(0, len(reuse), load_batch):
                loader.put([p for _, p, _ in reuse[i : i + load_batch]])
            pending: list[Path] = []
            if jobs:
                attributor = make_attributor(backend, workers, settings, lm=lm, tc=tc, spec=model_spec,
                                             ray_address=ray_address, threads=threads)
                for result in attributor.map(jobs):
                    bar.update(1)
                    path = _accept(result, gdir, log, scores)
                    if path is not None:
                        computed.append(path.name)
                        pending.append(path)
                        if len(pending) >= load_batch:
                            loader.put(pending)
                            pending = []
            loader.put(pending)
        finally:
            if attributor is not None:
                attributor.close()
            try:
                loader.finish()
            finally:
                bar.close()

    rows = {job.request_key: job for job in jobs}
    for report in loader.reports:
        for path, reason in getattr(report, "failed", []):  # refused by the store: said and recorded
            job = rows.get(Path(path).name)
            log.add(RowFailure(row=job.row if job else 0, id=job.external_id if job else None,
                               reason=f"not stored: {reason}", raw=job.text if job else str(path)))
        summary.prompt_ids.extend(report.written)
        summary.skipped += len(report.skipped)  # stored by someone else since the run started
        summary.skipped_present += len(report.skipped)
        summary.nodes += report.nodes
        summary.edges += report.edges
    summary.succeeded = len(summary.prompt_ids)
    written = set(summary.prompt_ids)
    summary.reused = sum(1 for gid, _, _ in reuse if gid in written)
    summary.computed = len(computed)
    summary.failed = len(log)
    rep = [scores[g][0] for g in summary.prompt_ids if g in scores and scores[g][0] is not None]
    comp = [scores[g][1] for g in summary.prompt_ids if g in scores and scores[g][1] is not None]
    summary.mean_replacement_score = sum(rep) / len(rep) if rep else None
    summary.mean_completeness_score = sum(comp) / len(comp) if comp else None
    summary.seconds = time.perf_counter() - t0
    return summary


def _accept(result: JobResult, gdir: Path, log: FailureLog, scores: dict[str, tuple[float | None, float | None]]) -> Path | None:
    """Write a finished graph atomically, or record the failure; returns the graph directory."""
    job = result.job
    if result.graph is None:
        log.add(RowFailure(row=job.row, id=job.external_id, reason=result.error or "attribution failed", raw=job.text))
        return None
    graph = result.graph
    if _meta_request_key(graph.meta) != job.request_key:
        # The engine recorded other settings than predicted: the graph is still right, but a
        # re-run could not skip it before attributing. Said where a later reader finds it.
        graph.meta.setdefault("ingest_warnings", []).append(f"expected request key {job.request_key}")
    path = graph.save(gdir / job.request_key)  # one folder per request: a killed run's graph is found again
    sc = graph.meta.get("scores") or {}
    scores[graph.graph_id] = (sc.get("replacement_score"), sc.get("completeness_score"))
    return path
