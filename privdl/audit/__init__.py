"""Evidence for GDPR Art. 5(2) and 30: a tamper-evident audit log of every processing step.

* :class:`AuditLog` appends one authenticated, hash-chained entry per operation;
  :func:`operation` is the context manager other modules wrap their work in.
* :func:`verify_audit_log` checks a log (and a signed checkpoint) and names the first
  bad entry and the kind of tampering.
* :mod:`~privdl.audit.records` exports the Art. 30 record of processing activities;
  :mod:`~privdl.audit.erasure` handles Art. 17 erasure requests.

See ``docs/audit.md`` for the format and the threat model.
"""

from __future__ import annotations

from privdl.audit.checkpoint import Checkpoint, generate_signing_key
from privdl.audit.log import AuditLog
from privdl.audit.operation import Operation, operation, resolve_audit_log
from privdl.audit.verify import VerifyResult, checkpoint_log, iter_entries, verify_audit_log

__all__ = [
    "AuditLog",
    "Checkpoint",
    "Operation",
    "VerifyResult",
    "checkpoint_log",
    "generate_signing_key",
    "iter_entries",
    "operation",
    "resolve_audit_log",
    "verify_audit_log",
]
