"""The installed `circuit-atlas` entry point, run as a user runs it (a subprocess), on usage
errors: each is one line on stderr and exit 2, never a traceback, whichever click the
installed typer raises (typer 0.16+ vendors its own copy of click's exceptions)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import typer

from circuit_atlas import cli as cli_mod


def _entry_point() -> str | None:
    """The script installed next to this interpreter (what `pip install -e .` made), else PATH's."""
    local = Path(sysconfig.get_path("scripts")) / "circuit-atlas"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which("circuit-atlas")


ENTRY = _entry_point()
pytestmark = pytest.mark.skipif(ENTRY is None, reason="the circuit-atlas entry point is not installed (pip install -e .)")


def _command_paths() -> list[tuple[str, ...]]:
    """Every command and group of the CLI, as argv prefixes: (), ('store',), ('store', 'load'), ..."""
    root = typer.main.get_command(cli_mod.app)
    paths: list[tuple[str, ...]] = []

    def walk(cmd, path: tuple[str, ...]) -> None:
        paths.append(path)
        for name, sub in sorted(getattr(cmd, "commands", {}).items()):
            walk(sub, path + (name,))

    walk(root, ())
    return paths


COMMANDS = _command_paths()

# (argv, a fragment the one-line message must hold)
USAGE_ERRORS = [
    (("nosuchcmd",), "nosuchcmd"),
    (("cypher",), "statement"),
    (("query", "hubs", "--bogus"), "--bogus"),
    (("store", "delete-prompt"), "prompt_id"),
    (("import",), "path"),  # the file argument missing
    (("store", "load"), "graphs"),
    (("app", "--port", "abc"), "--port"),  # a value of the wrong type
    (("ingest", "corpus.txt", "-m", "demo", "-t", "demo", "--node-threshold", "high"), "--node-threshold"),
    (("store", "stats", "--store"), "--store"),  # an option without its value
    (("store", "nosuchsub"), "nosuchsub"),
    (("store", "export-csv", ""), "empty argument"),  # '' would be the current folder to pathlib
    (("export", "someid", "-o", ""), "after '-o'"),
]


def _run(argv: tuple[str, ...], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([ENTRY, *argv], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> tuple[dict[str, str], Path]:
    """An environment whose default store and home are private, so nothing the user has is touched."""
    home = tmp_path_factory.mktemp("entry-home")
    env = dict(os.environ, CIRCUIT_ATLAS_HOME=str(home), CIRCUIT_ATLAS_STORE=f"embedded:{home / 'store'}",
               COLUMNS="60", NO_COLOR="1")
    return env, home


@pytest.fixture(scope="module")
def results(sandbox) -> dict[tuple[str, ...], subprocess.CompletedProcess]:
    """The error cases of this module, each in its own interpreter, run once, three at a time."""
    env, home = sandbox
    argvs = [argv for argv, _ in USAGE_ERRORS] + [("import", str(home / "no-such-folder"))]
    with ThreadPoolExecutor(max_workers=3) as pool:
        done = list(pool.map(lambda a: _run(a, env, home), argvs))
    return dict(zip(argvs, done))


# Runs the installed script once per argv inside one interpreter (an interpreter start costs
# about a second, and there are two dozen commands), and reports exit code, stdout, stderr.
_HELP_LOOP = r"""
import contextlib, io, json, runpy, sys
script, argvs = sys.argv[1], json.loads(sys.argv[2])
report = []
for argv in argvs:
    out, err, code = io.StringIO(), io.StringIO(), 0
    sys.argv = [script, *argv]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            RUN
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except BaseException as exc:
            import traceback
            err.write("Traceback (most recent call last):\n" + "".join(traceback.format_exception(exc)))
            code = 1
    report.append({"argv": argv, "code": code, "out": out.getvalue(), "err": err.getvalue()})
print(json.dumps(report))
"""


def _is_python_script(path: str) -> bool:
    with open(path, "rb") as handle:
        first = handle.readline()
    return first.startswith(b"#!") and b"python" in first


@pytest.fixture(scope="module")
def helps(sandbox) -> dict[tuple[str, ...], dict]:
    """`--help` of every command, through the installed script (or, where the entry point is a
    shim that is not a Python file, through `python -m circuit_atlas`)."""
    import json

    env, home = sandbox
    argvs = [list(path) + ["--help"] for path in COMMANDS]
    run = ("runpy.run_path(script, run_name='__main__')" if _is_python_script(ENTRY)
           else "runpy.run_module('circuit_atlas', run_name='__main__')")
    cmd = [sys.executable, "-c", _HELP_LOOP.replace("RUN", run), ENTRY, json.dumps(argvs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=home, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return {tuple(row["argv"][:-1]): row for row in json.loads(proc.stdout.splitlines()[-1])}


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("argv,fragment", USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS])
def test_usage_error_is_one_line_and_exit_2(results, argv, fragment):
    proc = results[argv]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.returncode == 2, proc.stderr
    lines = _lines(proc.stderr)
    assert len(lines) == 1, proc.stderr  # one line even though COLUMNS is 60
    assert lines[0].startswith("error: ")
    assert fragment in lines[0]
    assert proc.stdout == ""


def test_an_empty_path_writes_nothing_into_the_working_folder(results, sandbox):
    _, home = sandbox  # the folder every case ran in
    assert not list(home.glob("*.csv")) and not list(home.glob("*.json"))


def test_usage_error_points_at_the_right_help(results):
    line = _lines(results[("store", "delete-prompt")].stderr)[0]
    assert "store delete-prompt --help" in line


def test_missing_file_is_one_line_naming_it(results, sandbox):
    _, home = sandbox
    proc = results[("import", str(home / "no-such-folder"))]
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 2
    errors = [line for line in _lines(proc.stderr) if line.startswith("error: ")]
    assert len(errors) == 1 and "no-such-folder" in errors[0], proc.stderr


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) or "(root)" for p in COMMANDS])
def test_help_of_every_command_exits_0(helps, path):
    row = helps[path]
    assert row["code"] == 0, row["err"]
    assert "Traceback" not in row["err"]
    assert "Usage" in row["out"]


def test_no_arguments_prints_the_help(sandbox):
    env, home = sandbox
    proc = _run((), env, home)
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "Usage" in proc.stdout + proc.stderr
    assert proc.returncode in (0, 2)  # click >= 8.2 exits 2 for a bare group, older 0


def test_python_dash_m_is_the_same_command(sandbox):
    env, home = sandbox
    proc = subprocess.run([sys.executable, "-m", "circuit_atlas", "nosuchcmd"], capture_output=True, text=True,
                          env=env, cwd=home, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(_lines(proc.stderr)) == 1


# In process: main() against small real typer apps, for the exception families a given
# install may raise (typer's vendored click and, where installed, plain click).

def _exceptions_modules():
    import importlib

    found = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(importlib.import_module(name))
        except ImportError:
            pass
    return found


def _main_on(small: typer.Typer, monkeypatch) -> int:
    """Run ``main()`` on a small app in place of the real one; the exit code it stops with."""
    monkeypatch.setattr(cli_mod, "app", small)
    monkeypatch.setattr(sys, "argv", ["circuit-atlas"])
    with pytest.raises(SystemExit) as stop:
        cli_mod.main()
    return stop.value.code


@pytest.mark.parametrize("module", _exceptions_modules(), ids=lambda m: m.__name__)
def test_main_turns_each_click_family_into_one_line(module, monkeypatch, capsys):
    small = typer.Typer()

    @small.command()
    def fail() -> None:
        raise module.UsageError("that option makes no sense here")

    assert _main_on(small, monkeypatch) == 2
    (line,) = _lines(capsys.readouterr().err)
    assert line.startswith("error: that option makes no sense here")


def test_main_keeps_the_code_of_an_explicit_exit(monkeypatch):
    small = typer.Typer()

    @small.command()
    def stop() -> None:
        raise typer.Exit(3)

    assert _main_on(small, monkeypatch) == 3


def test_main_names_the_path_of_a_file_system_error(monkeypatch, capsys, tmp_path):
    small = typer.Typer()
    target = tmp_path / "missing" / "out.csv"

    @small.command()
    def write() -> None:
        target.write_text("x")

    assert _main_on(small, monkeypatch) == 2
    (line,) = _lines(capsys.readouterr().err)
    assert line.startswith("error: ") and str(target) in line


def test_help_shows_no_bool_type_and_plain_argument_names(helps):
    """typer 0.29 wrote `<bool>` after every flag and `{corpus}` in usage lines."""
    for path, row in helps.items():
        usage = next(line for line in row["out"].splitlines() if "Usage:" in line)
        assert "{" not in usage and "<bool>" not in row["out"], (path, usage)
    assert "circuit-atlas ingest [OPTIONS] CORPUS" in helps[("ingest",)]["out"]


def test_each_commands_listing_is_its_whole_first_paragraph(helps):
    """A group's listing showed only the docstring's first line: `validate-circuit` read '...
    compare the change in the' and stopped."""
    import inspect
    import re

    root = typer.main.get_command(cli_mod.app)

    def walk(cmd, path):
        for name, sub in getattr(cmd, "commands", {}).items():
            doc = sub.help or (inspect.getdoc(sub.callback) if getattr(sub, "callback", None) else None)
            if doc and not getattr(sub, "commands", None):
                first = " ".join(doc.split("\n\n", 1)[0].split())
                listing = " ".join(re.sub(r"[│╭╮╰╯─]", " ", helps[path]["out"]).split())
                assert first in listing, (path + (name,), first)
            walk(sub, path + (name,))

    walk(root, ())
