"""`privdl anonymize`: release a copy of a table under a policy."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from privdl.cli.options import cli_audit_log, load_key, report_target
from privdl.errors import UsageError


def anonymize(
    input: str = typer.Argument(
        ..., help="Input table: .csv .tsv .parquet .jsonl, sqlite:///db?table=T, or - (standard input)."
    ),
    output: str = typer.Option(
        ...,
        "-o",
        "--output",
        help="Output table (format from the extension), or - (standard output);"
        " with --engine spark a .parquet or .csv folder.",
    ),
    policy: Path | None = typer.Option(None, "--policy", help="Policy TOML file; flags add to it."),
    ids: list[str] = typer.Option(
        [],
        "--id",
        help="Direct identifier COL[:TRANSFORM[:OPT=V,...]]; transform pseudonymize"
        " (default), encrypt, mask, redact, drop, shift_dates. Repeatable.",
    ),
    qi: list[str] = typer.Option([], "--qi", help="Quasi-identifier column. Repeatable."),
    sensitive: list[str] = typer.Option([], "--sensitive", help="Sensitive column. Repeatable."),
    drop: list[str] = typer.Option([], "--drop", help="Column to remove. Repeatable."),
    keep: list[str] = typer.Option(
        [], "--keep", help="Column kept unchanged: you assert an attacker cannot link on it. Repeatable."
    ),
    strict: bool = typer.Option(
        False, "--strict", help="Every column must have a role (--id, --qi, --sensitive, --keep, --drop)."
    ),
    k: int | None = typer.Option(None, "-k", help="k-anonymity target."),
    l_diversity: int | None = typer.Option(None, "--l-diversity", help="l-diversity target."),
    l_kind: str | None = typer.Option(None, "--l-kind", help="distinct (default) or entropy."),
    t_closeness: float | None = typer.Option(None, "--t-closeness", help="t-closeness target (0 < t <= 1)."),
    max_suppression: float | None = typer.Option(
        None, "--max-suppression", help="Share of rows that may be suppressed."
    ),
    hierarchy: list[str] = typer.Option(
        [], "--hierarchy", help="COL=SPEC: prefix, interval:W, date or an ARX CSV file."
    ),
    algorithm: str | None = typer.Option(None, "--algorithm", help="mondrian (default) or global."),
    engine: str = typer.Option(
        "pandas", "--engine", help="pandas or spark (Spark reads files, folders or globs of part files)."
    ),
    key_env: str | None = typer.Option(None, "--key-env", help="Environment variable holding the key."),
    key_file: Path | None = typer.Option(None, "--key-file", help="Key file (mode 0600)."),
    report: Path | None = typer.Option(None, "--report", help="Write the report (.json, .md or .html)."),
    audit_log: Path | None = typer.Option(None, "--audit-log", help="Append one entry to this audit log."),
    audit_key_env: str = typer.Option(
        "PRIVDL_AUDIT_KEY", "--audit-key-env", help="Variable holding the audit key."
    ),
    sep: str | None = typer.Option(None, "--sep", help="Delimiter for text tables."),
    query: str | None = typer.Option(None, "--query", help="SQL query for a database input."),
    fmt: str | None = typer.Option(
        None, "--format", help="Format of - (standard input/output): csv (default), tsv, jsonl, parquet."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON document."),
) -> None:
    """Pseudonymize identifiers and generalize quasi-identifiers; write the released table."""
    from privdl.cli import streams

    stream_fmt = streams.check_format(fmt, streams=streams.STREAM in (input, output))
    if output == streams.STREAM and as_json:
        raise UsageError("--json prints to standard output, which -o - uses for the table")
    piped = streams.STREAM in (input, output)
    with streams.stream_folder(piped) as folder, streams.named_as_streams(folder):
        source = input
        target = output
        if output == streams.STREAM:
            assert folder is not None
            target = str(streams.stdout_target(folder, stream_fmt))
        if input == streams.STREAM:
            assert folder is not None
            _check_options(output=target, report=report)  # before standard input is read
            source = str(streams.spool_stdin(folder, stream_fmt))
        summary = _anonymize(
            source, target, policy=policy, ids=ids, qi=qi, sensitive=sensitive, drop=drop, keep=keep,
            strict=strict, k=k, l_diversity=l_diversity, l_kind=l_kind, t_closeness=t_closeness,
            max_suppression=max_suppression, hierarchy=hierarchy, algorithm=algorithm, engine=engine,
            key_env=key_env, key_file=key_file, report=report, audit_log=audit_log,
            audit_key_env=audit_key_env, sep=sep, query=query,
        )  # fmt: skip
        if output == streams.STREAM:  # the entry is written: the table may go out now
            streams.copy_to_stdout(Path(target))
    shown = "standard output" if output == streams.STREAM else output
    if as_json:
        typer.echo(json.dumps({**summary, "output": shown}, indent=2, sort_keys=True))
    else:
        # the table's own stream stays clean: the summary goes to stderr beside it
        typer.echo(_summary_line(summary, shown), err=output == streams.STREAM)


def _check_options(*, output: str, report: Path | None) -> None:
    from privdl import io

    io.check_output(output)
    if report is not None:
        report_target(report)


def _anonymize(
    input: str,
    output: str,
    *,
    policy: Path | None,
    ids: list[str],
    qi: list[str],
    sensitive: list[str],
    drop: list[str],
    keep: list[str],
    strict: bool,
    k: int | None,
    l_diversity: int | None,
    l_kind: str | None,
    t_closeness: float | None,
    max_suppression: float | None,
    hierarchy: list[str],
    algorithm: str | None,
    engine: str,
    key_env: str | None,
    key_file: Path | None,
    report: Path | None,
    audit_log: Path | None,
    audit_key_env: str,
    sep: str | None,
    query: str | None,
) -> dict[str, Any]:
    """The release itself (files only; see :mod:`privdl.cli.streams` for ``-``)."""
    from privdl import io
    from privdl.anonymize.anonymizer import Anonymizer
    from privdl.anonymize.policy import Policy

    # Cheap checks first: no input is read and no key is asked for when usage is wrong.
    io.check_distinct_paths(input, output)
    if engine == "spark":
        # read and written by Spark: INPUT may be a folder or glob, OUTPUT is a folder
        from privdl.anonymize.spark_io import check_spark_output

        check_spark_output(output)
    else:
        io.check_output(output)
    if report is not None:
        report_target(report)
    hierarchies = dict(_split_hierarchy(h) for h in hierarchy)
    base = Policy.from_toml(policy) if policy is not None else Policy()
    the_policy = base.merge(
        identifiers=ids,
        quasi_identifiers=qi,
        sensitive=sensitive,
        drop=drop,
        keep=keep,
        k=k,
        l=l_diversity,
        l_kind=l_kind,
        t=t_closeness,
        max_suppression=max_suppression,
        hierarchies=hierarchies,
        algorithm=algorithm,
        base_dir=base.base_dir if base.base_dir is not None else Path.cwd(),
        strict=strict or None,
    )
    if not the_policy.named_columns:
        raise UsageError("nothing to do: give --id, --qi, --drop or a --policy file")
    key = load_key(key_env, key_file, required=the_policy.needs_key)
    anonymizer = Anonymizer(
        the_policy, key=key, engine=engine, audit_log=cli_audit_log(audit_log, audit_key_env)
    )
    anonymizer.release(input, output, report=report, sep=sep, query=query, progress=sys.stderr.isatty())
    for line in anonymizer.warnings_:
        print(f"privdl: warning: {line}", file=sys.stderr)
    return _summary(the_policy, key, anonymizer.report_)


def _split_hierarchy(spec: str) -> tuple[str, str]:
    column, sep, value = spec.partition("=")
    if not sep or not column.strip() or not value.strip():
        raise UsageError(f"--hierarchy {spec!r}: expected COL=SPEC")
    return column.strip(), value.strip()


def _summary(policy: Any, key: Any, report: Any) -> dict[str, Any]:
    """What the command prints, as a value (the line below, or ``--json``)."""
    counts: dict[str, int] = {}
    for rule in policy.identifiers:
        counts[rule.transform] = counts.get(rule.transform, 0) + 1
    # the achieved k is the honest one: linkable columns counted (see the warnings)
    achieved = report.summary()
    return {
        "rows_in": report.rows_in,
        "rows_out": report.rows_out,
        "suppressed": report.rows_in - report.rows_out,
        "key_id": key.key_id if key is not None else None,
        "identifier_transforms": dict(sorted(counts.items())),
        "dropped": len(policy.drop),
        "quasi_identifiers": len(policy.quasi_identifiers),
        "k_target": policy.k if policy.quasi_identifiers else None,
        "k_achieved": achieved.get("k"),
        "linkable_columns_counted": len(achieved.get("linkable") or []),
        "passed_through": len(report.passthrough),
    }


def _summary_line(s: dict[str, Any], output: str) -> str:
    done = ", ".join(f"{n} {t}" for t, n in s["identifier_transforms"].items())
    extra = f"; {s['dropped']} dropped" if s["dropped"] else ""
    qi = (
        f"; {s['quasi_identifiers']} quasi-identifiers generalized (target k={s['k_target']})"
        if s["quasi_identifiers"]
        else ""
    )
    if s["k_achieved"] is not None:
        linkable = s["linkable_columns_counted"]
        counted = f" with {linkable} linkable column(s) counted" if linkable else ""
        qi += f"; achieved k={s['k_achieved']}{counted}"
    kid = f", key {s['key_id']}" if s["key_id"] is not None else ""
    sup = f", {s['suppressed']} suppressed" if s["suppressed"] else ""
    return (
        f"released {s['rows_out']} of {s['rows_in']} rows{sup} to {output}{kid}"
        f" ({done or 'no identifier transforms'}{extra}{qi});"
        f" {s['passed_through']} columns passed through unchanged"
    )


def register(app: typer.Typer) -> None:
    """Add `privdl anonymize`."""
    app.command("anonymize")(anonymize)
