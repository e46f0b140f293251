"""Markdown reference of the query library, generated from the .cypher headers, so the docs' query
reference (docs/reference/queries.md, between ``<!-- queries:start -->`` and ``<!-- queries:end -->``)
never drifts from the files: ``python -m circuit_atlas.queries.docgen`` prints it, ``--write
docs/reference/queries.md`` (the default page, relative to the repository) replaces that section
in place; tests/docs/test_query_reference.py checks that the page is current."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from circuit_atlas.queries.runner import column_docs, list_queries

START = "<!-- queries:start -->"
PAGE = Path("docs/reference/queries.md")
END = "<!-- queries:end -->"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def reference_markdown(level: int = 2) -> str:
    """One section per query: description, LINKS dependence, notes, parameters, columns, examples."""
    out: list[str] = []
    for q in list_queries():
        out.append(f"{'#' * level} `{q.name}`\n\n{q.description}\n")
        if "derived" in q.needs or q.uses_links:
            out.append("*Needs the derived layer (LINKS, the recurring features and subgraph), which every write keeps "
                       "fresh; on a store where it is stale (a write was interrupted) the query refuses and says to run "
                       "`circuit-atlas store rebuild-links`.*\n")
        if q.notes:
            out.append(q.notes + "\n")
        out.append("| parameter | type | default | meaning |\n|---|---|---|---|")
        for p in q.params.values():
            default = "*required*" if p.required else f"`{json.dumps(p.default)}`"
            least = "" if p.min is None else f" (at least {p.min:g})"
            out.append(f"| `{p.name}` | {p.type} | {default} | {_cell(p.help + least)} |")
        out.append("\n| column | meaning |\n|---|---|")
        for col, doc in column_docs(q).items():
            out.append(f"| `{col}` | {_cell(doc)} |")
        if q.examples:
            out.append("\n```bash\n" + "\n".join(q.examples) + "\n```")
        out.append("")
    return "\n".join(out)


def readme_section(text: str) -> str:
    """The text between the markers (stripped); ValueError when they are missing."""
    if START not in text or END not in text:
        raise ValueError(f"no {START} ... {END} section")
    return text.split(START, 1)[1].split(END, 1)[0].strip()


def replace_section(text: str, reference: str) -> str:
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    return f"{head}{START}\n\n{reference.strip()}\n\n{END}{tail}"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--write", type=Path, nargs="?", const=PAGE, metavar="PAGE",
                    help=f"replace the marked section of this file (default {PAGE})")
    args = ap.parse_args()
    if args.write:
        try:
            text = args.write.read_text()
            args.write.write_text(replace_section(text, reference_markdown()))
        except (OSError, ValueError) as err:
            print(f"error: {args.write}: {err}", file=sys.stderr)
            sys.exit(2)
        print(f"wrote the query reference into {args.write}")
    else:
        print(reference_markdown())
