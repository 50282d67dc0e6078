"""`privdl risk`: how exposed is a table? (registered by :func:`register`)."""

from __future__ import annotations

import json

import typer


def risk(
    input: str = typer.Argument(..., help="Table to assess (CSV, TSV, Parquet, JSONL, database)."),
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
) -> None:
    """Print re-identification risk, k, l and t of INPUT on its quasi-identifiers."""
    from privdl import io
    from privdl.anonymize.risk import assess_risk
    from privdl.errors import UsageError

    if max_risk is not None and not 0 <= max_risk <= 1:
        raise UsageError("--max-risk must be between 0 and 1")
    columns = list(dict.fromkeys([*qi, *sensitive]))
    # read only the columns assessed: the rest is never parsed or held in memory
    frame = io.read_table(input, sep=sep, columns=columns)
    result = assess_risk(frame, quasi_identifiers=qi, sensitive=sensitive, source=input)
    if report:
        result.save(report)
    if as_json:
        typer.echo(json.dumps(result.to_json(), sort_keys=True, indent=2))
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
