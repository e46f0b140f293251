"""MkDocs hook: the parts of the reference that are generated from the code at build time.

- ``reference/cli.md``: the marker ``<!-- cli-reference -->`` is replaced by every command of the
  typer app (usage, help, every option with its default), so the page cannot drift from ``--help``.
- The Python API pages use mkdocstrings, which reads the source statically (griffe). The top-level
  folders are sub-packages of ``circuit_atlas`` only through ``[tool.setuptools.package-dir]`` in
  pyproject.toml, which a static reader cannot follow, so a tree of symlinks laid out as the import
  namespace is made under ``build/api`` (git-ignored) from that table before mkdocstrings runs.
"""

from __future__ import annotations

import html
import os
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
API_TREE = ROOT / "build" / "api"
CLI_MARKER = "<!-- cli-reference -->"


def build_api_tree(root: Path = ROOT, out: Path = API_TREE) -> Path:
    """Symlink every package of pyproject's package-dir table to where its import name puts it."""
    setuptools = tomllib.loads((root / "pyproject.toml").read_text()).get("tool", {}).get("setuptools", {})
    mapping = setuptools.get("package-dir") or {"circuit_atlas": "circuit_atlas"}  # no mapping: the plain layout
    for name, folder in sorted(mapping.items(), key=lambda kv: kv[0].count(".")):
        target = out.joinpath(*name.split("."))
        source = (root / folder).resolve()
        if target.is_symlink() or target.exists():
            if target.is_symlink() and target.resolve() == source:
                continue
            if target.is_symlink():
                target.unlink()
            else:  # a real folder: the parent package, holding links to its own files
                continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if "." not in name:  # the top package: a real folder whose entries link to the source's
            target.mkdir(parents=True, exist_ok=True)
            for link in target.iterdir():  # files removed from the source since the last build
                if link.is_symlink() and not link.exists():
                    link.unlink()
            for entry in source.iterdir():
                link = target / entry.name
                if not link.exists() and not link.is_symlink() and entry.name != "__pycache__":
                    link.symlink_to(entry)
        else:
            target.symlink_to(source, target_is_directory=True)
    return out


def _escape(text: str) -> str:
    """Help text as literal Markdown: no raw HTML, emphasis, links or table cells by accident."""
    text = html.escape(text, quote=False)
    return re.sub(r"([\\`*_\[\]|#])", r"\\\1", text)


def _paragraphs(help_text: str) -> str:
    parts = [" ".join(p.split()) for p in re.split(r"\n\s*\n", help_text.replace("\b", "")) if p.strip()]
    return "\n\n".join(_escape(p) for p in parts)


def _commands(command, ctx, path):  # type: ignore[no-untyped-def]
    """(path, command, context) for this command and every sub-command, depth first, in listing order."""
    yield path, command, ctx
    for name, sub in getattr(command, "commands", {}).items():
        if getattr(sub, "hidden", False):
            continue
        yield from _commands(sub, sub.context_class(sub, info_name=name, parent=ctx), [*path, name])


def cli_commands():  # type: ignore[no-untyped-def]
    """Every (path, command, context) of the installed `circuit-atlas` typer app."""
    import typer

    from circuit_atlas.cli import app

    root = typer.main.get_command(app)
    return list(_commands(root, root.context_class(root, info_name="circuit-atlas"), ["circuit-atlas"]))


def cli_markdown() -> str:
    """The CLI reference: one section per command, options as `get_help_record` (what --help shows)."""
    out: list[str] = []
    for path, command, ctx in cli_commands():
        level = "#" * min(2 + (len(path) > 2), 6)
        out.append(f"{level} `{' '.join(path)}`\n")
        if command.help:
            out.append(_paragraphs(command.help) + "\n")
        usage = command.get_usage(ctx).removeprefix("Usage: ").strip()
        out.append(f"```text\n{usage}\n```\n")
        subs = [(n, c) for n, c in getattr(command, "commands", {}).items() if not getattr(c, "hidden", False)]
        if subs:
            out.append("| command | what it does |\n|---|---|")
            for name, sub in subs:
                anchor = "-".join([*path, name]).lower()
                short = _escape(sub.get_short_help_str(limit=300))
                out.append(f"| [`{name}`](#{anchor}) | {short} |")
            out.append("")
        arguments = [p for p in command.params if getattr(p, "param_type_name", "") == "argument"]
        if arguments:
            out.append("**Arguments**\n")
            for arg in arguments:
                record = arg.get_help_record(ctx)
                name = (arg.metavar or arg.name.upper()).strip("[]") + ("..." if arg.nargs != 1 else "")
                shown = " ".join([name, *record[0].split()[1:]]) if record else name
                meaning = record[1] if record and record[1] else ("required" if arg.required else "optional")
                out.append(f"- `{shown}`: {_escape(meaning)}")
            out.append("")
        records = [p.get_help_record(ctx) for p in command.params if p not in arguments]
        records = [r for r in records if r] + [("--help", "Show this message and exit.")]
        out.append("**Options**\n")
        for opts, meaning in records:
            out.append(f"- `{opts}`" + (f": {_escape(meaning)}" if meaning else ""))
        out.append("")
    return "\n".join(out)


def on_config(config, **kwargs):  # type: ignore[no-untyped-def]
    build_api_tree()
    return config


def on_page_markdown(markdown: str, page, config, files, **kwargs):  # type: ignore[no-untyped-def]
    if CLI_MARKER in markdown:
        return markdown.replace(CLI_MARKER, cli_markdown())
    return markdown


# mkdocstrings may look for its paths as the config loads, before on_config runs.
if os.environ.get("CIRCUIT_ATLAS_DOCS_NO_API_TREE") != "1":
    build_api_tree()
