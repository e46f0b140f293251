"""Every page of the app under Streamlit's AppTest, against a real embedded store holding the
planted corpus (no mocks): the numbers and rows shown are the ones the corpus was built with."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import planted as P
import pytest
from streamlit.testing.v1 import AppTest

APP_DIR = Path(__file__).resolve().parents[2] / "app"
PAGES = ["overview", "prompt_graph", "feature", "circuit_search", "compare_groups", "cypher_console", "intervene"]


def page(name: str) -> AppTest:
    return AppTest.from_file(str(APP_DIR / "pages" / f"{name}.py"), default_timeout=60)


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def keys_in(column: pd.Series) -> list[str]:
    """Feature keys out of a linked column (`./feature?key=...`)."""
    return [re.sub(r"^.*key=", "", v) for v in column.dropna()]


def test_entry_runs_the_overview_with_the_store_in_the_sidebar(store_url):
    at = ok(AppTest.from_file(str(APP_DIR / "pages" / "streamlit_app.py"), default_timeout=60).run())
    assert at.title[0].value == "Overview"
    assert any("15 prompts" in c.value for c in at.sidebar.caption)


@pytest.mark.parametrize("name", PAGES)
def test_empty_store_says_how_to_load_graphs(empty_store_url, name):
    at = ok(page(name).run())
    assert any("no store" in w.value for w in at.warning)
    assert any("circuit-atlas demo" in m.value and "circuit-atlas ingest" in m.value for m in at.markdown)


def test_unreachable_store_is_an_error(monkeypatch):
    monkeypatch.setenv("CIRCUIT_ATLAS_STORE", "bolt://127.0.0.1:1")
    at = ok(page("overview").run())
    assert any("Cannot open the store `bolt://127.0.0.1:1`" in e.value for e in at.error)


def test_overview_counts_the_corpus(store_url, planted):
    at = ok(page("overview").run())
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Prompts"] == str(len(planted.prompts)) == "15"
    assert metrics["Groups"] == "3"
    hubs = at.dataframe[0].value
    assert P.key("H") in keys_in(hubs["open"])  # the hub is active in every prompt
    flagged = at.dataframe[-1].value
    assert "hello world the" in " ".join(flagged["text"])  # untrusted0


def _chart(at: AppTest, i: int = 0) -> dict:
    import json

    return json.loads(at.get("plotly_chart")[i].proto.spec)


def _values(v) -> list:
    """A plotly JSON array: a list, or a typed array ({dtype, bdata: base64})."""
    import base64

    import numpy as np

    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"]).tolist()
    return list(v)


def _marker_points(spec: dict) -> list[tuple[float, float, str]]:
    return [(x, y, n) for t in spec["data"] if t.get("customdata") is not None
            for x, y, n in zip(_values(t["x"]), _values(t["y"]), _values(t["customdata"]))]


def test_prompt_graph_opens_pruned_with_labelled_nodes_and_a_card(writable_store_url, planted):
    """Pruned by the paper's thresholds; nodes, picker and card speak labels, not ids."""
    import json

    from circuit_atlas.store import open_store

    b_key = P.key("B")
    with open_store(writable_store_url) as s:
        s.set_feature_labels({b_key: "capital relay"})
        s.write_feature_info(pd.DataFrame([{"key": b_key, "scan": P.SCAN, "layer": 1, "index": 11, "frequency": 0.1,
                                            "max_activation": 2.0, "logit_effects": json.dumps({"promoted": [[" Paris", 0.5]], "suppressed": []}),
                                            "contexts": json.dumps([{"activation": 2.0, "left": "the capital_of ", "token": "Rome",
                                                                     "right": " is"}])}]))
    gid = planted.gid("cap0")
    g = __import__("circuit_atlas.engine.formats.graph_files", fromlist=["GraphFile"]).GraphFile.load(planted.root / "cap0")
    at = page("prompt_graph")
    at.query_params["prompt"] = gid
    ok(at.run())
    assert at.slider(key="pg_node_t").value == 0.8 and at.slider(key="pg_edge_t").value == 0.98
    shown = next(c.value for c in at.caption if " nodes, " in c.value)
    kept, total, kept_e, total_e = map(int, re.match(r"(\d+) of (\d+) nodes, (\d+) of (\d+) edges", shown).groups())
    assert total == len(g.nodes) and total_e == len(g.edges) and kept < total and kept_e < total_e
    options = at.multiselect(key="pg_inspect").options
    assert not [o for o in options if re.fullmatch(r"[\w-]+_-?\d+_\d+", o.split("  (")[0])], options  # no raw ids
    assert any(o.startswith("capital relay  (L1 @4 ' France' feature)") for o in options), options
    assert any(o.startswith(" Paris (70.0%)  (@5") for o in options), options
    assert any(o.startswith(" capital  (@2") for o in options), options  # the embedding: its token
    texts = [x for t in _chart(at)["data"] if t.get("text") for x in t["text"]]
    assert "capital relay" in texts and " Paris (70.0%)" in texts
    ok(at.multiselect(key="pg_inspect").select("1_11_4").run())
    title = [h.proto.body for h in at.get("html") if "pg-card-title" in h.proto.body]
    assert title and ">capital relay<" in title[0]
    ctx = [h.proto.body for h in at.get("html") if "pg-contexts" in h.proto.body]
    assert ctx and "the capital_of <mark style='background:#ffd54f'><b>Rome</b></mark> is" in ctx[0]
    assert any("promotes ' Paris' +0.5" in c.value for c in at.caption)
    assert any(f"feature?key={b_key}" in m.value for m in at.markdown)
    inputs, outputs = at.dataframe[0].value, at.dataframe[1].value  # the card's two tables
    assert P.key("A") in set(inputs["node"]) and "0_10_2" in set(inputs["node_id"])  # A feeds B, named by its key
    assert P.key("C") in set(outputs["node"])  # B feeds C
    assert list(inputs.columns[:3]) == ["node", "kind", "weight"]


def test_prompt_graph_error_nodes_shown_merged_per_layer_or_hidden(store_url, planted):
    at = page("prompt_graph")
    at.query_params["prompt"] = planted.gid("untrusted0")  # its error nodes carry most influence
    ok(at.run())
    options = at.multiselect(key="pg_inspect").options
    assert sum(o.startswith("err L") for o in options) == P.N_LAYERS  # one per layer, at the last position
    ok(at.selectbox(key="pg_errors").select("one per layer").run())
    errs = [o for o in at.multiselect(key="pg_inspect").options if o.startswith("err L")]
    assert sorted(o.split("  ")[0] for o in errs) == [f"err L{i}" for i in range(P.N_LAYERS)]
    assert "errors" in _chart(at)["layout"]["xaxis"]["ticktext"]  # their own column
    ok(at.selectbox(key="pg_errors").select("hide").run())
    assert not [o for o in at.multiselect(key="pg_inspect").options if o.startswith("err L")]


def test_prompt_graph_pins_lay_out_apart_and_save_a_supernode(writable_store_url, planted):
    gid = planted.gid("cap0")
    at = page("prompt_graph")
    at.query_params["prompt"] = gid
    ok(at.run())
    ok(at.slider(key="pg_node_t").set_value(1.0).run())
    pins = ["1_11_4", "0_10_2", "1_40_5", "1_41_5", "2_12_5"]  # S1, S2 and C share (position 5, layers 1-2)
    ok(at.multiselect(key="pg_inspect").set_value(pins).run())
    ok(at.button(key="pg_pin").click().run())
    assert any("Pinned: " + ", ".join(f"`{n}`" for n in pins) in m.value for m in at.markdown)
    points = _marker_points(_chart(at, 1))
    assert sorted(n for _, _, n in points) == sorted(pins)
    xy = [(x, y) for x, y, _ in points]
    assert all(abs(a[0] - b[0]) >= 1 or a[1] != b[1] for i, a in enumerate(xy) for b in xy[i + 1:]), xy  # none on another
    at.text_input(key="pg_sn_name").input("capital chain start")
    ok(at.button[-1].click().run())
    assert any("Saved supernode 'capital chain start' (5 nodes, 5 features)" in s.value for s in at.success)
    from circuit_atlas.store import open_store

    with open_store(writable_store_url, read_only=True) as store:
        rows = store.read("MATCH (s:Supernode {label: 'capital chain start'})-[:CONTAINS]->(f:Feature) "
                          "RETURN s.prompt_id AS pid, f.key AS key")
    assert set(rows["key"]) == {P.key(n) for n in ("A", "B", "C", "S1", "S2")} and set(rows["pid"]) == {gid}


def test_prompt_graph_thresholds_and_supernodes_as_groups_or_merged(store_url, planted):
    at = page("prompt_graph")
    at.query_params["prompt"] = planted.gid("cap1")
    ok(at.run())
    ok(at.slider(key="pg_node_t").set_value(0.5).run())
    shown = next(c.value for c in at.caption if " nodes, " in c.value)
    kept, total = map(int, re.match(r"(\d+) of (\d+) nodes", shown).groups())
    assert kept < total
    collapse = at.multiselect(key="pg_collapse")
    assert "capital chain" in collapse.options
    at.button(key="pg_val_sn_run")  # the supernode's one-click validation is offered, with its members
    members = next(c.value for c in at.caption if c.value.startswith("2 features: "))
    assert sorted(members[len("2 features: "):].replace("`", "").split(", ")) == [P.key("A"), P.key("B")]
    ok(at.slider(key="pg_node_t").set_value(1.0).run())
    ok(at.slider(key="pg_edge_t").set_value(1.0).run())
    ok(at.multiselect(key="pg_collapse").select(f"{P.SCAN}:user:capital-chain").run())
    spec = _chart(at)
    assert [a["text"] for a in spec["layout"].get("annotations", [])] == ["capital chain"]  # a labelled box
    box = spec["layout"]["shapes"][0]
    members = {n: (x, y) for x, y, n in _marker_points(spec) if n in ("0_10_2", "1_11_4")}
    assert len(members) == 2 and all(box["x0"] < x < box["x1"] and box["y0"] < y < box["y1"] for x, y in members.values())
    shown = next(c.value for c in at.caption if " nodes, " in c.value)
    kept1, total1 = map(int, re.match(r"(\d+) of (\d+) nodes", shown).groups())
    assert kept1 == total1
    ok(at.checkbox(key="pg_merge").check().run())
    shown = next(c.value for c in at.caption if " nodes, " in c.value)
    kept2, total2 = map(int, re.match(r"(\d+) of (\d+) nodes", shown).groups())
    assert kept2 == total2 - 1  # A and B became one supernode


def test_feature_page_profiles_and_relabels(writable_store_url, planted):
    key = P.key("C")
    at = page("feature")
    at.query_params["key"] = key
    ok(at.run())
    assert at.header[0].value == key
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Prompts where active"] == str(len(planted.capitals)) == "7"
    frames = [d.value for d in at.dataframe]
    at_occ = next(i for i, f in enumerate(frames) if "pos" in f.columns)
    occurrences, upstream = frames[at_occ], frames[at_occ + 1]  # upstream partners: the table after it
    assert len(occurrences) == 7 and set(occurrences["token"]) == {" is"}
    assert {P.key(n) for n in ("A", "B", "S1", "S2")} <= set(upstream["key"])
    assert any(c.value.startswith("None") for c in at.caption)  # C feeds no feature downstream
    html_blocks = [h.proto.body for h in at.get("html")]
    assert any("<mark" in b and "capital of France" in b for b in html_blocks)
    at.text_input(key=f"ft_label_{key}").input("says Paris")
    ok(at.button[0].click().run())
    assert any(f"Label of {key} saved: 'says Paris'" in s.value for s in at.success)
    ok(at.text_input(key="ft_search").input("says Par").run())
    assert at.header[0].value == key


def test_feature_contexts_are_escaped_text_with_whitespace_tokens_visible(writable_store_url, planted):
    """Corpus text full of Markdown (backticks, underscores, asterisks, HTML) is shown as it is, the
    active token highlighted, a whitespace-only token as visible marks; search finds a feature by
    the text of its contexts and by the token it fires on in the stored prompts."""
    import json

    import pandas as pd

    from circuit_atlas.store import open_store

    key = P.key("D")
    contexts = [{"activation": 2.5, "left": "see `code_span` and *stars* <b>x</b> __init__", "token": " ",
                 "right": "then_more_text"},
                {"activation": 1.5, "left": "zebra crossing", "token": "\n", "right": " next line"}]
    layer, index = int(key.split(":")[1]), int(key.split(":")[2])
    with open_store(writable_store_url) as s:
        s.write_feature_info(pd.DataFrame([{"key": key, "scan": P.SCAN, "layer": layer, "index": index, "frequency": 0.1,
                                            "max_activation": 2.5, "contexts": json.dumps(contexts), "logit_effects": None}]))
    at = page("feature")
    at.query_params["key"] = key
    ok(at.run())
    body = next(h.proto.body for h in at.get("html") if "ft-contexts" in h.proto.body)
    assert "see `code_span` and *stars* &lt;b&gt;x&lt;/b&gt; __init__" in body  # literal, escaped, no Markdown
    assert "<mark style='background:#ffd54f'><b>\u2423</b></mark>then_more_text" in body  # the space token, visible
    assert "<b>\u21b5</b>" in body  # the newline token, visible
    assert not any("code_span" in m.value for m in at.markdown)  # nothing went through Markdown
    ok(at.text_input(key="ft_search").input("ZEBRA cross").run())  # context text, any case
    assert at.selectbox(key="ft_pick_ZEBRA cross").options[0].startswith(key)
    ok(at.text_input(key="ft_search").input("capital").run())  # features active on ' capital' in the prompts
    options = [o.split(" ")[0] for o in at.selectbox(key="ft_pick_capital").options]
    assert options[0] == P.key("A")  # the planted feature that reads ' capital' in every capitals prompt


def test_circuit_search_finds_the_planted_circuits(store_url, planted):
    at = ok(page("circuit_search").run())
    assert any("press Run" in i.value for i in at.info)
    at.number_input(key="cs_recurring_edges_min_prompts").set_value(3)
    ok(at.button[0].click().run())
    df = at.dataframe[0].value
    found = set(zip(keys_in(df["source_key"]), keys_in(df["target_key"])))
    assert found == set(planted.recurring_edges(3))
    assert len(at.get("plotly_chart")) == 1
    ok(at.selectbox(key="cs_query").select("prompts_with_circuit").run())
    at.text_input(key="cs_prompts_with_circuit_keys").input(",".join(P.key(n) for n in "ABC"))
    at.number_input(key="cs_prompts_with_circuit_min_coverage").set_value(1.0)
    ok(at.button[0].click().run())
    df = at.dataframe[0].value
    assert {re.sub(r"^.*prompt=", "", v) for v in df["prompt_id"]} == planted.ids(planted.capitals)


def test_compare_groups_ranks_each_sides_features(store_url):
    at = ok(page("compare_groups").run())
    ok(at.selectbox(key="cg_b_group").select("opposites").run())
    side_a, side_b = at.dataframe[0].value, at.dataframe[1].value
    assert {P.key(n) for n in ("A", "B", "C")} <= set(keys_in(side_a["source_key"]))
    assert {P.key(n) for n in ("D", "E")} <= set(keys_in(side_b["source_key"]))
    assert (side_a["log_odds"] > 0).all() and (side_b["log_odds"] < 0).all()
    keys = keys_in(side_a["source_key"])
    if P.key("H") in keys:  # in every prompt: at most a size effect, below every planted capital feature
        odds = dict(zip(keys, side_a["log_odds"]))
        assert odds[P.key("H")] < min(odds[P.key(n)] for n in ("A", "B", "C"))


def test_compare_groups_side_b_is_not_cut_by_side_as_rows(store_url):
    """Against every other prompt, with fewer rows per side than A has, B's table still lists the
    opposites' features, and its count columns are A's and B's counts (not swapped)."""
    at = ok(page("compare_groups").run())
    ok(at.number_input(key="cg_limit").set_value(5).run())
    side_a, side_b = at.dataframe[0].value, at.dataframe[1].value
    assert {P.key(n) for n in ("A", "B", "C")} <= set(keys_in(side_a["source_key"]))
    assert {P.key(n) for n in ("D", "E")} <= set(keys_in(side_b["source_key"]))
    assert (side_b["log_odds"] < 0).all()
    rows = dict(zip(keys_in(side_b["source_key"]), zip(side_b["count_a"], side_b["count_b"])))
    assert rows[P.key("D")] == (0, 6) and rows[P.key("E")] == (0, 6)  # 0 capitals, 6 of the 8 others
    ok(at.selectbox(key="cg_b_group").select("opposites").run())
    side_b = at.dataframe[1].value
    rows = dict(zip(keys_in(side_b["source_key"]), zip(side_b["count_a"], side_b["count_b"])))
    assert rows[P.key("D")] == (0, 6) and rows[P.key("E")] == (0, 6)  # 0 capitals, 6 opposites


def test_cypher_console_reads_and_refuses_writes(store_url):
    at = ok(page("cypher_console").run())
    at.text_area(key="cc_text").input("MATCH (p:Prompt) RETURN p.id AS id, p.prompt_group AS grp")
    ok(at.button(key="cc_run").click().run())
    assert any(m.value == "**15 rows**" for m in at.markdown)
    assert at.dataframe[0].value.shape == (15, 2)
    assert at.get("download_button")
    for statement in ("CREATE (n)", "MATCH (p:Prompt) SET p.text = 'x' RETURN p", "MATCH (n) DETACH DELETE n"):
        at.text_area(key="cc_text").input(statement)
        ok(at.button(key="cc_run").click().run())
        assert any(e.value.startswith("Refused: the console is read-only.") for e in at.error), statement
    at.text_area(key="cc_text").input("MATCH (p:Prompt) RETURN count(p) AS n")
    ok(at.button(key="cc_run").click().run())
    assert int(at.dataframe[0].value["n"].iloc[0]) == 15  # nothing was written
    for name in ("hubs", "recurring_edges", "recurring_paths", "motifs"):  # examples run as shown, let_ values included
        ok(at.selectbox(key="cc_example").select(f"library: {name}").run())
        assert "MATCH" in at.text_area(key="cc_text").value and "min_prompts" in at.text_input(key="cc_params").value
        ok(at.button(key="cc_run").click().run())
        assert not at.error, (name, [e.value for e in at.error])
        assert len(at.dataframe[0].value) > 0, name


def test_intervene_without_engine_or_model_says_what_it_needs(store_url, monkeypatch):
    monkeypatch.delenv("CIRCUIT_ATLAS_MODEL", raising=False)
    monkeypatch.delenv("CIRCUIT_ATLAS_TRANSCODERS", raising=False)
    at = ok(page("intervene").run())
    assert any(i.value.startswith("Intervene needs the model and transcoders on this machine.") for i in at.info)


def test_intervene_runs_on_a_tiny_model(store_url, planted):
    pytest.importorskip("circuit_atlas.engine.interventions.ablation", reason="engine.interventions.ablation not in the tree yet")
    models = pytest.importorskip("circuit_atlas.engine.models.loading", reason="engine.models.loading not in the tree yet")
    from circuit_atlas.engine.transcoders.transcoder_set import random_transcoders

    at = page("intervene")
    at.session_state["intervene_lm"] = models.tiny_model("llama", n_layers=2, d_model=32, vocab_size=97, seed=0)
    at.session_state["intervene_tc"] = random_transcoders(2, 32, 64, seed=0)
    at.query_params["prompt"] = planted.gid("cap0")
    ok(at.run())
    at.text_input(key="iv_manual").input("0:2:3, 1:4:5")
    at.selectbox(key="iv_mode").select("clamp")
    ok(at.run())
    at.number_input(key="iv_value_clamp").set_value(25.0)
    ok(at.button(key="iv_run").click().run())
    assert not at.error, [e.value for e in at.error]
    before, after = at.dataframe[0].value, at.dataframe[1].value
    assert list(before.columns[:4]) == ["token", "token_id", "prob", "logit"] and len(before) == 10
    assert float(at.metric[0].value) > 0
    assert not before["prob"].equals(after["prob"])


def test_prompt_graph_first_render_of_a_50k_edge_graph_is_pruned_and_timed(tmp_path, monkeypatch):
    """A 50k-edge prompt opens pruned (the main lever on render time); the times are printed,
    never asserted: first run (store read, prune, figure) and a second, cached run."""
    import json
    import time

    from circuit_atlas.store import open_store

    dirs = P.build_scaled_corpus(tmp_path / "graphs", 1, 50_000)
    url = f"embedded:{tmp_path / 'db'}"
    with open_store(url) as store:
        store.write_graphs(dirs)
    monkeypatch.setenv("CIRCUIT_ATLAS_STORE", url)
    times = {}
    for run in ("first", "cached"):
        at = page("prompt_graph")
        started = time.perf_counter()
        ok(at.run())
        times[run] = {"script_s": round(time.perf_counter() - started, 3),
                      "query_prune_draw_s": round(at.session_state["_pg_render_s"], 3)}
    shown = next(c.value for c in at.caption if " nodes, " in c.value)
    kept_e, total_e = map(int, re.search(r"(\d+) of (\d+) edges", shown).groups())
    assert total_e >= 50_000 and kept_e < total_e / 2
    print(json.dumps({"prompt_graph_50k_edges": times, "edges_shown": kept_e, "edges": total_e}))


def _tiny(at: AppTest) -> None:
    """A tiny random model and transcoders of the planted scan, handed over as the Intervene page's are."""
    models = pytest.importorskip("circuit_atlas.engine.models.loading")
    from circuit_atlas.engine.transcoders.transcoder_set import random_transcoders

    at.session_state["intervene_lm"] = models.tiny_model("llama", n_layers=P.N_LAYERS, d_model=32, vocab_size=97, seed=0)
    at.session_state["intervene_tc"] = random_transcoders(P.N_LAYERS, 32, 64, seed=0, scan=P.SCAN)


def _expected_validation(at: AppTest, keys: list[str], group: str, controls: int) -> pd.DataFrame:
    """The CLI's table for the same request, from the library (what `validate-circuit` prints)."""
    from circuit_atlas.app import data
    from circuit_atlas.engine.cli.intervene import validation_table
    from circuit_atlas.engine.interventions.ablation import prompts_from_store, validate_circuit

    prompts = prompts_from_store(data.get_store(), group)  # the app's own reader, already open in this process
    res = validate_circuit(at.session_state["intervene_lm"], at.session_state["intervene_tc"], prompts, keys,
                           controls=controls, seed=0)
    return validation_table(res, len(keys))


def test_prompt_graph_validates_pinned_features_in_one_click(store_url, planted):
    at = page("prompt_graph")
    at.query_params["prompt"] = planted.gid("cap0")
    ok(at.run())
    ok(at.multiselect(key="pg_inspect").set_value(["0_10_2", "1_11_4"]).run())
    ok(at.button(key="pg_pin").click().run())
    _tiny(at)  # handed over only now: every AppTest run copies the session state
    assert at.selectbox(key="pg_val_pins_group").value == "capitals"  # the prompt's own group
    at.selectbox(key="pg_val_pins_group").select("misc")  # 2 prompts: keeps the test short
    at.number_input(key="pg_val_pins_controls").set_value(2)
    ok(at.button(key="pg_val_pins_run").click().run())
    assert not at.error, [e.value for e in at.error]
    table = at.dataframe[-1].value
    want = _expected_validation(at, [P.key("A"), P.key("B")], "misc", 2)
    assert list(table.columns) == ["prompt", "expected", "p clean", "p after", "Δp", "controls Δp", "sd", "p-value", "active"]
    assert len(table) == 2
    pd.testing.assert_frame_equal(table.reset_index(drop=True), want, check_dtype=False)
    assert any(c.value.startswith("2 prompts · mean Δp") for c in at.caption)


def test_circuit_search_row_validates_and_says_when_no_model(store_url, planted, monkeypatch):
    monkeypatch.delenv("CIRCUIT_ATLAS_MODEL", raising=False)
    monkeypatch.delenv("CIRCUIT_ATLAS_TRANSCODERS", raising=False)
    at = ok(page("circuit_search").run())
    at.number_input(key="cs_recurring_edges_min_prompts").set_value(3)
    ok(at.button[0].click().run())
    sets = at.selectbox(key="cs_val_recurring_edges_set").options
    assert sets and all(o.startswith("row ") and " → " in o for o in sets)
    # each row defaults to its own prompts' group ("opposites" sorts after "capitals" and "misc")
    opposite = next(o for o in sets if P.key("D") in o and P.key("E") in o)
    ok(at.selectbox(key="cs_val_recurring_edges_set").select(opposite).run())
    assert at.selectbox(key=f"cs_val_recurring_edges_group_{opposite}").value == "opposites"
    ok(at.selectbox(key="cs_val_recurring_edges_set").select(sets[0]).run())
    ok(at.button(key="cs_val_recurring_edges_run").click().run())
    assert any("Validation needs the model and transcoders on this machine: no model and transcoders are configured"
               in e.value for e in at.error)
    _tiny(at)
    first = at.selectbox(key="cs_val_recurring_edges_set").value
    keys = first.split(": ", 1)[1].split(" → ")
    at.selectbox(key=f"cs_val_recurring_edges_group_{first}").select("misc")
    at.number_input(key="cs_val_recurring_edges_controls").set_value(1)
    ok(at.button(key="cs_val_recurring_edges_run").click().run())
    assert not at.error, [e.value for e in at.error]
    pd.testing.assert_frame_equal(at.dataframe[-1].value.reset_index(drop=True),
                                  _expected_validation(at, keys, "misc", 1), check_dtype=False)


def test_pages_read_the_model_that_the_app_command_sets(store_url, tmp_path, monkeypatch):
    """`circuit-atlas app --model M --transcoders T` sets these; Intervene and the prompt graph's
    head loadings both try them (one loader, app/models.py) and say why they could not load."""
    from circuit_atlas.app.cli import app_environment

    env = app_environment(store_url, str(tmp_path / "no-model"), str(tmp_path / "no-tc"))
    for name in ("CIRCUIT_ATLAS_MODEL", "CIRCUIT_ATLAS_TRANSCODERS"):
        monkeypatch.setenv(name, env[name])
    at = ok(page("intervene").run())
    assert any(f"could not load model `{tmp_path / 'no-model'}`" in i.value for i in at.info), [i.value for i in at.info]


def test_prompt_graph_head_loadings_still_split_an_edge_of_the_card(store_url, planted):
    """The card's neighbour: an edge of the inspected node split across one layer's heads."""
    at = page("prompt_graph")
    _tiny(at)
    at.query_params["prompt"] = planted.gid("cap0")
    ok(at.run())
    ok(at.multiselect(key="pg_inspect").select("2_12_5").run())  # C: fed by A (layer 0) and B (layer 1)
    edge = next(o for o in at.selectbox(key="pg_hl_edge").options if o.startswith("0_10_2 -> 2_12_5"))
    ok(at.selectbox(key="pg_hl_edge").select(edge.split(" (")[0]).run())
    ok(at.button(key="pg_hl_run").click().run())
    assert not at.error, [e.value for e in at.error]
    caption = next(c.value for c in at.caption if c.value.startswith("Parts sum to"))
    parts, recomputed = (float(x) for x in re.findall(r"Parts sum to ([-+\d.e]+); the edge recomputed ([-+\d.e]+)", caption)[0])
    assert abs(parts - recomputed) <= 1e-4 * max(1.0, abs(recomputed))


def _auto_labelled(url: str, name: str, auto: str, contexts: list[dict], effects: dict) -> str:
    """Store evidence and an automatic label for a planted feature, as `circuit-atlas features` does."""
    import json

    from circuit_atlas.store import open_store

    key = P.key(name)
    layer, index = int(key.split(":")[1]), int(key.split(":")[2])
    with open_store(url) as s:
        s.write_feature_info(pd.DataFrame([{"key": key, "scan": P.SCAN, "layer": layer, "index": index, "frequency": 0.1,
                                            "max_activation": 2.0, "contexts": json.dumps(contexts),
                                            "logit_effects": json.dumps(effects), "auto_label": auto}]))
    return key


def _evidence() -> tuple[str, list[dict], dict]:
    """Contexts and logit effects, and the label the rule reads from them."""
    from circuit_atlas.ingest.autolabel import auto_label

    contexts = [{"activation": 2.0 - i / 10, "left": "the capital of ", "token": t, "right": " is", "prev": " of"}
                for i, t in enumerate([" France", " France", " Italy", " France", " Spain", " Italy"])]
    effects = {"promoted": [[" Paris", 9.0], [" Rome", 8.5], [" the", 1.0]], "suppressed": [], "std": 1.0, "vocab": 1000}
    return auto_label(contexts, effects).text, contexts, effects


def test_automatic_labels_are_marked_on_the_prompt_graph_and_in_query_results(writable_store_url, planted):
    label, contexts, effects = _evidence()
    assert label == "France, Italy, Spain → Paris, Rome"
    key = _auto_labelled(writable_store_url, "B", label, contexts, effects)
    at = page("prompt_graph")
    at.query_params["prompt"] = planted.gid("cap0")
    ok(at.run())
    texts = [x for t in _chart(at)["data"] if t.get("text") for x in t["text"]]
    assert f"<i>{label[:17]}…</i>" in texts, [t for t in texts if "<i>" in t]  # italic on the drawing (cut to the drawing's 18 characters)
    options = at.multiselect(key="pg_inspect").options
    assert any(o.startswith(label + " (auto)  (L1 @4") for o in options), options
    from circuit_atlas.app import data

    frame = data.query("prompt_subgraph", {"prompt_id": planted.gid("cap0")})
    row = frame[frame["feature_key"] == key].iloc[0]
    assert (row["label"], row["label_source"]) == (label, "auto")
    assert frame.loc[frame["kind"] == "embedding", "label_source"].isna().all()  # a token is no feature label
    edges = data.query("recurring_edges", {"min_prompts": 2, "limit": 50})
    hit = edges[edges["source_key"] == key]
    assert len(hit) and set(hit["source_label_source"]) == {"auto"}


def test_feature_page_shows_the_automatic_label_and_a_users_label_wins(writable_store_url, planted):
    label, contexts, effects = _evidence()
    key = _auto_labelled(writable_store_url, "C", label, contexts, effects)
    at = page("feature")
    at.query_params["key"] = key
    ok(at.run())
    captions = [c.value for c in at.caption]
    assert f"label: {label} — automatic, from this feature's evidence" in captions
    assert any(c.startswith("why: fires on 100% of contexts shown, top logit z=") for c in captions), captions
    box = at.text_input(key=f"ft_label_{key}")
    assert box.value == "" and box.placeholder == f"automatic: {label}"  # saving as-is never freezes the automatic one
    box.input("says Paris")
    ok(at.button[0].click().run())
    captions = [c.value for c in at.caption]
    assert "label: says Paris — yours (saved here)" in captions
    assert any(c.startswith(f"automatic label: {label} (fires on") for c in captions), captions
    at.text_input(key=f"ft_label_{key}").input("")
    ok(at.button[0].click().run())
    assert any(f"Label of {key} cleared: the automatic label shows" in s.value for s in at.success)
    assert f"label: {label} — automatic, from this feature's evidence" in [c.value for c in at.caption]


def test_compare_groups_can_compare_activations(store_url):
    """Compare: activation ranks features by their activations (0 where inactive) with an effect
    size, a p-value and the shared-prefix share, not by survival of pruning."""
    at = ok(page("compare_groups").run())
    ok(at.radio(key="cg_measure").set_value("activation").run())
    side_a = at.dataframe[0].value
    assert {"specific_effect", "p_value", "shared_prefix"} <= set(side_a.columns), list(side_a.columns)
    assert len(side_a) and (side_a["specific_effect"] > 0).all()
    assert {P.key(n) for n in ("A", "B", "C")} <= set(keys_in(side_a["source_key"]))


def test_circuit_search_marks_automatic_labels_in_its_figure(writable_store_url, planted):
    label, contexts, effects = _evidence()
    key = _auto_labelled(writable_store_url, "A", label, contexts, effects)
    at = ok(page("circuit_search").run())
    at.number_input(key="cs_recurring_edges_min_prompts").set_value(3)
    ok(at.button[0].click().run())
    texts = [x for t in _chart(at)["data"] if t.get("text") for x in t["text"]]
    assert f"<i>{label} (auto)</i>" in texts, texts
