"""Composition of DP-SGD histories for the ledger and the reports.

A *history* is the accountant's own record of a run: ``(noise_multiplier,
sample_rate, steps)`` segments (Opacus' ``accountant.history``). Composing the
histories of every run on a dataset under one accountant gives the dataset's spent
epsilon, which is tighter than adding the runs' epsilons (both are reported).

The figures come from :mod:`privdl.train.calibrate` (numpy + scipy, no torch), the one
implementation the trainer, the ledger and the reports share, so they cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from privdl.errors import PolicyError
from privdl.train import calibrate

__all__ = [
    "ACCOUNTANTS",
    "History",
    "check_accountant",
    "epsilon_of",
    "naive_epsilon_sum",
    "noise_multiplier_for",
    "normalize_history",
]

History = list[tuple[float, float, int]]
ACCOUNTANTS = calibrate.ACCOUNTANTS
epsilon_of = calibrate.epsilon_of
noise_multiplier_for = calibrate.noise_multiplier_for


def normalize_history(history: Iterable[Sequence[Any]]) -> History:
    """Validate a history; return it as a list of ``(float, float, int)`` (zero-step
    segments dropped).

    Raises:
        InputError: a segment is malformed or out of range.
    """
    return list(calibrate.normalize_history(history))


def check_accountant(accountant: str) -> str:
    """Return the accountant name, or raise PolicyError for an unknown one."""
    if accountant not in ACCOUNTANTS:
        raise PolicyError(f"unknown accountant {accountant!r}; use one of {', '.join(ACCOUNTANTS)}")
    return accountant


def naive_epsilon_sum(epsilons: Iterable[float]) -> float:
    """Basic composition: the runs' own epsilons added up (what a ledger without
    accountant-level composition would charge; shown beside the composed figure)."""
    return float(sum(epsilons))
