"""Cypher console: ad-hoc read-only Cypher with the saved queries as examples; anything but one
pure read is refused (by the guard of `circuit-atlas cypher`, store/cypher_guard.py, and the
store's `read` checks again); results as a table with CSV download."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from circuit_atlas.app import data
from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.queries.cli import checked_value
from circuit_atlas.queries.runner import backend_of, let_values, list_queries, load_query
from circuit_atlas.store import ReadOnlyViolation, cypher_guard

STARTERS = {
    "Prompts": "MATCH (p:Prompt)\nRETURN p.id AS id, p.text AS text, p.prompt_group AS grp, p.replacement_score AS score\nLIMIT 25",
    "Most active features": "MATCH (f:Feature)<-[:OF]-(a:Active)\nRETURN f.key AS key, f.label AS label, count(*) AS n\n"
                            "ORDER BY n DESC\nLIMIT 25",
    "Strongest edges of a prompt": "MATCH (p:Prompt)-[:HAS]->(s)-[e:EDGE]->(t)\nWHERE p.id = $prompt_id\n"
                                   "RETURN s.node_id AS source, t.node_id AS target, e.weight AS weight\n"
                                   "ORDER BY abs(e.weight) DESC\nLIMIT 25",
}
REFUSED = "Refused: the console is read-only."


def _csv(df: pd.DataFrame) -> bytes:
    """CSV with lists and maps written as JSON (as `circuit-atlas cypher --format csv` does)."""
    flat = df.copy()
    for c in flat.columns:
        if flat[c].dtype == object:
            flat[c] = flat[c].map(lambda v: json.dumps(v.tolist() if hasattr(v, "tolist") else v, default=str)
                                  if isinstance(v, (list, tuple, dict)) or hasattr(v, "tolist") else v)
    return flat.to_csv(index=False).encode()


def _examples(backend: str, prompt_id: str) -> dict[str, tuple[str, dict]]:
    """Example name -> (Cypher, parameters): starters, then each library query's main part (its
    first part that is not a let_ helper and runs with the defaults) with its default parameters."""
    out = {name: (text, {"prompt_id": prompt_id} if "$prompt_id" in text else {}) for name, text in STARTERS.items()}
    for q in list_queries():
        params = {p.name: (p.default if not p.required else "") for p in q.params.values()}
        if "prompt_id" in params:
            params["prompt_id"] = prompt_id
        main = next((p for p in q.parts if not p.startswith("let_") and q.runs(p, params)), next(iter(q.parts)))
        out[f"library: {q.name}"] = (q.cypher_for(backend, main), params)
    return out


def _load_example(examples: dict[str, tuple[str, dict]]) -> None:
    name = st.session_state["cc_example"]
    text, params = examples[name]
    if name.startswith("library: "):
        # a library query's main part may use values its let_ parts compute (cut-offs): run
        # those now, so the example runs as shown
        try:
            params = let_values(data.get_store(), load_query(name.removeprefix("library: ")), dict(params)) or params
        except CircuitAtlasError:  # an example that cannot be prepared still loads
            pass
    st.session_state["cc_text"] = text
    st.session_state["cc_params"] = json.dumps(params, default=str)


def main() -> None:
    st.title("Cypher console")
    st.caption("Read-only: one statement of MATCH, OPTIONAL MATCH, WHERE, WITH, UNWIND, RETURN, ORDER BY, SKIP, "
               "LIMIT and UNION with pure functions; anything else (writes, CALL, LOAD, COPY, several statements, "
               "...) is refused. Labels and supernodes are edited on the Feature and Prompt graph pages.")
    store = data.get_store()
    prompts = data.prompts()
    first = str(prompts["prompt_id"].iloc[0]) if len(prompts) else ""
    examples = _examples(backend_of(store), first)
    st.selectbox("Example", list(examples), key="cc_example", on_change=_load_example, args=(examples,))
    if "cc_text" not in st.session_state:
        _load_example(examples)
    statement = st.text_area("Cypher", key="cc_text", height=220)
    params_text = st.text_input("Parameters (JSON object, used as $name)", key="cc_params")
    if not st.button("Run", key="cc_run", type="primary"):
        return
    refused = cypher_guard.refusal(statement)
    if refused is not None:  # before the parameters: a refused statement never reaches the store
        st.error(f"{REFUSED} {refused}")
        return
    try:
        params = json.loads(params_text or "{}")
        if not isinstance(params, dict):
            raise ValueError("not an object")
        params = {k: checked_value(k, v) for k, v in params.items()}
    except (ValueError, RecursionError) as exc:
        st.error(f"Parameters must be a JSON object, e.g. {{\"prompt_id\": \"...\"}} ({exc})")
        return
    try:
        df = store.read(cypher_guard.without_terminator(statement), params)
    except ReadOnlyViolation as exc:
        st.error(f"{REFUSED} {exc}")
        return
    except CircuitAtlasError as exc:
        st.error(f"The store rejected the statement: {exc}")
        return
    except Exception as exc:  # driver errors (syntax, unknown labels) are the user's to read
        st.error(f"Query failed: {exc}")
        return
    st.markdown(f"**{len(df)} rows**")
    st.dataframe(df, hide_index=True, key="cc_result")
    st.download_button("Download CSV", _csv(df), file_name="result.csv", mime="text/csv", key="cc_csv")


try:
    main()
except data.NoData as exc:
    data.empty_state(exc)
