"""`circuit-atlas demo`: from a fresh machine to circuits recurring across a corpus, in the app.

Every stage caches its result under ``$CIRCUIT_ATLAS_HOME`` (default ``~/.circuit-atlas``), so
the first run does the work (load and cache the model, train transcoders, attribute and ingest
the corpus, feature contexts, supernodes) and a second run goes straight to the served app.
The demo lives here, above the sub-packages, because it is the one job that drives them all.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Iterator, Optional

import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.paths import home

console = Console()

DEMO_MAX_FEATURE_NODES = 1024

EXAMPLE_QUERIES = (
    "circuit-atlas query recurring_paths --param min_prompts=5 --param hops=2",
    "circuit-atlas query recurring_edges --param min_prompts=5 --param min_weight=0.05",
    "circuit-atlas query contrastive --param a=capital --param b=antonym",
    "circuit-atlas app",
)


def demo_corpus_path() -> Path:
    return Path(str(resources.files("circuit_atlas.ingest") / "demo_corpus.jsonl"))


def quick_corpus(path: Path, per_group: int, out: Path) -> Path:
    """The --quick corpus: the first prompts of every group, so each group still recurs."""
    seen: dict[str, int] = {}
    lines = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if seen.get(row["group"], 0) < per_group:
            seen[row["group"]] = seen.get(row["group"], 0) + 1
            lines.append(line)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return out


@contextmanager
def stage(n: int, total: int, title: str) -> Iterator[None]:
    console.rule(f"[bold]{n}/{total} {title}")
    start = time.perf_counter()
    yield
    console.print(f"[green]done[/] in {time.perf_counter() - start:.1f} s")


def run_demo(*, quick: bool = False, serve: bool = True, port: int = 8501, store_url: Optional[str] = None) -> dict:
    """Run every stage; returns a summary (timings, counts, the recurring circuit found)."""
    from circuit_atlas.engine.models import load_model
    from circuit_atlas.engine.train import ensure_demo_transcoders
    from circuit_atlas.ingest.features import compute_feature_contexts
    from circuit_atlas.ingest.pipeline import ingest_corpus
    from circuit_atlas.queries.runner import run_query
    from circuit_atlas.queries.supernodes import write_auto_supernodes
    from circuit_atlas.store import open_store

    t0 = time.perf_counter()
    root = home() / ("demo-quick" if quick else "demo")
    store_url = store_url or (f"embedded:{root / 'store'}" if quick else None)
    root.mkdir(parents=True, exist_ok=True)
    summary: dict = {"quick": quick}
    total = 6
    with stage(1, total, "demo model (SmolLM2-135M-Instruct)"):
        lm = load_model("demo")
    with stage(2, total, "demo transcoders"):
        tc_dir = ensure_demo_transcoders(quick=quick)
        from circuit_atlas.engine.transcoders import load_transcoders

        tc = load_transcoders(tc_dir)
        console.print(f"transcoders: {tc_dir} ({tc.kind}, {tc.d_transcoder} features/layer, scan {tc.scan})")
    corpus = demo_corpus_path() if not quick else quick_corpus(demo_corpus_path(), 3, root / "corpus.jsonl")
    with open_store(store_url) as store:
        store.init_schema()
        with stage(3, total, f"attribute and ingest the demo corpus ({corpus.name})"):
            # the greedy max_feature_nodes keeps the most influential features of each prompt
            # (~4,800 are active in a 10-token prompt): 2-3x faster, same pruned circuits' core
            report = ingest_corpus(corpus, lm, tc, store, graphs_dir=root / "graphs", progress=True,
                                   max_feature_nodes=DEMO_MAX_FEATURE_NODES)
            summary["ingest"] = {k: getattr(report, k) for k in ("succeeded", "skipped", "failed") if hasattr(report, k)}
            if report.succeeded + report.skipped == 0:
                raise CircuitAtlasError(f"no prompt of the demo corpus could be attributed; the reasons are in "
                                        f"{report.failures_path}")
        done_marker = root / "derived.done"
        if report.succeeded == 0 and done_marker.exists():
            console.print("4/6 derived layer, feature contexts, supernodes: up to date (nothing new ingested)")
        else:
            with stage(4, total, "derived layer, feature contexts, supernodes"):
                done_marker.unlink(missing_ok=True)
                # the derived layer is already fresh: every write of graphs rebuilds it before returning
                compute_feature_contexts(None, lm, tc, store, max_tokens=4_000 if quick else 20_000, progress=True)
                groups = write_auto_supernodes(store, tc.scan)
                summary["supernodes"] = len(groups)
                done_marker.write_text(json.dumps({"supernodes": len(groups)}))
        with stage(5, total, "a recurring circuit"):
            min_prompts = 6 if quick else 8
            found = run_query(store, "recurring_paths", {"min_prompts": min_prompts, "hops": 2, "limit": 10})
            summary["recurring_paths"] = len(found)
            _print_paths(found, min_prompts)
            shared = run_query(store, "contrastive", {"field": "group", "a": "capital", "min_prompts": 2, "limit": 200})
            shared = shared[shared["kind"] == "edge"].sort_values(["freq_a", "log_odds"], ascending=False)
            if not shared.empty:
                top = shared.iloc[0]
                summary["capital_circuit"] = {"edge": top["key"], "capital_prompts": f"{int(top['count_a'])}/{int(top['n_a'])}",
                                              "other_prompts": f"{int(top['count_b'])}/{int(top['n_b'])}"}
                console.print("edges shared by the 'capital' prompts and rare elsewhere:")
                console.print(shared.head(5)[["key", "count_a", "n_a", "count_b", "n_b"]].to_string(index=False))
        summary["stats"] = store.stats()
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    (root / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    table = Table(title="circuit-atlas demo")
    table.add_column("what")
    table.add_column("value")
    for k, v in summary.items():
        table.add_row(k, json.dumps(v, default=str) if not isinstance(v, str) else v)
    console.print(table)
    console.print("Try:\n" + "\n".join("  " + q for q in EXAMPLE_QUERIES))
    if serve:
        with stage(6, total, "the app"):
            from circuit_atlas.app.cli import serve_app

            # the Intervene page finds the demo model and transcoders through these
            os.environ.setdefault("CIRCUIT_ATLAS_MODEL", "demo")
            os.environ.setdefault("CIRCUIT_ATLAS_TRANSCODERS", str(tc_dir))
            serve_app(store_url=store_url, port=port)
    return summary


def _print_paths(found, min_prompts: int) -> None:
    """The top recurring 2-hop paths (feature -> feature -> output token) as a small table."""
    if found.empty:
        console.print(f"no 2-hop path recurs in {min_prompts}+ prompts")
        return
    from circuit_atlas.queries.cli import print_table

    top = found.head(10)
    print_table(pd.DataFrame({"f1_key": top["f1_key"], "f2_key": top["f2_key"], "token": top["token"].map(repr),
                              "prompts": top["prompts"], "mean_path_weight": top["mean_path_weight"].map("{:+.4f}".format)}),
                f"feature -> feature -> token paths in >= {min_prompts} prompts")  # keys whole at any width


def register(app: typer.Typer) -> None:
    """Add the demo command to the main CLI."""

    @app.command("demo")
    def demo(
        quick: bool = typer.Option(False, "--quick", help="Fewer prompts and smaller transcoders: a smoke test of the whole chain (< 5 min)."),
        serve: bool = typer.Option(True, "--serve/--no-serve", help="Serve the app at the end."),
        port: int = typer.Option(8501, "--port", help="Port of the app."),
        store_url: Optional[str] = typer.Option(None, "--store", help="Store URL; default: the embedded default store (--quick: its own store)."),
    ) -> None:
        """Demo model + transcoders, the demo corpus attributed and ingested, the app served."""
        run_demo(quick=quick, serve=serve, port=port, store_url=store_url)
