"""The privdl exception tree.

Every error privdl raises on purpose derives from :class:`PrivdlError`, and also
from the builtin a caller would naturally catch::

    PrivdlError (Exception)
    ├── InputError (ValueError)              bad file, column, row or value      exit 2
    │   └── FormatError                      unknown / unreadable table format   exit 2
    ├── UsageError (ValueError)              bad combination of arguments         exit 2
    │   └── NotFittedError (+AttributeError) an unfitted estimator used           exit 2
    ├── PolicyError (ValueError)             policy inconsistent with the data   exit 2
    │   └── PrivacyParameterError            bad epsilon, delta, accountant or   exit 2
    │       (also InputError, UsageError)    history segment, from every entry point
    ├── KeyMissingError (LookupError)        a needed key is not available        exit 2
    ├── MissingDependencyError (ImportError) an optional extra is not installed   exit 2
    ├── SecurityError (PermissionError)      an unsafe request or file mode       exit 2
    ├── CheckFailedError                     a check ran and failed               exit 1
    │   ├── PolicyNotMetError                k / l / t cannot be met              exit 1
    │   ├── BudgetExceededError              the privacy budget would be overspent exit 1
    │   ├── RiskExceededError                re-identification risk over a limit  exit 1
    │   └── TamperDetectedError              an audit log or signature is altered exit 1
    └── ApproximationWarning (UserWarning)   issued with warnings.warn, not raised: a
                                             result's approximation error is above a
                                             tolerance, or unmeasured

Messages name files, columns, rows and counts but never a value from a
personal-data column, and never key material: messages end up in logs,
terminals and tickets.
"""

from __future__ import annotations

__all__ = [
    "ApproximationWarning",
    "BudgetExceededError",
    "CheckFailedError",
    "FormatError",
    "InputError",
    "KeyMissingError",
    "MissingDependencyError",
    "NotFittedError",
    "PolicyError",
    "PolicyNotMetError",
    "PrivacyParameterError",
    "PrivdlError",
    "RiskExceededError",
    "SecurityError",
    "TamperDetectedError",
    "UsageError",
]


class PrivdlError(Exception):
    """Root of every error privdl raises on purpose.

    ``exit_code`` is what the CLI exits with: 2 for bad usage or input, 1 for a
    check that ran and failed.
    """

    exit_code: int = 2


class InputError(PrivdlError, ValueError):
    """A file, column, row or value that privdl cannot use."""


class FormatError(InputError):
    """A table format that is unknown or cannot be parsed."""


class UsageError(PrivdlError, ValueError):
    """Arguments that do not fit together (e.g. output path equal to input path)."""


class NotFittedError(UsageError, AttributeError):
    """A trainer, anonymizer, encoder or scorer used before it was fitted.

    Also an :class:`AttributeError`, as scikit-learn's ``NotFittedError`` is, so
    ``hasattr``-style checks and code catching either keep working.
    """


class PolicyError(PrivdlError, ValueError):
    """A policy that is inconsistent in itself or with the data it is applied to."""


class PrivacyParameterError(InputError, UsageError, PolicyError):
    """A privacy parameter out of range: epsilon, delta, accountant, a history segment.

    Raised by :mod:`privdl.budget.accounting`'s one validator, whichever entry point
    (trainer, ledger, calibration, CLI) was given the parameter. It derives from the
    three classes those entry points raised before, so ``except UsageError`` (or
    ``InputError``, ``PolicyError``) keeps catching it.
    """


class KeyMissingError(PrivdlError, LookupError):
    """A key needed for the operation is not available (not a builtin ``KeyError``)."""


class MissingDependencyError(PrivdlError, ImportError):
    """An optional extra is not installed; the message names the ``pip install``."""


class SecurityError(PrivdlError, PermissionError):
    """A request that would weaken a security guarantee, or an unsafe file mode."""


class CheckFailedError(PrivdlError):
    """A check ran to completion and its answer is *no*."""

    exit_code = 1


class PolicyNotMetError(CheckFailedError):
    """The anonymization policy (k, l, t, suppression) cannot be met on this data."""


class RiskExceededError(CheckFailedError):
    """Re-identification risk is above the limit the caller set."""


class BudgetExceededError(CheckFailedError):
    """A run would exceed the privacy budget of its dataset.

    Attributes:
        requested: epsilon the run asked for.
        remaining: epsilon left on the dataset before the run.
        dataset_id: the ledger's dataset identifier.
    """

    def __init__(
        self,
        message: str,
        *,
        requested: float | None = None,
        remaining: float | None = None,
        dataset_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.requested = requested
        self.remaining = remaining
        self.dataset_id = dataset_id


class TamperDetectedError(CheckFailedError):
    """An audit log, checkpoint or signed file has been altered.

    Attributes:
        entry: 1-based line / entry number of the first bad entry, when known.
        kind: short name of the kind of tampering (``"modified"``, ``"truncated"``...).
    """

    def __init__(self, message: str, *, entry: int | None = None, kind: str | None = None):
        super().__init__(message)
        self.entry = entry
        self.kind = kind


class ApproximationWarning(PrivdlError, UserWarning):
    """A result is an approximation whose error is above a tolerance, or unmeasured.

    Issued with :func:`warnings.warn` (not raised: the computation runs). The
    message states aggregates only (a maximum error, a share of inputs out of range),
    never a data value.
    """

