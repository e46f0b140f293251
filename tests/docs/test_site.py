"""The docs site builds with `mkdocs build --strict` (a broken page link or anchor, or a page left out
of the nav, fails it), every link of the built site lands on a page and an anchor that exist, the
CLI reference covers every command and option of the typer app, and the Python API page renders
every object it names."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

pytest.importorskip("mkdocs", reason="the docs extra is not installed (make test installs it: pip install -e '.[docs]')")
pytest.importorskip("material", reason="mkdocs-material is not installed (pip install -e '.[docs]')")
pytest.importorskip("mkdocstrings", reason="mkdocstrings is not installed (pip install -e '.[docs]')")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, "mkdocs build --strict failed:\n" + proc.stdout[-4000:] + proc.stderr[-4000:]
    return out


class _Page(HTMLParser):
    """The ids a page defines and the hrefs/srcs it points to."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.targets: list[str] = []

    def handle_starttag(self, tag, attrs):  # type: ignore[no-untyped-def]
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        for key in ("href", "src"):
            if tag in {"a", "img", "link", "script"} and attrs.get(key):
                self.targets.append(attrs[key])


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_site_builds_strictly(site) -> None:
    assert (site / "index.html").is_file()
    for page in ("getting-started", "reference/cli", "reference/queries", "reference/python", "concepts/schema"):
        assert (site / f"{page}.html").is_file(), page


def test_every_link_in_the_site_resolves(site) -> None:
    pages = {p: _parse(p) for p in site.rglob("*.html")}
    broken = []
    for path, page in pages.items():
        if path.name == "404.html":  # served at any depth, so its links are absolute to the site root
            continue
        for target in page.targets:
            parts = urlsplit(target)
            if parts.scheme or parts.netloc or target.startswith(("mailto:", "javascript:", "data:")):
                continue
            file = path if not parts.path else (path.parent / unquote(parts.path)).resolve()
            if file.is_dir():
                file = file / "index.html"
            if not file.exists():
                broken.append(f"{path.relative_to(site)} -> {target}")
            elif parts.fragment and file.suffix == ".html":
                ids = pages[file].ids if file in pages else _parse(file).ids
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{path.relative_to(site)} -> {target} (no such anchor)")
    assert not broken, "links that lead nowhere:\n" + "\n".join(broken[:40])


def _commands():  # type: ignore[no-untyped-def]
    """Every command of the typer app, walked here independently of the docs hook."""
    import typer

    from circuit_atlas.cli import app

    found = []

    def walk(cmd, path):  # type: ignore[no-untyped-def]
        found.append((path, cmd))
        for name, sub in getattr(cmd, "commands", {}).items():
            if not getattr(sub, "hidden", False):
                walk(sub, [*path, name])

    walk(typer.main.get_command(app), ["circuit-atlas"])
    return found


def _sections(page_html: str) -> dict[str, str]:
    """The CLI page cut at its command headings: heading id -> the HTML up to the next one."""
    cuts = list(re.finditer(r'<h[23] id="(circuit-atlas[^"]*)"', page_html))
    return {m.group(1): page_html[m.start():(cuts[i + 1].start() if i + 1 < len(cuts) else len(page_html))]
            for i, m in enumerate(cuts)}


def test_cli_reference_covers_every_command_and_option(site) -> None:
    sections = _sections((site / "reference" / "cli.html").read_text(encoding="utf-8"))
    commands = _commands()
    assert len(commands) > 20
    missing = []
    for path, cmd in commands:
        anchor = "-".join(path).lower()
        if anchor not in sections:
            missing.append(" ".join(path))
            continue
        text = html.unescape(re.sub(r"<[^>]+>", "", sections[anchor]))
        for param in cmd.params:
            if getattr(param, "hidden", False):
                continue
            names = list(param.opts) + list(getattr(param, "secondary_opts", []))
            if getattr(param, "param_type_name", "") == "argument":
                names = [(param.metavar or param.name.upper()).strip("[]")]
            for name in names:
                if name not in text:
                    missing.append(f"{' '.join(path)} {name}")
        if cmd.help and cmd.help.split()[0] not in text:
            missing.append(f"{' '.join(path)}: its help text")
    assert not missing, f"the CLI reference lacks: {missing}"
    assert set(sections) == {"-".join(p).lower() for p, _ in commands}, "the CLI reference lists a command the app lacks"


def test_python_api_page_renders_every_object_it_names(site) -> None:
    source = (ROOT / "docs" / "reference" / "python.md").read_text()
    ids = _parse(site / "reference" / "python.html").ids
    named = []
    for block in re.finditer(r"^::: (\S+)\n((?:[ ]{4}.*\n)*)", source, flags=re.M):
        module, options = block.group(1), block.group(2)
        named += [f"{module}.{m}" for m in re.findall(r"^\s+- (\w+)$", options, flags=re.M)]
    assert len(named) > 50
    missing = [n for n in named if n not in ids]
    assert not missing, f"the Python API page does not render: {missing}"


def test_every_page_is_in_the_nav(site) -> None:
    """Strict mode warns about pages left out of the nav; this says which ones, should it be relaxed."""
    import yaml

    nav = yaml.safe_load(re.sub(r"!!python\S*", "", (ROOT / "mkdocs.yml").read_text()))["nav"]
    listed = set(re.findall(r"[\w/.-]+\.md", str(nav)))
    pages = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md") if "hooks" not in p.parts}
    assert pages <= listed, f"pages not in mkdocs.yml's nav: {sorted(pages - listed)}"
