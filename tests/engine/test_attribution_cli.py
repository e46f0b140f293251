"""`circuit-atlas attribute` end to end on a tiny model and transcoders saved to disk."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from circuit_atlas.cli import app
from circuit_atlas.engine.graph_files import GraphFile, is_graph_dir
tiny_model = pytest.importorskip("circuit_atlas.engine.models", reason="engine.models not in the tree yet").tiny_model
_tc = pytest.importorskip("circuit_atlas.engine.transcoders", reason="engine.transcoders not in the tree yet")
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
