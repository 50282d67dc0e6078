"""privdl.tune: a random-count search (Papernot & Steinke) charged as one ledger run."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

import privdl  # noqa: E402
from privdl.budget.ledger import BudgetLedger  # noqa: E402
from privdl.errors import BudgetExceededError, UsageError  # noqa: E402

GRID = {"lr": [0.05, 0.2], "max_grad_norm": [0.5, 1.0]}


def _data(n=1500, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)).astype("float32")
    y = (X[:, 0] - X[:, 1] + 0.3 * rng.normal(size=n) > 0).astype("int64")
    return X, y


def _model():
    return torch.nn.Linear(4, 2)


def _independent_bound(histories, *, delta, distribution, mean_runs, eta=1.0):
    """The Papernot-Steinke bound written out from the paper (arXiv 2110.03620), on
    Opacus' RDP analysis of the sampled Gaussian mechanism (not privdl's)."""
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
    from opacus.accountants.rdp import RDPAccountant
    from scipy.optimize import brentq

    orders = np.array(RDPAccountant.DEFAULT_ALPHAS, dtype=float)
    curve = np.zeros_like(orders)
    for hist in histories:
        rdp = sum(compute_rdp(q=q, noise_multiplier=s, steps=n, orders=orders) for s, q, n in hist)
        curve = np.maximum(curve, rdp)
    if distribution == "poisson":
        # Theorem 6: Q is (eps_hat, delta_hat)-DP with e^eps_hat = 1 + 1/(lambda - 1)
        total = np.empty_like(orders)
        for i, lam in enumerate(orders):
            eps_hat = math.log(1 + 1 / (lam - 1))
            log_delta = min(
                (a - 1) * (r - eps_hat + math.log(1 - 1 / a)) - math.log(a)
                for a, r in zip(orders, curve, strict=True)
            )
            delta_hat = math.exp(min(0.0, log_delta))
            total[i] = curve[i] + mean_runs * delta_hat + math.log(mean_runs) / (lam - 1)
    else:
        # Theorem 2, truncated negative binomial D_{eta, gamma} with E[K] = mean_runs
        def mean(g):
            return (1 / g - 1) / math.log(1 / g) if eta == 0 else eta * (1 - g) / (g * (1 - g**eta))

        gamma = brentq(lambda g: mean(g) - mean_runs, 1e-9, 1 - 1e-9, xtol=1e-15)
        extra = min(
            (1 + eta) * (1 - 1 / lh) * r + (1 + eta) * math.log(1 / gamma) / lh
            for lh, r in zip(orders, curve, strict=True)
        )
        total = curve + extra + math.log(mean_runs) / (orders - 1)
    eps, _ = get_privacy_spent(orders=orders, rdp=total, delta=delta)
    return float(eps)


@pytest.mark.parametrize(
    ("distribution", "eta", "seed"),
    [("poisson", 1.0, 3), ("truncated_negative_binomial", 1.0, 4), ("truncated_negative_binomial", 0.0, 5)],
)
def test_recorded_epsilon_is_the_papernot_steinke_bound(tmp_path, distribution, eta, seed):
    X, y = _data()
    led = BudgetLedger(tmp_path / "b.db")
    led.set_budget("ds", epsilon=10.0, delta=1e-5, accountant="rdp")
    result = privdl.tune(
        _model, GRID, (X, y), epsilon=3.0, ledger=led, dataset_id="ds", mean_runs=3,
        distribution=distribution, eta=eta, epochs=1, batch_size=300, seed=seed,
    )
    assert result.candidates_, "this seed draws at least one candidate"
    assert result.best_params_ in [c["params"] for c in result.candidates_]
    histories = [c["history"] for c in result.candidates_]
    want = _independent_bound(
        histories, delta=result.delta, distribution=distribution, mean_runs=3, eta=eta
    )
    assert result.epsilon == pytest.approx(want, rel=1e-6)
    assert result.epsilon <= 3.0 * (1 + 1e-6)
    runs = led.runs("ds")
    assert len(runs) == 1  # one ledger run for the whole search
    assert runs[0].charge.epsilon == pytest.approx(want, rel=1e-6)
    assert runs[0].charge.delta == result.delta == pytest.approx(0.5e-5)
    # every candidate's history is its trainer's own plus the noisy score
    assert all(h[-1][1] == 1.0 and h[-1][2] == 1 for h in histories)
    # the released trainer says what covers it
    assert result.trainer_.epsilon == pytest.approx(want, rel=1e-6)
    report = result.trainer_.report()
    assert report.epsilon == pytest.approx(want, rel=1e-6)
    from privdl.budget import report_document

    blocks = report_document._statement_blocks(report)
    note = blocks[1].text
    assert f"Covered: the search over {len(result.candidates_)} candidates" in note
    assert "NOT covered: hyperparameter tuning" not in note


def test_search_more_candidates_costs_more_than_one_and_less_than_all():
    X, y = _data()
    result = privdl.tune(_model, GRID, (X, y), epsilon=3.0, mean_runs=8, epochs=1, batch_size=300, seed=11)
    from privdl.budget.accounting import epsilon_of

    one = result.candidates_[0]["history"]
    alone = epsilon_of(one, delta=result.delta, accountant="rdp")
    composed = epsilon_of([seg for c in result.candidates_ for seg in c["history"]], delta=result.delta, accountant="rdp")
    assert alone < result.epsilon
    if len(result.candidates_) > 4:
        assert result.epsilon < composed


def test_saved_tuned_model_keeps_the_search_epsilon(tmp_path):
    X, y = _data(800)
    result = privdl.tune(_model, {"lr": [0.1]}, (X, y), epsilon=2.0, mean_runs=2,
                         distribution="truncated_negative_binomial", epochs=1, batch_size=200, seed=1)
    result.trainer_.save(tmp_path / "m")
    loaded = privdl.PrivateTrainer.load(tmp_path / "m")
    assert loaded.epsilon == pytest.approx(result.epsilon)


def test_refusals(tmp_path):
    X, y = _data(600)
    led = BudgetLedger(tmp_path / "b.db")
    led.set_budget("small", epsilon=1.0, delta=1e-5)
    with pytest.raises(BudgetExceededError):
        privdl.tune(_model, GRID, (X, y), epsilon=3.0, ledger=led, dataset_id="small", epochs=1, seed=0)
    assert led.runs("small") == []  # refused before any candidate
    with pytest.raises(UsageError, match="epsilon"):
        privdl.tune(_model, {"epsilon": [1.0]}, (X, y), epochs=1)
    with pytest.raises(UsageError, match="distribution"):
        privdl.tune(_model, GRID, (X, y), distribution="uniform")
    with pytest.raises(UsageError, match="users="):
        privdl.tune(_model, GRID, (X, y), privacy_unit="user", max_records_per_user=3)


def test_user_level_search_scores_users():
    X, y = _data(1200)
    users = np.repeat(np.arange(200), 6)
    result = privdl.tune(
        _model, {"lr": [0.1, 0.2]}, (X, y), epsilon=3.0, mean_runs=2, distribution="truncated_negative_binomial",
        users=users, privacy_unit="user", max_records_per_user=6, epochs=1, batch_size=40, seed=2,
    )
    assert result.trainer_.privacy_unit == "user" and result.trainer_.n_users_ < 200  # held-out users
    want = _independent_bound([c["history"] for c in result.candidates_], delta=result.delta,
                              distribution="truncated_negative_binomial", mean_runs=2)
    assert result.epsilon == pytest.approx(want, rel=1e-6)


def test_score_on_public_data_is_not_charged():
    X, y = _data(900)
    Xp, yp = _data(300, seed=7)
    result = privdl.tune(_model, {"lr": [0.1, 0.2]}, (X, y), epsilon=2.0, mean_runs=2,
                         distribution="truncated_negative_binomial", public_val=(Xp, yp),
                         epochs=1, batch_size=300, seed=3)
    histories = [c["history"] for c in result.candidates_]
    assert all(len(h) == 1 for h in histories)  # training only: no score segment
    assert result.trainer_.n_samples_ == 900  # all of data trains
    want = _independent_bound(histories, delta=result.delta, distribution="truncated_negative_binomial", mean_runs=2)
    assert result.epsilon == pytest.approx(want, rel=1e-6)
