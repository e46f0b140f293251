"""Markdown reference of the query library, generated from the .cypher headers, so
docs/queries.md never drifts from the files: ``python -m circuit_atlas.queries.docgen``."""

from __future__ import annotations

import json

from circuit_atlas.queries.runner import column_docs, list_queries


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def reference_markdown() -> str:
    """One section per query: description, LINKS dependence, notes, parameters, columns, examples."""
    out: list[str] = []
    for q in list_queries():
        out.append(f"### `{q.name}`\n\n{q.description}\n")
        if q.uses_links:
            out.append("*Depends on the derived LINKS layer being fresh (rebuilt after every ingest).*\n")
        if q.notes:
            out.append(q.notes + "\n")
        out.append("| parameter | type | default | meaning |\n|---|---|---|---|")
        for p in q.params.values():
            default = "*required*" if p.required else f"`{json.dumps(p.default)}`"
            out.append(f"| `{p.name}` | {p.type} | {default} | {_cell(p.help)} |")
        out.append("\n| column | meaning |\n|---|---|")
        for col, doc in column_docs(q).items():
            out.append(f"| `{col}` | {_cell(doc)} |")
        if q.examples:
            out.append("\n```bash\n" + "\n".join(q.examples) + "\n```")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(reference_markdown())
