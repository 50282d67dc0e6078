"""`privdl diff A B`: what differs between two runs' manifests."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def diff(
    a: Path = typer.Argument(..., help="First manifest (or JSON report holding one)."),
    b: Path = typer.Argument(..., help="Second manifest."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    include_time: bool = typer.Option(False, "--include-time", help="Also compare creation times."),
) -> None:
    """List the fields that differ between two run manifests (exit 1 when any differ)."""
    from privdl.manifest import RunManifest, diff_manifests

    rows = diff_manifests(RunManifest.load(a), RunManifest.load(b), include_time=include_time)
    if as_json:
        print(json.dumps([{"field": f, "a": x, "b": y} for f, x, y in rows], indent=2, default=str))
    elif not rows:
        print("no differences")
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table("field", str(a), str(b))
        for name, x, y in rows:
            table.add_row(name, "—" if x is None else str(x), "—" if y is None else str(y))
        Console().print(table)
    if rows:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add `privdl diff`."""
    app.command("diff")(diff)
