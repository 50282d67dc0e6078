"""`privdl budget` commands (registered by :func:`register`)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the `budget` commands to the main app (filled in by the budget work)."""
