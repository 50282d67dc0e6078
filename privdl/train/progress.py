"""The trainer's progress bar: one line per epoch on stderr (rich), or nothing.

Each line shows the epoch's mean training loss, the validation metric and epsilon so
far. The loss is the exact mean training loss (not DP): it is shown live on the
trainer's own screen and is never saved with the model or put in a report.
"""

from __future__ import annotations

import contextlib
from typing import Any

__all__ = ["progress_bar", "progress_stats"]


def progress_bar(show: bool | str) -> Any:
    """A rich ``Progress`` on stderr, or a null context (``show="auto"``: in a terminal
    or a notebook)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if show == "auto":
        show = console.is_terminal or console.is_jupyter
    if not show:
        return contextlib.nullcontext()
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[stats]}"),
        console=console,
    )


def progress_stats(row: dict[str, Any]) -> str:
    """One epoch's figures for the progress bar: loss, validation metric, epsilon so far."""
    parts = [] if row.get("loss") is None else [f"loss {row['loss']:.4f}"]
    if row.get("metric") is not None:
        parts.append(f"val {row['metric_name']} {row['metric']:.4f}")
    return "  ".join([*parts, f"epsilon {row['epsilon']:.3f}"])
