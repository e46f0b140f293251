"""`circuit-atlas intervene` and `circuit-atlas validate-circuit` end to end: a tiny model and
transcoders saved to disk, a corpus ingested into a real embedded store."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from circuit_atlas.cli import app
from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.engine.interventions.ablation import (
    Intervention,
    InterventionError,
    intervene,
    prompts_from_store,
    validate_circuit,
)
from circuit_atlas.engine.models.loading import tiny_model
from circuit_atlas.engine.transcoders.transcoder_set import load_transcoders, random_transcoders
from circuit_atlas.ingest.pipeline import ingest_corpus
from circuit_atlas.store import open_store

PROMPT = "The cat sat on the"
SUBJECTS = ["cat", "dog", "bird", "fox", "wolf", "bear"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(root, lm, tc, store url): model and transcoders on disk and a store with two groups."""
    root = tmp_path_factory.mktemp("intervene")
    lm = tiny_model("llama", n_layers=2, d_model=32, vocab_size=97, seed=0)
    lm.model.save_pretrained(root / "model")
    lm.tokenizer.save_pretrained(root / "model")
    random_transcoders(2, 32, 32, kind="clt", activation="relu", seed=1, scan="cli-tc").save(root / "tc")
    tc = load_transcoders(root / "tc")
    rows = [{"id": f"p{i}", "prompt": f"The {s} sat on the", "group": "animals" if i < 4 else "other",
             **({"expected": "m"} if i % 2 == 0 else {})} for i, s in enumerate(SUBJECTS)]
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    url = f"embedded:{root / 'store'}"
    with open_store(url) as s:
        ingest_corpus(corpus, lm, tc, s, graphs_dir=root / "graphs", progress=False, batch_size=32,
                      node_threshold=0.99)
    return root, lm, tc, url


def _circuit(url: str, group: str, n: int = 3) -> list[str]:
    """The features with the most influence summed over the group's graphs: a circuit the
    queries would find."""
    with open_store(url, read_only=True) as s:
        frame = s.read(
            "MATCH (p:Prompt)-[:HAS]->(a:Active) WHERE p.prompt_group = $g "
            "RETURN a.feature_key AS key, sum(a.influence) AS infl ORDER BY infl DESC LIMIT $n",
            {"g": group, "n": n},
        )
    return list(frame["key"])


def _args(root) -> list[str]:
    return ["--model", str(root / "model"), "--transcoders", str(root / "tc")]


def test_intervene_table_and_json(saved) -> None:
    root, lm, tc, _ = saved
    runner = CliRunner()
    result = runner.invoke(app, ["intervene", *_args(root), "--prompt", PROMPT, "--set", "1:3=0", "--set", "0:5@-1=x2.5",
                                 "--set", "1:7@4=6.0", "--top-k", "4"])
    assert result.exit_code == 0, result.output
    assert "top tokens at the last position" in result.output and "KL" in result.output
    assert "L1 feature 3 @ all positions: zero" in result.output and "L0 feature 5 @ pos -1: x2.5" in result.output
    assert "L1 feature 7 @ pos 4: = 6" in result.output and "iterative" in result.output
    result = runner.invoke(app, ["intervene", *_args(root), "--prompt", PROMPT, "--set", "1:3@-1=20", "--json",
                                 "--layers", "0:2", "--no-freeze-attention", "--generate", "3", "--top-k", "3"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert got["interventions"] == [{"layer": 1, "pos": -1, "feature": 3, "mode": "clamp", "value": 20.0}]
    assert got["settings"]["layer_range"] == [0, 2] and got["settings"]["freeze_attention"] is False
    assert len(got["before"]) == 3 and {"token", "token_id", "prob", "logit"} <= set(got["before"][0])
    assert isinstance(got["generated"], str) and isinstance(got["generated_before"], str)
    # the CLI computes what the library does
    lib = intervene(lm, tc, PROMPT, [Intervention(1, -1, 3, "clamp", 20.0)], freeze_attention=False, layer_range=(0, 2),
                    top_k=3)
    assert got["kl"] == pytest.approx(lib.kl) and [r["token_id"] for r in got["after"]] == list(lib.after["token_id"])


def test_intervene_errors_are_clean(saved) -> None:
    root, *_ = saved
    runner = CliRunner()
    result = runner.invoke(app, ["intervene", *_args(root), "--prompt", PROMPT, "--set", "9:3=0"])
    assert isinstance(result.exception, InterventionError) and "layer 9" in str(result.exception)
    result = runner.invoke(app, ["intervene", *_args(root), "--prompt", PROMPT, "--set", "1:3=banana"])
    assert isinstance(result.exception, InterventionError) and "LAYER:FEATURE" in str(result.exception)
    result = runner.invoke(app, ["intervene", *_args(root), "--prompt", PROMPT, "--set", "1:3@99=0"])
    assert isinstance(result.exception, InterventionError) and "beyond the prompt" in str(result.exception)
    result = runner.invoke(app, ["intervene", *_args(root), "--prompt", PROMPT, "--layers", "2"])
    assert result.exit_code != 0 and "A:B" in result.output
    result = runner.invoke(app, ["intervene", *_args(root), "--prompt", PROMPT, "--layers", "0:5", "--set", "0:1=0"])
    assert isinstance(result.exception, InterventionError) and "layer_range" in str(result.exception)
    result = runner.invoke(app, ["intervene", "--prompt", PROMPT], env={"CIRCUIT_ATLAS_MODEL": "", "CIRCUIT_ATLAS_TRANSCODERS": ""})
    assert result.exit_code != 0 and "--model" in result.output


def test_validate_circuit_command(saved, tmp_path) -> None:
    root, lm, tc, url = saved
    keys = _circuit(url, "animals")
    assert len(keys) == 3
    out = tmp_path / "val.csv"
    runner = CliRunner()
    result = runner.invoke(app, ["validate-circuit", "--store", url, "--prompt-group", "animals", "--features", ",".join(keys),
                                 "--controls", "4", "--seed", "3", *_args(root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "validate-circuit: zero 3 features on group 'animals'" in result.output and "4 prompts" in result.output
    table = pd.read_csv(out)
    assert sorted(table["text"]) == sorted(f"The {s} sat on the" for s in SUBJECTS[:4])
    sources = dict(zip(table["text"], table["expected_source"]))
    assert sources == {"The cat sat on the": "expected", "The dog sat on the": "top1", "The bird sat on the": "expected",
                       "The fox sat on the": "top1"}
    assert (table["delta"].abs() > 0).all() and table["control_delta_mean"].notna().all()
    # JSON: same numbers, and the controls drawn by the seed
    result = runner.invoke(app, ["validate-circuit", "--store", url, "-g", "animals", "-f", ",".join(keys), "--controls", "4",
                                 "--seed", "3", *_args(root), "--json"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert got["summary"]["n_prompts"] == 4 and got["summary"]["features"] == keys and len(got["controls"]) == 16
    assert [r["delta"] for r in got["prompts"]] == pytest.approx(list(table["delta"]))
    # the circuit (most influential features) moves the expected token more than matched random features
    circuit = sum(abs(r["delta"]) for r in got["prompts"]) / 4
    control = sum(abs(c["delta"]) for c in got["controls"]) / 16
    assert circuit > control
    # flip mode, active positions, constrained
    result = runner.invoke(app, ["validate-circuit", "--store", url, "-g", "animals", "-f", keys[0], "--mode", "flip",
                                 "--positions", "active", "--layers", "0:2", "--controls", "0", *_args(root), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["summary"]["frac_beating_all_controls"] is None


def test_validate_circuit_library_on_store_prompts(saved) -> None:
    root, lm, tc, url = saved
    with open_store(url, read_only=True) as s:
        prompts = prompts_from_store(s, "other")
        with pytest.raises(InterventionError, match="no prompts in group 'nope'"):
            prompts_from_store(s, "nope")
    by_text = {p["text"]: p for p in prompts}
    assert sorted(by_text) == sorted(f"The {s} sat on the" for s in SUBJECTS[4:])
    assert by_text["The wolf sat on the"]["expected"] == "m" and by_text["The bear sat on the"]["expected"] is None
    assert all(p["token_ids"] == lm.tokenize(p["text"]) for p in prompts)
    nothing = validate_circuit(lm, tc, prompts, [], controls=2)
    assert (nothing.table["delta"] == 0).all() and (nothing.table["p_after"] == nothing.table["p_clean"]).all()
    some = validate_circuit(lm, tc, prompts, _circuit(url, "other", 2), controls=2)
    assert (some.table["delta"] != 0).all() and len(some.controls) == 4


def test_validate_circuit_errors(saved) -> None:
    root, _, _, url = saved
    runner = CliRunner()
    result = runner.invoke(app, ["validate-circuit", "--store", url, "-g", "nope", "-f", "cli-tc:0:1", *_args(root)])
    assert isinstance(result.exception, InterventionError) and "no prompts" in str(result.exception)
    result = runner.invoke(app, ["validate-circuit", "--store", url, "-g", "animals", "-f", "other-scan:0:1", *_args(root)])
    assert isinstance(result.exception, InterventionError) and "scan" in str(result.exception)
    result = runner.invoke(app, ["validate-circuit", "--store", url, "-g", "animals", "-f", "cli-tc:0:1", "--mode", "x",
                                 *_args(root)])
    assert result.exit_code != 0 and "--mode" in result.output
    result = runner.invoke(app, ["validate-circuit", "--store", url, "-g", "animals", "-f", " , ", *_args(root)])
    assert result.exit_code != 0 and "at least one" in result.output


@pytest.mark.parametrize("args, says", [
    (["--prompt", "hi", "--set", "0:5=abc"], "--set '0:5=abc'"),
    (["--prompt", "hi", "--set", "0:5"], "--set '0:5'"),
    (["--prompt", "hi", "--layers", "1-2"], "--layers"),
    (["--prompt", "  ", "--set", "0:5=1"], "--prompt is empty"),
])
def test_intervene_input_errors_come_before_the_model_loads(tmp_path, args, says) -> None:
    """Exit 2 and one line that is not the model's error: the model path does not exist, so
    loading it first would say so."""
    result = CliRunner().invoke(app, ["intervene", "--model", str(tmp_path / "no-model"), "--transcoders",
                                      str(tmp_path / "no-tc"), *args])
    text = result.output + (str(result.exception) if result.exception and not isinstance(result.exception, SystemExit) else "")
    assert says in text and "no-model" not in text, text
    assert result.exit_code == 2 or isinstance(result.exception, CircuitAtlasError), (result.exit_code, text)


def test_intervene_input_error_from_the_entry_point(tmp_path) -> None:
    """The installed `circuit-atlas` itself (one subprocess: it takes seconds): exit 2, one line."""
    import subprocess

    proc = subprocess.run(["circuit-atlas", "intervene", "--model", str(tmp_path / "no-model"), "--transcoders",
                           str(tmp_path / "no-tc"), *["--prompt", "hi", "--set", "0:5=abc"]], capture_output=True, text=True, timeout=300)
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, lines)
    assert "--set '0:5=abc'" in lines[0] and "no-model" not in lines[0], lines[0]
