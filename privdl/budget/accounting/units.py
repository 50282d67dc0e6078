"""Privacy units (record or user), group privacy, and runs charged by a fixed guarantee.

A dataset's budget protects one *unit*: a record, or a user with all their records. A
run accounted in the same unit is composed by its accountant history, exactly. A run in
the other unit is converted to the budget's unit first, into a fixed
``(epsilon, delta)`` :class:`Charge`:

* a record-level run on a user-level budget: group privacy over the budget's declared
  ``max_records_per_user`` k, ``(k eps, k e^((k-1) eps) delta)``; refused when k is not
  declared;
* a user-level run on a record-level budget: removing one record of a user who keeps
  others changes that user's data rather than removing them; add-or-remove-one-user DP
  covers such a change as a group of two (remove the user, add them back without the
  record): ``(2 eps, 2 e^eps delta)``. (A user-level run is not record-level DP at its
  own epsilon under add/remove neighbours; this is the bound that holds.)

A hyperparameter search (:mod:`.tuning`) is also charged as one fixed guarantee.
:func:`compose` adds the fixed charges to the composition of the other runs'
histories (basic composition between the two groups: epsilons and deltas add).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from privdl.budget.accounting.calibrate import epsilon_of
from privdl.budget.accounting.history import History
from privdl.errors import PolicyError, UsageError

__all__ = [
    "PRIVACY_UNITS",
    "Charge",
    "check_unit",
    "compose",
    "fixed_part",
    "group_privacy",
    "unit_charge",
]

PRIVACY_UNITS = ("record", "user")


def check_unit(unit: str) -> str:
    """``unit`` if it is ``"record"`` or ``"user"``.

    Raises:
        UsageError: another value.
    """
    if unit not in PRIVACY_UNITS:
        raise UsageError(f"privacy_unit must be one of {', '.join(map(repr, PRIVACY_UNITS))}")
    return str(unit)


def group_privacy(epsilon: float, delta: float, k: int) -> tuple[float, float]:
    """(epsilon, delta) for groups of ``k`` units from (epsilon, delta)-DP for one.

    The standard group-privacy bound: ``(k epsilon, k e^{(k-1) epsilon} delta)``
    (delta capped at 1).
    """
    if k < 1:
        raise UsageError("max_records_per_user must be >= 1")
    if k == 1:
        return float(epsilon), float(delta)
    exponent = (k - 1) * epsilon
    user_delta = math.inf if exponent > 700 else k * math.exp(exponent) * delta
    return k * float(epsilon), min(1.0, user_delta)


@dataclass(frozen=True)
class Charge:
    """A run's fixed ``(epsilon, delta)`` in the budget's unit, and how it was derived.

    Attributes:
        epsilon, delta: the guarantee charged.
        how: a short, value-free description (``"group privacy, k=60"``,
            ``"Papernot-Steinke search, poisson mean 8"``).
    """

    epsilon: float
    delta: float
    how: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"epsilon": float(self.epsilon), "delta": float(self.delta), "how": self.how}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Charge | None:
        if data is None:
            return None
        return cls(float(data["epsilon"]), float(data["delta"]), str(data.get("how", "")))


def unit_charge(
    *,
    run_unit: str,
    budget_unit: str,
    max_records_per_user: int | None,
    history: Iterable[Sequence[Any]] = (),
    delta: float,
    accountant: str,
    charge: Charge | None = None,
) -> Charge | None:
    """The fixed charge of a run on a budget (``None``: composed by its history).

    Args:
        run_unit, budget_unit: the run's and the budget's privacy unit.
        max_records_per_user: the budget's declared maximum (for a record-level run
            on a user-level budget).
        history, delta, accountant: the run's history and own delta.
        charge: the run's own fixed guarantee (a search), converted when the units differ.

    Raises:
        PolicyError: a record-level run on a user-level budget without a declared
            maximum of records per user.
    """
    check_unit(run_unit)
    check_unit(budget_unit)
    if run_unit == budget_unit:
        return charge
    if charge is not None:
        eps, dlt, how = charge.epsilon, charge.delta, charge.how + "; "
    else:
        eps, dlt, how = epsilon_of(History(history), delta=delta, accountant=accountant), float(delta), ""
    if run_unit == "record":
        if max_records_per_user is None:
            raise PolicyError(
                "a record-level run on a user-level budget needs the budget's max_records_per_user "
                "(set_budget(..., max_records_per_user=k)) for group privacy"
            )
        k = int(max_records_per_user)
        e, d = group_privacy(eps, dlt, k)
        return Charge(e, d, f"{how}record-level run, group privacy over k={k} records per user")
    e, d = group_privacy(eps, dlt, 2)
    return Charge(e, d, f"{how}user-level run on a record-level budget, group of 2 (one user's data changed)")


def fixed_part(charges: Iterable[Charge | None]) -> tuple[float, float]:
    """The summed ``(epsilon, delta)`` of the fixed charges."""
    eps = dlt = 0.0
    for c in charges:
        if c is not None:
            eps += float(c.epsilon)
            dlt += float(c.delta)
    return eps, dlt


def compose(runs: Iterable[tuple[Iterable[Sequence[Any]], Charge | None]], *, delta: float, accountant: str) -> float:
    """Epsilon at ``delta`` of runs given as ``(history, charge)``: the histories of the
    runs without a charge composed under ``accountant`` at what the charges leave of
    delta, plus the charges' epsilons (``inf`` when the charges take all of delta)."""
    segments: list[Sequence[Any]] = []
    charges: list[Charge] = []
    for hist, charge in runs:
        if charge is not None:
            charges.append(charge)
        else:
            segments.extend(hist)
    eps_f, delta_f = fixed_part(charges)
    hist = History(segments)
    if not len(hist):
        return eps_f if delta_f <= delta * (1 + 1e-12) else math.inf
    if delta_f >= delta:
        return math.inf
    return float(epsilon_of(hist, delta=delta - delta_f, accountant=accountant)) + eps_f
