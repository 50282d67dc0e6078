"""Privacy accounting for DP-SGD: histories, the RDP and PRV accountants, calibration.

A run is described by its *history*: ``(noise_multiplier, sample_rate, steps)``
segments (:class:`History` of :class:`Segment`, validated in :mod:`.history`).
Composing the histories of every run on a dataset under one accountant gives the
dataset's spent epsilon, which is tighter than adding the runs' epsilons
(:func:`naive_epsilon_sum`, shown beside it).

* :mod:`.history`: the frozen :class:`Segment` / :class:`History` values,
* :mod:`.parameters`: the one validator of privacy parameters (epsilon, delta,
  accountant, sample rate, steps), raising :class:`~privdl.errors.PrivacyParameterError`,
* :mod:`.rdp`, :mod:`.prv`: the two accountants' math (numpy + scipy, vectorized),
* :mod:`.calibrate`: :func:`epsilon_of` and :func:`noise_multiplier_for`, with caches.

The trainer, the ledger and the reports all take their figures from here, so they
cannot disagree; nothing here imports torch.

Example:
    >>> from privdl.budget.accounting import epsilon_of, noise_multiplier_for
    >>> sigma = noise_multiplier_for(epsilon=2.0, delta=1e-5, sample_rate=0.01, steps=500)
    >>> epsilon_of([(sigma, 0.01, 500)], delta=1e-5) <= 2.0
    True
"""

from __future__ import annotations

from collections.abc import Iterable

from privdl.budget.accounting.calibrate import MAX_SIGMA, clear_caches, epsilon_of, noise_multiplier_for
from privdl.budget.accounting.history import History, Segment, normalize_history
from privdl.budget.accounting.parameters import (
    ACCOUNTANTS,
    check_accountant,
    check_delta,
    check_epsilon,
    check_sample_rate,
    check_steps,
)
from privdl.budget.accounting.rdp import RDP_ORDERS

__all__ = [
    "ACCOUNTANTS",
    "MAX_SIGMA",
    "RDP_ORDERS",
    "History",
    "Segment",
    "check_accountant",
    "check_delta",
    "check_epsilon",
    "check_sample_rate",
    "check_steps",
    "clear_caches",
    "epsilon_of",
    "naive_epsilon_sum",
    "noise_multiplier_for",
    "normalize_history",
]


def naive_epsilon_sum(epsilons: Iterable[float]) -> float:
    """Basic composition: the runs' own epsilons added up (what a ledger without
    accountant-level composition would charge; shown beside the composed figure)."""
    return float(sum(epsilons))
