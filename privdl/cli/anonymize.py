"""`privdl anonymize`: release a copy of a table under a policy."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from privdl.cli.options import cli_audit_log, load_key, report_target
from privdl.errors import UsageError


def anonymize(
    input: str = typer.Argument(..., help="Input table: .csv .tsv .parquet .jsonl or sqlite:///db?table=T"),
    output: str = typer.Option(..., "-o", "--output", help="Output table (format from the extension)."),
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
    engine: str = typer.Option("pandas", "--engine", help="pandas or spark."),
    key_env: str | None = typer.Option(None, "--key-env", help="Environment variable holding the key."),
    key_file: Path | None = typer.Option(None, "--key-file", help="Key file (mode 0600)."),
    report: Path | None = typer.Option(None, "--report", help="Write the report (.json, .md or .html)."),
    audit_log: Path | None = typer.Option(None, "--audit-log", help="Append one entry to this audit log."),
    audit_key_env: str = typer.Option(
        "PRIVDL_AUDIT_KEY", "--audit-key-env", help="Variable holding the audit key."
    ),
    sep: str | None = typer.Option(None, "--sep", help="Delimiter for text tables."),
    query: str | None = typer.Option(None, "--query", help="SQL query for a database input."),
) -> None:
    """Pseudonymize identifiers and generalize quasi-identifiers; write the released table."""
    from privdl import io
    from privdl.anonymize.anonymizer import Anonymizer
    from privdl.anonymize.policy import Policy

    # Cheap checks first: no input is read and no key is asked for when usage is wrong.
    io.check_distinct_paths(input, output)
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
    print(_summary(the_policy, output, key, anonymizer.report_))


def _split_hierarchy(spec: str) -> tuple[str, str]:
    column, sep, value = spec.partition("=")
    if not sep or not column.strip() or not value.strip():
        raise UsageError(f"--hierarchy {spec!r}: expected COL=SPEC")
    return column.strip(), value.strip()


def _summary(policy: Any, output: str, key: Any, report: Any) -> str:
    counts: dict[str, int] = {}
    for rule in policy.identifiers:
        counts[rule.transform] = counts.get(rule.transform, 0) + 1
    done = ", ".join(f"{n} {t}" for t, n in sorted(counts.items()))
    extra = f"; {len(policy.drop)} dropped" if policy.drop else ""
    qi = (
        f"; {len(policy.quasi_identifiers)} quasi-identifiers generalized (target k={policy.k})"
        if policy.quasi_identifiers
        else ""
    )
    # the achieved k is the honest one: linkable columns counted (see the warnings)
    achieved = report.summary()
    if "k" in achieved:
        linkable = achieved.get("linkable") or []
        counted = f" with {len(linkable)} linkable column(s) counted" if linkable else ""
        qi += f"; achieved k={achieved['k']}{counted}"
    kid = f", key {key.key_id}" if key is not None else ""
    suppressed = report.rows_in - report.rows_out
    sup = f", {suppressed} suppressed" if suppressed else ""
    return (
        f"released {report.rows_out} of {report.rows_in} rows{sup} to {output}{kid}"
        f" ({done or 'no identifier transforms'}{extra}{qi});"
        f" {len(report.passthrough)} columns passed through unchanged"
    )


def register(app: typer.Typer) -> None:
    """Add `privdl anonymize`."""
    app.command("anonymize")(anonymize)
