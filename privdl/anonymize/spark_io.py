"""Reading and writing tables with Spark for ``privdl anonymize --engine spark``.

* Input: a CSV, Parquet or JSON Lines file, a folder of part files, or a glob
  (``exports/2026-11-*.parquet``); the format follows the extension (of the path, or
  of the part files in a folder). A URL (``hdfs://``, ``s3a://``) is passed to Spark
  as it is (Parquet unless its extension says otherwise). CSV is read with a header, types inferred and
  ``FAILFAST`` (a ragged or malformed row fails the run); its delimiter is sniffed
  from the first file's header as :func:`privdl.io.read_table` does.
* Output: a folder of Parquet (``.parquet``, or no extension) or CSV (``.csv``,
  ``.tsv``) part files, written by Spark's writer into a staged sibling folder and
  renamed into place only after the audit entry is written (evidence first, as the
  pandas path: :meth:`privdl.audit.operation.Operation.stage`); a failure leaves
  nothing. An existing non-empty output folder is refused: mixing new part files
  with old ones would release a table nobody measured.
* Errors are one line naming the path, never a record (Spark's own messages quote
  the malformed record, so they are not shown).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

from privdl.errors import FormatError, InputError, UsageError

__all__ = ["check_spark_output", "read_spark", "release_spark", "spark_inputs"]

_READ = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet",
         ".jsonl": "json", ".ndjson": "json", ".json": "json"}
_WRITE = {"": "parquet", ".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "csv"}
_COMPRESSED = (".gz", ".bz2", ".snappy", ".zst", ".lz4")


def _suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    while suffixes and suffixes[-1] in _COMPRESSED:
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def spark_inputs(location: str | os.PathLike[str]) -> tuple[list[Path], str]:
    """The files a Spark input names, and their format (``csv``, ``parquet``, ``json``).

    Raises:
        InputError: nothing there, an empty folder, or mixed formats.
        FormatError: an unknown extension.
    """
    text = os.fspath(location)
    path = Path(text)
    if "://" in text:
        # a cluster file system (hdfs://, s3a://...): Spark lists it; Parquet by default
        kind = _READ.get(_suffix(Path(text.split("://", 1)[1])), "parquet")
        return [], kind
    if glob.has_magic(text):
        files = sorted(Path(p) for p in glob.glob(text) if Path(p).is_file())
        if not files:
            raise InputError(f"input {text} matches no file")
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(("_", ".")))
        if not files:
            raise InputError(f"input folder {path} holds no data file")
    elif path.is_file():
        files = [path]
    else:
        raise InputError(f"input {path} does not exist")
    kinds = {_READ.get(_suffix(f)) for f in files}
    if None in kinds:
        bad = next(f for f in files if _READ.get(_suffix(f)) is None)
        raise FormatError(f"{bad}: unknown table format {_suffix(bad) or '(no extension)'!r}; use .csv, .parquet or .jsonl")
    if len(kinds) > 1:
        raise InputError(f"input {text} mixes formats ({', '.join(sorted(k for k in kinds if k))})")
    for f in files:
        if not os.access(f, os.R_OK):
            raise InputError(f"input file {f} is not readable")
    return files, kinds.pop() or ""


def read_spark(spark: Any, location: str | os.PathLike[str], *, sep: str | None = None) -> Any:
    """A lazy Spark DataFrame over ``location`` (see the module docstring)."""
    from privdl.io import sniff_delimiter

    files, kind = spark_inputs(location)
    paths = [str(f) for f in files] or [os.fspath(location)]
    if kind == "parquet":
        return spark.read.parquet(*paths)
    if kind == "json":
        return spark.read.options(mode="FAILFAST").json(paths)
    default = "\t" if _suffix(Path(paths[0])) == ".tsv" else ","
    delimiter = sep if sep is not None else (sniff_delimiter(files[0], default) if files else default)
    return spark.read.options(
        header=True, inferSchema=True, sep=delimiter, mode="FAILFAST", enforceSchema=False
    ).csv(paths)


def check_spark_output(location: str | os.PathLike[str]) -> str:
    """Check a Spark output folder before any work; return its format.

    Raises:
        FormatError: an extension other than .parquet, .csv, .tsv or none.
        InputError: the parent folder is missing or not writable, or the output is a file.
        UsageError: the output folder exists and is not empty.
    """
    from privdl.io import check_output_path

    path = Path(location)
    kind = _WRITE.get(_suffix(path))
    if kind is None:
        raise FormatError(f"{path}: unknown output format {_suffix(path)!r} for --engine spark; use .parquet or .csv")
    check_output_path(path, folder=True)
    if path.is_dir() and any(path.iterdir()):
        raise UsageError(f"output folder {path} exists and is not empty; remove it or choose another")
    return kind


def _write(released: Any, staged: Path, kind: str, sep: str) -> None:
    writer = released.write.mode("overwrite")
    if kind == "parquet":
        writer.parquet(str(staged))
    else:
        writer.options(header=True, sep=sep).csv(str(staged))


def _read_back(spark: Any, staged: Path, kind: str, sep: str, schema: Any) -> Any:
    if kind == "parquet":
        return spark.read.parquet(str(staged))
    return spark.read.options(header=True, sep=sep).schema(schema).csv(str(staged))


def release_spark(
    anonymizer: Any,
    data: Any,
    output: str | os.PathLike[str],
    *,
    report: str | os.PathLike[str] | None = None,
    sep: str | None = None,
    spark: Any = None,
) -> Any:
    """:meth:`~privdl.anonymize.anonymizer.Anonymizer.release` on Spark: read, anonymize
    and write a folder of part files, all or nothing, audit entry first.

    The report is measured on what was written (read back from the staged folder),
    so its figures are those of the released artifact.

    Returns:
        The released table as read back from the output folder (a Spark DataFrame).
    """
    from privdl.anonymize.spark_engine import prepare, report_for, subjects_of, with_manifest
    from privdl.anonymize.spark_session import active_or_local, is_spark_frame
    from privdl.audit import operation
    from privdl.fingerprint import fingerprint, fingerprint_folder
    from privdl.io import check_distinct_paths

    kind = check_spark_output(output)
    out_sep = sep if sep is not None else ("\t" if _suffix(Path(output)) == ".tsv" else ",")
    if is_spark_frame(data):
        inputs: list[Any] = [{"kind": "spark table", "columns": len(data.columns)}]
        session = data.sparkSession
    else:
        files, _ = spark_inputs(data)
        if files:
            check_distinct_paths(data, output)
            inputs = [os.fspath(data)] if Path(data).exists() else [os.fspath(f) for f in files]
        else:
            inputs = [{"url": os.fspath(data)}]
        session = active_or_local(spark)
    with operation(anonymizer.audit_log, "anonymize", params=anonymizer.params_record(), inputs=inputs) as op:
        try:
            frame = data if is_spark_frame(data) else read_spark(session, data, sep=sep)
            run = prepare(frame, anonymizer.policy, anonymizer.key)
            staged = op.stage(output, folder=True)
            _write(run.released, staged, kind, out_sep)
            measured = _read_back(session, staged, kind, out_sep, run.released.schema)
            report_ = report_for(
                run, measured, policy=anonymizer.policy, key=anonymizer.key, linkable=anonymizer._linkable
            )
            source = inputs[0] if len(inputs) == 1 else {"files": [fingerprint(i) for i in inputs]}
            anonymizer.report_ = with_manifest(
                report_,
                anonymizer.params_record(),
                source=source,
                released_sha256=fingerprint_folder(staged)["sha256"],
            )
        except Exception as exc:
            raise _one_line(exc, data) from None
        anonymizer.warnings_ = list(anonymizer.report_.warnings)
        anonymizer.subjects_ = subjects_of(measured, anonymizer.policy)
        anonymizer.released_columns_ = list(measured.columns)
        if report is not None:
            anonymizer.report_.save(op.stage(report))
        anonymizer._record(op)
    return _read_back(session, Path(output), kind, out_sep, run.released.schema)


def _one_line(exc: Exception, data: Any) -> Exception:
    """privdl's own errors pass; Spark's (which may quote a record) become one line."""
    from privdl.errors import PrivdlError

    if isinstance(exc, PrivdlError):
        return exc
    cause = _python_cause(exc)
    if cause is not None:
        return cause
    where = "the input table" if not isinstance(data, str | os.PathLike) else f"input {os.fspath(data)}"
    name = type(exc).__name__
    if name in ("AnalysisException", "Py4JJavaError", "SparkException", "PythonException", "IllegalArgumentException"):
        return InputError(f"{where}: Spark could not read or process it ({name}; malformed record or schema?)")
    return exc


def _python_cause(exc: Exception) -> Exception | None:
    """A privdl error raised inside a Spark worker, rebuilt from its class name (no message text)."""
    from privdl import errors

    text = str(exc)
    for name in ("PolicyNotMetError", "PolicyError", "InputError"):
        if f"privdl.errors.{name}" in text or f"{name}:" in text:
            return getattr(errors, name)("a check failed inside a Spark task (see the worker log)")
    return None
