"""``-`` for standard input and output on table commands (``anonymize``, ``risk``).

A table on standard input is copied to a private temporary file (a 0700 folder, the
file 0600, removed on the way out) and read from there, so every input check, error
message and audit fingerprint is the one a file gets; messages say "standard input"
instead of the temporary path. A table for standard output is written the usual way
to a temporary file, staged behind the audit entry, and copied to standard output
only after the command succeeded: nothing reaches a pipe before its audit entry
is written, and a failed command writes nothing there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from privdl.errors import PrivdlError, UsageError

STREAM = "-"
#: ``--format`` values and the file extension each one is read / written as
FORMATS = {"csv": ".csv", "tsv": ".tsv", "jsonl": ".jsonl", "parquet": ".parquet"}
STDIN_NAME, STDOUT_NAME = "stdin", "stdout"


def check_format(fmt: str | None, *, streams: bool) -> str:
    """The table format for ``-`` (default csv).

    Raises:
        UsageError: an unknown format, or ``--format`` without ``-`` (the extension
            names a file's format).
    """
    if fmt is None:
        return "csv"
    value = fmt.strip().lower()
    if value not in FORMATS:
        raise UsageError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if not streams:
        raise UsageError("--format is for - (standard input / output); a file's extension names its format")
    return value


@contextlib.contextmanager
def stream_folder(needed: bool = True) -> Iterator[Path | None]:
    """A private temporary folder (0700), removed with everything in it on exit; None
    (and nothing made) when no ``-`` is used."""
    if not needed:
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix="privdl-stream-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def spool_stdin(folder: Path, fmt: str) -> Path:
    """Copy standard input into ``folder/stdin.<fmt>`` (mode 0600); its path.

    Raises:
        UsageError: standard input is a terminal (nothing is piped in).
    """
    stdin = sys.stdin
    if stdin is None or (stdin.isatty() if hasattr(stdin, "isatty") else False):
        raise UsageError("input - is standard input, but it is a terminal: pipe a table into it")
    path = folder / (STDIN_NAME + FORMATS[fmt])
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(getattr(stdin, "buffer", stdin), out, 1024 * 1024)
    return path


def stdout_target(folder: Path, fmt: str) -> Path:
    """Where a table bound for standard output is written first."""
    return folder / (STDOUT_NAME + FORMATS[fmt])


def copy_to_stdout(path: Path) -> None:
    """Copy a finished output file to standard output (binary)."""
    sys.stdout.flush()
    out = getattr(sys.stdout, "buffer", None)
    with open(path, "rb") as fh:
        if out is None:  # a text-only stream (a test's capture): text formats only
            sys.stdout.write(fh.read().decode("utf-8"))
        else:
            shutil.copyfileobj(fh, out, 1024 * 1024)
            out.flush()
    sys.stdout.flush()


@contextlib.contextmanager
def named_as_streams(folder: Path | None) -> Iterator[None]:
    """Errors that name a temporary stream file (in ``folder``, which is unique to this
    run) name the stream instead; never a value."""
    try:
        yield
    except PrivdlError as exc:
        if folder is not None:
            exc.args = tuple(_rename(a, folder) for a in exc.args)
        raise


def _rename(arg: object, folder: Path) -> object:
    if not isinstance(arg, str):
        return arg
    for name, label in ((STDIN_NAME, "standard input"), (STDOUT_NAME, "standard output")):
        for ext in FORMATS.values():
            shown = str(folder / (name + ext))
            arg = arg.replace(f"input file {shown}", label).replace(shown, label)
    return arg
