"""privdl.budget.accounting: histories, the one privacy-parameter validator, the RDP and
PRV accountants and calibration, checked against Opacus' own accountants."""

from __future__ import annotations

import copy
import json
import math
import pickle
import subprocess
import sys
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from privdl.budget.accounting import (
    History,
    Segment,
    check_accountant,
    check_delta,
    check_epsilon,
    epsilon_of,
    noise_multiplier_for,
    normalize_history,
)
from privdl.budget.ledger import BudgetLedger, check_budget
from privdl.errors import BudgetExceededError, InputError, PolicyError, PrivacyParameterError, UsageError


def _opacus_accountants():
    return pytest.importorskip("opacus.accountants")


HISTORIES = [
    [(1.0, 256 / 1797, 35)],  # digits, 5 epochs
    [(1.0, 256 / 30000, 351)],  # Adult-sized, 3 epochs
    [(0.8, 0.01, 3000)],
    [(5.0, 0.5, 10)],  # large q: the fractional-order series decays slowly
    [(0.5, 0.1, 100)],  # large epsilon
    [(1.1, 0.01, 100), (0.9, 0.02, 50), (2.0, 0.05, 20)],  # heterogeneous
    [(1.0 + i / 10, 0.02, 60 + i) for i in range(6)],  # six runs, odd and even steps
    [(3.0, 1.0, 10)],  # full batch
]


def opacus_epsilon(history, delta, accountant):
    acc = _opacus_accountants().create_accountant(mechanism=accountant)
    acc.history = list(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return acc.get_epsilon(delta=delta)


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
@pytest.mark.parametrize("history", HISTORIES)
def test_epsilon_matches_opacus(history, accountant):
    ours = epsilon_of(history, delta=1e-5, accountant=accountant)
    theirs = opacus_epsilon(history, 1e-5, accountant)
    assert ours == pytest.approx(theirs, rel=1e-4)


def test_epsilon_edge_cases():
    assert epsilon_of([], delta=1e-5) == 0.0
    assert epsilon_of([(1.0, 0.1, 0)], delta=1e-5) == 0.0
    assert epsilon_of([(1.0, 0.0, 10)], delta=1e-5) == 0.0
    assert math.isinf(epsilon_of([(0.0, 0.1, 10)], delta=1e-5))
    # more steps never cost less
    assert epsilon_of([(1.0, 0.01, 200)], delta=1e-5) > epsilon_of([(1.0, 0.01, 100)], delta=1e-5)


@pytest.mark.parametrize(
    "bad",
    [
        [(1.0, 1.5, 10)],
        [(-1.0, 0.1, 10)],
        [(1.0, 0.1, 2.5)],
        [(1.0, 0.1)],
        ["abc"],
    ],
)
def test_malformed_history_is_refused(bad):
    with pytest.raises(InputError):
        epsilon_of(bad, delta=1e-5)


@pytest.mark.parametrize("kwargs", [{"delta": 0.0}, {"delta": 1.0}, {"accountant": "gdp"}])
def test_bad_arguments_are_refused(kwargs):
    args = {"delta": 1e-5, "accountant": "prv", **kwargs}
    with pytest.raises(InputError):
        epsilon_of([(1.0, 0.1, 10)], **args)


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
@pytest.mark.parametrize(
    ("epsilon", "q", "steps"),
    [(2.0, 256 / 1797, 35), (1.0, 256 / 30000, 351), (0.5, 0.02, 500), (8.0, 0.05, 200)],
)
def test_calibration_is_tight_and_never_above_target(epsilon, q, steps, accountant):
    sigma = noise_multiplier_for(
        epsilon=epsilon, delta=1e-5, sample_rate=q, steps=steps, accountant=accountant
    )
    assert epsilon_of([(sigma, q, steps)], delta=1e-5, accountant=accountant) <= epsilon
    # independent recomputation with Opacus
    assert opacus_epsilon([(sigma, q, steps)], 1e-5, accountant) <= epsilon * (1 + 1e-6)
    # within 1 % of the smallest sigma that meets the target
    assert epsilon_of([(sigma * 0.99, q, steps)], delta=1e-5, accountant=accountant) > epsilon


def test_calibration_composes_with_prior_runs():
    prior = [(1.2, 0.01, 300)]
    spent = epsilon_of(prior, delta=1e-5)
    sigma = noise_multiplier_for(epsilon=spent + 1.0, delta=1e-5, sample_rate=0.02, steps=100, prior=prior)
    total = epsilon_of([*prior, (sigma, 0.02, 100)], delta=1e-5)
    assert total <= spent + 1.0
    assert epsilon_of([*prior, (sigma * 0.99, 0.02, 100)], delta=1e-5) > spent + 1.0
    # with prior spending, more noise is needed than for the same target alone
    alone = noise_multiplier_for(epsilon=spent + 1.0, delta=1e-5, sample_rate=0.02, steps=100)
    assert sigma > alone


def test_calibration_refuses_when_prior_spends_everything():
    prior = [(0.8, 0.05, 500)]
    spent = epsilon_of(prior, delta=1e-5)
    with pytest.raises(BudgetExceededError) as info:
        noise_multiplier_for(epsilon=spent * 0.9, delta=1e-5, sample_rate=0.01, steps=10, prior=prior)
    assert info.value.remaining == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"epsilon": 0.0},
        {"epsilon": math.inf},
        {"sample_rate": 0.0},
        {"sample_rate": 1.5},
        {"steps": 0},
        {"steps": 2.5},
        {"accountant": "gdp"},
    ],
)
def test_calibration_argument_checks(kwargs):
    args = {"epsilon": 1.0, "delta": 1e-5, "sample_rate": 0.01, "steps": 100, **kwargs}
    with pytest.raises(InputError):
        noise_multiplier_for(**args)


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
@pytest.mark.parametrize("delta", [0.1, 0.2, 0.3, 0.5])
def test_epsilon_is_never_negative_at_a_large_delta(delta, accountant):
    # The (epsilon, delta) conversion goes below zero for a large delta; a negative
    # figure used to reach the ledger as a negative spend.
    quiet = [(5.0, 0.01, 10), (20.0, 0.001, 1)]
    for segment in quiet:
        assert epsilon_of([segment], delta=delta, accountant=accountant) == 0.0
    noisy = epsilon_of([(0.5, 0.01, 1000)], delta=delta, accountant=accountant)
    assert noisy > 0.0  # clamped at zero, not zeroed
    assert epsilon_of([(0.5, 0.01, 1000)], delta=1e-5, accountant=accountant) > noisy


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
@pytest.mark.parametrize("delta", [0.1, 0.3, 0.5])
def test_calibration_converges_at_a_large_delta(delta, accountant):
    # where epsilon is 0 for moderate noise, the search used to creep down and give up
    for target in (0.05, 0.5):
        sigma = noise_multiplier_for(
            epsilon=target, delta=delta, sample_rate=0.01, steps=1000, accountant=accountant
        )
        assert 0.0 < epsilon_of([(sigma, 0.01, 1000)], delta=delta, accountant=accountant) <= target
        assert epsilon_of([(sigma * 0.99, 0.01, 1000)], delta=delta, accountant=accountant) > target


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sigma=st.floats(0.5, 30.0),
    q=st.floats(0.001, 1.0),
    steps=st.integers(1, 500),
    delta=st.floats(1e-3, 0.9),
    accountant=st.sampled_from(["prv", "rdp"]),
)
def test_epsilon_is_never_negative_property(sigma, q, steps, delta, accountant):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # PRV falls back to RDP: still a bound
        assert epsilon_of([(sigma, q, steps)], delta=delta, accountant=accountant) >= 0.0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    epsilon=st.floats(0.2, 20.0),
    q=st.floats(0.001, 0.5),
    steps=st.integers(1, 2000),
)
def test_rdp_calibration_property(epsilon, q, steps):
    sigma = noise_multiplier_for(epsilon=epsilon, delta=1e-5, sample_rate=q, steps=steps, accountant="rdp")
    assert epsilon_of([(sigma, q, steps)], delta=1e-5, accountant="rdp") <= epsilon
    assert epsilon_of([(sigma / 1.01, q, steps)], delta=1e-5, accountant="rdp") > epsilon


def test_accounting_does_not_import_torch_or_train():
    code = (
        "import sys, privdl.budget.accounting as a, privdl.budget.ledger;"
        "a.noise_multiplier_for(epsilon=1.0, delta=1e-5, sample_rate=0.01, steps=100);"
        "assert 'torch' not in sys.modules and 'opacus' not in sys.modules;"
        "assert not [m for m in sys.modules if m.startswith('privdl.train')]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------ Segment / History values
def test_segment_is_a_frozen_validated_three_tuple():
    seg = Segment(1, 0.01, 100.0)
    assert seg == (1.0, 0.01, 100) and isinstance(seg.steps, int)
    sigma, q, steps = seg
    assert (sigma, q, steps) == (seg.noise_multiplier, seg.sample_rate, seg.steps)
    with pytest.raises(AttributeError):
        seg.steps = 5  # type: ignore[misc]
    assert Segment.of([1.0, 0.01, 100]) == seg
    # every way of building a segment is validated, _replace included
    with pytest.raises(PrivacyParameterError, match="sample_rate"):
        seg._replace(sample_rate=2.0)
    with pytest.raises(PrivacyParameterError, match="noise_multiplier"):
        Segment(math.nan, 0.1, 1)


def test_history_accepts_plain_tuples_and_lists_and_drops_empty_segments():
    history = History([(1.1, 0.01, 300), [2.0, 0.02, 0], Segment(0.9, 0.05, 10)])
    assert history == [(1.1, 0.01, 300), (0.9, 0.05, 10)]
    assert [(1.1, 0.01, 300), (0.9, 0.05, 10)] == history  # noqa: SIM300 (the reflected ==)
    assert history == ((1.1, 0.01, 300), (0.9, 0.05, 10))
    assert not history != [(1.1, 0.01, 300), (0.9, 0.05, 10)]  # noqa: SIM202 (tuple's own != is wrong)
    assert history != [(1.1, 0.01, 300)]
    assert all(isinstance(seg, Segment) for seg in history)
    assert [n for _, _, n in history] == [300, 10] and history.steps == 310
    assert normalize_history(history) is history
    # concatenation and slices stay histories
    longer = history + [(1.0, 0.1, 1)]  # noqa: RUF005 (History.__add__ is under test)
    assert isinstance(longer, History) and len(longer) == 3
    assert isinstance(history[1:], History) and history[1:] == [(0.9, 0.05, 10)]


def test_history_serializes_like_the_lists_it_replaces():
    history = History([(1.1, 0.01, 300), (0.9, 0.05, 10)])
    assert json.loads(json.dumps(history)) == [[1.1, 0.01, 300], [0.9, 0.05, 10]] == history.to_list()
    assert History(json.loads(json.dumps(history))) == history
    for clone in (pickle.loads(pickle.dumps(history)), copy.deepcopy(history)):
        assert clone == history and isinstance(clone, History) and isinstance(clone[0], Segment)
    # hashable and equal to the plain tuples, so caches keyed on either agree
    assert hash(history) == hash(((1.1, 0.01, 300), (0.9, 0.05, 10)))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([(1.0, 0.1, 10), (1.0, 1.5, 10)], "history segment 1: sample_rate"),
        ([(-1.0, 0.1, 10)], "history segment 0: noise_multiplier"),
        ([(1.0, 0.1, -3)], "history segment 0: steps"),
        ([(1.0, 0.1)], "history segment 0 is not"),
        ([None], "history segment 0 is not"),
    ],
)
def test_history_names_the_bad_segment(bad, message):
    with pytest.raises(PrivacyParameterError, match=message):
        History(bad)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0.0, 1e3), st.floats(0.0, 1.0), st.integers(0, 10_000)),
        max_size=8,
    )
)
def test_history_round_trips_and_keeps_order_property(segments):
    history = History(segments)
    assert history == [s for s in segments if s[2] > 0]
    assert History(json.loads(json.dumps(history))) == history


# ------------------------------------------------------------------ one privacy-parameter error
def test_the_validator_returns_floats_and_refuses_with_one_class():
    assert check_epsilon(2) == 2.0 and check_delta(1e-5) == 1e-5 and check_accountant("rdp") == "rdp"
    for bad in (0.0, -1.0, math.inf, math.nan, "2.0", True, None):
        with pytest.raises(PrivacyParameterError, match="epsilon must be a positive finite number"):
            check_epsilon(bad)
    for bad in (0.0, 1.0, -1e-5, "1e-5", None):
        with pytest.raises(PrivacyParameterError, match=r"delta must be in \(0, 1\)"):
            check_delta(bad)
    with pytest.raises(PrivacyParameterError, match=r"delta=0\.01 is not below 1/n"):
        check_delta(0.01, records=100)
    with pytest.raises(PrivacyParameterError, match="unknown accountant"):
        check_accountant("gdp")


def test_privacy_parameter_error_is_caught_as_every_class_it_replaced():
    err = PrivacyParameterError("delta must be in (0, 1)")
    assert isinstance(err, InputError) and isinstance(err, UsageError) and isinstance(err, PolicyError)
    assert isinstance(err, ValueError) and err.exit_code == 2


@pytest.mark.parametrize(
    "call",
    [
        lambda led: epsilon_of([(1.0, 0.1, 10)], delta=1.5),
        lambda led: noise_multiplier_for(epsilon=1.0, delta=1.5, sample_rate=0.01, steps=10),
        lambda led: check_budget(epsilon=1.0, delta=1.5),
        lambda led: led.set_budget("d", epsilon=1.0, delta=1.5),
        lambda led: led.reserve("d", history=[(1.0, 0.01, 10)], delta=1.5),
    ],
    ids=["epsilon_of", "noise_multiplier_for", "check_budget", "set_budget", "reserve"],
)
def test_a_bad_delta_raises_the_same_error_from_every_entry_point(call, tmp_path):
    with BudgetLedger(tmp_path / "b.db") as led:
        led.set_budget("d", epsilon=1.0, delta=1e-5)
        with pytest.raises(PrivacyParameterError, match=r"delta must be in \(0, 1\)"):
            call(led)


@pytest.mark.parametrize(
    "call",
    [
        lambda led: epsilon_of([(1.0, 0.1, 10)], delta=1e-5, accountant="gdp"),
        lambda led: noise_multiplier_for(
            epsilon=1.0, delta=1e-5, sample_rate=0.01, steps=10, accountant="gdp"
        ),
        lambda led: led.set_budget("d", epsilon=1.0, delta=1e-5, accountant="gdp"),
        lambda led: led.status("d", accountant="gdp"),
        lambda led: led.reserve("d", history=[(1.0, 0.01, 10)], delta=1e-5, accountant="gdp"),
    ],
    ids=["epsilon_of", "noise_multiplier_for", "set_budget", "status", "reserve"],
)
def test_an_unknown_accountant_raises_the_same_error_from_every_entry_point(call, tmp_path):
    with BudgetLedger(tmp_path / "b.db") as led:
        led.set_budget("d", epsilon=1.0, delta=1e-5)
        with pytest.raises(PrivacyParameterError, match="unknown accountant 'gdp'"):
            call(led)


def test_the_ledger_stores_and_returns_history_values(tmp_path):
    with BudgetLedger(tmp_path / "b.db") as led:
        led.set_budget("d", epsilon=5.0, delta=1e-5)
        run = led.reserve("d", history=[[1.0, 0.01, 100], (2.0, 0.02, 0)], delta=1e-5)
        record = led.run(run)
        assert isinstance(record.history, History) and record.history == [(1.0, 0.01, 100)]
        assert isinstance(led.history("d"), History)
        assert json.loads(record.to_json())["history"] == [[1.0, 0.01, 100]]
