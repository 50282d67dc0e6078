"""`privdl diff` (registered by :func:`register`)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the `diff` command (arrives with the run manifest)."""
