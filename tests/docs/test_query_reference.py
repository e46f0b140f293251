"""The docs' query reference (docs/reference/queries.md) is the one generated from the .cypher
headers, and the command that refreshes it works."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from circuit_atlas.queries.docgen import readme_section, reference_markdown
from circuit_atlas.queries.runner import list_queries

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "reference" / "queries.md"
REFRESH = "python -m circuit_atlas.queries.docgen --write docs/reference/queries.md"


def test_query_reference_page_matches_the_library() -> None:
    assert readme_section(PAGE.read_text()) == reference_markdown().strip(), (
        f"docs/reference/queries.md is stale: run `{REFRESH}`"
    )


def test_every_query_has_a_section() -> None:
    text = PAGE.read_text()
    missing = [q.name for q in list_queries() if f"## `{q.name}`" not in text]
    assert not missing, f"no section for {missing}: run `{REFRESH}`"


def test_the_refresh_command_rewrites_a_stale_page(tmp_path) -> None:
    page = tmp_path / "queries.md"
    shutil.copy(PAGE, page)
    stale = page.read_text().replace("## `contrastive`", "## `contrastive (stale)`")
    page.write_text(stale)
    proc = subprocess.run([sys.executable, "-m", "circuit_atlas.queries.docgen", "--write", str(page)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert page.read_text() == PAGE.read_text() or readme_section(page.read_text()) == reference_markdown().strip()
    assert "(stale)" not in page.read_text()


def test_the_refresh_command_refuses_a_page_without_markers(tmp_path) -> None:
    page = tmp_path / "plain.md"
    page.write_text("# no markers here\n")
    proc = subprocess.run([sys.executable, "-m", "circuit_atlas.queries.docgen", "--write", str(page)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and len(proc.stderr.strip().splitlines()) == 1
    assert page.read_text() == "# no markers here\n"
