"""The ``privdl`` command. Thin: parse, call the public API, print.

One module per command group; each exposes ``register(app)``. Errors from the
:class:`~privdl.errors.PrivdlError` tree become one line on stderr and the error's
exit code (2 bad usage/input, 1 failed check); nothing prints a traceback unless
``PRIVDL_DEBUG=1`` is set.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

import typer

from privdl.errors import PrivdlError

app = typer.Typer(
    name="privdl",
    help="Anonymize, train with differential privacy, score encrypted, keep GDPR evidence.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        from privdl._version import __version__

        print(f"privdl {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Anonymize, train with differential privacy, score encrypted, keep GDPR evidence."""


_registered: list[bool] = []


def _register_all() -> None:
    """Add every command group to ``app``, once (main() may run many times in a process)."""
    if _registered:
        return
    from privdl.cli import anonymize, audit, budget, diff, he, keygen, risk, train

    for module in (anonymize, risk, budget, audit, he, train, diff, keygen):
        module.register(app)
    from privdl.cli.examples import add_examples

    add_examples(app)  # every --help ends with an example
    _registered.append(True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one error line and return the Exit to raise."""
    print(f"privdl: error: {message}", file=sys.stderr)
    return typer.Exit(code)


def _is(exc: BaseException, name: str) -> bool:
    # Exit / Abort come from click, or from the copy of click that newer typer vendors
    return any(cls.__name__ == name for cls in type(exc).__mro__)


def _install_sigint(handler: Any) -> Any:
    """Install ``handler`` for SIGINT where Python's own one is in place; the previous one."""
    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return None  # Ctrl-C ignored or handled by an embedding program: leave it
    return signal.signal(signal.SIGINT, handler)


def _command_name(command: Any, args: Sequence[str]) -> str:
    """``privdl he encrypt`` from the arguments: the (sub)command names, never a value."""
    words = ["privdl"]
    for arg in args:
        commands = getattr(command, "commands", None)
        if not commands or arg not in commands:
            break
        command = commands[arg]
        words.append(arg)
    return " ".join(words)


def _disk_full(exc: BaseException) -> bool:
    from privdl.io import is_disk_full

    return isinstance(exc, OSError) and is_disk_full(exc)


def _disk_full_message(exc: BaseException) -> str:
    from privdl.io import disk_full_error

    filename = getattr(exc, "filename", None)
    if not filename:
        return "no space left on device while writing an output"
    return str(disk_full_error(os.fsdecode(filename)))


def _say_interrupted(command: Any, args: Sequence[str]) -> None:
    # the atomic writers and staged outputs remove their temporaries on the way out
    print(
        f"privdl: interrupted: {_command_name(command, args)} stopped; no output was written", file=sys.stderr
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns (and exits with) the exit code."""
    _register_all()
    command = typer.main.get_command(app)
    # click's UsageError, or typer's vendored one (typer >= 0.24 no longer needs click)
    usage_error: type[Exception] = typer.BadParameter.__mro__[1]
    args = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("PRIVDL_DEBUG") == "1"
    # typer turns Ctrl-C into a silent exit 130: note it here, so that it can be said
    interrupted: list[bool] = []

    def on_sigint(signum: int, frame: Any) -> None:
        interrupted.append(True)
        signal.default_int_handler(signum, frame)  # raises KeyboardInterrupt as before

    previous = _install_sigint(on_sigint)
    try:
        from privdl import progress

        # long steps show a bar on a terminal (after 2 s); nothing on a pipe or in a file
        with progress.reporting():
            result = command.main(args=args, prog_name="privdl", standalone_mode=False)
        code = result if isinstance(result, int) else 0
        if interrupted:
            _say_interrupted(command, args)
            code = 130
    except PrivdlError as exc:
        if debug:
            raise
        print(f"privdl: error: {exc}", file=sys.stderr)
        code = exc.exit_code
    except usage_error as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            # a bare group (no_args_is_help): its help on stdout, success, as typer shows it
            # in standalone mode; click >= 8.2 raises it as a usage error to stderr, exit 2
            print(exc.ctx.get_help())  # type: ignore[attr-defined]
            code = 0
        else:
            message = exc.format_message().replace("\n", " ")  # type: ignore[attr-defined]
            ctx = getattr(exc, "ctx", None)
            path = ctx.command_path if ctx is not None else "privdl"
            print(f"{path}: error: {message} (see --help)", file=sys.stderr)
            code = 2
    except KeyboardInterrupt:
        _say_interrupted(command, args)
        code = 130
    except SystemExit as exc:
        # typer's own exits inside main(): a reader that closed the pipe early (`| head`)
        # is exit 1, quietly, as click and Unix tools do; returned, not raised
        code = exc.code if isinstance(exc.code, int) else 1
    except Exception as exc:
        if _is(exc, "Exit"):
            code = int(getattr(exc, "exit_code", 0) or 0)
            if interrupted:
                _say_interrupted(command, args)
                code = 130
        elif _is(exc, "Abort") and interrupted:
            _say_interrupted(command, args)
            code = 130
        elif _is(exc, "Abort"):
            print("privdl: aborted", file=sys.stderr)
            code = 130
        elif debug:
            raise
        elif _disk_full(exc):
            # a writer outside the atomic ones ran out of space: the path, never a value
            print(f"privdl: error: {_disk_full_message(exc)}", file=sys.stderr)
            code = 2
        else:
            # The message of an unexpected exception may quote data: print its class only.
            print(
                f"privdl: internal error ({type(exc).__name__}); rerun with PRIVDL_DEBUG=1 for details",
                file=sys.stderr,
            )
            code = 3
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if argv is None:
        sys.exit(code)
    return code
