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

CIRCUIT_EDGES = 5  # the capital circuit validated: the features of this many most capital-specific edges

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
def stage(n: int, total: int, title: str, times: dict | None = None, key: str | None = None) -> Iterator[None]:
    """One stage: its rule, and its wall and process-CPU seconds (all threads) printed and kept in `times`.

    CPU seconds are recorded next to wall seconds because the demo is often timed on a shared
    machine: CPU time says what the stage cost, wall time what it took under that load."""
    console.rule(f"[bold]{n}/{total} {title}")
    start, cpu = time.perf_counter(), time.process_time()
    yield
    wall, used = time.perf_counter() - start, time.process_time() - cpu
    if times is not None and key:
        times[key] = {"wall_s": round(wall, 1), "cpu_s": round(used, 1)}
    console.print(f"[green]done[/] in {wall:.1f} s ({used:.1f} CPU s)")


def run_demo(*, quick: bool = False, serve: bool = True, port: int = 8501, store_url: Optional[str] = None) -> dict:
    """Run every stage; returns a summary (timings, counts, the recurring circuit found)."""
    from circuit_atlas.engine.models.loading import load_model
    from circuit_atlas.engine.training.evaluate import DEMO_MAX_FEATURE_NODES  # why this many: there
    from circuit_atlas.engine.training.train import ensure_demo_transcoders
    from circuit_atlas.ingest.features import compute_feature_contexts
    from circuit_atlas.ingest.pipeline import ingest_corpus
    from circuit_atlas.queries.runner import run_query
    from circuit_atlas.queries.supernodes import write_auto_supernodes
    from circuit_atlas.store import open_store

    t0 = time.perf_counter()
    root = home() / ("demo-quick" if quick else "demo")
    store_url = store_url or (f"embedded:{root / 'store'}" if quick else None)
    root.mkdir(parents=True, exist_ok=True)
    from circuit_atlas.engine.training.corpus import corpus_label
    from circuit_atlas.engine.training.train import load_recipe

    recipe = "demo-quick" if quick else "demo"
    settings = load_recipe(recipe)
    summary: dict = {"quick": quick, "recipe": recipe, "seed": settings.get("seed", 0),
                     "training_corpus": corpus_label(settings.get("corpus")), "load_average": _load()}
    times: dict = {}
    summary["stages"] = times
    total = 6
    with stage(1, total, "demo model (SmolLM2-135M-Instruct)", times, "model"):
        lm = load_model("demo")
    with stage(2, total, "demo transcoders", times, "transcoders"):
        tc_dir = ensure_demo_transcoders(quick=quick)
        from circuit_atlas.engine.transcoders.transcoder_set import load_transcoders

        tc = load_transcoders(tc_dir)
        console.print(f"transcoders: {tc_dir} ({tc.kind}, {tc.d_transcoder} features/layer, skip {tc.has_skip}, "
                      f"scan {tc.scan})")
    summary["transcoders"] = {"path": str(tc_dir), "scan": str(tc.scan), "kind": tc.kind,
                              "features_per_layer": tc.d_transcoder, "skip": tc.has_skip,
                              "weights_sha256": _weights_digest(tc_dir)}
    corpus = demo_corpus_path() if not quick else quick_corpus(demo_corpus_path(), 3, root / "corpus.jsonl")
    with open_store(store_url) as store:
        store.init_schema()
        with stage(3, total, f"attribute and ingest the demo corpus ({corpus.name})", times, "attribute_ingest"):
            # the greedy max_feature_nodes keeps the most influential features of each prompt
            # (k = 64 of them per token and layer are active). Torch on every core: the store
            # loader beside it only COPYs (the derived layer is rebuilt once after), so the demo
            # model's products gain from the second thread (64 prompts: 285 s with 2, ~370 s with 1)
            from circuit_atlas.ingest.scaleout import usable_cpus

            report = ingest_corpus(corpus, lm, tc, store, graphs_dir=root / "graphs", progress=True,
                                   max_feature_nodes=DEMO_MAX_FEATURE_NODES, threads=usable_cpus())
            summary["ingest"] = {k: getattr(report, k) for k in ("succeeded", "skipped", "failed") if hasattr(report, k)}
            summary["graph_scores"] = _graph_scores(store)
            if report.succeeded + report.skipped == 0:
                raise CircuitAtlasError(f"no prompt of the demo corpus could be attributed; the reasons are in "
                                        f"{report.failures_path}")
        done_marker = root / "derived.done"
        if report.succeeded == 0 and done_marker.exists():
            console.print("4/6 derived layer, feature contexts, supernodes: up to date (nothing new ingested)")
        else:
            with stage(4, total, "derived layer, feature contexts, supernodes", times, "contexts_supernodes"):
                done_marker.unlink(missing_ok=True)
                # the derived layer is already fresh: every write of graphs rebuilds it before returning
                compute_feature_contexts(None, lm, tc, store, max_tokens=4_000 if quick else 20_000, progress=True)
                groups = write_auto_supernodes(store, tc.scan)
                summary["supernodes"] = len(groups)
                done_marker.write_text(json.dumps({"supernodes": len(groups)}))
        with stage(5, total, "a recurring circuit, validated against matched controls", times, "circuit"):
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
                summary["validation"] = _validate(lm, tc, corpus, list(shared.head(CIRCUIT_EDGES)["key"]), quick)
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


def _load() -> list[float] | None:
    """The 1/5/15-minute load average, so every timing in the summary says how busy the machine was."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _weights_digest(tc_dir: Path) -> str:
    """sha256 over the set's safetensors files (name order): equal digests mean bit-equal transcoders."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(tc_dir.glob("*.safetensors")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _graph_scores(store) -> dict:
    """Mean replacement and completeness scores of the demo's graphs, overall and by group."""
    df = store.read("MATCH (p:Prompt) RETURN p.prompt_group AS grp, p.replacement_score AS r, p.completeness_score AS c")
    df = df.dropna(subset=["r", "c"])
    if df.empty:
        return {}
    by = df.groupby("grp")[["r", "c"]].mean().round(4)
    return {"prompts": int(len(df)), "mean_replacement": round(float(df["r"].mean()), 4),
            "mean_completeness": round(float(df["c"].mean()), 4),
            "min_replacement": round(float(df["r"].min()), 4), "max_replacement": round(float(df["r"].max()), 4),
            "by_group": {str(g): {"replacement": float(v.r), "completeness": float(v.c)} for g, v in by.iterrows()}}


def _circuit_features(edge_keys: list[str], scan: str) -> list[str]:
    """The transcoder features at either end of the given edges ("a->b" or "a -> b"), first seen first."""
    from circuit_atlas.engine.interventions.ablation import InterventionError, parse_feature_key

    out: list[str] = []
    for key in edge_keys:
        for end in str(key).split("->"):
            try:
                s, _, _ = parse_feature_key(end)
            except InterventionError:
                continue  # a token, logit or error node: not a feature to ablate
            if s == scan and end.strip() not in out:
                out.append(end.strip())  # parse_feature_key strips, so the keys are stored stripped too
    return out


def _validate(lm, tc, corpus: Path, edge_keys: list[str], quick: bool) -> dict:
    """Ablate the capital circuit's features in the capital prompts and compare with matched controls.

    `validate_circuit` (the library behind `circuit-atlas validate-circuit`) zeroes the features
    and measures the drop in each prompt's expected-answer probability against sets of random
    features of the same layers and similar activation. Two p-values: per prompt (the share of
    its controls at least as large), and one for the whole group (the share of control sets whose
    mean change over the prompts is at least as large as the circuit's). The same ablation on the
    other groups' prompts says whether the circuit is specific to capitals."""
    import numpy as np

    from circuit_atlas.engine.interventions.ablation import validate_circuit

    features = _circuit_features(edge_keys, str(tc.scan))
    if not features:
        console.print("no feature-to-feature edge in the capital circuit; nothing to validate")
        return {}
    rows = [json.loads(line) for line in corpus.read_text().splitlines() if line.strip()]
    prompts = [{"id": r["id"], "text": r["prompt"], "expected": r.get("expected")} for r in rows]
    capital = [p for r, p in zip(rows, prompts) if r["group"] == "capital"]
    per_group: dict[str, int] = {}
    others = []  # the first prompts of every other group (the two-hop controls have no one answer)
    for r, p in zip(rows, prompts):
        if r["group"] not in ("capital", "control_two_hop") and per_group.get(r["group"], 0) < (1 if quick else 2):
            per_group[r["group"]] = per_group.get(r["group"], 0) + 1
            others.append(p)
    controls = 9 if quick else 19
    res = validate_circuit(lm, tc, capital, features, mode="zero", controls=controls, seed=0)
    ctrl_means = res.controls.groupby("control")["delta"].mean().to_numpy()
    effect = float(res.summary["mean_delta"])
    group_p = float((1 + np.sum(np.abs(ctrl_means) >= abs(effect))) / (1 + len(ctrl_means)))
    other = validate_circuit(lm, tc, others, features, mode="zero", controls=0, seed=0) if others else None
    t = res.table
    out = {
        "features": features,
        "prompts": len(capital),
        "controls_per_prompt": controls,
        "mean_p_clean": round(float(res.summary["mean_p_clean"]), 4),
        "mean_delta": round(effect, 4),
        "mean_control_delta": round(float(res.summary["mean_control_delta"]), 4),
        "mean_effect_vs_control": round(float(res.summary["mean_effect_vs_control"]), 4),
        "frac_beating_all_controls": res.summary["frac_beating_all_controls"],
        "group_p_value": round(group_p, 4),
        "prompt_p_values": [round(float(v), 4) for v in t["p_value"]],
        "other_groups_mean_delta": round(float(other.summary["mean_delta"]), 4) if other is not None else None,
        "other_groups_prompts": len(others),
    }
    table = Table(title=f"the capital circuit ({len(features)} features) zeroed, against {controls} matched control sets per prompt")
    for col in ("prompt", "expected", "p clean", "p after", "change", "controls (mean)", "p-value"):
        table.add_column(col, justify="right" if col not in ("prompt", "expected") else "left")
    for _, r in t.iterrows():
        table.add_row(str(r["prompt_id"]), repr(r["expected"]), f"{r['p_clean']:.3f}", f"{r['p_after']:.3f}",
                      f"{r['delta']:+.3f}", f"{r['control_delta_mean']:+.3f}", f"{r['p_value']:.3f}")
    console.print(table)
    direction = "falls: together they support it" if effect < 0 else "rises: together they hold it back"
    console.print(f"mean change {effect:+.4f} vs controls {out['mean_control_delta']:+.4f} (the expected answer's "
                  f"probability {direction}); group p-value {group_p:.3f} (two-sided, {len(ctrl_means)} control sets)"
                  + (f"; same ablation on {len(others)} other prompts: {out['other_groups_mean_delta']:+.4f}"
                     if other is not None else ""))
    return out


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
