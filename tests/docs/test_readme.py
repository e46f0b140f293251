"""README.md is a front door: short, the two set-up commands first, every link and image resolving,
and CI running exactly the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MAX_LINES = 250
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _without_code(text: str) -> str:
    """The text outside fenced code blocks and inline code spans (links there are not links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _github_slug(heading: str) -> str:
    heading = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return heading.replace(" ", "-")


def _heading_slugs(markdown: str) -> set[str]:
    text = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)
    return {_github_slug(m.group(1).replace("`", "")) for m in re.finditer(r"^#{1,6} (.+)$", text, flags=re.M)}


def _setup_commands() -> list[str]:
    """The commands of the README's first code block, comments stripped."""
    block = re.search(r"^```\w*\n(.*?)^```", README.read_text(), flags=re.S | re.M)
    assert block, "README has no code block"
    return [line.split("#", 1)[0].strip() for line in block.group(1).splitlines() if line.split("#", 1)[0].strip()]


def test_readme_is_at_most_250_lines() -> None:
    n = len(README.read_text().splitlines())
    assert n <= MAX_LINES, f"README.md has {n} lines; the front door keeps to {MAX_LINES} (move detail into docs/)"


def test_readme_starts_with_the_two_setup_commands() -> None:
    lines = [line for line in README.read_text().splitlines() if line.strip()]
    assert lines[0].startswith("# "), "the README starts with its title"
    assert lines[1].startswith("```"), "the set-up commands come right after the title, before any prose"
    assert _setup_commands() == ["make demo", "make test"]


def test_the_setup_commands_are_make_targets() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for command in _setup_commands():
        target = command.split()[1]
        assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.M), f"Makefile has no `{target}` target"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    test_command = _setup_commands()[1]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    commands = [line for line in ci if line and not line.startswith("#") and not line.startswith(("set ", "cd "))]
    assert commands == [test_command], f".ci/run must run exactly `{test_command}`, runs {commands}"


def test_every_link_and_image_in_the_readme_resolves() -> None:
    text = README.read_text()
    own = _heading_slugs(text)
    broken = []
    for target in LINK.findall(_without_code(text)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        if not path:
            if anchor not in own:
                broken.append(target)
            continue
        file = (ROOT / path).resolve()
        if not file.exists():
            broken.append(target)
        elif anchor and (file.suffix != ".md" or anchor not in _heading_slugs(file.read_text())):
            broken.append(target)
    assert not broken, f"README links that lead nowhere: {broken}"


def test_readme_shows_the_app_screenshot_and_links_into_the_docs() -> None:
    targets = LINK.findall(_without_code(README.read_text()))
    images = [t for t in targets if t.endswith(".png")]
    assert images and all((ROOT / t).is_file() for t in images)
    docs = {t.partition("#")[0] for t in targets if t.startswith("docs/") and t.endswith(".md")}
    for page in ("docs/getting-started.md", "docs/reference/cli.md", "docs/concepts/method.md"):
        assert page in docs, f"README does not link {page}"
