"""``operation``: one audit entry per privdl operation, whatever way it ends.

Every module that processes personal data wraps its work in :func:`operation`::

    with operation(audit_log, "anonymize", params=policy.get_params(),
                   inputs=[{"path": src, "rows": n, "columns": m}]) as op:
        released = ...
        write_table(released, op.stage_table(dst))
        op.update(params={"k_achieved": 7}, subjects=released["id"])

exactly one entry is written when the block ends: outcome ``ok``; ``refused`` when a
:class:`~privdl.errors.CheckFailedError` (policy not met, budget exceeded, ...) leaves
the block; ``failed`` with the error's class name (never its message, which may
quote data) for any other exception. The exception is re-raised unchanged.

**Evidence first.** Before the block runs, the log is checked to take an entry
(:meth:`AuditLog.check_appendable`): a log under another key, altered, or not
writable stops the operation before any work. Outputs written to the paths
:meth:`Operation.stage` returns are fingerprinted there, recorded under their final
names, and renamed into place only after the entry is written; if the entry cannot
be written they are removed, so no output exists without its entry. ``started=True``
writes a ``started`` entry on entry of the block (for operations that commit
resources before they end, like a budget reservation), and the final entry names it.

With ``audit_log=None`` nothing is recorded (this is the one null audit of privdl),
and staged outputs are still committed all together at the end of the block, or
removed if it raises.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from privdl.audit.log import AuditLog, entry_fingerprint
from privdl.audit.verify import DEFAULT_KEY_ENV
from privdl.errors import CheckFailedError, InputError
from privdl.io import StagedOutputs, parse_source
from privdl.keys import Secret

__all__ = ["Operation", "operation", "resolve_audit_log"]


class Operation:
    """What an operation will record; fill it in with :meth:`update` as work proceeds.

    Attributes:
        event: the event name.
        params: parameters so far (a dict; :meth:`update` merges into it).
        inputs, outputs: fingerprints and paths so far.
        outcome: set to ``"refused"`` to record a refusal that raised nothing.
        entry: the entry written, once the block has ended (None without a log).
        started_entry: the ``started`` entry, for ``operation(..., started=True)``.
    """

    def __init__(
        self,
        event: str,
        *,
        params: Mapping[str, Any] | None = None,
        inputs: Iterable[Any] | None = None,
        outputs: Iterable[Any] | None = None,
        subjects: Iterable[Any] | None = None,
        enabled: bool = True,
    ) -> None:
        self.event = event
        self.params: dict[str, Any] = dict(params or {})
        self._enabled = enabled
        # inputs are fingerprinted now: what was read, before anything could change it
        self.inputs: list[Any] = [entry_fingerprint(i) for i in inputs or ()] if enabled else []
        self.outputs: list[Any] = list(outputs or ())
        self._subjects: list[Iterable[Any]] = [subjects] if subjects is not None else []
        self.outcome: str | None = None
        self.entry: dict[str, Any] | None = None
        self.started_entry: dict[str, Any] | None = None
        self._staging = StagedOutputs()

    def update(
        self,
        *,
        params: Mapping[str, Any] | None = None,
        inputs: Iterable[Any] | None = None,
        outputs: Iterable[Any] | None = None,
        subjects: Iterable[Any] | None = None,
    ) -> Operation:
        """Merge ``params`` and add ``inputs``, ``outputs`` and ``subjects``.

        Outputs are fingerprinted when the entry is written, i.e. after the block, so
        pass paths of files the block is still writing.
        """
        if params:
            self.params.update(params)
        if inputs and self._enabled:
            self.inputs.extend(entry_fingerprint(i) for i in inputs)
        if outputs:
            self.outputs.extend(o for o in outputs if not _seen(o, self.outputs))
        if subjects is not None:
            self._subjects.append(subjects)
        return self

    def stage(
        self,
        target: str | os.PathLike[str],
        *,
        folder: bool = False,
        keep_if_refused: bool = False,
        record: bool = True,
    ) -> Path:
        """The path to write the output ``target`` to; it becomes ``target`` only after
        the entry is written, and is recorded as an output under ``target``'s name.

        Args:
            target: the output file (or folder, with ``folder=True``).
            folder: stage a folder: a new empty one whose files end up in ``target``.
            keep_if_refused: keep this output when the operation is refused (a report
                that explains the refusal); other outputs are removed then.
            record: fingerprint it in the entry (False for files that hold a key:
                their hash is not written to the log).

        Raises:
            InputError: the target folder does not exist, or the target is a folder.
        """
        if folder:
            staged = self._staging.folder(target)
        else:
            staged = self._staging.file(target, keep_if_refused=keep_if_refused)
        if record:
            self.update(outputs=[os.fspath(target)])
        return staged

    def stage_table(self, location: str | os.PathLike[str]) -> str:
        """:meth:`stage` for a table location (a file path or a ``sqlite:///`` URL)."""
        staged = self._staging.table(location)
        self.update(outputs=[os.fspath(parse_source(location).path)])
        return staged

    def _all_subjects(self) -> Iterator[Any] | None:
        if not self._subjects:
            return None
        return (s for group in self._subjects for s in group)

    def _recorded_outputs(self, outcome: str) -> list[Any]:
        """Outputs as the entry records them: staged ones fingerprinted where they are
        written, under their final names; missing files left out unless ``ok``."""
        out: list[Any] = []
        for o in self.outputs:
            if isinstance(o, str | os.PathLike):
                staged = self._staging.staged_path(o)
                if staged is not None:
                    kept = outcome == "ok" or (outcome == "refused" and self._staging.keeps(o))
                    if kept and staged.exists():
                        fp = entry_fingerprint(staged)
                        fp["name"] = Path(o).name
                        out.append(fp)
                    continue
                if outcome != "ok" and not os.path.exists(o):
                    continue  # a failed step may have left no output: record what exists
            out.append(o)
        return out


def _seen(item: Any, items: list[Any]) -> bool:
    if isinstance(item, str | os.PathLike):
        return any(isinstance(i, str | os.PathLike) and os.fspath(i) == os.fspath(item) for i in items)
    return False


def resolve_audit_log(
    audit_log: AuditLog | str | os.PathLike[str] | None, *, key_env: str = DEFAULT_KEY_ENV
) -> AuditLog | None:
    """An AuditLog from what a caller passed: None stays None, a path opens the log
    with the key from ``$PRIVDL_AUDIT_KEY`` (or ``key_env``).

    Raises:
        KeyMissingError: a path was given and the key variable is unset.
    """
    if audit_log is None or isinstance(audit_log, AuditLog):
        return audit_log
    return AuditLog(audit_log, key=Secret.from_env(key_env))


@contextlib.contextmanager
def operation(
    audit_log: AuditLog | str | os.PathLike[str] | None,
    event: str,
    *,
    params: Mapping[str, Any] | None = None,
    inputs: Iterable[Any] | None = None,
    outputs: Iterable[Any] | None = None,
    subjects: Iterable[Any] | None = None,
    key_env: str = DEFAULT_KEY_ENV,
    started: bool = False,
) -> Iterator[Operation]:
    """Record one operation in ``audit_log`` (None: record nothing).

    Args:
        audit_log: an :class:`AuditLog`, a path (key from ``$PRIVDL_AUDIT_KEY``), or None.
        event: the event name (``"anonymize"``, ``"train"``, ``"he.score"``...).
        params, inputs, outputs, subjects: as for :meth:`AuditLog.append`; more can
            be added in the block with :meth:`Operation.update`.
        started: write a ``started`` entry (with ``params`` and ``inputs``) before the
            block runs; the final entry names it. For operations that commit
            resources before they end, so a run killed midway leaves its evidence.

    Raises:
        KeyMissingError: ``audit_log`` is a path and the key is not set.
        InputError / SecurityError / TamperDetectedError: the log cannot take an entry
            (see :meth:`AuditLog.check_appendable`). All of these are raised before
            the block runs, so nothing is processed unaudited.
        InputError: the outputs could not be renamed into place after the entry was
            written (the entry is followed by a ``failed`` entry saying so).
    """
    log = resolve_audit_log(audit_log, key_env=key_env)
    op = Operation(
        event,
        params=params,
        inputs=inputs,
        outputs=outputs,
        subjects=subjects,
        enabled=log is not None,
    )
    if log is not None:
        if started:
            if op._subjects:  # kept for the final entry too
                op._subjects = [list(s for group in op._subjects for s in group)]
            op.started_entry = log.append(
                event,
                outcome="started",
                params=op.params,
                inputs=op.inputs,
                subjects=op._all_subjects(),
            )
        else:
            log.check_appendable()
    try:
        yield op
    except CheckFailedError as exc:
        _end(log, op, "refused", type(exc).__name__)
        raise
    except GeneratorExit:
        op._staging.discard()
        raise
    except BaseException as exc:
        _end(log, op, "failed", type(exc).__name__)
        raise
    else:
        _end(log, op, op.outcome or "ok", None)


def _end(log: AuditLog | None, op: Operation, outcome: str, error: str | None) -> None:
    """Write the final entry, then commit (or discard) the staged outputs."""
    keep = outcome in ("ok", "refused")
    if log is not None:
        try:
            op.entry = log.append(
                op.event,
                outcome=outcome,
                params=op.params,
                inputs=op.inputs,
                outputs=op._recorded_outputs(outcome),
                error=error,
                subjects=op._all_subjects(),
                started=op.started_entry["seq"] if op.started_entry is not None else None,
            )
        except BaseException:
            op._staging.discard()  # no entry: no output
            raise
    if not keep:
        op._staging.discard()
        return
    try:
        op._staging.commit(refused=outcome == "refused")
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if log is None or op.entry is None:
            raise InputError(f"{op.event}: the outputs could not be moved into place: {reason}") from None
        seq = op.entry["seq"]
        with contextlib.suppress(Exception):  # the entry stands; say that its outputs may not
            log.append(
                op.event,
                outcome="failed",
                params={"commit_of": seq},
                error=type(exc).__name__,
            )
        raise InputError(
            f"{op.event}: entry {seq} of audit log {log.path} was written, but its outputs"
            f" could not be moved into place ({reason}); some of them may be missing"
        ) from None
