"""The ``kdetect`` command line: a thin Typer layer over Python functions.

Each sub-app lives in its own module and is joined here with ``add_typer``. Expected failures
(``KdetectError``) print one red line and exit 1 (:class:`~kdetect.plumbing.errors.DataErrors`: one
line per problem, then the summary); ``KDETECT_DEBUG=1`` shows the traceback. Messages are printed
escaped (:func:`print_error`), so rich markup never eats a ``[...]`` in a path. TensorFlow's native
log lines and dependencies' deprecation warnings stay off the console unless ``--verbose``.
"""

from __future__ import annotations

import os
import sys
import warnings

import typer
from rich.console import Console
from rich.markup import escape

from kdetect import __version__
from kdetect.plumbing import native_logs
from kdetect.plumbing.errors import DataErrors, KdetectError

app = typer.Typer(
    name="kdetect",
    help="Object detection for Keras 3: train, evaluate, predict, serve and export detectors.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="markdown",
)
err_console = Console(stderr=True)


def print_error(message: object) -> None:
    """Print one red ``error:`` line on stderr; ``message`` is shown as is (markup escaped)."""
    err_console.print(f"[red]error:[/red] {escape(str(message))}", highlight=False, soft_wrap=True)


def as_flags(message: str, argv: list[str]) -> str:
    """An error of the Python API, which names the parameter it is about (``min_score: ...``),
    as the command line says it: the flag of the command's option of that name
    (``--min-score: ...``). Other messages are unchanged."""
    name, colon, rest = message.partition(":")
    if not colon or not name.isidentifier():
        return message
    command = typer.main.get_command(app)
    context = command.make_context("kdetect", list(argv), resilient_parsing=True)
    # the sub-command(s) argv names, found as Click (which Typer bundles) finds them
    while hasattr(command, "resolve_command"):
        remaining = [*getattr(context, "_protected_args", []), *context.args]
        if not remaining:
            break
        try:
            sub_name, command, rest_args = command.resolve_command(context, remaining)
        except Exception:  # a usage error: the command already said so
            return message
        if command is None:
            return message
        context = command.make_context(sub_name, rest_args, parent=context, resilient_parsing=True)
    for param in command.params:
        long_flags = [opt for opt in param.opts if opt.startswith("--")]
        if param.name == name and param.param_type_name == "option" and long_flags:
            return long_flags[0] + colon + rest
    return message


def _print_version(value: bool) -> None:
    if value:
        print(f"kdetect {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Show the version."
    ),
    verbose: bool = typer.Option(
        False,
        "--verbose",
        help="Show TensorFlow's own log lines and Python warnings from libraries "
        "(kdetect hides them; KDETECT_DEBUG=1 also shows them, with tracebacks).",
    ),
) -> None:
    """Object detection for Keras 3: train, evaluate, predict, serve and export detectors."""
    if verbose:
        native_logs.allow_native_logs()
        for category in _LIBRARY_WARNINGS:
            warnings.simplefilter("default", category)  # ahead of _quiet_libraries' filters


_LIBRARY_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


def _quiet_libraries() -> None:
    """Keep deprecation warnings raised inside dependencies (any module but kdetect's, which
    users cannot act on) off the console."""
    if not native_logs.verbose():
        for category in _LIBRARY_WARNINGS:
            warnings.filterwarnings("ignore", category=category, module=r"^(?!kdetect)")


def _register_commands() -> None:
    """Import the command modules; each one attaches its commands to ``app``."""
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``kdetect`` script.

    Run as the program (``argv`` None, arguments from the command line) it first makes glibc keep
    freed memory for reuse (:mod:`kdetect.plumbing.allocator`; ``KDETECT_MALLOC=system`` opts out)
    and keeps TensorFlow's native log lines off stderr (:mod:`kdetect.plumbing.native_logs`).
    """
    if argv is None:
        from kdetect.plumbing.allocator import retain_freed_memory

        retain_freed_memory()
        native_logs.filter_native_stderr()
    _quiet_libraries()
    _register_commands()
    try:
        app(args=argv, standalone_mode=False)
    except KdetectError as exc:
        if os.environ.get("KDETECT_DEBUG"):
            raise
        for problem in exc.problems if isinstance(exc, DataErrors) else ():
            print_error(problem)
        print_error(as_flags(str(exc), argv if argv is not None else sys.argv[1:]))
        return 1
    except typer.Abort:
        err_console.print("[red]aborted[/red]")
        return 130
    except SystemExit as exc:  # raised for --help and --version
        return int(exc.code or 0)
    except Exception as exc:
        # Usage errors (unknown option or command, bad value) come from the click that Typer
        # bundles; recognise them by their interface and exit with their code (2).
        if hasattr(exc, "show") and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            return exc.exit_code
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
