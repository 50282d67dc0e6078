"""privdl: train models on personal data without a research lab's infrastructure.

Four steps where personal data leaks in practice, one library: anonymize raw exports,
train with differential privacy, score encrypted, keep evidence.

Heavy dependencies (torch, opacus, tenseal, pyspark, matplotlib) load only when the
name that needs them is first used, so ``import privdl`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from privdl._version import __version__
from privdl.errors import (
    BudgetExceededError,
    CheckFailedError,
    InputError,
    KeyMissingError,
    NotFittedError,
    PolicyError,
    PolicyNotMetError,
    PrivacyParameterError,
    PrivdlError,
    SecurityError,
    TamperDetectedError,
    UsageError,
)
from privdl.keys import Secret, key_id

# public name -> module that defines it (imported on first use)
_LAZY: dict[str, str] = {
    "read_table": "privdl.io",
    "write_table": "privdl.io",
    "Policy": "privdl.anonymize.policy",
    "Anonymizer": "privdl.anonymize.anonymizer",
    "AnonymizationReport": "privdl.anonymize.report",
    "assess_risk": "privdl.anonymize.risk",
    "RiskReport": "privdl.anonymize.risk",
    "PrivateTrainer": "privdl.train.trainer",
    "make_private": "privdl.train.private_loop",
    "TableEncoder": "privdl.train.encoding",
    "BudgetLedger": "privdl.budget.ledger",
    "PrivacyReport": "privdl.budget.report",
    "HEKeys": "privdl.encrypted.keys",
    "EncryptedScorer": "privdl.encrypted.scorer",
    "AuditLog": "privdl.audit.log",
    "verify_audit_log": "privdl.audit.verify",
    "RunManifest": "privdl.manifest",
    "tune": "privdl.train.tune",
}

__all__ = [
    "AnonymizationReport",
    "Anonymizer",
    "AuditLog",
    "BudgetExceededError",
    "BudgetLedger",
    "CheckFailedError",
    "EncryptedScorer",
    "HEKeys",
    "InputError",
    "KeyMissingError",
    "NotFittedError",
    "Policy",
    "PolicyError",
    "PolicyNotMetError",
    "PrivacyParameterError",
    "PrivacyReport",
    "PrivateTrainer",
    "PrivdlError",
    "RiskReport",
    "RunManifest",
    "Secret",
    "SecurityError",
    "TableEncoder",
    "TamperDetectedError",
    "UsageError",
    "__version__",
    "assess_risk",
    "key_id",
    "make_private",
    "read_table",
    "tune",
    "verify_audit_log",
    "write_table",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'privdl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from privdl.anonymize.anonymizer import Anonymizer
    from privdl.anonymize.policy import Policy
    from privdl.anonymize.report import AnonymizationReport
    from privdl.anonymize.risk import RiskReport, assess_risk
    from privdl.audit.log import AuditLog
    from privdl.audit.verify import verify_audit_log
    from privdl.budget.ledger import BudgetLedger
    from privdl.budget.report import PrivacyReport
    from privdl.encrypted.keys import HEKeys
    from privdl.encrypted.scorer import EncryptedScorer
    from privdl.io import read_table, write_table
    from privdl.manifest import RunManifest
    from privdl.train.encoding import TableEncoder
    from privdl.train.private_loop import make_private
    from privdl.train.trainer import PrivateTrainer
    from privdl.train.tune import tune
