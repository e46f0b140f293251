"""`circuit-atlas attribute` end to end on a tiny model and transcoders saved to disk."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from circuit_atlas.cli import app
from circuit_atlas.engine.formats.graph_files import GraphFile, is_graph_dir
tiny_model = pytest.importorskip("circuit_atlas.engine.models.loading", reason="engine.models.loading not in the tree yet").tiny_model
_tc = pytest.importorskip("circuit_atlas.engine.transcoders.transcoder_set", reason="engine.transcoders.transcoder_set not in the tree yet")
TranscoderMismatchError, random_transcoders = _tc.TranscoderMismatchError, _tc.random_transcoders
from circuit_atlas.errors import CircuitAtlasError


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    lm = tiny_model("llama", n_layers=2, d_model=32, vocab_size=97, seed=0)
    lm.model.save_pretrained(root / "model")
    lm.tokenizer.save_pretrained(root / "model")
    random_transcoders(2, 32, 48, kind="plt", activation="relu", seed=1, scan="cli-test").save(root / "tc")
    random_transcoders(3, 32, 48, kind="plt", activation="relu", seed=1, scan="cli-bad").save(root / "tc-bad")
    return root


def test_attribute_one_prompt(saved, tmp_path) -> None:
    out = tmp_path / "graphs"
    result = CliRunner().invoke(
        app,
        ["attribute", "--model", str(saved / "model"), "--transcoders", str(saved / "tc"),
         "--prompt", "The cat sat on the", "--out", str(out), "--batch-size", "8"],
    )
    assert result.exit_code == 0, result.output
    dirs = [p for p in out.iterdir() if is_graph_dir(p)]
    assert len(dirs) == 1 and str(dirs[0]) in result.output
    graph = GraphFile.load(dirs[0])
    assert graph.meta["scan"] == "cli-test" and graph.meta["settings"]["pruned"] is True
    assert str(len(graph.edges)) in result.output
    assert f"{graph.meta['scores']['replacement_score']:.4f}" in result.output


def test_attribute_under_a_memory_budget_gives_the_same_graph(saved, tmp_path) -> None:
    """--max-memory reaches the engine (a budget of 4K spills every block of edge rows) and the
    graph keeps its nodes and edges (weights equal up to float rounding)."""
    graphs = {}
    for name, extra in (("free", []), ("budget", ["--max-memory", "4K"])):
        out = tmp_path / name
        result = CliRunner().invoke(app, ["attribute", "-m", str(saved / "model"), "-t", str(saved / "tc"), "--prompt",
                                          "The cat sat on the", "--out", str(out), "--batch-size", "8", *extra])
        assert result.exit_code == 0, result.output
        graphs[name] = GraphFile.load(next(p for p in out.iterdir() if is_graph_dir(p)))
    free, budget = graphs["free"], graphs["budget"]
    assert set(free.nodes["node_id"]) == set(budget.nodes["node_id"])
    a = free.edges.set_index(["source", "target"])["weight"].sort_index()
    b = budget.edges.set_index(["source", "target"])["weight"].sort_index()
    assert a.index.equals(b.index) and float((a - b).abs().max()) <= 1e-5 * float(a.abs().max())


def test_attribute_prompt_file_no_prune(saved, tmp_path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The cat sat on the\n\nOne two three four\n")
    out = tmp_path / "graphs"
    result = CliRunner().invoke(
        app,
        ["attribute", "-m", str(saved / "model"), "-t", str(saved / "tc"), "--prompts", str(prompts),
         "-o", str(out), "--no-prune", "--max-feature-nodes", "5"],
    )
    assert result.exit_code == 0, result.output
    graphs = [GraphFile.load(p) for p in out.iterdir() if is_graph_dir(p)]
    assert sorted(g.meta["prompt"] for g in graphs) == ["One two three four", "The cat sat on the"]
    for g in graphs:
        assert g.meta["settings"]["pruned"] is False
        assert (g.nodes["type"] == "feature").sum() <= 5


def test_attribute_errors_are_clean(saved, tmp_path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["attribute", "-m", str(saved / "model"), "-t", str(saved / "tc-bad"),
                                 "--prompt", "hi there", "-o", str(tmp_path)])
    assert isinstance(result.exception, TranscoderMismatchError)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    result = runner.invoke(app, ["attribute", "-m", str(saved / "model"), "-t", str(saved / "tc"),
                                 "--prompts", str(empty), "-o", str(tmp_path)])
    assert isinstance(result.exception, CircuitAtlasError) and "no prompts" in str(result.exception)
    result = runner.invoke(app, ["attribute", "-m", str(saved / "model"), "-t", str(saved / "tc"), "-o", str(tmp_path)])
    assert result.exit_code != 0 and "exactly one of" in result.output


def test_attribute_target_tokens_as_text_or_id(saved, tmp_path) -> None:
    """--target (repeatable) makes the graph's outputs exactly those tokens, given as text or id."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(saved / "model")
    (a_id,) = tok.encode("a", add_special_tokens=False)
    out = tmp_path / "graphs"
    result = CliRunner().invoke(
        app,
        ["attribute", "-m", str(saved / "model"), "-t", str(saved / "tc"), "--prompt", "The cat sat on the",
         "-o", str(out), "--target", "a", "--target", "5", "--batch-size", "8"],
    )
    assert result.exit_code == 0, result.output
    (graph,) = [GraphFile.load(p) for p in out.iterdir() if is_graph_dir(p)]
    logits = graph.nodes[graph.nodes["type"] == "logit"]
    assert sorted(int(t) for t in logits["token_id"]) == sorted({a_id, 5})
    bad = CliRunner().invoke(
        app,
        ["attribute", "-m", str(saved / "model"), "-t", str(saved / "tc"), "--prompt", "The cat", "-o", str(out),
         "--target", "abc"],
    )
    assert isinstance(bad.exception, CircuitAtlasError) and "'abc' is 3 tokens, not one" in str(bad.exception)  # exit 2 via the CLI


@pytest.mark.parametrize("args, says", [
    (["--prompt", "   "], "--prompt is empty"),
    (["--prompt", ""], "--prompt is empty"),
    (["--prompt", "x", "--target", ""], "--target is empty"),
    (["--prompts", "/nonexistent/prompts.txt"], "cannot read prompts"),
    (["--prompt", "x", "--max-memory", "lots"], "memory budget 'lots'"),
])
def test_attribute_input_errors_come_before_the_model_loads(tmp_path, args, says) -> None:
    """Exit 2 and one line that is not the model's error: the model path does not exist, so
    loading it first would say so."""
    result = CliRunner().invoke(app, ["attribute", "--model", str(tmp_path / "no-model"), "--transcoders",
                                      str(tmp_path / "no-tc"), "--out", str(tmp_path / "out"), *args])
    text = result.output + (str(result.exception) if result.exception and not isinstance(result.exception, SystemExit) else "")
    assert says in text and "no-model" not in text, text
    assert result.exit_code == 2 or isinstance(result.exception, CircuitAtlasError), (result.exit_code, text)


def test_attribute_input_error_from_the_entry_point(tmp_path) -> None:
    """The installed `circuit-atlas` itself (one subprocess: it takes seconds): exit 2, one line."""
    import subprocess

    proc = subprocess.run(["circuit-atlas", "attribute", "--model", str(tmp_path / "no-model"), "--transcoders",
                           str(tmp_path / "no-tc"), "--out", str(tmp_path / "out"), *["--prompt", "   "]], capture_output=True, text=True, timeout=300)
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, lines)
    assert "--prompt is empty" in lines[0] and "no-model" not in lines[0], lines[0]
