"""The graph figure's layout and thinning, and the `app` command."""

from __future__ import annotations

import pandas as pd
from typer.testing import CliRunner

from circuit_atlas.app import graph_view
from circuit_atlas.app.cli import ENTRY, streamlit_command


def _graph():
    nodes = pd.DataFrame([
        ("E_1_0", "embedding", None, 0, None, None, "The"),
        ("0_5_1", "feature", 0, 1, "s:0:5", 0.6, None),
        ("0_6_1", "feature", 0, 1, "s:0:6", 0.3, None),
        ("1_7_1", "feature", 1, 1, "s:1:7", 0.1, None),
        ("1_-1_1", "error", 1, 1, None, 0.05, None),
        ("3_9_1", "logit", None, 1, None, None, " Paris"),
    ], columns=["node_id", "kind", "layer", "pos", "feature_key", "influence", "label"])
    edges = pd.DataFrame([
        ("E_1_0", "0_5_1", 1.0), ("0_5_1", "1_7_1", -0.5), ("0_6_1", "3_9_1", 0.25), ("1_7_1", "3_9_1", 0.1),
        ("1_-1_1", "3_9_1", 0.05),
    ], columns=["source", "target", "weight"])
    return nodes, edges


def test_rows_put_embeddings_at_the_bottom_and_logits_on_top():
    nodes, _ = _graph()
    rows = dict(zip(nodes["node_id"], graph_view.node_rows(nodes, n_layers=2)["row"]))
    assert rows == {"E_1_0": 0, "0_5_1": 1, "0_6_1": 1, "1_7_1": 2, "1_-1_1": 2, "3_9_1": 3}
    laid, centres = graph_view.layout(graph_view.node_rows(nodes, n_layers=2))
    laid = laid.set_index("node_id")
    assert abs(laid.loc["0_5_1", "x"] - laid.loc["0_6_1", "x"]) >= 1  # same cell: a full node apart
    assert [p for _, p in centres] == [0, 1]


def test_prune_keeps_the_most_influential_nodes_and_strongest_edges():
    nodes, edges = _graph()
    kept, kept_edges = graph_view.prune(nodes, edges, node_threshold=0.6, edge_threshold=1.0)
    assert set(kept["node_id"]) == {"E_1_0", "0_5_1", "0_6_1", "3_9_1"}  # 0.6 + 0.3 of 1.05 reaches 60 %
    assert set(zip(kept_edges["source"], kept_edges["target"])) == {("E_1_0", "0_5_1"), ("0_6_1", "3_9_1")}
    _, strongest = graph_view.prune(nodes, edges, 1.0, 0.5)
    assert list(strongest["source"]) == ["E_1_0"]
    capped, _ = graph_view.prune(nodes, edges, 1.0, 1.0, max_nodes=2)  # the two most influential features stay
    assert set(capped["node_id"]) == {"E_1_0", "0_5_1", "0_6_1", "3_9_1"}
    full_nodes, full_edges = graph_view.prune(nodes, edges, 1.0, 1.0)
    assert len(full_nodes) == len(nodes) and len(full_edges) == len(edges)


def test_figure_names_nodes_and_labels_tokens():
    nodes, edges = _graph()
    fig = graph_view.figure(nodes, edges, ["<bos>", " capital"], highlight=["0_5_1"], n_layers=2)
    ids = [i for t in fig.data if t.customdata is not None for i in t.customdata]
    assert sorted(ids) == sorted(nodes["node_id"])
    assert list(fig.layout.xaxis.ticktext) == ["0: '<bos>'", "1: ' capital'"]
    assert list(fig.layout.yaxis.ticktext) == ["emb", "L0", "L1", "logit"]
    colors = {t.line.color for t in fig.data if t.mode == "lines"}
    assert colors == {graph_view.POSITIVE, graph_view.NEGATIVE}
    inputs, outputs = graph_view.neighbours(edges, nodes, ["1_7_1"])
    assert list(inputs["source"]) == ["0_5_1"] and list(outputs["target"]) == ["3_9_1"]
    assert list(inputs["name"]) == ["s:0:5"]  # the other end by its label (here its key)
    texts = {n: t for tr in fig.data if tr.customdata is not None for n, t in zip(tr.customdata, tr.text)}
    assert texts == {"E_1_0": "The", "0_5_1": "0:5", "0_6_1": "0:6", "1_7_1": "1:7", "1_-1_1": "err L1", "3_9_1": " Paris"}


def test_app_command_and_its_streamlit_command_line():
    from circuit_atlas.cli import app

    result = CliRunner().invoke(app, ["app", "--help"])
    assert result.exit_code == 0
    for option in ("--store", "--port", "--host", "--headless"):
        assert option in result.output
    cmd = streamlit_command(port=9999, host="127.0.0.1", headless=True)
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4] == str(ENTRY) and ENTRY.is_file()
    assert cmd[cmd.index("--server.port") + 1] == "9999" and cmd[cmd.index("--server.headless") + 1] == "true"


def test_labels_say_what_a_node_is():
    nodes, _ = _graph()
    nodes.loc[nodes["node_id"] == "0_6_1", "label"] = "says a capital"
    nodes["prob"] = [None, None, None, None, None, 0.4321]
    labels = dict(zip(nodes["node_id"], graph_view.node_labels(nodes)))
    assert labels == {"E_1_0": "The", "0_5_1": "s:0:5", "0_6_1": "says a capital", "1_7_1": "s:1:7",
                      "1_-1_1": "err L1", "3_9_1": " Paris (43.2%)"}
    row = nodes[nodes["node_id"] == "0_6_1"].iloc[0].to_dict()
    assert graph_view.picker_label(row, ["<bos>", " capital"]) == "says a capital  (L0 @1 ' capital' feature)"
    assert graph_view.node_label({"kind": "embedding", "label": "\n", "node_id": "E_0_0"}) == "\u21b5"


def test_error_nodes_merge_per_layer_or_hide():
    nodes, edges = _graph()
    extra = pd.DataFrame([("1_-1_0", "error", 1, 0, None, 0.02, None)], columns=nodes.columns)
    nodes = pd.concat([nodes, extra], ignore_index=True)
    edges = pd.concat([edges, pd.DataFrame([("1_-1_0", "3_9_1", 0.5)], columns=edges.columns)], ignore_index=True)
    merged, merged_edges = graph_view.collapse_errors(nodes, edges, "one per layer")
    err = merged[merged["kind"] == "error"]
    assert list(err["node_id"]) == ["err_L1"] and int(err["merged"].iloc[0]) == 2
    assert abs(float(err["influence"].iloc[0]) - 0.07) < 1e-9
    into_logit = merged_edges[(merged_edges["source"] == "err_L1") & (merged_edges["target"] == "3_9_1")]
    assert len(into_logit) == 1 and abs(float(into_logit["weight"].iloc[0]) - 0.55) < 1e-9  # parallel edges summed
    assert int(err["pos"].iloc[0]) == 2  # a column of its own, right of the last token
    hidden, hidden_edges = graph_view.collapse_errors(nodes, edges, "hide")
    assert "error" not in set(hidden["kind"]) and not hidden_edges["source"].str.contains("_-1_").any()
    same, same_edges = graph_view.collapse_errors(nodes, edges, "show")
    assert same.equals(nodes) and same_edges.equals(edges)


def test_app_command_hands_the_model_and_transcoders_to_the_pages(monkeypatch):
    from circuit_atlas.app import models
    from circuit_atlas.app.cli import app_environment
    from circuit_atlas.cli import app

    monkeypatch.delenv(models.MODEL_ENV, raising=False)
    monkeypatch.delenv(models.TRANSCODERS_ENV, raising=False)
    result = CliRunner().invoke(app, ["app", "--help"])
    assert "--model" in result.output and "--transcoders" in result.output
    env = app_environment("embedded:/x", "demo", "/tc")
    assert (env["CIRCUIT_ATLAS_STORE"], env[models.MODEL_ENV], env[models.TRANSCODERS_ENV]) == ("embedded:/x", "demo", "/tc")
    assert models.MODEL_ENV not in app_environment("embedded:/x")  # nothing configured stays unset
    half = CliRunner().invoke(app, ["app", "--model", "demo", "--port", "1"])
    assert half.exit_code == 2 and "--model and --transcoders together" in half.output


def test_node_text_shows_quotes_and_tags_as_themselves():
    """Plotly reads node text as pseudo-HTML: '<b>' must not turn bold and '"' must not show as
    '&quot;' (it did for automatic labels holding a quote token)."""
    nodes, edges = _graph()
    nodes.loc[nodes["node_id"] == "0_5_1", ["label", "label_source"]] = ['"<b>" → x', "auto"]
    nodes.loc[nodes["node_id"] == "0_6_1", "label"] = 'say "<b>"'
    fig = graph_view.figure(nodes, edges, ["<bos>", " capital"], n_layers=2)
    texts = {n: t for tr in fig.data if tr.customdata is not None for n, t in zip(tr.customdata, tr.text)}
    assert texts["0_5_1"] == '<i>"&lt;b&gt;" → x</i>' and texts["0_6_1"] == 'say "&lt;b&gt;"'
    assert not any("&quot;" in t for t in texts.values())


def test_result_figure_escapes_tokens_and_marks_automatic_labels():
    fig = graph_view.result_figure([("in:<b>", "s:0:5", 1.0), ("s:0:5", 'out:"x"', 0.5)], {"s:0:5": "a<b"}, auto={"s:0:5"})
    text = list(fig.data[-1].text)
    assert text == ["&lt;b&gt;", "<i>a&lt;b (auto)</i>", '"x"']
