"""The approximation error of the encrypted circuit is measured, stored and warned about."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from privdl.encrypted.approximation import (
    BOUNDS_SAMPLES,
    DEFAULT_TOLERANCE,
    ApproximationReport,
)
from privdl.encrypted.scorer import EncryptedScorer
from privdl.errors import ApproximationWarning, FormatError, InputError, UsageError

RNG = np.random.default_rng(7)


def _relu_net(seed=0, d=4, hidden=6):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, 1), nn.Sigmoid())


def _exact_probability(net, x):
    with torch.no_grad():
        return net.double()(torch.tensor(x, dtype=torch.float64)).numpy()[:, 0]


@pytest.fixture(scope="module")
def bad_case():
    """A ReLU MLP and a calibration sample whose hidden inputs leave [-4, 4]."""
    net = _relu_net()
    with torch.no_grad():
        net[0].weight.mul_(4.0)
        net[2].weight.mul_(3.0)
    x = RNG.normal(scale=3.0, size=(400, 4))
    return net, x


def test_bad_relu_approximation_warns_and_is_stored(deep_keys, bad_case):
    net, x = bad_case
    with pytest.warns(ApproximationWarning, match="above the tolerance") as record:
        scorer = EncryptedScorer.from_model(net, deep_keys.public(), calibration=x)
    report = scorer.approximation_
    assert report.status == "measured" and report.source == "calibration" and report.rows == 400
    assert report.quantity == "probability"
    assert report.max_abs_error > 0.1  # docs/encrypted.md: "0.1 or more" off out of range
    assert report.mean_abs_error <= report.max_abs_error
    (hidden,) = report.activations
    assert (hidden.name, hidden.degree, hidden.fitted_range) == ("relu", 2, (-4.0, 4.0))
    assert hidden.seen_range[0] < -4 and hidden.seen_range[1] > 4
    assert 0 < hidden.share_outside < 1
    message = str(record[0].message)
    assert "400 calibration rows" in message and "outside its fitted range" in message
    # aggregates only: no calibration value is in the message or the report
    stored = report.to_json() + message
    assert not any(f"{v:.6f}" in stored for v in x.ravel()[:50])
    assert scorer.warnings_ == (message,)
    assert scorer.approximation["error"] == report.to_dict()
    assert scorer.get_params()["approximation"]["error"]["max_abs_error"] == report.max_abs_error


def test_stored_error_matches_an_independent_plaintext_computation(deep_keys, bad_case):
    net, x = bad_case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ApproximationWarning)
        scorer = EncryptedScorer.from_model(net, deep_keys.public(), calibration=x)
    report = scorer.approximation_
    # the circuit by hand: Linear -> c0 + c1 h + c2 h^2 -> Linear -> sigmoid
    (act,) = scorer.model_.activations
    c0, c1, c2 = act.coefficients
    w1, b1 = net[0].weight.detach().double().numpy(), net[0].bias.detach().double().numpy()
    w2, b2 = net[2].weight.detach().double().numpy(), net[2].bias.detach().double().numpy()
    h = x @ w1.T + b1
    poly = 1 / (1 + np.exp(-((c0 + c1 * h + c2 * h * h) @ w2.T + b2)[:, 0]))
    gap = np.abs(poly - _exact_probability(net, x))
    assert report.max_abs_error == pytest.approx(gap.max(), rel=1e-9)
    assert report.mean_abs_error == pytest.approx(gap.mean(), rel=1e-9)
    assert report.activations[0].share_outside == pytest.approx(np.mean(np.abs(h) > 4))
    # and it is the error the encrypted scores really have (up to CKKS noise)
    got = deep_keys.decrypt(scorer.score(deep_keys.encrypt(x[:64])))
    encrypted_gap = np.abs(got - _exact_probability(net, x[:64]))
    assert np.max(np.abs(encrypted_gap - gap[:64])) < 1e-3


def test_small_error_gives_no_warning(deep_keys):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 1), nn.Sigmoid())
    x = RNG.normal(scale=0.3, size=(300, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ApproximationWarning)
        scorer = EncryptedScorer.from_model(
            net, deep_keys.public(), calibration=x, activation_degree=3, activation_range=(-1, 1)
        )
    report = scorer.approximation_
    assert report.status == "measured" and report.within_tolerance
    assert 0 < report.max_abs_error < DEFAULT_TOLERANCE
    assert report.activations[0].share_outside == 0.0
    assert scorer.warnings_ == ()
    # the same sample against a stricter tolerance does warn
    with pytest.warns(ApproximationWarning):
        EncryptedScorer.from_model(
            net, deep_keys.public(), calibration=x, activation_degree=3, activation_range=(-1, 1),
            tolerance=report.max_abs_error / 2,
        )  # fmt: skip


def test_no_sample_warns_that_the_error_is_unmeasured(deep_keys):
    with pytest.warns(ApproximationWarning, match="unmeasured"):
        scorer = EncryptedScorer.from_model(_relu_net(), deep_keys.public())
    assert scorer.approximation_.status == "unmeasured"
    assert scorer.approximation_.max_abs_error is None
    assert scorer.approximation_.within_tolerance is None


def test_linear_and_polynomial_models_are_exact_without_a_sample(keys, deep_keys):
    from privdl.encrypted.activations import PolynomialActivation, Square

    with warnings.catch_warnings():
        warnings.simplefilter("error", ApproximationWarning)
        linear = EncryptedScorer.from_model(nn.Sequential(nn.Linear(3, 1), nn.Sigmoid()), keys.public())
        square = EncryptedScorer.from_model(
            nn.Sequential(nn.Linear(3, 2), Square(), nn.Linear(2, 1)), deep_keys.public()
        )
        poly = EncryptedScorer.from_model(
            nn.Sequential(nn.Linear(3, 2), PolynomialActivation((0.1, 0.5, 0.2)), nn.Linear(2, 1)),
            deep_keys.public(),
        )
    for scorer in (linear, square, poly):
        assert scorer.approximation_.status == "exact"
        assert scorer.approximation_.max_abs_error == 0.0
        assert "CKKS noise only" in scorer.approximation_.summary()
    assert "1e-07" in linear.approximation_.summary()
    # an encrypted probability approximates the sigmoid, even for a linear model
    with pytest.warns(ApproximationWarning, match="sigmoid"):
        EncryptedScorer.from_model(
            nn.Sequential(nn.Linear(3, 1), nn.Sigmoid()), deep_keys.public(), output="probability"
        )


def test_encrypted_sigmoid_is_measured_on_the_probability(deep_keys):
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_breast_cancer(return_X_y=True)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x, y)
    with pytest.warns(ApproximationWarning):
        scorer = EncryptedScorer.from_model(clf, deep_keys.public(), output="probability", calibration=x)
    (sig,) = scorer.approximation_.activations
    assert sig.position == "output sigmoid"
    logits = clf.decision_function(x)
    expected = np.abs(scorer.sigmoid_(logits) - clf.predict_proba(x)[:, 1])
    assert scorer.approximation_.max_abs_error == pytest.approx(expected.max(), rel=1e-6)
    assert sig.share_outside == pytest.approx(np.mean(np.abs(logits) > 8))


def test_bounds_sample_the_box_and_reach_its_corners(deep_keys):
    net = _relu_net(seed=3, d=3, hidden=5)
    lo, hi = np.array([-1.0, 0.0, 2.0]), np.array([1.0, 1.0, 6.0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ApproximationWarning)
        scorer = EncryptedScorer.from_model(net, deep_keys.public(), bounds=(lo, hi))
    report = scorer.approximation_
    assert report.source == "bounds" and report.rows == BOUNDS_SAMPLES + 2 * 5
    # interval arithmetic: the exact range of the first layer's outputs over the box
    w, b = net[0].weight.detach().double().numpy(), net[0].bias.detach().double().numpy()
    top = (np.where(w > 0, w * hi, w * lo)).sum(axis=1) + b
    bottom = (np.where(w > 0, w * lo, w * hi)).sum(axis=1) + b
    assert report.activations[0].seen_range == pytest.approx((bottom.min(), top.max()))
    again = EncryptedScorer.from_model(net, deep_keys.public(), bounds=(lo, hi), tolerance=10.0)
    assert again.approximation_.max_abs_error == report.max_abs_error  # fixed seed
    assert again.warnings_ == ()


def test_bad_calibration_or_bounds_are_clear_errors(deep_keys):
    net = _relu_net()
    public = deep_keys.public()
    with pytest.raises(UsageError, match="not both"):
        EncryptedScorer.from_model(net, public, calibration=np.zeros((2, 4)), bounds=(0, 1))
    with pytest.raises(InputError, match="4 model columns"):
        EncryptedScorer.from_model(net, public, calibration=np.zeros((2, 3)))
    bad = np.zeros((5, 4))
    bad[3, 2] = np.nan
    with pytest.raises(InputError, match="row 4 holds a non-finite value"):
        EncryptedScorer.from_model(net, public, calibration=bad)
    with pytest.raises(InputError, match="low is above high for column 'x1'"):
        EncryptedScorer.from_model(net, public, bounds=([0, 1, 0, 0], [1, 0, 1, 1]))
    with pytest.raises(UsageError, match="tolerance"):
        EncryptedScorer.from_model(net, public, bounds=(0, 1), tolerance=0)


def test_dataframe_calibration_uses_the_model_columns(deep_keys):
    import pandas as pd

    net = _relu_net()
    x = RNG.normal(size=(50, 4))
    frame = pd.DataFrame(x[:, ::-1], columns=["d", "c", "b", "a"])  # other order, by name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ApproximationWarning)
        by_name = EncryptedScorer.from_model(net, deep_keys.public(), columns=list("abcd"), calibration=frame)
        by_array = EncryptedScorer.from_model(net, deep_keys.public(), calibration=x)
    assert by_name.approximation_ == by_array.approximation_


def test_serialization_keeps_the_report(deep_keys, bad_case):
    net, x = bad_case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ApproximationWarning)
        scorer = EncryptedScorer.from_model(net, deep_keys.public(), calibration=x)
    text = scorer.to_json()
    data = json.loads(text)
    assert data["approximation"]["rows"] == 400
    assert set(data) == {"format", "model", "output", "sigmoid", "approximation"}  # no key material
    with warnings.catch_warnings():
        warnings.simplefilter("error", ApproximationWarning)  # loading does not re-measure
        loaded = EncryptedScorer.from_json(text, deep_keys.public())
    assert loaded.approximation_ == scorer.approximation_
    assert loaded.model_.model_id() == scorer.model_.model_id()
    assert ApproximationReport.from_json(scorer.approximation_.to_json()) == scorer.approximation_
    plan = scorer.plan(list(scorer.model_.columns))
    rebuilt, _ = EncryptedScorer.from_recipe(scorer.recipe(plan))  # what worker processes get
    assert rebuilt.approximation_ == scorer.approximation_
    # and the scores header carries it to the data owner
    header = scorer.score(deep_keys.encrypt(x[:8])).header
    assert header.info["approximation"]["error"] == scorer.approximation_.to_dict()
    with pytest.raises(FormatError):
        EncryptedScorer.from_json('{"format": "other"}', deep_keys.public())
    with pytest.raises(FormatError):
        ApproximationReport.from_dict({"format": "privdl-he-approximation/1", "status": "measured"})


def test_cli_score_prints_the_warning(tmp_path, deep_keys, capsys):
    from privdl.cli import main
    from privdl.encrypted.models import export_linear_model

    export_linear_model(_relu_net(), tmp_path / "mlp.json", columns=list("abcd"))
    deep_keys.save(tmp_path / "keys")
    import pandas as pd

    pd.DataFrame(RNG.normal(size=(5, 4)), columns=list("abcd")).to_csv(tmp_path / "u.csv", index=False)
    run = lambda *a: main([str(v) for v in a])  # noqa: E731
    assert run("he", "encrypt", tmp_path / "u.csv", "--keys", tmp_path / "keys", "--columns", "a,b,c,d",
               "-o", tmp_path / "u.he") == 0  # fmt: skip
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ApproximationWarning)  # the CLI prints it, not Python
        code = run("he", "score", tmp_path / "u.he", "--model", tmp_path / "mlp.json",
                   "--public", tmp_path / "keys", "-o", tmp_path / "s.he")  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("privdl: warning: ")]
    assert len(lines) == 1 and "unmeasured" in lines[0] and "relu" in lines[0]
    assert "Traceback" not in err and "ApproximationWarning" not in err
