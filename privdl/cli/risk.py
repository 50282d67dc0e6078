"""`privdl risk`: how exposed is a table? (registered by :func:`register`)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from privdl.cli.options import audit_context, report_target


def risk(
    input: str = typer.Argument(
        ..., help="Table to assess (CSV, TSV, Parquet, JSONL, database), or - (standard input)."
    ),
    qi: list[str] = typer.Option(..., "--qi", help="Quasi-identifier column. Repeatable."),
    sensitive: list[str] = typer.Option(
        [], "--sensitive", help="Sensitive column (l-diversity, t-closeness). Repeatable."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    max_risk: float | None = typer.Option(
        None,
        "--max-risk",
        help="Exit 1 when the highest prosecutor risk (1 / smallest class) is above this.",
    ),
    report: str | None = typer.Option(None, "--report", help="Also write .json, .md or .html."),
    sep: str | None = typer.Option(None, "--sep", help="Delimiter for text tables."),
    fmt: str | None = typer.Option(
        None, "--format", help="Format of - (standard input): csv (default), tsv, jsonl, parquet."
    ),
    audit_log: Path | None = typer.Option(None, "--audit-log", help="Append one entry to this audit log."),
    audit_key_env: str = typer.Option(
        "PRIVDL_AUDIT_KEY", "--audit-key-env", help="Variable holding the audit key."
    ),
) -> None:
    """Print re-identification risk, k, l and t of INPUT on its quasi-identifiers."""
    from privdl.cli import streams
    from privdl.errors import UsageError

    stream_fmt = streams.check_format(fmt, streams=input == streams.STREAM)
    if max_risk is not None and not 0 <= max_risk <= 1:
        raise UsageError("--max-risk must be between 0 and 1")
    if report:
        report_target(Path(report))
    if input != streams.STREAM:
        _risk(input, qi, sensitive, as_json, max_risk, report, sep, audit_log, audit_key_env)
        return
    with streams.stream_folder() as folder, streams.named_as_streams(folder):
        assert folder is not None
        source = str(streams.spool_stdin(folder, stream_fmt))
        _risk(source, qi, sensitive, as_json, max_risk, report, sep, audit_log, audit_key_env, shown="-")


def _risk(
    input: str,
    qi: list[str],
    sensitive: list[str],
    as_json: bool,
    max_risk: float | None,
    report: str | None,
    sep: str | None,
    audit_log: Path | None,
    audit_key_env: str,
    *,
    shown: str | None = None,
) -> None:
    from privdl import io
    from privdl.anonymize.risk import assess_risk

    columns = list(dict.fromkeys([*qi, *sensitive]))
    params = {"quasi_identifiers": list(qi), "sensitive": list(sensitive), "max_risk": max_risk}
    # one entry: ok, or refused when the risk is above --max-risk
    with audit_context(audit_log, audit_key_env, "risk", params=params, inputs=[input]) as op:
        # read only the columns assessed: the rest is never parsed or held in memory
        frame = io.require_rows(io.read_table(input, sep=sep, columns=columns), input)
        result = assess_risk(
            frame, quasi_identifiers=qi, sensitive=sensitive, source=shown if shown is not None else input
        )
        figures = result.to_dict()
        op.update(params={**params, "k": figures["k"], "prosecutor_max": figures["prosecutor_max"]})
        if report:  # staged: appears once the entry is written; kept on a refusal it explains
            result.save(op.stage(report, keep_if_refused=True))
        if as_json:
            typer.echo(json.dumps(figures, sort_keys=True, indent=2))
        else:
            _print_table(result)
        if max_risk is not None:
            result.check(max_risk=max_risk)


def _print_table(result: object) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Re-identification risk: {getattr(result, 'source', '')}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in result.rows_for_display():  # type: ignore[attr-defined]
        table.add_row(name, value)
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Add the `risk` command to the main app."""
    app.command(name="risk")(risk)
