"""The one command line, `circuit-atlas`.

Each sub-package owns its commands in its own `cli.py` and adds them here through
`register(app)`, so the CLI and the library share one core and no module grows into a
grab-bag of every command.
"""

from __future__ import annotations

import errno
import importlib
import sys

import typer

from circuit_atlas import __version__
from circuit_atlas.errors import CircuitAtlasError

def _classic_help() -> None:
    """typer 0.29 prints `<bool>` after every flag and `{corpus}` for a required argument in usage
    lines; the help reads as click's did (a flag shows no type, an argument is CORPUS), where the
    installed typer has those hooks (bounded below 0.30 in pyproject)."""
    from typer import core

    option, argument = getattr(core, "TyperOption", None), getattr(core, "TyperArgument", None)
    if option is not None and hasattr(option, "display_type_rich") and not getattr(option, "_classic", False):
        shown = option.display_type_rich

        def display_type_rich(self, ctx):  # type: ignore[no-untyped-def]
            return None if getattr(self, "is_flag", False) and self.metavar is None else shown(self, ctx)

        option.display_type_rich = display_type_rich
        option._classic = True
    if argument is not None and hasattr(argument, "_usage_display_name") and not getattr(argument, "_classic", False):

        def _usage_display_name(self):  # type: ignore[no-untyped-def]
            name = self.metavar if self.metavar is not None else self.name.upper()
            name = name if self.required else f"[{name}]"
            return name + ("..." if self.nargs != 1 else "")

        argument._usage_display_name = _usage_display_name
        argument._classic = True


_classic_help()

app = typer.Typer(
    name="circuit-atlas",
    help="Attribution graphs for a whole corpus of prompts, kept in a graph database.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)

_COMMAND_MODULES = (
    "circuit_atlas.engine.cli",
    "circuit_atlas.store.cli",
    "circuit_atlas.ingest.cli",
    "circuit_atlas.queries.cli",
    "circuit_atlas.queries.supernodes_cli",
    "circuit_atlas.app.cli",
    "circuit_atlas.demo",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"circuit-atlas {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Attribution graphs for a whole corpus of prompts, kept in a graph database."""


for _name in _COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def _short_helps(group: typer.Typer) -> None:
    """A command's line in its group's listing is its docstring's whole first paragraph (typer
    shows only the first line, which cut `validate-circuit` and `heads` mid-sentence)."""
    import inspect

    for info in group.registered_commands:
        doc = inspect.getdoc(info.callback) if info.callback else None
        if info.short_help is None and info.help is None and doc:
            info.short_help = " ".join(doc.split("\n\n", 1)[0].split())
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            _short_helps(sub.typer_instance)


_short_helps(app)


def _library_exceptions() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(usage/click errors, aborts, exits) of every command-line library that may be raising.

    typer up to 0.15 raises plain click's classes; typer 0.16+ raises its own vendored copy
    (typer._click), which is not a subclass of click's. Both are collected, from whichever is
    importable, so a fresh install with either gets a one-line error instead of a traceback."""
    errors: list[type[BaseException]] = []
    aborts: list[type[BaseException]] = [typer.Abort]
    exits: list[type[BaseException]] = [typer.Exit]
    for module_name in ("typer._click.exceptions", "click.exceptions"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for name, into in (("ClickException", errors), ("Abort", aborts), ("Exit", exits)):
            cls = getattr(module, name, None)
            if isinstance(cls, type) and cls not in into:
                into.append(cls)
    return tuple(errors), tuple(aborts), tuple(exits)


def _usage_line(exc: BaseException) -> str:
    """One line for a click-style error: its message and, when a command is known, where help is."""
    message = " ".join(str(exc.format_message()).split())  # type: ignore[attr-defined]
    ctx = getattr(exc, "ctx", None)
    if ctx is not None and getattr(ctx, "command_path", None):
        return f"{message} (see '{ctx.command_path} --help')"
    return message


# File-system failures on a path the user gave (a missing folder for --out, a read-only store,
# a full disk): the user's to fix, so one line naming the path, not a traceback.
_USER_OS_ERRNOS = frozenset({errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR,
                             errno.EEXIST, errno.EROFS, errno.ENOSPC, errno.ENAMETOOLONG})


def _print_error(message: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    # soft_wrap: one line whatever the terminal width, so scripts and tests can read it whole.
    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True)


def _empty_argument(args: list[str]) -> str | None:
    """An empty argument ('') is refused before any command sees it: a path option given '' is
    the current folder to pathlib (`store export-csv ''` wrote its files into the working folder),
    and no option of this CLI means anything by an empty value."""
    for i, arg in enumerate(args):
        if arg == "":
            after = f" after '{args[i - 1]}'" if i else ""
            return f"an empty argument ('') was given{after}; give a value (an empty path would mean the current folder)"
    return None


def main() -> None:
    """Entry point: user-facing errors become a one-line message and a non-zero exit.

    Usage errors (unknown command or option, missing or badly typed argument, a file click
    could not open) exit 2; a CircuitAtlasError exits with its own code (2 for bad input)."""
    errors, aborts, exits = _library_exceptions()
    empty = _empty_argument(sys.argv[1:])
    if empty:
        _print_error(empty)
        raise SystemExit(2)
    try:
        result = app(standalone_mode=False)
    except CircuitAtlasError as exc:
        _print_error(str(exc))
        raise SystemExit(exc.exit_code) from None
    except OSError as exc:
        if exc.errno not in _USER_OS_ERRNOS or exc.filename is None:
            raise
        target = f"{exc.filename} -> {exc.filename2}" if exc.filename2 else str(exc.filename)
        _print_error(f"{target}: {exc.strerror or exc}")
        raise SystemExit(2) from None
    except aborts:
        _print_error("aborted")
        raise SystemExit(130) from None
    except exits as exc:
        raise SystemExit(getattr(exc, "exit_code", 0)) from None
    except errors as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # a group called bare: its help is the answer
            exc.show()  # type: ignore[attr-defined]
        else:
            _print_error(_usage_line(exc))
        raise SystemExit(2) from None  # click gives 1 to a few of these (FileError): all are the user's
    # Without standalone mode, click returns (not raises) the code of an explicit Exit(code).
    if isinstance(result, int) and not isinstance(result, bool):
        raise SystemExit(result)


if __name__ == "__main__":
    main()
