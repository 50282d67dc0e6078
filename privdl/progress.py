"""Progress of long steps: a rich bar on a terminal, nothing anywhere else.

Library code marks its long steps with :func:`step`; nothing is shown unless a caller
turned reporting on with :func:`reporting` (the CLI does when stderr is a terminal;
``PrivateTrainer`` has its own per-epoch bar, :mod:`privdl.train.progress`). A step
appears only once it has run for ``delay`` seconds (two by default), so quick commands
print nothing, and the bar is removed when the step ends: it never stays in a log.

    with progress.step("pseudonymizing", total=len(columns)) as bar:
        for column in columns:
            ...
            bar.advance()

Descriptions name the step and, at most, a column or file name: never a data value.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["Step", "reporting", "step"]

DEFAULT_DELAY_S = 2.0


class Step:
    """The handle of one step: :meth:`advance` it; a no-op when nothing is shown."""

    def __init__(self, reporter: _Reporter | None = None, task: Any = None) -> None:
        self._reporter = reporter
        self._task = task

    def advance(self, amount: float = 1) -> None:
        if self._reporter is not None:
            self._reporter.progress.advance(self._task, amount)


_NULL = Step()


class _Reporter:
    def __init__(self, console: Any, delay: float) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.delay = delay
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self._lock = threading.Lock()
        self._live = False
        self._timer: threading.Timer | None = None

    def _show(self) -> None:
        with self._lock:
            if not self._live and self.progress.tasks:
                self.progress.start()
                self._live = True

    def add(self, description: str, total: float | None) -> Any:
        task = self.progress.add_task(description, total=total)
        if self.delay <= 0:
            self._show()
        elif not self._live and self._timer is None:
            self._timer = threading.Timer(self.delay, self._show)
            self._timer.daemon = True
            self._timer.start()
        return task

    def remove(self, task: Any) -> None:
        self.progress.remove_task(task)
        if not self.progress.tasks:
            self._stop()

    def _stop(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._live:
                self.progress.stop()
                self._live = False


_current: contextvars.ContextVar[_Reporter | None] = contextvars.ContextVar("privdl_progress", default=None)


@contextlib.contextmanager
def reporting(enabled: bool | None = None, *, console: Any = None, delay: float = DEFAULT_DELAY_S) -> Iterator[None]:
    """Show the :func:`step` bars run inside the block.

    Args:
        enabled: show them (None: when ``console``, by default stderr, is a terminal;
            never on a pipe or in a file).
        console: a rich Console (default: one on stderr).
        delay: a step shows once it has run this long.
    """
    if console is None:
        from rich.console import Console

        console = Console(stderr=True)
    if enabled is None:
        enabled = bool(console.is_terminal)
    if not enabled:
        yield
        return
    reporter = _Reporter(console, delay)
    token = _current.set(reporter)
    try:
        yield
    finally:
        _current.reset(token)
        reporter._stop()


@contextlib.contextmanager
def step(description: str, total: float | None = None) -> Iterator[Step]:
    """One long step (``total`` units, or unknown); shown only inside :func:`reporting`."""
    reporter = _current.get()
    if reporter is None:
        yield _NULL
        return
    task = reporter.add(description, total)
    try:
        yield Step(reporter, task)
    finally:
        reporter.remove(task)
