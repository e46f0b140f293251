"""Real Neuronpedia graphs made by others (../shared/real-np, see its SOURCES.md) and circuit-tracer
0.5.0's own graph files, imported into a real embedded store and checked against an independent
parse of the same JSON (plain json, none of the importer's code): counts by type, every edge on
its true endpoints, layers, identity (a second graph of one prompt is stored, a re-import writes
nothing) and recurring_edges right after the import."""

from __future__ import annotations

import gzip
import json
import math
import shutil
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from ingest_helpers import run_cli, store_state

from circuit_atlas.engine.formats import neuronpedia as npd
from circuit_atlas.ingest.exporters import export_prompt
from circuit_atlas.ingest.importers import import_path
from circuit_atlas.queries.runner import run_query
from circuit_atlas.store import open_store

ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT / ".." / "shared" / "real-np"
MAIN, DUP, ANTHROPIC = REAL / "gemma-2-2b-clt-hp", REAL / "gemma-2-2b-clt-hp-dup", REAL / "anthropic-jackl"
GEMMA_LAYERS = 26  # gemma-2-2b

pytestmark = pytest.mark.skipif(not MAIN.is_dir(), reason=f"real graphs absent ({REAL}: see the issue that placed them)")

TYPES = {"cross layer transcoder": "feature", "mlp reconstruction error": "error", "embedding": "embedding", "logit": "logit"}
LABELS = {"Active": "feature", "Error": "error", "Embedding": "embedding", "Logit": "logit"}


def files(*folders: Path) -> list[Path]:
    return sorted(f for d in folders for f in d.glob("*.json"))


# ------------------------------------------------------------------ the independent parse
def parse(path: Path) -> dict:
    """Node and edge counts by type, the layer count, and every link with both ends under the id
    the store should give them (errors {layer}_-1_{pos} with the layer from the node's layer field;
    logits {n_layers+1}_{token}_{pos}), from the JSON alone. Only for files whose ids are unique."""
    doc = json.loads(path.read_text())
    nodes = doc["nodes"]
    assert len({n["node_id"] for n in nodes}) == len(nodes), f"{path.name}: ids repeat; this parse needs unique ids"
    kind = {n["node_id"]: TYPES[n["feature_type"]] for n in nodes}
    inner = [int(n["layer"]) for n in nodes if kind[n["node_id"]] in ("feature", "error")]
    logit_layer = max(int(n["layer"]) for n in nodes if kind[n["node_id"]] == "logit")
    n_layers = logit_layer - 1 if logit_layer - 1 > max(inner) else max(inner) + 1
    ours = {}
    for n in nodes:
        nid, k = n["node_id"], kind[n["node_id"]]
        if k == "error":
            ours[nid] = f"{int(n['layer'])}_-1_{n['ctx_idx']}"
        elif k == "logit":
            ours[nid] = f"{n_layers + 1}_{nid.split('_')[1]}_{n['ctx_idx']}"
        else:
            ours[nid] = nid
    links = Counter((ours[x["source"]], ours[x["target"]], x["weight"]) for x in doc["links"])
    by_type = Counter((kind[x["source"]], kind[x["target"]]) for x in doc["links"])
    feature_layers = {int(n["layer"]) for n in nodes if kind[n["node_id"]] == "feature"}
    error_layers = {int(n["layer"]) for n in nodes if kind[n["node_id"]] == "error"}
    return {"nodes": Counter(kind.values()), "edges": by_type, "links": links, "n_layers": n_layers,
            "feature_layers": feature_layers, "error_layers": error_layers, "scan": doc["metadata"]["scan"],
            "prompt": doc["metadata"]["prompt"], "doc": doc}


# ------------------------------------------------------------------ what the store holds
def stored_counts(store, pid: str) -> tuple[Counter, Counter]:
    nodes = Counter()
    for label, k in LABELS.items():
        df = store.read(f"MATCH (n:{label}) WHERE n.prompt_id = $id RETURN count(*) AS n", {"id": pid})
        nodes[k] = int(df["n"].iloc[0])
    edges = Counter()
    for a_label, a in LABELS.items():
        for b_label, b in LABELS.items():
            df = store.read(f"MATCH (x:{a_label})-[e:EDGE]->(y:{b_label}) WHERE x.prompt_id = $id RETURN count(*) AS n",
                            {"id": pid})
            if int(df["n"].iloc[0]):
                edges[(a, b)] = int(df["n"].iloc[0])
    return +nodes, edges


def stored_links(store, pid: str) -> list[tuple[str, str, float]]:
    df = store.read("MATCH (p:Prompt {id: $id})-[:HAS]->(a)-[e:EDGE]->(b) RETURN a.node_id AS s, b.node_id AS t, "
                    "e.weight AS w", {"id": pid})
    return list(zip(df["s"], df["t"], df["w"].astype(float)))


def same_links(expected: Counter, got: list[tuple[str, str, float]]) -> None:
    """Every stored edge on the endpoints the file gives it, with its weight (as float32)."""
    want = Counter((s, t, float(_f32(w))) for (s, t, w), c in expected.items() for _ in range(c))
    have = Counter((s, t, float(_f32(w))) for s, t, w in got)
    assert have == want, f"{sum((have - want).values())} stored edges not in the file, {sum((want - have).values())} missing"


def _f32(x: float) -> float:
    import numpy as np

    return float(np.float32(x))


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """One store with the main folder and Anthropic's two graphs imported, then the duplicate."""
    url = f"embedded:{tmp_path_factory.mktemp('real') / 'store'}"
    with open_store(url) as s:
        main = import_path(MAIN, s, progress=False)
        anth = import_path(ANTHROPIC, s, progress=False)
        dup = import_path(DUP, s, progress=False)
    return url, main, anth, dup


def test_every_file_imports_with_the_counts_and_endpoints_of_the_json(imported):
    url, main, anth, dup = imported
    by_file = {}
    for summary in (main, anth, dup):
        assert not summary.failed
        by_file.update({Path(p).name: gid for gid, p in summary.sources.items()})
    all_files = files(MAIN, DUP, ANTHROPIC)
    assert len(all_files) == 20 and set(by_file) == {f.name for f in all_files}
    with open_store(url, read_only=True) as s:
        assert len(s.prompt_ids()) == 20
        for f in all_files:
            want, pid = parse(f), by_file[f.name]
            nodes, edges = stored_counts(s, pid)
            assert nodes == want["nodes"], f.name
            assert edges == want["edges"], f.name
            same_links(want["links"], stored_links(s, pid))
            # errors only at layers the model has, each at its own layer field
            err = s.read("MATCH (e:Error) WHERE e.prompt_id = $id RETURN DISTINCT e.layer AS layer", {"id": pid})
            layers = {int(x) for x in err["layer"]}
            assert layers == want["error_layers"], f.name
            n_layers = GEMMA_LAYERS if want["scan"] == "gemma-2-2b" else want["n_layers"]
            assert all(0 <= layer < n_layers for layer in layers), f.name
            if want["scan"] != "gemma-2-2b":  # Anthropic's: the layer count is read from the nodes
                assert want["n_layers"] == max(want["feature_layers"]) + 1
            logit = s.read("MATCH (l:Logit) WHERE l.prompt_id = $id RETURN l.node_id AS id", {"id": pid})
            assert {int(i.split("_")[0]) for i in logit["id"]} == {want["n_layers"] + 1}, f.name


def test_anthropic_decisions_are_printed_and_kept_on_the_prompt(imported):
    url, _, anth, _ = imported
    warned = {Path(p).name for p, _ in anth.warnings}
    assert warned == {"capital-state-dallas.json", "opposite_of_small.json"}
    assert any("Anthropic's form" in w for _, w in anth.warnings)
    with open_store(url, read_only=True) as s:
        for gid in anth.written:
            settings = json.loads(s.read("MATCH (p:Prompt {id: $id}) RETURN p.settings AS s", {"id": gid})["s"].iloc[0])
            assert any("Anthropic's form" in w for w in settings["import_warnings"])
            assert any("layers taken from the nodes" in w for w in settings["import_warnings"])


def test_a_second_graph_of_one_prompt_is_stored_and_named(imported):
    url, main, _, dup = imported
    dup_doc = json.loads(next(DUP.glob("*.json")).read_text())
    text = dup_doc["metadata"]["prompt"]
    assert len(dup.written) == 1 and not dup.skipped
    twins = [gid for gid, p in main.sources.items() if json.loads(Path(p).read_text())["metadata"]["prompt"] == text]
    assert len(twins) == 1
    assert dup.shared_texts == [{"text": text, "graph_ids": sorted([twins[0], dup.written[0]])}]
    with open_store(url, read_only=True) as s:
        rows = run_query(s, "prompt_texts", {"min_graphs": 2})
        assert list(rows["text"]) == [text] and int(rows["graphs"].iloc[0]) == 2
        assert sorted(rows["graph_ids"].iloc[0]) == sorted([twins[0], dup.written[0]])
        everything = run_query(s, "prompt_texts", {"limit": 1000})
    texts = Counter(json.loads(f.read_text())["metadata"]["prompt"] for f in files(MAIN, DUP, ANTHROPIC))
    assert dict(zip(everything["text"], everything["graphs"].astype(int))) == dict(texts)


def test_identical_reimport_writes_nothing(imported):
    url, *_ = imported
    before = store_state(url)
    with open_store(url) as s:
        again = import_path(REAL / "anthropic-jackl", s, progress=False)
        dup = import_path(DUP, s, progress=False)
    assert not again.written and len(again.skipped) == 2 and not dup.written and len(dup.skipped) == 1
    assert store_state(url) == before


def test_recurring_edges_right_after_import_equal_a_count_over_the_json(imported):
    """No rebuild command: the store must refresh its derived layer on every write."""
    url, *_ = imported
    pairs: dict[tuple[str, str], dict] = defaultdict(lambda: {"graphs": set(), "edges": 0, "sum": 0.0})
    for f in files(MAIN, DUP, ANTHROPIC):
        doc = json.loads(f.read_text())
        scan = doc["metadata"]["scan"]
        feat = {n["node_id"]: f"{scan}:{int(n['layer'])}:{int(n['node_id'].split('_')[1])}" for n in doc["nodes"]
                if n["feature_type"] == "cross layer transcoder"}
        for x in doc["links"]:
            if x["source"] in feat and x["target"] in feat:
                p = pairs[(feat[x["source"]], feat[x["target"]])]
                p["graphs"].add(f.name)
                p["edges"] += 1
                p["sum"] += _f32(x["weight"])
    want = {k: v for k, v in pairs.items() if len(v["graphs"]) >= 2}
    assert len(want) > 1000  # SOURCES.md: 1,400 pairs in >= 2 graphs
    with open_store(url, read_only=True) as s:
        got = run_query(s, "recurring_edges", {"min_prompts": 2, "limit": 100_000})
    assert len(got) == len(want)
    for r in got.itertuples(index=False):
        w = want[(r.source_key, r.target_key)]
        assert (int(r.prompts), int(r.edges)) == (len(w["graphs"]), w["edges"])
        assert math.isclose(float(r.mean_weight), w["sum"] / w["edges"], rel_tol=1e-5, abs_tol=1e-7)


def test_gzip_files_read_directly_and_are_the_same_graph(tmp_path):
    src = files(ANTHROPIC)[0]
    gz = tmp_path / (src.name + ".gz")
    gz.write_bytes(gzip.compress(src.read_bytes()))
    plain, packed = npd.read_neuronpedia(src), npd.read_neuronpedia(gz)
    assert packed.graph_id == plain.graph_id and len(packed.edges) == len(plain.edges)
    assert [p.name for p in npd.neuronpedia_files(tmp_path)] == [gz.name]


def test_a_folder_goes_on_past_bad_files_and_exits_2(tmp_path, store_url):
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = files(ANTHROPIC)
    for f in good:
        shutil.copy(f, folder / f.name)
    doc = json.loads(good[0].read_text())
    doc["links"][5]["weight"] = float("nan")
    (folder / "nan-weight.json").write_text(json.dumps(doc))  # json writes NaN: invalid JSON, as found in the wild
    (folder / "broken.json").write_text('{"metadata": {}, "nodes": [')
    failures = tmp_path / "failures.jsonl"
    r = run_cli("import", str(folder), "--store", store_url, "--failures", str(failures))
    assert r.returncode == 2, r.stderr
    assert "nan-weight.json: 1 links have non-finite weights" in r.stderr
    assert "broken.json: not valid JSON" in r.stderr
    assert r.stderr.count("failed: ") == 2
    listed = [json.loads(line) for line in failures.read_text().splitlines()]
    assert sorted(Path(x["path"]).name for x in listed) == ["broken.json", "nan-weight.json"]
    with open_store(store_url, read_only=True) as s:
        assert len(s.prompt_ids()) == 2


def test_export_has_unique_ids_valid_json_and_reads_back_on_the_same_endpoints(imported, tmp_path):
    url, main, anth, _ = imported
    pids = [anth.written[0], main.written[0]]
    out = tmp_path / "np"
    with open_store(url, read_only=True) as s:
        paths = [export_prompt(s, pid, "neuronpedia", out) for pid in pids]
        before = {pid: Counter(stored_links(s, pid)) for pid in pids}
    for p in paths:
        doc = json.loads(p.read_text(), parse_constant=lambda c: pytest.fail(f"{p.name}: {c} in exported JSON"))
        ids = [n["node_id"] for n in doc["nodes"]]
        assert len(ids) == len(set(ids))
        errors = [n for n in doc["nodes"] if n["feature_type"] == "mlp reconstruction error"]
        assert errors and all(n["node_id"] == f"{n['layer']}_-1_{n['ctx_idx']}" for n in errors)  # the new form
    fresh = f"embedded:{tmp_path / 'fresh'}"
    with open_store(fresh) as s:
        rep = import_path(out, s, progress=False)
        assert sorted(rep.written) == sorted(pids)
        for pid in pids:
            assert Counter(stored_links(s, pid)) == before[pid]


# ------------------------------------------------------------------ circuit-tracer 0.5.0's own files
@pytest.fixture(scope="module")
def ct_files():
    """circuit-tracer 0.5.0's graph.pt and create_graph_files JSON (bench/ct_graph_files.py makes
    them once in the benchmark's circuit-tracer venv and caches them under ~/.cache)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import ct_graph_files

        return ct_graph_files.make()
    except Exception as exc:  # noqa: BLE001 - no registry, no venv: say why and skip
        pytest.skip(f"circuit-tracer 0.5.0's venv or files cannot be made here: {exc}")


def test_circuit_tracer_files_import_with_every_edge_on_its_true_endpoints(ct_files, store_url):
    from circuit_atlas.engine.formats.circuit_tracer import read_circuit_tracer_pt

    doc = json.loads(Path(ct_files["json"]).read_text())
    counts = Counter(n["node_id"] for n in doc["nodes"])
    clashing = [i for i, c in counts.items() if c > 1]
    assert clashing, "the cached file should hold ids shared by a layer-0 feature and an error"
    truth = read_circuit_tracer_pt(ct_files["pt"], prune=False)  # every nonzero edge, under its true ids
    true_w = {(s, t): _f32(w) for s, t, w in zip(truth.edges["source"], truth.edges["target"], truth.edges["weight"])}
    with open_store(store_url) as s:
        rep = import_path(ct_files["json"], s, progress=False)
        assert len(rep.written) == 1 and any("name both a layer-0 feature and an error" in w for _, w in rep.warnings)
        got = stored_links(s, rep.written[0])
    assert len(got) == len(doc["links"])
    wrong = [(a, b, w) for a, b, w in got if true_w.get((a, b)) != _f32(w)]
    assert not wrong, f"{len(wrong)} edges on wrong endpoints, e.g. {wrong[:3]}"
    assert len({(a, b) for a, b, _ in got}) == len(got)  # no pair stored twice


def test_our_export_loads_with_circuit_tracers_own_graph_model(ct_files, store_url, tmp_path):
    import subprocess

    with open_store(store_url) as s:
        rep = import_path(ct_files["json"], s, progress=False)
        path = export_prompt(s, rep.written[0], "neuronpedia", tmp_path / "ct.json")
    r = subprocess.run([ct_files["venv_python"], str(ROOT / "bench" / "ct_graph_files.py"), "--check-json", str(path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    doc = json.loads(path.read_text())
    assert res == {"nodes": len(doc["nodes"]), "links": len(doc["links"]), "node_ids_unique": True}
    assert res["links"] == len(json.loads(Path(ct_files["json"]).read_text())["links"])


def test_supernodes_come_with_the_graph_and_lost_ones_are_restored_by_a_reimport(store_url):
    src = ANTHROPIC / "capital-state-dallas.json"
    n_super = len(json.loads(src.read_text())["qParams"]["supernodes"])
    with open_store(store_url) as s:
        first = import_path(src, s, progress=False)
        (pid,) = first.written
        count = "MATCH (x:Supernode) WHERE x.prompt_id = $id RETURN count(*) AS n"
        assert int(s.read(count, {"id": pid})["n"].iloc[0]) == n_super == first.supernodes > 0
        assert s.delete_supernodes(method="import") == n_super  # what a run killed by an older version lost
        again = import_path(src, s, progress=False)
        assert again.skipped == [pid] and again.supernodes_restored == n_super
        assert int(s.read(count, {"id": pid})["n"].iloc[0]) == n_super
        third = import_path(src, s, progress=False)
        assert third.supernodes_restored == 0


# ------------------------------------------------------------------ identity under float noise
def _copy_with(src: Path, dst: Path, change) -> Path:
    doc = json.loads(src.read_text())
    change(doc["links"])
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(json.dumps(doc))
    return dst


def _on_boundary(w: float, side: float) -> float:
    """A value next to the rounding boundary nearest ``w`` at WEIGHT_DIGITS significant digits,
    ``side`` (+1/-1) of it by about 1e-7 of the value: float noise that rounds two ways."""
    from circuit_atlas.engine.formats.graph_files import WEIGHT_DIGITS

    unit = 10.0 ** (math.floor(math.log10(abs(w))) - (WEIGHT_DIGITS - 1))
    boundary = (math.floor(w / unit) + 0.5) * unit
    return boundary + side * unit * 1e-4


def test_float_noise_is_the_same_graph_and_a_change_beyond_it_another(tmp_path):
    import random

    src = MAIN / "the-opposite-of-20251026-175335.json"
    rng = random.Random(7)

    def base(links):  # one weight set just below a rounding boundary
        links[0]["weight"] = _on_boundary(links[0]["weight"], -1)

    def noise(links):  # every weight moved by float noise (1e-6 relative), the first one across the boundary
        base(links)
        for x in links[1:]:
            x["weight"] *= 1 + rng.uniform(-1e-6, 1e-6)
        links[0]["weight"] = _on_boundary(links[0]["weight"], +1)

    def mild_noise(links):
        base(links)
        for x in links[1:]:
            x["weight"] *= 1 + rng.uniform(-1e-7, 1e-7)

    def changed(links):  # a real difference: ten weights 5% larger
        base(links)
        for x in links[1:11]:
            x["weight"] *= 1.05

    paths = {name: _copy_with(src, tmp_path / name / "g.json", fn)
             for name, fn in (("base", base), ("noise", noise), ("mild", mild_noise), ("changed", changed))}
    ids = {name: npd.read_neuronpedia_tables(p).graph_id for name, p in paths.items()}
    # these weights are bfloat16 values, many exactly half-way between two 3-digit roundings: noise
    # moves them either way, so the ids may differ; the forced one always does
    assert ids["noise"] != ids["base"] != ids["changed"]

    url = f"embedded:{tmp_path / 'store'}"
    first = run_cli("import", str(paths["base"].parent), "--store", url)
    assert first.returncode == 0, first.stderr
    for name in ("mild", "noise"):
        r = run_cli("import", str(paths[name].parent), "--store", url)
        assert r.returncode == 0, r.stderr
        assert "written 0" in r.stdout
        if name == "noise":
            assert f"is stored graph {ids['base']} up to float noise" in r.stdout and "not written" in r.stdout
    r = run_cli("import", str(paths["changed"].parent), "--store", url, "--json")
    assert r.returncode == 0, r.stderr
    assert "written 1" in r.stdout
    assert f"written as {ids['changed']}, a different graph with the structure of stored graph {ids['base']}: 10 of" in r.stdout
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["variants"][0]["differ"] == 10
    with open_store(url, read_only=True) as s:
        assert s.prompt_ids() == {ids["base"], ids["changed"]}
