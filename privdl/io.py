"""Reading and writing tables: CSV, TSV, Parquet, JSON Lines, SQLite (and DuckDB).

* The format follows the file extension (``.csv``, ``.tsv``, ``.parquet``, ``.jsonl``,
  optionally compressed ``.csv.gz``); ``sep=`` overrides the delimiter of text tables.
  Databases are named by URL: ``sqlite:///users.db?table=users`` or with ``query=``
  (``duckdb:///file.duckdb?table=...`` when ``duckdb`` is installed).
* Inputs are opened read-only and never modified (SQLite with ``mode=ro``).
* Writes are atomic, and these are privdl's only atomic writers: :func:`atomic_write`
  (a file; ``private=True`` for a 0600 file, :func:`atomic_write_private`),
  :func:`write_bytes` / :func:`write_text`, and :func:`atomic_folder` (a whole folder,
  swapped in without a moment where the target is missing). Each writes a temporary
  in the target folder, fsyncs it, renames it, fsyncs the folder, and removes the
  temporary on failure: a failure leaves no partial output behind.
  :func:`sweep_temps` removes what a killed process left.
* :class:`StagedOutputs` defers that last rename: an operation writes its outputs
  under staged names, writes its audit entry, and only then moves them into place
  (evidence first: no output without its audit entry).
* Parsing is strict: a CSV row with too few or too many fields is an
  :class:`~privdl.errors.InputError` naming the file and line, never the row's content.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import logging
import os
import re
import secrets
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, unquote, urlparse

from privdl.errors import FormatError, InputError, UsageError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "STAGE_PREFIX",
    "TEMP_SUFFIX",
    "DiskFullError",
    "StagedOutputs",
    "TableSource",
    "atomic_folder",
    "atomic_path",
    "atomic_write",
    "atomic_write_private",
    "check_distinct_paths",
    "check_output",
    "check_output_path",
    "disk_full_error",
    "fsync_folder",
    "is_disk_full",
    "parse_source",
    "read_table",
    "sniff_delimiter",
    "sweep_temps",
    "text_delimiter",
    "write_bytes",
    "write_table",
    "write_text",
]

TEXT_FORMATS = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": ","}
COMPRESSIONS = (".gz", ".bz2", ".zst", ".xz")
FORMATS = (".csv", ".tsv", ".tab", ".txt", ".parquet", ".pq", ".jsonl", ".ndjson")
_PROGRESS_MIN_BYTES = 64 * 1024 * 1024
_BLOCK = 16 * 1024 * 1024


@dataclass(frozen=True)
class TableSource:
    """Where a table lives: a file with a format, or a database table / query."""

    kind: str  # "file" | "sqlite" | "duckdb"
    path: Path
    fmt: str = ""  # ".csv", ".parquet", ... for files
    table: str | None = None
    query: str | None = None

    @property
    def label(self) -> str:
        """A name for messages: the file name plus the table, never a query text."""
        return f"{self.path}" + (f" (table {self.table})" if self.table else "")


def parse_source(location: str | os.PathLike[str], *, query: str | None = None) -> TableSource:
    """Resolve a path or URL to a :class:`TableSource` (no I/O)."""
    text = os.fspath(location)
    for scheme in ("sqlite", "duckdb"):
        if text.startswith(scheme + ":///") or text.startswith(scheme + "://"):
            parsed = urlparse(text)
            raw_path = unquote(parsed.netloc + parsed.path)
            if text.startswith(scheme + ":///"):
                raw_path = unquote(text[len(scheme) + 4 :].split("?", 1)[0])
            params = parse_qs(parsed.query)
            table = params.get("table", [None])[0]
            q = query or params.get("query", [None])[0]
            return TableSource(kind=scheme, path=Path(raw_path), table=table, query=q)
    path = Path(text)
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
    fmt = suffixes[-1] if suffixes else ""
    if fmt in (".db", ".sqlite", ".sqlite3"):
        return TableSource(kind="sqlite", path=path, table=None, query=query)
    return TableSource(kind="file", path=path, fmt=fmt)


# ----------------------------------------------------------------------------- reading
def read_table(
    location: str | os.PathLike[str],
    *,
    sep: str | None = None,
    query: str | None = None,
    table: str | None = None,
    columns: Sequence[str] | None = None,
    dtype: dict[str, Any] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Read a table into a pandas DataFrame; the input is never modified.

    Args:
        location: a file path (format from its extension) or a database URL
            (``sqlite:///users.db?table=users``).
        sep: delimiter for text formats, overriding the extension's default.
        query: a SQL query for database sources (read-only connection).
        table: a table name for database sources (instead of ``?table=``).
        columns: read only these columns.
        dtype: per-column dtypes for text formats (e.g. ``{"zip": str}`` to keep
            leading zeros).
        progress: show a rich progress bar while reading a large CSV.

    Raises:
        InputError: missing, empty or unreadable file; ragged CSV rows; bad JSON line.
        FormatError: unknown extension.
    """
    src = parse_source(location, query=query)
    if table is not None:
        src = TableSource(kind=src.kind, path=src.path, fmt=src.fmt, table=table, query=query)
    if src.kind in ("sqlite", "duckdb"):
        frame = _read_database(src)
        return frame[list(columns)] if columns else frame
    path = src.path
    if not path.exists():
        raise InputError(f"input file {path} does not exist")
    if path.is_dir():
        raise InputError(f"input {path} is a folder, not a file")
    if not os.access(path, os.R_OK):
        raise InputError(f"input file {path} is not readable")
    if src.fmt not in FORMATS:
        raise FormatError(
            f"{path}: unknown table format {src.fmt or '(no extension)'!r};"
            " use .csv, .tsv, .parquet, .jsonl or a sqlite:/// URL"
        )
    if path.stat().st_size == 0:
        raise InputError(f"input file {path} is empty")
    if src.fmt in (".parquet", ".pq"):
        return _read_parquet(path, columns)
    if src.fmt in (".jsonl", ".ndjson"):
        frame = _read_jsonl(path)
        return _select(frame, columns, path)
    delimiter = sep if sep is not None else sniff_delimiter(path, TEXT_FORMATS[src.fmt])
    return _read_csv(path, delimiter, columns=columns, dtype=dtype, progress=progress)


def require_rows(frame: pd.DataFrame, source: str | os.PathLike[str]) -> pd.DataFrame:
    """``frame`` when it has a data row; else the one-line error naming ``source``."""
    if len(frame) == 0:
        raise InputError(f"{os.fspath(source)}: no data rows (only a header)")
    return frame


def _select(frame: pd.DataFrame, columns: Sequence[str] | None, path: Path) -> pd.DataFrame:
    if not columns:
        return frame
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: column {missing[0]!r} not found")
    return frame[list(columns)]


def _read_csv(
    path: Path,
    delimiter: str,
    *,
    columns: Sequence[str] | None,
    dtype: dict[str, Any] | None,
    progress: bool,
) -> pd.DataFrame:
    import pyarrow as pa
    from pyarrow import csv as pacsv

    if len(delimiter) != 1:
        raise InputError(f"{path}: the separator must be one character")
    header = _read_header(path, delimiter)
    if not header or all(not h.strip() for h in header):
        raise InputError(f"input file {path} has no header row")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise InputError(f"{path}: column {dupes[0]!r} appears more than once in the header")
    if columns:
        missing = [c for c in columns if c not in header]
        if missing:
            raise InputError(f"{path}: column {missing[0]!r} not found")
    # Every column is parsed as text, then typed by _infer_types: pyarrow's own inference
    # would turn the ZIP code "01067" into the number 1067.
    wanted = list(columns) if columns else header
    column_types = {name: pa.string() for name in wanted}
    read_opts = pacsv.ReadOptions(block_size=_BLOCK, use_threads=True)
    parse_opts = pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True)
    convert_opts = pacsv.ConvertOptions(
        include_columns=list(columns) if columns else None,
        column_types=column_types,
        strings_can_be_null=True,
        timestamp_parsers=[],  # keep date text as text: callers choose how dates are parsed
    )
    size = path.stat().st_size
    try:
        if progress and size >= _PROGRESS_MIN_BYTES:
            tbl = _read_csv_with_progress(path, read_opts, parse_opts, convert_opts, size)
        else:
            tbl = pacsv.read_csv(
                path, read_options=read_opts, parse_options=parse_opts, convert_options=convert_opts
            )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise _csv_error(path, delimiter, len(header), str(exc)) from None
    except (OSError, EOFError):
        raise InputError(f"{path}: the file cannot be read (truncated or corrupt compressed data)") from None
    keep_text = {k for k, v in (dtype or {}).items() if v in (str, "str", "string", object)}
    frame = _infer_types(tbl, keep_text).to_pandas()
    if dtype:
        other = {k: v for k, v in dtype.items() if k not in keep_text and k in frame.columns}
        if other:
            try:
                frame = frame.astype(other)
            except (TypeError, ValueError):
                raise InputError(f"{path}: a column cannot be converted to the requested dtype") from None
    return frame


_LEADING_ZERO = r"^[+0][0-9]"
_INTEGER = r"^-?[0-9]{1,18}$"
_FLOAT = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"


def _infer_types(table: Any, keep_text: set[str]) -> Any:
    """Type text columns: integers, then floats, else text.

    A column stays text when any value starts with ``0`` or ``+`` followed by a digit
    (ZIP codes, phone numbers, zero-padded ids): converting would change the value.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    arrays = []
    for name, column in zip(table.column_names, table.columns, strict=True):
        if name in keep_text or column.null_count == len(column):
            arrays.append(column)
            continue
        stripped = pc.utf8_trim_whitespace(column)
        head = stripped.slice(0, 512)
        # a regex pass first (a failed cast is far slower than a match), on a sample
        # before the whole column so that text columns are rejected cheaply
        candidates = [
            (pattern, target)
            for pattern, target in ((_INTEGER, pa.int64()), (_FLOAT, pa.float64()))
            if pc.all(pc.match_substring_regex(head, pattern)).as_py() is not False
        ]
        if not candidates or pc.any(pc.match_substring_regex(stripped, _LEADING_ZERO)).as_py():
            arrays.append(column)
            continue
        for pattern, target in candidates:
            if pc.all(pc.match_substring_regex(stripped, pattern)).as_py():
                try:
                    arrays.append(pc.cast(stripped, target))
                    break
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    continue
        else:
            arrays.append(column)
    return pa.table(arrays, names=table.column_names)


def _read_csv_with_progress(path: Path, read_opts: Any, parse_opts: Any, convert_opts: Any, size: int) -> Any:
    import pyarrow as pa
    from pyarrow import csv as pacsv
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    batches = []
    with (
        open(path, "rb") as raw,
        Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TimeRemainingColumn(),
            transient=True,
        ) as bar,
    ):
        task = bar.add_task(f"reading {path.name}", total=size)
        reader = pacsv.open_csv(
            raw, read_options=read_opts, parse_options=parse_opts, convert_options=convert_opts
        )
        for batch in reader:
            batches.append(batch)
            bar.update(task, completed=raw.tell())
        return pa.Table.from_batches(batches, schema=reader.schema)


def text_delimiter(location: str | os.PathLike[str]) -> str | None:
    """The delimiter a text table is read with (None for other formats or missing files)."""
    src = parse_source(location)
    if src.kind != "file" or src.fmt not in TEXT_FORMATS or not src.path.is_file():
        return None
    return sniff_delimiter(src.path, TEXT_FORMATS[src.fmt])


def sniff_delimiter(path: Path, default: str) -> str:
    """Keep the extension's delimiter unless the header clearly uses another one.

    A ``.csv`` whose header has no comma but semicolons (European exports, ARX files) is
    read with ``;``; ``sep=`` always wins over this guess.
    """
    with _open_text(path) as fh:
        try:
            first = fh.readline()
        except UnicodeDecodeError:
            return default
    if default in first:
        return default
    for candidate in (";", "\t", "|", ","):
        if candidate != default and candidate in first:
            return candidate
    return default


def _read_header(path: Path, delimiter: str) -> list[str]:
    with _open_text(path) as fh:
        try:
            row = next(csv.reader(fh, delimiter=delimiter), [])
        except UnicodeDecodeError:
            raise _utf8_error(path) from None
        except csv.Error:
            raise InputError(f"{path}: the header row cannot be parsed as text") from None
        except (OSError, EOFError):
            raise InputError(f"{path}: the file cannot be read (truncated or corrupt compressed data)") from None
    if row and row[0].startswith("\ufeff"):
        row[0] = row[0][1:]
    return row


def _open_binary(path: Path) -> IO[bytes]:
    name = path.name.lower()
    if name.endswith(".gz"):
        import gzip

        return gzip.open(path, "rb")  # type: ignore[return-value]
    if name.endswith(".bz2"):
        import bz2

        return bz2.open(path, "rb")  # type: ignore[return-value]
    if name.endswith(".xz"):
        import lzma

        return lzma.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")  # returned open to the caller


def _open_text(path: Path) -> IO[str]:
    if path.name.lower().endswith((".gz", ".bz2", ".xz")):
        return io.TextIOWrapper(_open_binary(path), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")  # returned open to the caller


def _utf8_error(path: Path) -> InputError:
    """Name the first line that is not UTF-8 (never its bytes): the header or a data line."""
    try:
        with _open_binary(path) as fh:
            for line_no, line in enumerate(fh, start=1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError:
                    where = " (the header row)" if line_no == 1 else ""
                    return InputError(f"{path}: line {line_no}{where} is not valid UTF-8 text")
    except (OSError, EOFError):
        pass
    return InputError(f"{path}: the file is not valid UTF-8 text")


def _csv_error(path: Path, delimiter: str, expected: int, message: str) -> InputError:
    """Turn a parser error into one line naming the line number, never the row text."""
    if "Expected" in message and "columns" in message:
        # Locate the offending line ourselves: the parser's message quotes the row.
        with _open_text(path) as fh:
            reader = csv.reader(fh, delimiter=delimiter)
            for row in reader:
                if len(row) != expected and len(row) != 0:
                    return InputError(
                        f"{path}: line {reader.line_num} has {len(row)} fields, expected {expected}"
                    )
        m = re.search(r"Expected (\d+) columns, got (\d+)", message)
        got = m.group(2) if m else "a different number of"
        return InputError(f"{path}: a row has {got} fields, expected {expected}")
    if "UTF8" in message or "utf-8" in message.lower():
        return _utf8_error(path)
    return InputError(f"{path}: the file cannot be parsed as a delimited table")


def _read_parquet(path: Path, columns: Sequence[str] | None) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
        if columns:
            missing = [c for c in columns if c not in schema.names]
            if missing:
                raise InputError(f"{path}: column {missing[0]!r} not found")
        return pq.read_table(path, columns=list(columns) if columns else None).to_pandas()
    except (pa.ArrowInvalid, OSError):
        raise InputError(f"{path} is not a readable Parquet file") from None


def _read_jsonl(path: Path) -> pd.DataFrame:
    import pandas as pd

    records: list[dict[str, Any]] = []
    with _open_binary(path) as fh:
        try:
            for lineno, raw in enumerate(fh, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise InputError(f"{path}: line {lineno} is not valid UTF-8 text") from None
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except (json.JSONDecodeError, RecursionError):
                    raise InputError(f"{path}: line {lineno} is not valid JSON") from None
                if not isinstance(obj, dict):
                    raise InputError(f"{path}: line {lineno} is not a JSON object")
                records.append(obj)
        except (OSError, EOFError):
            raise InputError(f"{path}: the file cannot be read (truncated or corrupt compressed data)") from None
    if not records:
        raise InputError(f"input file {path} has no records")
    return pd.DataFrame.from_records(records)


def _read_database(src: TableSource) -> pd.DataFrame:
    import pandas as pd

    if not src.path.exists():
        raise InputError(f"database file {src.path} does not exist")
    if src.table is None and src.query is None:
        raise UsageError(f"{src.path}: name a table (?table=NAME) or a query (--query)")
    if src.kind == "duckdb":
        from privdl._optional import require

        duckdb: Any = require("duckdb", "duckdb")
        try:
            con = duckdb.connect(str(src.path), read_only=True)
        except duckdb.Error:
            raise InputError(f"{src.path} cannot be opened as a DuckDB database") from None
        try:
            if src.query is not None:
                try:
                    return con.execute(src.query).df()
                except duckdb.Error:
                    raise InputError(f"{src.path}: the query failed") from None
            names = {r[0] for r in con.execute("SHOW TABLES").fetchall()}
            if src.table not in names:
                raise InputError(f"{src.path}: table {src.table!r} not found")
            return con.execute(f'SELECT * FROM "{src.table}"').df()  # noqa: S608 - name checked against SHOW TABLES
        finally:
            con.close()
    try:
        con = sqlite3.connect(f"file:{src.path.resolve()}?mode=ro", uri=True)
    except sqlite3.Error:
        raise InputError(f"{src.path} cannot be opened as a SQLite database") from None
    try:
        try:
            names = {
                r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type IN ('table','view')")
            }
        except sqlite3.DatabaseError:
            raise InputError(f"{src.path} is not a SQLite database") from None
        if src.query is not None:
            sql = src.query
        else:
            if src.table not in names:
                raise InputError(f"{src.path}: table {src.table!r} not found")
            sql = 'SELECT * FROM "{}"'.format(str(src.table).replace('"', '""'))  # noqa: S608 - name checked against sqlite_master
        try:
            return pd.read_sql_query(sql, con)
        except (sqlite3.Error, pd.errors.DatabaseError):
            raise InputError(f"{src.path}: the query failed") from None
    finally:
        con.close()


# ----------------------------------------------------------------------------- writing
# The only atomic writers of privdl. Every one: a temporary name in the target's folder
# (so the final rename cannot cross a file system), the data fsynced, one rename, the
# folder fsynced (so the rename survives a power cut), and the temporary removed on any
# failure. A process killed midway can leave a temporary behind: sweep_temps removes it.
TEMP_SUFFIX = ".privdl-tmp"
_OLD_MARK = ".privdl-old-"
# a temporary's name carries its writer's PID (``.<name>.<pid>-<random>.privdl-tmp``):
# a temporary whose writer is dead is stale at once, one of a live writer never is
_PID_TEMP = re.compile(r"^\..+\.([0-9]+)-[a-z0-9_]+" + re.escape(TEMP_SUFFIX) + "$")
_log = logging.getLogger("privdl.io")


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}-"


def _temp_pid(name: str) -> int | None:
    """The writer PID in a temporary's (or a staged output's) name, or None for a name
    without one."""
    m = _PID_TEMP.match(name) or _PID_STAGE.match(name)
    return int(m.group(1)) if m else None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a PID we can check: never touch it
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, under another user
        return True
    return True


def _remove_entry(entry: Path) -> bool:
    try:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    except FileNotFoundError:
        return False
    return True


def _sweep_dead_temps(folder: Path) -> list[Path]:
    """Remove the temporaries in ``folder`` of writers that are dead (one listdir);
    never fails the write that calls it. Says so on the ``privdl.io`` logger."""
    removed: list[Path] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        pid = _temp_pid(name)
        if pid is None or _pid_alive(pid):
            continue
        entry = folder / name
        try:
            if _remove_entry(entry):
                removed.append(entry)
        except OSError:
            continue
    if removed:
        fsync_folder(folder)
        _log.warning(
            "privdl: removed %d temporary file(s) left in %s by killed privdl processes",
            len(removed),
            folder,
        )
    return removed


_DISK_FULL_ERRNOS = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if e is not None)
# staged path -> its target, while staged: an error names the target, not the staged name
_STAGED_TARGETS: dict[Path, Path] = {}


class DiskFullError(InputError):
    """The file system ran out of space (or quota) while privdl wrote a file.

    The message is one line, ``no space left on device while writing PATH``; the
    writer that raised it left nothing partial behind.
    """


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is an ``ENOSPC`` / ``EDQUOT`` OS error, or SQLite's "disk is full"."""
    if isinstance(exc, OSError):
        return exc.errno in _DISK_FULL_ERRNOS
    if isinstance(exc, sqlite3.OperationalError):
        return getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL" or "disk is full" in str(exc).lower()
    return False


def disk_full_error(path: str | os.PathLike[str]) -> DiskFullError:
    """The :class:`DiskFullError` for a write of ``path`` (a staged name says its target)."""
    target = Path(path)
    for staged in (target, *target.parents):
        if staged in _STAGED_TARGETS:
            target = _STAGED_TARGETS[staged] / target.relative_to(staged)
            break
    return DiskFullError(f"no space left on device while writing {target}")


def _folder_of(target: Path) -> Path:
    return target.parent if str(target.parent) else Path(".")


def _umask_mode(bits: int) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return bits & ~umask


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike[str], *, private: bool = False, overwrite: bool = True
) -> Iterator[Path]:
    """A temporary file path beside ``path`` for writers that need a path, not a file
    object (SQLite, safetensors); on success it is fsynced and renamed to ``path``.

    Arguments and errors as for :func:`atomic_write`. The temporary starts empty.
    """
    target = Path(path)
    folder = _folder_of(target)
    if not folder.is_dir():
        raise InputError(f"output folder {folder} does not exist")
    if target.is_dir():
        raise InputError(f"output {target} is a folder")
    if not overwrite and os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, "file exists", str(target))
    # mkstemp creates the file 0600: a private file is never readable by others
    _sweep_dead_temps(folder)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=TEMP_SUFFIX, dir=folder)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(target) from None
        raise
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        _install(tmp, target, private=private, overwrite=overwrite)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if is_disk_full(exc):
            raise disk_full_error(target) from None
        raise


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str],
    mode: str = "wb",
    *,
    private: bool = False,
    overwrite: bool = True,
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync it and rename it to ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was.

    Args:
        path: the file to write.
        mode: ``"wb"`` or ``"w"`` (text is UTF-8, newlines untranslated).
        private: give the file mode 0600 (readable by its owner only) from its first
            byte on; otherwise it keeps the mode of the file it replaces, or gets the
            umask's default.
        overwrite: False refuses an existing ``path`` (:class:`FileExistsError`, as
            ``O_EXCL`` would), atomically: the file appears complete or not at all.

    Raises:
        InputError: the target folder does not exist, or the target is a folder.
        FileExistsError: ``overwrite=False`` and ``path`` exists.
    """
    with atomic_path(path, private=private, overwrite=overwrite) as tmp:
        encoding = None if "b" in mode else "utf-8"
        newline = None if "b" in mode else ""
        with open(tmp, mode, encoding=encoding, newline=newline) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())


def atomic_write_private(path: str | os.PathLike[str], mode: str = "wb", *, overwrite: bool = True) -> Any:
    """:func:`atomic_write` of a file readable by its owner only (mode 0600): keys."""
    return atomic_write(path, mode, private=True, overwrite=overwrite)


def write_bytes(
    path: str | os.PathLike[str], data: bytes, *, private: bool = False, overwrite: bool = True
) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path, "wb", private=private, overwrite=overwrite) as fh:
        fh.write(data)
    return Path(path)


def write_text(
    path: str | os.PathLike[str], text: str, *, private: bool = False, overwrite: bool = True
) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path, "w", private=private, overwrite=overwrite) as fh:
        fh.write(text)
    return Path(path)


def _install(tmp: Path, target: Path, *, private: bool, overwrite: bool = True) -> None:
    """Give ``tmp`` its final mode and rename it to ``target``; fsync the folder."""
    if private:
        os.chmod(tmp, 0o600)
    elif target.exists():
        # keep the mode of the file being replaced, not mkstemp's 0600 (e.g. 0644 for a table)
        os.chmod(tmp, target.stat().st_mode & 0o777)
    else:
        os.chmod(tmp, _umask_mode(0o666))
    if overwrite:
        os.replace(tmp, target)
    else:
        try:
            os.link(tmp, target)  # fails if target appeared meanwhile: never overwrites
        except FileExistsError:
            raise
        except OSError:  # no hard links on this file system: the checked rename
            if os.path.lexists(target):
                raise FileExistsError(errno.EEXIST, "file exists", str(target)) from None
            os.replace(tmp, target)
        else:
            tmp.unlink()
    fsync_folder(_folder_of(target))


def fsync_folder(folder: str | os.PathLike[str]) -> None:
    """Make the renames in ``folder`` durable, where the platform can fsync a folder."""
    with contextlib.suppress(OSError):
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _fsync_tree(folder: Path) -> None:
    for sub in sorted(folder.rglob("*"), reverse=True):
        if sub.is_file() and not sub.is_symlink():
            with open(sub, "rb") as fh:
                os.fsync(fh.fileno())
        elif sub.is_dir():
            fsync_folder(sub)
    fsync_folder(folder)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike[str], *, may_replace: Any = None) -> Iterator[Path]:
    """Write a folder under a temporary name beside ``path``, then swap it in whole.

    Readers see the old folder or the new one, never a half-written one, and never
    no folder: on Linux the two are exchanged in one ``renameat2(RENAME_EXCHANGE)``;
    elsewhere the old folder is renamed aside, the new one renamed in, and the old one
    deleted (a crash between the two renames leaves the old folder aside, and
    :func:`sweep_temps` puts it back). Every file is fsynced before the swap.

    Args:
        path: the folder to write (its parents are created).
        may_replace: called with ``path`` when it exists before the swap; it raises
            to refuse replacing it (e.g. a folder that is not a model folder).

    Raises:
        InputError: ``path`` exists and is not a folder.
    """
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise InputError(f"output {target} exists and is not a folder")
    parent = _folder_of(target)
    parent.mkdir(parents=True, exist_ok=True)
    _sweep_dead_temps(parent)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=TEMP_SUFFIX, dir=parent))
    try:
        yield tmp
        _fsync_tree(tmp)
        if target.exists():
            if may_replace is not None:
                may_replace(target)
            os.chmod(tmp, target.stat().st_mode & 0o777)
            _swap_folder(tmp, target)
        else:
            os.chmod(tmp, _umask_mode(0o777))  # mkdtemp made it 0700
            os.rename(tmp, target)
        fsync_folder(parent)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(exc):
            raise disk_full_error(target) from None
        raise


def _swap_folder(new: Path, target: Path) -> None:
    """Put folder ``new`` at ``target`` (which exists) and delete the old one."""
    if _exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # ``new`` now names the old folder
        return
    aside = target.with_name(f".{target.name}{_OLD_MARK}{secrets.token_hex(4)}")
    os.rename(target, aside)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(aside, target)
        raise
    fsync_folder(_folder_of(target))
    shutil.rmtree(aside, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2``); False where it is unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def sweep_temps(folder: str | os.PathLike[str], *, older_than: float = 3600.0) -> list[Path]:
    """Remove what killed writers left in ``folder``; return what was removed.

    Temporary files and folders of the atomic writers (``.<name>.<pid>-<random>.privdl-tmp``)
    and staged outputs of :class:`StagedOutputs` (``.privdl-stage-<pid>-<random>.<name>``)
    are deleted when the process ``<pid>`` is dead, and never while it runs; those
    without a PID in their name when older than ``older_than`` seconds (younger ones may belong to a writer still
    running). Every atomic writer sweeps its folder's dead writers' temporaries. A folder
    left aside by an interrupted :func:`atomic_folder` swap is put back when its
    target is missing, else deleted.
    """
    import time

    base = Path(folder)
    removed: list[Path] = []
    cutoff = time.time() - older_than
    for entry in sorted(base.iterdir()) if base.is_dir() else ():
        name = entry.name
        if _OLD_MARK in name and name.startswith("."):
            original = base / name[1:].rsplit(_OLD_MARK, 1)[0]
            if not os.path.lexists(original):
                os.rename(entry, original)
                continue
        elif not (name.startswith(".") and name.endswith(TEMP_SUFFIX)) and not name.startswith(STAGE_PREFIX):
            continue
        pid = _temp_pid(name)
        if pid is not None:
            # the writer's PID is in the name: stale exactly when that writer is dead
            if not _pid_alive(pid) and _remove_entry(entry):
                removed.append(entry)
            continue
        try:
            if entry.lstat().st_mtime > cutoff:
                continue
        except FileNotFoundError:
            continue
        if _remove_entry(entry):
            removed.append(entry)
    if removed:
        fsync_folder(base)
    return removed


STAGE_PREFIX = ".privdl-stage-"
# a staged output's name carries its writer's PID too: ``.privdl-stage-<pid>-<random>.<name>``
_PID_STAGE = re.compile(r"^" + re.escape(STAGE_PREFIX) + r"([0-9]+)-[0-9a-f]+\.")


def _stage_prefix() -> str:
    return f"{STAGE_PREFIX}{os.getpid()}-{secrets.token_hex(4)}."


@dataclass
class _Staged:
    staged: Path
    target: Path
    folder: bool
    keep_if_refused: bool


class StagedOutputs:
    """Outputs written beside their targets under staged names, moved into place by
    :meth:`commit` or removed by :meth:`discard`.

    An audited operation writes each output to the path :meth:`file` (or
    :meth:`folder`, :meth:`table`) returns, fingerprints it there for its audit entry,
    and renames it only once the entry is written: an entry that cannot be written
    leaves no output. A staged name ends with the target's name
    (``.privdl-stage-<hex>.released.csv``), so writers that pick the format by the
    extension work unchanged; it lives in the target's folder, so the final rename
    is atomic. Nothing is created until the writer writes the staged path.

    Example:
        >>> staging = StagedOutputs()  # doctest: +SKIP
        >>> write_table(frame, staging.file("out.csv"))  # doctest: +SKIP
        >>> staging.commit()  # doctest: +SKIP
    """

    def __init__(self) -> None:
        self._items: list[_Staged] = []

    def __bool__(self) -> bool:
        return bool(self._items)

    def file(
        self,
        target: str | os.PathLike[str],
        *,
        copy_existing: bool = False,
        keep_if_refused: bool = False,
    ) -> Path:
        """The staged path of the file ``target`` (the same one if staged before).

        Args:
            copy_existing: start the staged file as a copy of ``target`` (for writers
                that add to a file, e.g. a table into a SQLite database).
            keep_if_refused: :meth:`commit` with ``refused=True`` keeps it (a report
                that explains a refusal); other outputs are discarded then.

        Raises:
            InputError: the target folder does not exist, or the target is a folder.
        """
        target = Path(target)
        folder = target.parent if str(target.parent) else Path(".")
        for item in self._items:
            if item.target == target:
                return item.staged
        if not folder.is_dir():
            raise InputError(f"output folder {folder} does not exist")
        if target.is_dir():
            raise InputError(f"output {target} is a folder")
        _sweep_dead_temps(folder)
        staged = folder / f"{_stage_prefix()}{target.name}"
        if copy_existing and target.is_file():
            try:
                shutil.copyfile(target, staged)
            except BaseException as exc:
                with contextlib.suppress(FileNotFoundError):
                    staged.unlink()
                if is_disk_full(exc):
                    raise disk_full_error(target) from None
                raise
        self._items.append(_Staged(staged, target, False, keep_if_refused))
        _STAGED_TARGETS[staged] = target
        return staged

    def folder(self, target: str | os.PathLike[str]) -> Path:
        """A new, empty staged folder for the folder ``target``; on commit it becomes
        ``target``, or its files are moved into ``target`` when that exists.

        The parent folders of ``target`` are created now (empty folders only).

        Raises:
            InputError: ``target`` exists and is not a folder.
        """
        target = Path(target)
        for item in self._items:
            if item.target == target:
                return item.staged
        if target.exists() and not target.is_dir():
            raise InputError(f"output {target} exists and is not a folder")
        parent = target.parent if str(target.parent) else Path(".")
        parent.mkdir(parents=True, exist_ok=True)
        _sweep_dead_temps(parent)
        staged = Path(tempfile.mkdtemp(prefix=_stage_prefix(), dir=parent))
        self._items.append(_Staged(staged, target, True, False))
        _STAGED_TARGETS[staged] = target
        return staged

    def table(self, location: str | os.PathLike[str]) -> str:
        """The staged location of a table output (a file path or a ``sqlite:///`` URL).

        A SQLite target is staged as a copy of the database, so its other tables
        are kept.
        """
        src = check_output(location)
        if src.kind == "sqlite":
            staged = self.file(src.path, copy_existing=True)
            url = "sqlite:///" + quote(str(staged))
            return url + (f"?table={quote(src.table)}" if src.table else "")
        return str(self.file(src.path))

    def staged_path(self, target: str | os.PathLike[str]) -> Path | None:
        """Where ``target`` is staged, or None if it is not."""
        for item in self._items:
            if item.target == Path(target):
                return item.staged
        return None

    def keeps(self, target: str | os.PathLike[str]) -> bool:
        """Whether ``target`` was staged with ``keep_if_refused``."""
        return any(i.target == Path(target) and i.keep_if_refused for i in self._items)

    def written(self) -> list[tuple[Path, Path]]:
        """``(staged, target)`` of every staged output the writer has written."""
        return [(i.staged, i.target) for i in self._items if i.staged.exists() and not _empty_dir(i)]

    def commit(self, *, refused: bool = False) -> list[Path]:
        """Move every written output into place; return the targets.

        With ``refused=True`` only the outputs staged with ``keep_if_refused`` are
        moved, the others are discarded.

        Raises:
            OSError: a rename failed; what was not moved yet is discarded.
        """
        done: list[Path] = []
        try:
            for item in list(self._items):
                if refused and not item.keep_if_refused:
                    continue
                if not item.staged.exists() or _empty_dir(item):
                    continue
                if item.folder:
                    _commit_folder(item.staged, item.target)
                else:
                    _commit_file(item.staged, item.target)
                self._items.remove(item)
                _STAGED_TARGETS.pop(item.staged, None)
                done.append(item.target)
        finally:
            self.discard()
        for folder in {t.parent if str(t.parent) else Path(".") for t in done}:
            fsync_folder(folder)
        return done

    def discard(self) -> None:
        """Remove every staged output that is still staged."""
        for item in self._items:
            _STAGED_TARGETS.pop(item.staged, None)
            with contextlib.suppress(FileNotFoundError):
                if item.folder:
                    shutil.rmtree(item.staged)
                else:
                    item.staged.unlink()
        self._items.clear()


def _empty_dir(item: _Staged) -> bool:
    return item.folder and item.staged.is_dir() and not any(item.staged.iterdir())


def _commit_file(staged: Path, target: Path) -> None:
    # the mode the atomic writers give (that of the file replaced, else the umask's),
    # never wider than the writer chose for the staged file (0600 stays 0600)
    mode = target.stat().st_mode & 0o777 if target.exists() else _umask_mode(0o666)
    os.chmod(staged, mode & staged.stat().st_mode)
    os.replace(staged, target)


def _commit_folder(staged: Path, target: Path) -> None:
    if not target.exists():
        os.chmod(staged, _umask_mode(0o777))  # mkdtemp made it 0700
        os.rename(staged, target)
        return
    for child in sorted(staged.iterdir()):
        os.replace(child, target / child.name)  # each file keeps the mode it was written with
    fsync_folder(target)
    staged.rmdir()


def check_output_path(
    path: str | os.PathLike[str], *, what: str = "output", folder: bool = False
) -> Path:
    """Check where an output file (or, with ``folder=True``, an output folder) will be
    written, before any work: the one path check every writer calls.

    The folder that will hold it must exist, be a folder and be writable; the path
    itself must not be a folder (a file output) or a file (a folder output).

    Raises:
        InputError: one line naming the path and what is wrong.
    """
    target = Path(path)
    parent = Path(os.path.abspath(target)).parent
    shown = target.parent if str(target.parent) else Path(".")
    if folder:
        if target.exists() and not target.is_dir():
            raise InputError(f"{what} {target} is a file, not a folder")
    elif target.is_dir():
        raise InputError(f"{what} {target} is a folder, not a file")
    if not parent.exists():
        raise InputError(f"{what} folder {shown} does not exist")
    if not parent.is_dir():
        raise InputError(f"{what} folder {shown} is a file, not a folder")
    writable = target if folder and target.is_dir() else parent
    if not os.access(writable, os.W_OK | os.X_OK):
        raise InputError(f"{what} folder {writable if writable is target else shown} is not writable")
    return target


def check_output(location: str | os.PathLike[str]) -> TableSource:
    """Check an output location before any work: known format, a writable folder
    (see :func:`check_output_path`).

    Raises:
        FormatError: unknown extension.
        InputError: the output folder is missing, not a folder or not writable, or
            the output is a folder.
    """
    src = parse_source(location)
    if src.kind not in ("file", "sqlite") or (src.kind == "file" and src.fmt not in FORMATS):
        raise FormatError(
            f"{src.path}: unknown output format {src.fmt or '(no extension)'!r};"
            " use .csv, .tsv, .parquet, .jsonl or a sqlite:/// URL"
        )
    check_output_path(src.path)
    return src


def write_table(frame: pd.DataFrame, location: str | os.PathLike[str], *, sep: str | None = None) -> Path:
    """Write ``frame`` atomically; the format follows the extension of ``location``.

    Raises:
        InputError: the output folder does not exist.
        FormatError: unknown extension.
    """
    from privdl import progress

    src = check_output(location)
    with progress.step(f"writing {src.path.name}", total=len(frame)) as bar:
        return _write_table(frame, src, sep, bar)


_CSV_ROWS_PER_WRITE = 200_000


def _write_table(frame: pd.DataFrame, src: TableSource, sep: str | None, bar: Any) -> Path:
    if src.kind == "sqlite":
        return _write_sqlite(frame, src)
    path = src.path
    if src.fmt in (".parquet", ".pq"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(frame, preserve_index=False)
        with atomic_write(path, "wb") as fh:
            pq.write_table(table, fh)
        return path
    if src.fmt in (".jsonl", ".ndjson"):
        with atomic_write(path, "w") as fh:
            frame.to_json(fh, orient="records", lines=True, date_format="iso", force_ascii=False)
        return path
    delimiter = sep if sep is not None else TEXT_FORMATS[src.fmt]
    compression = path.suffix.lower() if path.suffix.lower() in COMPRESSIONS else None
    if compression:
        comp = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd"}[compression]
        with atomic_write(path, "wb") as fh:
            frame.to_csv(fh, sep=delimiter, index=False, compression=comp)
        return path
    with atomic_write(path, "w") as fh:
        for start in range(0, max(len(frame), 1), _CSV_ROWS_PER_WRITE):
            part = frame.iloc[start : start + _CSV_ROWS_PER_WRITE]
            part.to_csv(fh, sep=delimiter, index=False, header=start == 0, lineterminator="\n")
            bar.advance(len(part))
    return path


def _write_sqlite(frame: pd.DataFrame, src: TableSource) -> Path:
    if not src.table:
        raise UsageError(f"{src.path}: name the output table with ?table=NAME")
    # the database is copied to the temporary, the table written there, and the copy
    # renamed over the original: its other tables are kept, a failure changes nothing
    with atomic_path(src.path) as tmp:
        if src.path.exists():
            shutil.copyfile(src.path, tmp)
        con = sqlite3.connect(tmp)
        try:
            frame.to_sql(src.table, con, if_exists="replace", index=False)
            con.commit()
        finally:
            con.close()
    return src.path


# ----------------------------------------------------------------------------- helpers
def check_distinct_paths(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Refuse to write an output over its own input.

    Raises:
        UsageError: both name the same file.
    """
    a, b = parse_source(source).path, parse_source(target).path
    same = a.resolve() == b.resolve()
    if not same and a.exists() and b.exists():
        same = os.path.samefile(a, b)
    if same:
        raise UsageError(f"output {b} is the input file; choose another output path")
