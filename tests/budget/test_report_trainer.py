"""PrivacyReport from a real PrivateTrainer run charged to a ledger."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from privdl.budget.ledger import BudgetLedger
from privdl.budget.report import PrivacyReport
from privdl.errors import BudgetExceededError

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

DELTA = 1e-5


@pytest.fixture(scope="module")
def data():
    from sklearn.datasets import load_breast_cancer
    from sklearn.preprocessing import StandardScaler

    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X).astype(np.float32)
    return X, y.astype(np.int64)


def test_real_run_report_matches_opacus_and_ledger(data, tmp_path: Path) -> None:
    from opacus.accountants import PRVAccountant, RDPAccountant

    from privdl.train.trainer import PrivateTrainer

    X, y = data
    with BudgetLedger(tmp_path / "b.db") as led:
        led.set_budget("bc", epsilon=2.5, delta=DELTA)
        before = led.status("bc")
        trainer = PrivateTrainer(
            torch.nn.Linear(30, 2), epsilon=2.0, epochs=2, ledger=led, dataset_id="bc", seed=0
        )
        trainer.fit((X[:300], y[:300]), val=(X[300:], y[300:]))
        after = led.status("bc")
        report = trainer.report(
            baseline=0.97,
            audit_data=((X[:200], y[:200]), (X[300:500], y[300:500])),
            ledger_before=before,
            ledger_after=after,
        )
        # the ledger holds the settled run with exactly the trainer's history
        (run,) = led.runs("bc")
        assert run.status == "settled"
        assert [tuple(s) for s in run.history] == [tuple(s) for s in trainer.accountant_history_]

        # a second run asking for more than is left is refused before its first step
        second = PrivateTrainer(
            torch.nn.Linear(30, 2), epsilon=2.0, epochs=1, ledger=led, dataset_id="bc", seed=1
        )
        with pytest.raises(BudgetExceededError) as info:
            second.fit((X[:300], y[:300]))
        assert info.value.remaining == pytest.approx(2.5 - after.spent)
        assert led.status("bc").runs == 1

    assert isinstance(report, PrivacyReport)
    hist = [tuple(s) for s in trainer.accountant_history_]
    acc = PRVAccountant() if report.accountant == "prv" else RDPAccountant()
    acc.history = hist
    assert report.epsilon == pytest.approx(acc.get_epsilon(delta=DELTA), rel=0.01)
    assert report.epsilon <= 2.0 * 1.001
    assert report.dataset is not None and report.dataset.spent_before == 0.0
    assert report.dataset.spent_after == pytest.approx(report.epsilon, rel=1e-6)
    assert report.dataset.remaining == pytest.approx(2.5 - report.epsilon, rel=1e-6)
    assert len(report.epochs) == 2 and report.epochs[-1].epsilon == pytest.approx(report.epsilon)
    assert report.utility is not None
    assert report.utility.metric == "accuracy" and report.utility.baseline == 0.97
    mia = report.membership_inference
    assert mia is not None and mia.n_members == 200 and 0.0 <= mia.advantage <= 1.0
    assert not any("recomputation" in w for w in report.warnings)
    html = report.save(tmp_path / "run.html").read_text()
    assert "Membership-inference audit" in html and "data:image/png;base64," in html


def test_report_of_a_second_fit_recomputes_each_epoch_over_both_runs(data) -> None:
    from privdl.train.trainer import PrivateTrainer

    X, y = data
    trainer = PrivateTrainer(torch.nn.Linear(30, 2), epsilon=1.0, epochs=2, batch_size=100, seed=0)
    trainer.fit((X[:300], y[:300]))
    first = trainer.epsilon
    trainer.fit((X[:300], y[:300]))  # continues the model as a second run: epsilon composes both
    report = trainer.report()
    assert len(trainer.accountant_history_) == 2
    assert [e.epoch for e in report.epochs] == [1, 2]
    # each epoch of the second run is the first run plus that epoch's steps
    assert first < report.epochs[0].epsilon < report.epochs[1].epsilon
    assert report.epochs[1].epsilon == pytest.approx(report.epsilon, rel=1e-6)
    for row, entry in zip(report.epochs, trainer.history_, strict=True):
        assert row.epsilon == pytest.approx(entry["epsilon"], rel=0.01)
    assert not any("reported" in w for w in report.warnings)
