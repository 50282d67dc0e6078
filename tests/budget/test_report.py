"""PrivacyReport from a (stand-in) trained model and from a ledger.

The stand-in trainer carries what PrivateTrainer exposes, with real numbers: its
accountant history comes from stepping Opacus' RDP accountant, its per-epoch epsilons
from that accountant, and its model is a real scikit-learn classifier whose per-record
losses feed the membership audit.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from privdl.budget.ledger import BudgetLedger
from privdl.budget.membership import dp_advantage_bound, loss_threshold_test
from privdl.budget.report import PrivacyReport, Utility, group_privacy
from privdl.errors import NotFittedError, UsageError

DELTA = 1e-5


@dataclass
class StandInTrainer:
    """The fitted-trainer surface the report reads (see PrivateTrainer)."""

    model_: Any
    accountant_history_: list
    history_: list
    noise_multiplier_: float
    sample_rate_: float
    steps_: int
    epochs: int
    batch_size: int
    max_grad_norm: float
    delta_: float
    epsilon: float
    target_epsilon: float | None
    accountant: str = "rdp"
    secure_mode: bool = False
    n_samples_: int = 0
    replaced_modules_: list = field(default_factory=list)
    dataset_id: str | None = None
    ledger_: Any = None
    run_id_: str | None = None
    encoder_: Any = None
    loss: Any = None
    checkpoint_dir: Any = None
    val_overlap_: int | None = None
    domain_source_: str | None = None
    feature_names_: list | None = None
    task_: str | None = "binary"
    grad_sample_mode_: str | None = "hooks"

    def loss_per_sample(self, X, y):
        proba = self.model_.predict_proba(X)
        return -np.log(np.clip(proba[np.arange(len(y)), y], 1e-12, 1.0))


def _stand_in(model, *, n: int, epochs: int = 3, sigma: float = 1.1, batch: int = 64, **kw):
    from opacus.accountants import RDPAccountant

    q = batch / n
    steps_per_epoch = round(1 / q)
    acc = RDPAccountant()
    per_epoch = []
    for epoch in range(1, epochs + 1):
        for _ in range(steps_per_epoch):
            acc.step(noise_multiplier=sigma, sample_rate=q)
        per_epoch.append(
            {
                "epoch": epoch,
                "loss": 1.0 / epoch,
                "metric": 0.8 + 0.02 * epoch,
                "epsilon": acc.get_epsilon(delta=DELTA),
            }
        )
    return StandInTrainer(
        model_=model,
        accountant_history_=list(acc.history),
        history_=per_epoch,
        noise_multiplier_=sigma,
        sample_rate_=q,
        steps_=steps_per_epoch * epochs,
        epochs=epochs,
        batch_size=batch,
        max_grad_norm=1.0,
        delta_=DELTA,
        epsilon=acc.get_epsilon(delta=DELTA),
        target_epsilon=kw.pop("target_epsilon", None),
        n_samples_=n,
        **kw,
    )


@pytest.fixture(scope="module")
def data():
    from sklearn.datasets import load_breast_cancer
    from sklearn.preprocessing import StandardScaler

    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(y))
    tr, te = idx[:280], idx[280:]
    return X[tr], y[tr], X[te], y[te]


def test_report_from_trainer_recomputes_epsilon(data, tmp_path: Path) -> None:
    from opacus.accountants import PRVAccountant
    from sklearn.linear_model import LogisticRegression

    X, y, _Xt, _yt = data
    trainer = _stand_in(LogisticRegression(max_iter=500).fit(X, y), n=len(y), sigma=4.0, target_epsilon=1.0)
    report = PrivacyReport.from_trainer(trainer, baseline=0.95, max_records_per_user=3)
    assert report.scope == "run"
    assert report.epsilon == pytest.approx(trainer.epsilon, rel=0.01)
    # the same history under PRV (independent recomputation with Opacus)
    prv = PRVAccountant()
    prv.history = list(trainer.accountant_history_)
    from privdl.budget.accounting import epsilon_of

    assert epsilon_of(report.history, delta=DELTA, accountant="prv") == pytest.approx(
        prv.get_epsilon(delta=DELTA), rel=0.01
    )
    # per-epoch epsilon recomputed from the history prefix, equal to Opacus' per-epoch figure
    assert [e.epoch for e in report.epochs] == [1, 2, 3]
    for row, entry in zip(report.epochs, trainer.history_, strict=True):
        assert row.epsilon == pytest.approx(entry["epsilon"], rel=0.01)
    assert report.epochs[0].epsilon < report.epochs[-1].epsilon
    # user level by group privacy
    unit = report.privacy_unit
    assert unit.unit == "user" and unit.max_records_per_user == 3
    assert unit.epsilon == pytest.approx(3 * report.epsilon)
    assert unit.delta == pytest.approx(3 * math.exp(2 * report.epsilon) * DELTA)
    assert report.utility == Utility(
        metric="validation metric",
        private=pytest.approx(0.86),
        baseline=0.95,
        difference=pytest.approx(-0.09),
    )
    assert report.training is not None
    assert report.training.noise_multiplier == 4.0
    assert report.training.steps == trainer.steps_
    assert any("secure_mode" in w for w in report.warnings)
    assert not any("reported" in w or "vacuous" in w for w in report.warnings)
    assert PrivacyReport.from_json(report.to_json()) == report

    text = report.statement()
    for phrase in (
        "Poisson sampling",
        "add or remove one record",
        "central DP",
        "every intermediate model",
        "user-level",
    ):
        assert phrase in text


def test_user_level_guarantee_at_large_epsilon_is_flagged(data) -> None:
    from sklearn.linear_model import LogisticRegression

    X, y, _, _ = data
    trainer = _stand_in(LogisticRegression(max_iter=200).fit(X, y), n=len(y), sigma=1.1)
    report = PrivacyReport.from_trainer(trainer, max_records_per_user=3)
    assert report.privacy_unit.delta == 1.0
    assert any("vacuous" in w for w in report.warnings)


def test_report_flags_a_trainer_epsilon_that_disagrees(data) -> None:
    from sklearn.linear_model import LogisticRegression

    X, y, _, _ = data
    trainer = _stand_in(LogisticRegression(max_iter=200).fit(X, y), n=len(y))
    trainer.epsilon = trainer.epsilon / 2  # a trainer that under-reports
    report = PrivacyReport.from_trainer(trainer)
    assert report.epsilon > trainer.epsilon * 1.5
    assert any("recomputation" in w for w in report.warnings)


def test_membership_audit_detects_a_memorizing_model(data) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    X, _, Xt, _ = data
    # random labels: nothing generalizes, so any advantage is memorization
    rng = np.random.default_rng(2)
    members = (X[:150], rng.integers(0, 2, 150))
    non_members = (Xt[:150], rng.integers(0, 2, 150))
    # distance-weighted k-NN memorizes its training set: zero loss on every member
    knn = KNeighborsClassifier(n_neighbors=15, weights="distance").fit(*members)
    memorizer = _stand_in(knn, n=150)
    leaky = PrivacyReport.from_trainer(memorizer, audit_data=(members, non_members))
    mia = leaky.membership_inference
    assert mia is not None
    assert mia.n_members == 150 and mia.n_non_members == 150
    assert mia.auc > 0.9
    # a strongly regularized linear model barely distinguishes members
    smooth = _stand_in(LogisticRegression(C=0.01, max_iter=500).fit(*members), n=150)
    quiet = PrivacyReport.from_trainer(smooth, audit_data=(members, non_members))
    assert quiet.membership_inference is not None
    assert quiet.membership_inference.auc < 0.7
    assert quiet.membership_inference.advantage < mia.advantage
    assert quiet.membership_inference.dp_bound == pytest.approx(dp_advantage_bound(quiet.epsilon, DELTA))


def test_loss_threshold_test_matches_sklearn_auc() -> None:
    from sklearn.metrics import roc_auc_score, roc_curve

    rng = np.random.default_rng(1)
    m = np.round(rng.exponential(0.8, 300), 2)  # rounding creates ties
    n = np.round(rng.exponential(1.2, 200), 2)
    audit = loss_threshold_test(m, n)
    labels = np.r_[np.ones(300), np.zeros(200)]
    assert audit.auc == pytest.approx(roc_auc_score(labels, -np.r_[m, n]))
    fpr, tpr, _ = roc_curve(labels, -np.r_[m, n])
    assert audit.advantage == pytest.approx(np.max(tpr - fpr))


def test_dp_bound_and_group_privacy_formulas() -> None:
    assert dp_advantage_bound(0.0, 0.0) == 0.0
    assert dp_advantage_bound(1.0, 0.0) == pytest.approx((math.e - 1) / (math.e + 1))
    assert dp_advantage_bound(1e4, 1e-5) == 1.0
    assert group_privacy(0.5, 1e-6, 1) == (0.5, 1e-6)
    eps, delta = group_privacy(0.5, 1e-6, 4)
    assert eps == 2.0 and delta == pytest.approx(4 * math.exp(1.5) * 1e-6)
    with pytest.raises(UsageError):
        group_privacy(1.0, 1e-5, 0)


def test_report_with_ledger_before_and_after(data, tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    X, y, _, _ = data
    with BudgetLedger(tmp_path / "b.db") as led:
        led.set_budget("bc", epsilon=20.0, delta=DELTA, accountant="rdp")
        led.reserve("bc", history=[(1.5, 0.05, 200)], delta=DELTA, accountant="rdp")
        trainer = _stand_in(
            LogisticRegression(max_iter=200).fit(X, y), n=len(y), dataset_id="bc", ledger_=led
        )
        before = led.status("bc")
        run = led.reserve("bc", history=trainer.accountant_history_, delta=DELTA, accountant="rdp")
        trainer.run_id_ = run
        led.settle(run, history=trainer.accountant_history_)
        after = led.status("bc")
        report = PrivacyReport.from_trainer(trainer, ledger_before=before, ledger_after=after)
    d = report.dataset
    assert d is not None
    assert d.total_epsilon == 20.0
    assert d.spent_before == pytest.approx(before.spent, rel=1e-6)
    assert d.spent_after == pytest.approx(after.spent, rel=1e-6)
    assert d.spent_before < report.epsilon < d.spent_after < d.naive_sum


def test_report_from_ledger_and_all_formats(tmp_path: Path) -> None:
    with BudgetLedger(tmp_path / "b.db") as led:
        led.set_budget("adult", epsilon=6.0, delta=DELTA)
        r1 = led.reserve("adult", history=[(1.1, 0.01, 1000)], delta=DELTA, model_name="lr")
        led.settle(r1, history=[(1.1, 0.01, 900)])
        led.reserve("adult", history=[(1.3, 0.02, 500)], delta=DELTA, model_name="mlp")
        status = led.status("adult")
        report = PrivacyReport.from_ledger(led, "adult")
    assert report.scope == "dataset"
    assert report.epsilon == pytest.approx(status.spent)
    assert len(report.runs) == 2
    assert report.runs[0].composed_after < report.runs[1].composed_after == pytest.approx(report.epsilon)
    assert report.dataset is not None and report.dataset.naive_sum > report.epsilon
    assert any("still reserved" in w for w in report.warnings)

    html = report.save(tmp_path / "r.html").read_text()
    assert html.startswith("<!doctype html>")
    assert "data:image/png;base64," in html  # the plot is embedded
    assert "<script" not in html and "http://" not in html and "https://" not in html
    md = report.save(tmp_path / "r.md").read_text()
    assert "# Privacy report: dataset adult" in md
    assert "hyperparameter tuning" in md and "Poisson sampling" in md
    payload = json.loads(report.save(tmp_path / "r.json").read_text())
    assert PrivacyReport.from_json(payload) == report
    assert "anonymous" not in md.lower()


def test_trainer_report_html_has_epoch_plot(data, tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    X, y, _, _ = data
    trainer = _stand_in(LogisticRegression(max_iter=200).fit(X, y), n=len(y))
    html = PrivacyReport.from_trainer(trainer).save(tmp_path / "run.html").read_text()
    assert "epsilon and validation metric per epoch" in html
    assert "data:image/png;base64," in html


def test_unfitted_trainer_is_refused() -> None:
    class Unfitted:
        accountant_history_ = None

    with pytest.raises(NotFittedError, match="not been fitted") as info:
        PrivacyReport.from_trainer(Unfitted())
    # scikit-learn's convention: a usage error and an AttributeError
    assert isinstance(info.value, UsageError) and isinstance(info.value, AttributeError)


def test_data_dependent_preprocessing_is_reported(data, tmp_path: Path) -> None:
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from privdl.train.encoding import TableEncoder

    X, y, _, _ = data
    frame = pd.DataFrame({"city": ["a", "b", "a"], "age": ["30-39", "40", "*"]})
    encoder = TableEncoder(numeric_bounds={"age": (0, 100)}, domains="learned-unprotected").fit(frame)
    trainer = _stand_in(LogisticRegression(max_iter=200).fit(X, y), n=len(y), encoder_=encoder)
    report = PrivacyReport.from_trainer(trainer)
    assert "city: category vocabulary (2 values) taken from the training data" in report.preprocessing
    md = report.save(tmp_path / "r.md").read_text()
    assert "Preprocessing not covered by DP" in md and "city: category vocabulary" in md


# -- issue 10.2: the coverage statement and what a report leaves out ------------------------
def _protection(report: PrivacyReport) -> dict[str, str]:
    return {
        c.item: {"DP": "dp", "NOT covered": "not covered"}.get(c.protection, "public")
        for c in report.coverage
    }


def test_coverage_lists_every_released_item_and_marks_it(data, tmp_path: Path) -> None:
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from privdl.train.encoding import TableEncoder

    X, y, Xt, yt = data
    encoder = TableEncoder(numeric_bounds={"age": (0, 100)}, domains="learned-unprotected").fit(
        pd.DataFrame({"city": ["a", "b", "a"], "age": ["30-39", "40", "*"]})
    )
    trainer = _stand_in(
        LogisticRegression(max_iter=200).fit(X, y), n=len(y), encoder_=encoder, checkpoint_dir=tmp_path
    )
    with BudgetLedger(tmp_path / "b.db") as led:
        led.set_budget("bc", epsilon=20.0, delta=DELTA, accountant="rdp")
        report = PrivacyReport.from_trainer(
            trainer,
            baseline=0.95,
            audit_data=((X[:50], y[:50]), (Xt[:50], yt[:50])),
            ledger_after=led.status("bc"),
        )
    assert _protection(report) == {
        "model weights (trainable parameters)": "dp",
        "optimizer state and training progress (epoch, steps)": "dp",
        "epsilon, delta, accountant history (noise multiplier, sampling rate, steps), clipping norm, "
        "per-epoch epsilon and steps": "public",
        "number of training records (n)": "not covered",
        "training configuration (hyperparameters, target epsilon, secure mode, whether a seed was given)": (
            "public"
        ),
        "model architecture (layers, replaced modules, gradient engine)": "public",
        "dataset id, run id, software versions, creation time": "public",
        "task (binary, multiclass or regression)": "not covered",
        "feature names and encoder domains (encoder.json)": "not covered",  # learned vocabulary
        "choice of feature columns among those nobody named": "not covered",  # 'city' screened
        "validation metric per epoch": "not covered",
        "non-private baseline and utility difference": "not covered",
        "membership-inference audit (AUC, advantage, record counts)": "not covered",
        "dataset budget (total, spent, remaining)": "public",
    }
    assert PrivacyReport.from_json(report.to_json()) == report
    md = report.save(tmp_path / "r.md").read_text()
    assert "## Coverage: what is released" in md
    assert "NOT covered by the DP guarantee" in md and "number of training records (n)" in md
    # an encoder that learned nothing without DP: its domains' source decides; loss= fixes the task
    trainer.encoder_ = SimpleNamespace(
        data_dependent_=[], domain_source_=None, screened_=[], domain_epsilon_=None
    )
    for source, expected in (("dp", "dp"), ("policy", "public"), ("learned-unprotected", "not covered")):
        trainer.domain_source_, trainer.loss = source, "bce"
        again = PrivacyReport.from_trainer(trainer)
        marks = _protection(again)
        assert marks["feature names and encoder domains (encoder.json)"] == expected
        headline = any("learned from the training data without DP" in w for w in again.warnings)
        assert headline == (source == "learned-unprotected")
        assert marks["task (binary, multiclass or regression)"] == "public"


def test_report_leaves_the_training_loss_out(data, tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    X, y, _, _ = data
    trainer = _stand_in(LogisticRegression(max_iter=200).fit(X, y), n=len(y))
    for row in trainer.history_:
        row["loss"] = 0.123456789 * row["epoch"]  # as a trainer records it live
    report = PrivacyReport.from_trainer(trainer)
    assert all("loss" not in row.to_dict() for row in report.epochs)
    for suffix in (".json", ".md", ".html"):
        text = report.save(tmp_path / f"r{suffix}").read_text()
        for row in trainer.history_:
            assert f"{row['loss']:.4g}" not in text and repr(row["loss"]) not in text
    # a report saved by an older version, with the loss, loads without it
    old = json.loads(report.to_json())
    for row, entry in zip(old["epochs"], trainer.history_, strict=True):
        row["loss"] = entry["loss"]
    assert PrivacyReport.from_json(old) == report


def test_membership_section_has_no_mean_member_loss(data, tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    X, y, Xt, yt = data
    trainer = _stand_in(LogisticRegression(max_iter=200).fit(X, y), n=len(y))
    report = PrivacyReport.from_trainer(trainer, audit_data=((X[:80], y[:80]), (Xt[:80], yt[:80])))
    mia = report.membership_inference
    assert mia is not None and mia.auc >= 0.0
    assert not {"mean_loss_members", "mean_loss_non_members"} & set(mia.to_dict())
    member_mean = float(np.mean(trainer.loss_per_sample(X[:80], y[:80])))
    html = report.save(tmp_path / "r.html").read_text()
    assert f"{member_mean:.4g}" not in html and "mean loss" not in html


def test_ledger_report_states_its_coverage(tmp_path: Path) -> None:
    with BudgetLedger(tmp_path / "b.db") as led:
        led.set_budget("adult", epsilon=6.0, delta=DELTA)
        led.reserve("adult", history=[(1.1, 0.01, 1000)], delta=DELTA, model_name="lr")
        report = PrivacyReport.from_ledger(led, "adult")
    assert report.coverage and set(_protection(report).values()) == {"public"}


# -- issue 11: values, not dicts; the explicit record a report is built from ----------------
def test_report_is_values_with_one_serialization_contract(data, tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    from privdl.budget.membership import MembershipInference
    from privdl.budget.report import CoverageItem, Epoch, PrivacyUnit, Training

    X, y, Xt, yt = data
    trainer = _stand_in(LogisticRegression(max_iter=200).fit(X, y), n=len(y))
    report = PrivacyReport.from_trainer(trainer, membership_data=((X[:60], y[:60]), (Xt[:60], yt[:60])))
    assert isinstance(report.privacy_unit, PrivacyUnit) and isinstance(report.training, Training)
    assert all(isinstance(e, Epoch) for e in report.epochs)
    assert all(isinstance(c, CoverageItem) for c in report.coverage)
    assert isinstance(report.membership_inference, MembershipInference)
    # to_dict -> dict, to_json -> str, from_dict / from_json (str or parsed dict) read them back
    assert isinstance(report.to_dict(), dict) and isinstance(report.to_json(), str)
    assert json.loads(report.to_json()) == report.to_dict()
    assert PrivacyReport.from_dict(report.to_dict()) == report
    assert PrivacyReport.from_json(report.to_json()) == report
    assert PrivacyReport.from_json(json.loads(report.to_json())) == report
    saved = report.save(tmp_path / "r.json").read_text()
    assert PrivacyReport.from_json(saved) == report
    with pytest.raises(Exception, match="not a privdl privacy report"):
        PrivacyReport.from_json('{"scope": "run"}')
    # a dataset report keeps its saved shape: no training block
    with BudgetLedger(tmp_path / "b.db") as led:
        led.set_budget("d", epsilon=6.0, delta=DELTA)
        led.reserve("d", history=[(1.1, 0.01, 1000)], delta=DELTA, model_name="lr")
        ledger_report = PrivacyReport.from_ledger(led, "d")
    assert ledger_report.training is None and ledger_report.to_dict()["training"] == {}
    assert ledger_report.runs[0].steps == 1000
    assert PrivacyReport.from_json(ledger_report.to_json()) == ledger_report


def test_audit_data_is_an_alias_of_membership_data(data) -> None:
    from sklearn.linear_model import LogisticRegression

    X, y, Xt, yt = data
    trainer = _stand_in(LogisticRegression(max_iter=200).fit(X, y), n=len(y))
    split = ((X[:60], y[:60]), (Xt[:60], yt[:60]))
    new = PrivacyReport.from_trainer(trainer, membership_data=split)
    old = PrivacyReport.from_trainer(trainer, audit_data=split)
    assert new.membership_inference == old.membership_inference is not None
    with pytest.raises(UsageError, match="not both"):
        PrivacyReport.from_trainer(trainer, membership_data=split, audit_data=split)


def test_report_is_built_from_run_facts_read_explicitly(data) -> None:
    from sklearn.linear_model import LogisticRegression

    from privdl.budget.facts import RunFacts

    X, y, _, _ = data
    trainer = _stand_in(LogisticRegression(max_iter=200).fit(X, y), n=len(y), target_epsilon=1.0)
    facts = RunFacts.of(trainer)
    assert facts.steps == trainer.steps_ and facts.accountant == "rdp"
    assert facts.n_samples == len(y) and facts.target_epsilon == 1.0
    assert all(not hasattr(row, "loss") for row in facts.history)  # the exact loss is no fact
    # the same report from the record alone
    a = PrivacyReport.from_facts(facts)
    b = PrivacyReport.from_trainer(trainer)
    assert a.to_dict() | {"created_at": ""} == b.to_dict() | {"created_at": ""}
    # a trainer's own run_facts() is preferred
    trainer.run_facts = lambda: facts  # type: ignore[attr-defined]
    assert PrivacyReport.from_trainer(trainer).epsilon == a.epsilon
    # a renamed attribute is an error, not a silent None in a privacy statement
    renamed = SimpleNamespace(
        **{k: v for k, v in vars(trainer).items() if k not in ("n_samples_", "run_facts")}
    )
    with pytest.raises(AttributeError, match="n_samples_"):
        RunFacts.of(renamed)
    # the membership test takes the per-record loss as a callable, not the trainer
    split = ((X[:40], y[:40]), (X[200:240], y[200:240]))
    with pytest.raises(UsageError, match="loss_per_sample"):
        PrivacyReport.from_facts(facts, membership_data=split)
    report = PrivacyReport.from_facts(facts, membership_data=split, loss_per_sample=trainer.loss_per_sample)
    assert report.membership_inference is not None and report.membership_inference.n_members == 40


def test_membership_result_loads_older_records_without_their_mean_losses() -> None:
    from privdl.budget.membership import MembershipInference

    r = loss_threshold_test([0.1, 0.2, 0.3], [0.9, 1.0, 1.1], epsilon=1.0, delta=DELTA)
    assert r.auc == 1.0 and r.dp_bound == pytest.approx(dp_advantage_bound(1.0, DELTA))
    assert MembershipInference.from_json(r.to_json()) == r
    old = {**r.to_dict(), "mean_loss_members": 0.2, "mean_loss_non_members": 1.0}
    assert MembershipInference.from_json(old) == r
