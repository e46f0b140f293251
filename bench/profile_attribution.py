"""Where one attribution's memory and time go, phase by phase (a developer's tool, not a target).

Builds the same model and transcoders as ``bench/attribution.py`` for one size (or reads a
saved pair), runs ``attribute`` once to warm up and once measured, and prints for each phase
of the measured run: wall time, resident memory at its end, and the highest resident memory
during it (Linux's VmHWM, reset at every phase boundary), all relative to the RSS before the
run. Phases are marked by wrapping the engine's own functions (replacement run, source reader,
backward passes, greedy influence updates, column selection, scores, pruning, tables).

    python bench/profile_attribution.py --size demo [--threads 2] [--max-memory 1G]

Ends with one JSON line of the per-phase figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import attribution as bench  # noqa: E402 - the benchmark's sizes and model builder


def _kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class Phases:
    """Phase boundaries: time, RSS at the end and peak RSS since the previous boundary."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.base = _kib("VmRSS")
        self.t = time.perf_counter()
        self.current = "start"
        self._reset()

    @staticmethod
    def _reset() -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass

    def mark(self, next_phase: str) -> None:
        now = time.perf_counter()
        peak, rss = _kib("VmHWM"), _kib("VmRSS")
        if self.rows and self.rows[-1]["phase"] == self.current:  # merge repeated phases (passes)
            r = self.rows[-1]
            r["s"] += now - self.t
            r["peak_mib"] = max(r["peak_mib"], (peak - self.base) / 1024)
            r["end_mib"] = (rss - self.base) / 1024
            r["calls"] += 1
        else:
            self.rows.append({"phase": self.current, "s": now - self.t, "peak_mib": (peak - self.base) / 1024,
                              "end_mib": (rss - self.base) / 1024, "calls": 1})
        self.current, self.t = next_phase, time.perf_counter()
        self._reset()


def _wrap(owner, name: str, phases: Phases, label: str, after: str) -> None:
    fn = getattr(owner, name)

    def wrapped(*a, **k):
        phases.mark(label)
        try:
            return fn(*a, **k)
        finally:
            phases.mark(after)

    setattr(owner, name, wrapped)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="demo", choices=sorted(bench.SIZES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-memory", default=None)
    parser.add_argument("--length", type=int, default=None, help="a prompt of this many tokens (length_ids)")
    parser.add_argument("--torch-profile", action="store_true", help="also print torch.profiler's top CPU ops")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import importlib

    from circuit_atlas.engine.attribution import pruning

    # the module (the package's `attribute` name is the function, which shadows it)
    attribution = importlib.import_module("circuit_atlas.engine.attribution.attribute")
    from circuit_atlas.engine.models.loading import load_model
    from circuit_atlas.engine.transcoders.transcoder_set import load_transcoders

    spec = bench.SIZES[args.size]
    with tempfile.TemporaryDirectory(prefix="ca-prof-") as tmp:
        built = bench.build(args.size, spec, Path(tmp), max_context=max(128, args.length or 0))
        assert built is not None, "demo model not installed"
        model_dir, tc_dir, ids = built
        if args.length:
            ids = bench.length_ids(args.length, spec["vocab_size"])
        lm = load_model(str(model_dir), dtype="float32", device="cpu")
        tc = load_transcoders(tc_dir, device="cpu", dtype=torch.float32)
        paged = bench.page_in(lm.model, tc)
        kw = dict(batch_size=spec["batch"], max_feature_nodes=spec["max_feat"], max_memory=args.max_memory)
        t0 = time.perf_counter()
        attribution.attribute(lm, tc, ids, **kw)  # warm-up: imports, the math library's buffers
        warm = time.perf_counter() - t0

        phases = Phases()
        import circuit_atlas.engine.attribution.replacement as rep

        _wrap(rep, "replacement_run", phases, "forward (replacement run)", "targets")
        _wrap(attribution._SourceReader, "__init__", phases, "source reader", "passes")
        _wrap(pruning, "node_influence", phases, "greedy influence", "passes")
        _wrap(pruning.SparseRows, "select_columns", phases, "select columns", "join")
        _wrap(pruning, "normalize_rows", phases, "normalize", "after normalize")
        _wrap(pruning, "graph_scores", phases, "scores", "after scores")
        _wrap(pruning, "prune", phases, "prune", "tables")
        _wrap(attribution, "node_table", phases, "node table", "edge table + meta")
        t0 = time.perf_counter()
        if args.torch_profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                graph = attribution.attribute(lm, tc, ids, **kw)
        else:
            graph = attribution.attribute(lm, tc, ids, **kw)
        total = time.perf_counter() - t0
        phases.mark("end")
    print(f"{args.size}: {len(ids)} tokens, warm-up {warm:.2f}s, measured {total:.2f}s, "
          f"{len(graph.nodes)} nodes / {len(graph.edges)} edges; weights paged in before: {paged:.0f} MiB")
    print(f"{'phase':28s} {'calls':>5s} {'s':>7s} {'peak MiB':>9s} {'end MiB':>8s}")
    for r in phases.rows:
        print(f"{r['phase']:28s} {r['calls']:5d} {r['s']:7.2f} {r['peak_mib']:9.1f} {r['end_mib']:8.1f}")
    if args.torch_profile:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    print(json.dumps({"size": args.size, "n_tokens": len(ids), "total_s": total, "phases": phases.rows}))


if __name__ == "__main__":
    main()
