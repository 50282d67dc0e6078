"""`privdl diff` commands (registered by :func:`register`)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the `diff` commands to the main app (filled in by the diff work)."""
