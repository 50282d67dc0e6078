"""``operation``: one audit entry per privdl operation, whatever way it ends.

Every module that processes personal data wraps its work in :func:`operation`::

    with operation(audit_log, "anonymize", params=policy.get_params(),
                   inputs=[{"path": src, "rows": n, "columns": m}]) as op:
        released = ...
        op.update(outputs=[dst], params={"k_achieved": 7}, subjects=released["id"])

exactly one entry is written when the block ends: outcome ``ok``; ``refused`` when a
:class:`~privdl.errors.CheckFailedError` (policy not met, budget exceeded, ...) leaves
the block; ``failed`` with the error's class name (never its message, which may
quote data) for any other exception. The exception is re-raised unchanged.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from privdl.audit.fingerprint import fingerprint
from privdl.audit.log import AuditLog
from privdl.audit.verify import DEFAULT_KEY_ENV
from privdl.errors import CheckFailedError
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
        self.inputs: list[Any] = [fingerprint(i) for i in inputs or ()] if enabled else []
        self.outputs: list[Any] = list(outputs or ())
        self._subjects: list[Iterable[Any]] = [subjects] if subjects is not None else []
        self.outcome: str | None = None
        self.entry: dict[str, Any] | None = None

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
            self.inputs.extend(fingerprint(i) for i in inputs)
        if outputs:
            self.outputs.extend(o for o in outputs if not _seen(o, self.outputs))
        if subjects is not None:
            self._subjects.append(subjects)
        return self

    def _all_subjects(self) -> Iterator[Any] | None:
        if not self._subjects:
            return None
        return (s for group in self._subjects for s in group)


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
) -> Iterator[Operation]:
    """Record one operation in ``audit_log`` (None: record nothing).

    Args:
        audit_log: an :class:`AuditLog`, a path (key from ``$PRIVDL_AUDIT_KEY``), or None.
        event: the event name (``"anonymize"``, ``"train"``, ``"he.score"``...).
        params, inputs, outputs, subjects: as for :meth:`AuditLog.append`; more can
            be added in the block with :meth:`Operation.update`.

    Raises:
        KeyMissingError: ``audit_log`` is a path and the key is not set (raised before
            the block runs, so nothing is processed unaudited).
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
    try:
        yield op
    except CheckFailedError as exc:
        if log is not None:
            _write(log, op, "refused", type(exc).__name__)
        raise
    except GeneratorExit:
        raise
    except BaseException as exc:
        if log is not None:
            _write(log, op, "failed", type(exc).__name__)
        raise
    else:
        if log is not None:
            _write(log, op, op.outcome or "ok", None)


def _write(log: AuditLog, op: Operation, outcome: str, error: str | None) -> None:
    outputs = op.outputs
    if outcome != "ok":  # a failed step may have left no output: record what exists
        outputs = [o for o in outputs if not isinstance(o, str | os.PathLike) or os.path.exists(o)]
    op.entry = log.append(
        op.event,
        outcome=outcome,
        params=op.params,
        inputs=op.inputs,
        outputs=outputs,
        error=error,
        subjects=op._all_subjects(),
    )
