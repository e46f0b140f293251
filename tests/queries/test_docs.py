"""The README's query reference is the one generated from the .cypher headers."""

from __future__ import annotations

from pathlib import Path

from circuit_atlas.queries.docgen import readme_section, reference_markdown

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_query_docs_match_the_library() -> None:
    assert readme_section(README.read_text()) == reference_markdown().strip(), (
        "README.md's query reference is stale: run `python -m circuit_atlas.queries.docgen --write README.md`"
    )
