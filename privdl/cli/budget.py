"""`privdl budget` commands: show, set and report a ledger's privacy budgets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from privdl.cli.options import JsonFlag, cli_audit_log, emit, report_target
from privdl.errors import UsageError

_LEDGER_HELP = "Ledger: a SQLite file, sqlite:///PATH or postgresql://URL."


def show(
    ledger: str = typer.Argument(..., help=_LEDGER_HELP),
    dataset: str | None = typer.Option(None, "--dataset", help="Show one dataset and its runs."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Show each dataset's total, spent (composed and naive sum) and remaining epsilon."""
    from privdl.budget.ledger import BudgetLedger

    with BudgetLedger(ledger, create=False) as led:
        ids = [dataset] if dataset is not None else led.datasets()
        statuses = [led.status(d) for d in ids]
        runs = led.runs(dataset) if dataset is not None else []
    if as_json:
        payload: dict[str, Any] = {
            "ledger": led.location,
            "datasets": [json.loads(s.to_json()) for s in statuses],
        }
        if dataset is not None:
            payload["runs"] = [json.loads(r.to_json()) for r in runs]
        typer.echo(json.dumps(payload, indent=2, sort_keys=True))
        return

    import sys

    from rich.console import Console
    from rich.table import Table

    # Piped output (files, CI logs) gets wide tables instead of rich's 80-column default.
    console = Console(width=None if sys.stdout.isatty() else 160)
    table = Table(title=f"Privacy budgets in {led.location}")
    for col in (
        "dataset",
        "epsilon",
        "delta",
        "unit",
        "accountant",
        "spent",
        "naive sum",
        "remaining",
        "runs",
    ):
        table.add_column(col, justify="left" if col in ("dataset", "unit", "accountant") else "right")
    for s in statuses:
        table.add_row(
            s.dataset_id,
            f"{s.epsilon:.4g}",
            f"{s.delta:.3g}",
            s.privacy_unit + (f" (max {s.max_records_per_user}/user)" if s.max_records_per_user else ""),
            s.accountant,
            f"{s.spent:.4g}",
            f"{s.naive_sum:.4g}",
            f"{s.remaining:.4g}",
            f"{s.runs}" + (f" ({s.reserved} reserved)" if s.reserved else ""),
        )
    if not statuses:
        console.print(f"no datasets in {led.location}")
        return
    console.print(table)
    if runs:
        rt = Table(title=f"Runs on {dataset}")
        for col in (
            "run",
            "time (UTC)",
            "status",
            "model",
            "unit",
            "accountant",
            "epsilon",
            "delta",
            "sigma",
            "q",
            "steps",
        ):
            rt.add_column(col)
        for r in runs:
            sigmas = sorted({f"{seg[0]:.4g}" for seg in r.history})
            rates = sorted({f"{seg[1]:.4g}" for seg in r.history})
            rt.add_row(
                r.run_id[:12],
                r.created_at[:19].replace("T", " "),
                r.status,
                r.model_name or "—",
                r.privacy_unit + (" (group privacy)" if r.charge is not None and "group" in r.charge.how else ""),
                r.accountant,
                f"{r.epsilon:.4g}",
                f"{r.delta:.3g}",
                ", ".join(sigmas),
                ", ".join(rates),
                str(sum(seg[2] for seg in r.history)),
            )
        console.print(rt)


def set_budget(
    ledger: str = typer.Argument(..., help=_LEDGER_HELP + " Created when missing."),
    dataset: str = typer.Option(..., "--dataset", help="Dataset identifier."),
    epsilon: float = typer.Option(..., "--epsilon", help="Total epsilon for the dataset."),
    delta: float = typer.Option(..., "--delta", help="Total delta for the dataset."),
    accountant: str | None = typer.Option(
        None, "--accountant", help="prv or rdp; a new dataset defaults to prv, an existing one keeps its own."
    ),
    force: bool = typer.Option(False, "--force", help="Accept a delta above 1e-3 (warned and audited)."),
    audit_log: Path | None = typer.Option(None, "--audit-log", help="Append one entry to this audit log."),
    audit_key_env: str = typer.Option(
        "PRIVDL_AUDIT_KEY", "--audit-key-env", help="Variable holding the audit key."
    ),
    privacy_unit: str | None = typer.Option(
        None, "--privacy-unit", help="record or user (a person with all their records); a new dataset: record."
    ),
    max_records_per_user: int | None = typer.Option(
        None, "--max-records-per-user", help="Most records one person has (group privacy for record-level runs)."
    ),
    as_json: JsonFlag = False,
) -> None:
    """Create or change a dataset's total budget (never below what it has spent)."""
    from privdl.budget.ledger import BudgetLedger, check_budget

    check_budget(epsilon=epsilon, delta=delta, force=force)  # before a ledger is created
    if privacy_unit is not None:
        from privdl.budget.accounting.units import check_unit

        check_unit(privacy_unit)
    if max_records_per_user is not None and max_records_per_user < 1:
        raise UsageError("--max-records-per-user must be a positive integer")
    log = cli_audit_log(audit_log, audit_key_env)
    if log is not None:
        log.check_appendable()  # before the ledger is opened, or created
    with BudgetLedger(ledger) as led:
        # the ledger writes the entry inside its transaction: no change without its entry
        status = led.set_budget(
            dataset,
            epsilon=epsilon,
            delta=delta,
            accountant=accountant,
            force=force,
            audit_log=log,
            privacy_unit=privacy_unit,
            max_records_per_user=max_records_per_user,
        )
    emit(
        as_json,
        json.loads(status.to_json()),
        f"{dataset}: {status.privacy_unit}-level epsilon={status.epsilon:g} delta={status.delta:g} "
        f"spent={status.spent:.4g} remaining={status.remaining:.4g} ({status.runs} runs)",
    )


def report(
    ledger: str = typer.Argument(..., help=_LEDGER_HELP),
    dataset: str = typer.Option(..., "--dataset", help="Dataset identifier."),
    output: Path = typer.Option(..., "-o", "--output", help="Report file: .html, .md or .json."),
    as_json: JsonFlag = False,
) -> None:
    """Write a privacy report for every run charged to a dataset."""
    from privdl.budget.ledger import BudgetLedger
    from privdl.budget.report import PrivacyReport

    report_target(output)
    with BudgetLedger(ledger, create=False) as led:
        rep = PrivacyReport.from_ledger(led, dataset)
    written = rep.save(output)
    emit(as_json, {"report": str(written), "dataset": dataset}, f"wrote {written}")


def register(app: typer.Typer) -> None:
    """Add the `budget` commands to the main app."""
    sub = typer.Typer(no_args_is_help=True, help="Per-dataset privacy budgets (the ledger).")
    sub.command("show")(show)
    sub.command("set")(set_budget)
    sub.command("report")(report)
    app.add_typer(sub, name="budget")
