"""The one validator of privacy parameters: epsilon, delta, accountant, sample rate, steps.

Every entry point that takes a privacy parameter (the trainer, the ledger, calibration,
the table encoder, the CLI) checks it here, so a bad value raises the same
:class:`~privdl.errors.PrivacyParameterError` with the same message wherever it was
given. History segments are checked by :class:`~privdl.budget.accounting.Segment`,
with the same error class.

Example:
    >>> check_delta(1e-5)
    1e-05
    >>> check_epsilon(0.0)
    Traceback (most recent call last):
    ...
    privdl.errors.PrivacyParameterError: epsilon must be a positive finite number
"""

from __future__ import annotations

import math
import numbers

from privdl.errors import PrivacyParameterError

__all__ = [
    "ACCOUNTANTS",
    "check_accountant",
    "check_delta",
    "check_epsilon",
    "check_sample_rate",
    "check_steps",
]

ACCOUNTANTS: tuple[str, ...] = ("prv", "rdp")
"""Accountant names: ``"prv"`` (numerical PRV composition, the default) and ``"rdp"``."""


def _real(value: object) -> float | None:
    """``value`` as a float when it is a real number (numpy scalars included, bools not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def check_epsilon(epsilon: object, *, name: str = "epsilon") -> float:
    """Return ``epsilon`` as a float, or refuse it unless it is positive and finite.

    Args:
        epsilon: the value to check.
        name: the parameter's name in the message (e.g. ``"domain_epsilon"``).

    Raises:
        PrivacyParameterError: not a positive finite number.
    """
    value = _real(epsilon)
    if value is None or not (math.isfinite(value) and value > 0):
        raise PrivacyParameterError(f"{name} must be a positive finite number")
    return value


def check_delta(delta: object, *, name: str = "delta", records: int | None = None) -> float:
    """Return ``delta`` as a float, or refuse it unless it is in (0, 1) (and below 1/n).

    Args:
        delta: the value to check.
        name: the parameter's name in the message.
        records: the number of records (or users) ``n`` the guarantee is about; when
            given, ``delta`` must also be below ``1/n``: a larger delta allows releasing
            a record outright.

    Raises:
        PrivacyParameterError: not in (0, 1), or not below ``1/records``.
    """
    value = _real(delta)
    if value is None or not 0.0 < value < 1.0:
        raise PrivacyParameterError(f"{name} must be in (0, 1)")
    if records is not None and records >= 1 and not value < 1.0 / records:
        raise PrivacyParameterError(
            f"{name}={value:g} is not below 1/n = {1.0 / records:g}: with {records} records such a "
            "delta allows releasing a record outright"
        )
    return value


def check_accountant(accountant: object) -> str:
    """Return the accountant name, or refuse one that is not in :data:`ACCOUNTANTS`.

    Raises:
        PrivacyParameterError: an unknown accountant.
    """
    if not isinstance(accountant, str) or accountant not in ACCOUNTANTS:
        raise PrivacyParameterError(f"unknown accountant {accountant!r}; use one of {', '.join(ACCOUNTANTS)}")
    return accountant


def check_sample_rate(sample_rate: object) -> float:
    """Return a planned run's Poisson sampling rate, or refuse it unless in (0, 1].

    Raises:
        PrivacyParameterError: not in (0, 1].
    """
    value = _real(sample_rate)
    if value is None or not 0.0 < value <= 1.0:
        raise PrivacyParameterError("sample_rate must be in (0, 1]")
    return value


def check_steps(steps: object) -> int:
    """Return a planned run's number of steps, or refuse it unless a positive integer.

    Raises:
        PrivacyParameterError: not a positive integer.
    """
    value = _real(steps)
    if value is None or not (value.is_integer() and value >= 1):
        raise PrivacyParameterError("steps must be a positive integer")
    return int(value)
