"""Entry of the Streamlit app (`circuit-atlas app` runs this file): navigation over the pages
and a sidebar naming the store being read.

It lives beside the pages, not above them: Streamlit treats a ``pages/`` folder next to the
entry script as an old-style multipage app and would ignore ``st.navigation``."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from circuit_atlas.app import data

HERE = Path(__file__).resolve().parent
PAGES = [  # (file, title, url path, icon)
    ("overview.py", "Overview", "overview", ":material/dashboard:"),
    ("prompt_graph.py", "Prompt graph", "prompt_graph", ":material/account_tree:"),
    ("feature.py", "Feature", "feature", ":material/lightbulb:"),
    ("circuit_search.py", "Circuit search", "circuit_search", ":material/search:"),
    ("compare_groups.py", "Compare groups", "compare_groups", ":material/compare_arrows:"),
    ("cypher_console.py", "Cypher console", "cypher_console", ":material/terminal:"),
    ("intervene.py", "Intervene", "intervene", ":material/tune:"),
]

st.set_page_config(page_title="circuit-atlas", page_icon=":material/hub:", layout="wide")
nav = st.navigation([
    st.Page(HERE / f, title=t, url_path=u, icon=i, default=(k == 0)) for k, (f, t, u, i) in enumerate(PAGES)
])
with st.sidebar:
    st.caption("circuit-atlas")
    st.code(data.store_url(), language=None)
    try:
        s = data.stats()
        st.caption(f"{s.get('Prompt', 0)} prompts · {s.get('Feature', 0)} features · {s.get('EDGE', 0)} edges")
    except data.NoData:
        st.caption("store not available")
    except Exception as exc:  # a broken store must not hide the pages' own messages
        st.caption(f"store error: {exc}")
nav.run()
