"""epsilon="remaining" across privacy units: the planned run's converted charge fits what
is left, the ledger accepts it, and nothing is left over (or overspent)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from privdl.budget.accounting import epsilon_of, noise_multiplier_for
from privdl.budget.accounting.remaining import DELTA_SHARE
from privdl.budget.ledger import BudgetLedger
from privdl.errors import BudgetExceededError, PolicyError

DELTA = 1e-5
TOTAL = 4.0
K = 8


def _group(eps: float, delta: float, k: int) -> tuple[float, float]:
    # written out here, apart from the library: (k eps, k e^((k-1) eps) delta)
    return k * eps, k * math.exp((k - 1) * eps) * delta


def _events(n_users=200, seed=0):
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), rng.integers(1, K + 1, n_users))
    X = rng.normal(size=(len(users), 3)).astype("float32")
    y = (X[:, 0] > 0).astype("int64")
    return X, y, users


def _trainer(unit: str, ledger, epsilon, **kw):
    torch = pytest.importorskip("torch")
    pytest.importorskip("opacus")
    from privdl import PrivateTrainer

    user = dict(privacy_unit="user", max_records_per_user=K) if unit == "user" else {}
    torch.manual_seed(0)
    return PrivateTrainer(
        torch.nn.Linear(3, 2), epsilon=epsilon, ledger=ledger, dataset_id="ds", epochs=2, batch_size=40,
        seed=0, progress=False, **user, **kw,
    )


def _fit(trainer, X, y, users):
    return trainer.fit((X, y), users=users) if trainer.privacy_unit == "user" else trainer.fit((X, y))


@pytest.mark.parametrize(
    ("budget_unit", "run_unit"),
    [("user", "user"), ("record", "record"), ("record", "user"), ("user", "record")],
    ids=["a-same-user", "a-same-record", "b-user-run-on-record-budget", "c-record-run-on-user-budget"],
)
def test_remaining_spends_what_is_left_in_either_unit(tmp_path, budget_unit, run_unit):
    X, y, users = _events()
    ledger = BudgetLedger(tmp_path / "b.db")
    ledger.set_budget(
        "ds", epsilon=TOTAL, delta=DELTA, privacy_unit=budget_unit,
        max_records_per_user=K if budget_unit == "user" else None,
    )
    _fit(_trainer(budget_unit, ledger, 1.0), X, y, users)  # a first run in the budget's unit
    left = ledger.remaining("ds")
    t = _fit(_trainer(run_unit, ledger, "remaining"), X, y, users)

    first, run = ledger.runs("ds")
    assert run.status == "settled" and run.privacy_unit == run_unit
    spent = ledger.spent("ds")
    assert spent <= TOTAL * (1 + 1e-9)
    assert ledger.remaining("ds") <= 0.03 * left  # ~0: within the calibration's tolerance
    own = epsilon_of(t.accountant_history_, delta=t.delta_, accountant="prv")
    assert t.epsilon == pytest.approx(own, rel=1e-9)
    if run_unit == budget_unit:
        assert run.charge is None and t.delta_ == DELTA
        return
    # charged by the ledger's conversion of the run's own (epsilon, delta)
    k = 2 if run_unit == "user" else K
    want_eps, want_delta = _group(own, t.delta_, k)
    assert run.charge.epsilon == pytest.approx(want_eps, rel=1e-9)
    assert run.charge.delta == pytest.approx(want_delta, rel=1e-9)
    # the run's delta was chosen for it: its converted delta takes at most half of the delta left
    assert t.delta_ < DELTA and run.charge.delta <= DELTA_SHARE * DELTA * (1 + 1e-9)
    first_eps = epsilon_of(first.history, delta=DELTA - run.charge.delta, accountant="prv")
    assert spent == pytest.approx(first_eps + run.charge.epsilon, rel=1e-6)


def test_remaining_record_run_on_a_user_budget_without_k_is_refused(tmp_path):
    X, y, _ = _events()
    ledger = BudgetLedger(tmp_path / "b.db")
    ledger.set_budget("ds", epsilon=TOTAL, delta=DELTA, privacy_unit="user")
    t = _trainer("record", ledger, "remaining")
    with pytest.raises(PolicyError, match="max_records_per_user"):
        t.fit((X, y))
    assert t.steps_ == 0 and ledger.runs("ds") == []


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_the_planned_target_is_reserved_and_the_ledger_stays_the_final_word(tmp_path, accountant):
    ledger = BudgetLedger(tmp_path / "b.db")
    ledger.set_budget("ds", epsilon=6.0, delta=1e-4, accountant=accountant)
    prior = [(1.0, 0.02, 400)]
    ledger.settle(ledger.reserve("ds", history=prior, delta=1e-4), history=prior)
    run_delta = 1e-7  # the run names its delta: the search is over the run's epsilon
    target = ledger.plan_remaining("ds", privacy_unit="user", delta=run_delta)
    assert target.delta == run_delta and ledger.plan_remaining("ds", privacy_unit="record") is None
    sigma = noise_multiplier_for(epsilon=target.epsilon, delta=run_delta, sample_rate=0.05, steps=200,
                                 accountant=accountant)
    own = [(sigma, 0.05, 200)]
    # another run gets in between the plan and the reservation: the plan no longer fits
    other = ledger.reserve("ds", history=[(2.0, 0.02, 100)], delta=1e-4)
    with pytest.raises(BudgetExceededError):
        ledger.reserve("ds", history=own, delta=run_delta, privacy_unit="user")
    ledger.settle(other, history=[])  # gave it back: the planned run fits again
    ledger.reserve("ds", history=own, delta=run_delta, privacy_unit="user")
    eps = epsilon_of(own, delta=run_delta, accountant=accountant)
    charge_eps, charge_delta = _group(eps, run_delta, 2)
    want = epsilon_of(prior, delta=1e-4 - charge_delta, accountant=accountant) + charge_eps
    assert ledger.spent("ds") == pytest.approx(want, rel=1e-6)
    assert want <= 6.0 * (1 + 1e-9) and ledger.remaining("ds") <= 0.03 * 6.0


def test_nothing_left_for_a_converted_run(tmp_path):
    ledger = BudgetLedger(tmp_path / "b.db")
    ledger.set_budget("ds", epsilon=1.0, delta=1e-5, accountant="rdp")
    full = [(0.5, 0.1, 2000)]  # spends far more than 1.0 alone: settled truthfully
    run = ledger.reserve("ds", history=[(50.0, 0.01, 1)], delta=1e-5)
    with pytest.raises(BudgetExceededError):
        ledger.settle(run, history=full)
    with pytest.raises(BudgetExceededError) as info:
        ledger.plan_remaining("ds", privacy_unit="user")
    assert info.value.dataset_id == "ds"
