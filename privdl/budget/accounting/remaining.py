"""``epsilon="remaining"`` for a run in the other privacy unit than its budget.

A run in the budget's own unit is composed by its history: the ledger calibrates its
noise so that the composition spends what is left
(:meth:`~privdl.BudgetLedger.calibrate_remaining`). A run in the other unit is charged a
fixed, converted ``(epsilon, delta)`` (:func:`~privdl.budget.accounting.units.unit_charge`:
a group of 2 for a user-level run on a record-level budget, group privacy over the
declared ``k`` records per user for a record-level run on a user-level budget), so what
is left of the budget is not what the run may target in its own unit.

:func:`largest_converted_target` plans such a run: the largest own target epsilon
whose *converted* charge, composed with every recorded run by the ledger's own
:func:`~privdl.budget.accounting.units.compose`, stays within the total. It searches
with the same conversion the ledger applies at reservation, so a run calibrated to the
target (sigma within 0.5 %, never above the target) is accepted; the ledger's check at
reservation stays the final word.

The run's own delta matters too: a converted charge multiplies it (by ``2 e^eps`` or
``k e^((k-1) eps)``), and a run at the budget's delta would take more than the whole
delta. Unless the run names its delta, it gets one whose converted charge takes at
most half of the delta the budget has left (the rest stays with the runs composed by
their histories, and with later runs).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from privdl.budget.accounting.units import Charge, compose, fixed_part, unit_charge
from privdl.errors import BudgetExceededError, UsageError

__all__ = ["DELTA_SHARE", "RemainingTarget", "largest_converted_target"]

#: the share of the budget's remaining delta a converted run's charge may take when
#: the run does not name its own delta
DELTA_SHARE = 0.5
_RTOL = 1e-4  # the search stops when the bracket is this tight (relative to its top)


@dataclass(frozen=True)
class RemainingTarget:
    """The largest run a budget in the other unit can still take.

    Attributes:
        epsilon: the run's own target epsilon, in its own unit.
        delta: the run's own delta.
        charge: what the budget is charged for a run that meets the target exactly (a
            run calibrated to it spends at most this).
    """

    epsilon: float
    delta: float
    charge: Charge


def largest_converted_target(
    *,
    runs: Iterable[tuple[Iterable[Sequence[Any]], Charge | None]],
    total: float,
    delta: float,
    accountant: str,
    run_unit: str,
    budget_unit: str,
    max_records_per_user: int | None,
    run_delta: float | None = None,
) -> RemainingTarget:
    """The largest own target epsilon of a run in ``run_unit`` on a ``budget_unit`` budget.

    Args:
        runs: the budget's recorded runs as ``(history, charge)`` (the ledger's).
        total, delta, accountant: the budget.
        run_unit, budget_unit: different units (``"record"`` / ``"user"``).
        max_records_per_user: the budget's declared k (a record-level run on a
            user-level budget needs it).
        run_delta: the run's own delta; ``None``: one whose converted charge takes
            :data:`DELTA_SHARE` of the delta the budget has left.

    Raises:
        UsageError: the units are the same (the ledger calibrates such a run itself).
        PolicyError: a record-level run on a user-level budget without a declared k.
        BudgetExceededError: nothing is left for such a run (epsilon or delta).
    """
    if run_unit == budget_unit:
        raise UsageError("a run in the budget's own unit spends what is left by composition, not a conversion")
    prior = [(list(h), c) for h, c in runs]

    def convert(epsilon: float, d: float) -> Charge:
        # the ledger's own conversion (raises PolicyError without k)
        converted = unit_charge(
            run_unit=run_unit,
            budget_unit=budget_unit,
            max_records_per_user=max_records_per_user,
            delta=d,
            accountant=accountant,
            charge=Charge(float(epsilon), float(d)),
        )
        assert converted is not None  # the units differ
        return converted

    factor = convert(1.0, 1e-300).epsilon  # the group size: the charge's epsilon is factor * eps
    eps_f, delta_f = fixed_part(c for _, c in prior)
    delta_left = delta - delta_f
    top = (total - eps_f) / factor  # no larger own epsilon fits, even with nothing else
    if delta_left <= 0 or top <= 0:
        raise _nothing_left(total, eps_f)
    if run_delta is None:
        # converted delta = factor e^((factor-1) eps) d (group privacy), at most the share
        # at the largest epsilon that could fit
        exponent = (factor - 1) * top
        if exponent > 700:
            raise UsageError(
                "epsilon=\"remaining\": the group-privacy conversion of this budget needs a delta "
                "below the floating-point range; give the run a number as epsilon="
            )
        run_delta = DELTA_SHARE * delta_left / (factor * math.exp(exponent))
    d = float(run_delta)
    if not 0.0 < d < 1.0:
        raise UsageError('epsilon="remaining": the run\'s delta must be in (0, 1)')
    if convert(0.0, d).delta >= delta_left:
        raise UsageError(
            f"epsilon=\"remaining\": converted to the budget's unit, the run's delta {d:.3g} takes all "
            f"the delta the budget has left ({delta_left:.3g}); give a smaller delta="
        )

    def spent(epsilon: float) -> float:
        return compose([*prior, ((), convert(epsilon, d))], delta=delta, accountant=accountant)

    if spent(top) <= total:
        best = top
    else:
        lo, hi = 0.0, top
        if spent(lo) > total:
            raise _nothing_left(total, eps_f)
        while hi - lo > _RTOL * top:
            mid = 0.5 * (lo + hi)
            if spent(mid) <= total:
                lo = mid
            else:
                hi = mid
        best = lo
    if best <= 0:
        raise _nothing_left(total, eps_f)
    return RemainingTarget(epsilon=best, delta=d, charge=convert(best, d))


def _nothing_left(total: float, spent: float) -> BudgetExceededError:
    return BudgetExceededError(
        f"no budget is left for a run in the other privacy unit (total {total:g})",
        requested=None,
        remaining=max(0.0, total - spent),
    )
