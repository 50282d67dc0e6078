from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from privdl.encrypted.keys import HEKeys
from privdl.encrypted.models import as_model
from privdl.encrypted.scorer import EncryptedScorer
from privdl.errors import ApproximationWarning, InputError, KeyMissingError, SecurityError, UsageError


@pytest.fixture(scope="module")
def breast_cancer():
    from sklearn.datasets import load_breast_cancer

    return load_breast_cancer(return_X_y=True)


def test_breast_cancer_logistic_within_1e4(keys, breast_cancer):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = breast_cancer
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x, y)
    public = keys.public()
    scorer = EncryptedScorer.from_model(clf, public)
    assert not scorer.public_keys.is_private()
    scores = scorer.score(keys.encrypt(x))
    logits = keys.decrypt(scores, raw=True)
    assert np.max(np.abs(logits - clf.decision_function(x))) < 1e-4
    probs = keys.decrypt(scores)
    assert np.max(np.abs(probs - clf.predict_proba(x)[:, 1])) < 1e-4


def test_adult_features_torch_linear_within_1e4_across_chunks(keys, adult_xy, features):
    x, _ = adult_xy
    torch.manual_seed(0)
    lin = nn.Linear(len(features), 1)
    scorer = EncryptedScorer.from_model(lin, keys.public(), columns=features)
    batch = keys.encrypt(x, columns=features)
    assert len(batch.chunks) == -(-len(x) // 4096)
    assert batch.nbytes / batch.rows <= 2048 or len(x) < 4096  # upload <= 2 KB/row when full
    got = keys.decrypt(scorer.score(batch), raw=True)
    expected = x @ lin.weight.detach().double().numpy()[0] + float(lin.bias.detach())
    assert got.shape == (len(x),)
    assert np.max(np.abs(got - expected)) < 1e-4  # also proves row order survives chunking


@pytest.fixture(scope="module")
def adult_clf(adult_xy):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = adult_xy
    return make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)


def test_adult_logistic_from_dataframe_specs(keys, adult, adult_xy, adult_clf, features):
    x, _ = adult_xy
    clf = adult_clf
    spec = as_model(clf, columns=features)
    batch = keys.encrypt(adult, columns=features)
    probs = keys.decrypt(EncryptedScorer.from_model(spec, keys.public()).score(batch))
    assert np.max(np.abs(probs - clf.predict_proba(x)[:, 1])) < 1e-4


def test_hybrid_equals_all_encrypted(keys, adult, adult_xy, adult_clf, features):
    x, _ = adult_xy
    clf = adult_clf
    scorer = EncryptedScorer.from_model(clf, keys.public(), columns=features)
    sensitive = ["age", "sex=Male", "race=White", "race=Black"]
    plain = [c for c in features if c not in sensitive]
    batch = keys.encrypt(adult, columns=sensitive)
    assert batch.columns == tuple(sensitive)
    scores = scorer.score(batch, plain=adult, plain_columns=plain)
    assert scores.header.info["plain_columns"] == plain
    got = keys.decrypt(scores, raw=True)
    assert np.max(np.abs(got - clf.decision_function(x))) < 1e-4
    # a plain array works too, and a missing column is named
    got2 = keys.decrypt(scorer.score(batch, plain=x[:, len(sensitive) :], plain_columns=plain), raw=True)
    assert np.max(np.abs(got2 - got)) < 1e-6
    with pytest.raises(InputError, match="neither encrypted nor"):
        scorer.score(batch)
    with pytest.raises(InputError, match="rows"):
        scorer.score(batch, plain=adult.iloc[:10], plain_columns=plain)


def test_workers_give_the_same_scores(keys, adult_xy, features):
    x, _ = adult_xy
    x = x[:9000]
    torch.manual_seed(1)
    lin = nn.Linear(len(features), 1)
    scorer = EncryptedScorer.from_model(lin, keys.public())
    batch = keys.encrypt(x, workers=2)
    serial = keys.decrypt(scorer.score(batch), raw=True)
    parallel = keys.decrypt(scorer.score(batch, workers=2), raw=True)
    assert np.max(np.abs(serial - parallel)) < 1e-6
    expected = x @ lin.weight.detach().double().numpy()[0] + float(lin.bias.detach())
    assert np.max(np.abs(parallel - expected)) < 1e-4


class Square(nn.Module):
    def forward(self, x):
        return x * x


@pytest.mark.parametrize("activation", [Square(), nn.ReLU(), nn.Tanh()])
def test_mlp_matches_the_polynomial_model_within_1e3(deep_keys, breast_cancer, activation):
    from sklearn.preprocessing import StandardScaler

    x, _ = breast_cancer
    x = x[:300]
    scaler = StandardScaler().fit(x)
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(x.shape[1], 4), activation, nn.Linear(4, 1), nn.Sigmoid())
    with torch.no_grad():
        net[0].weight.mul_(0.3)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        scorer = EncryptedScorer.from_model(
            net, deep_keys.public(), scaler=scaler, activation_degree=2, activation_range=(-4, 4)
        )
    # an approximated activation without a calibration sample: the error is unmeasured
    unmeasured = [w for w in record if issubclass(w.category, ApproximationWarning)]
    assert bool(unmeasured) != isinstance(activation, Square)
    got = deep_keys.decrypt(scorer.score(deep_keys.encrypt(x)), raw=True)
    assert np.max(np.abs(got - scorer.model_.predict(x)[:, 0])) < 1e-3
    err = scorer.approximation["activations"][0]["max_error"]
    assert (err == 0.0) == isinstance(activation, Square)


def test_encrypted_probability_matches_polynomial_sigmoid(deep_keys, breast_cancer):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = breast_cancer
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.002)).fit(x, y)
    with pytest.warns(ApproximationWarning, match="sigmoid"):
        scorer = EncryptedScorer.from_model(clf, deep_keys.public(), output="probability", calibration=x)
    assert scorer.depth() == 3
    probs = deep_keys.decrypt(scorer.score(deep_keys.encrypt(x)))
    logits = clf.decision_function(x)
    assert np.max(np.abs(logits)) < 8  # inside the polynomial's range
    assert np.max(np.abs(probs - scorer.sigmoid_(logits))) < 1e-3
    assert np.max(np.abs(probs - clf.predict_proba(x)[:, 1])) <= scorer.sigmoid_.max_error + 1e-3
    # the measured error is the one the encrypted probabilities have, up to CKKS noise
    measured = scorer.approximation_.max_abs_error
    assert abs(np.max(np.abs(probs - clf.predict_proba(x)[:, 1])) - measured) < 1e-3


def test_scorer_refuses_secret_keys_and_shallow_keys(keys):
    lin = nn.Linear(3, 1)
    with pytest.raises(SecurityError):
        EncryptedScorer.from_model(lin, keys)
    mlp = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
    with pytest.raises(UsageError, match="depth"):
        EncryptedScorer.from_model(mlp, keys.public())
    # deep enough but without relinearization keys
    no_relin = HEKeys.generate(depth=4, relin_keys=False)
    with pytest.raises(UsageError, match="relinearization"):
        EncryptedScorer.from_model(mlp, no_relin.public())


def test_batches_from_other_keys_or_parameters_are_clear_errors(keys):
    lin = nn.Linear(2, 1)
    scorer = EncryptedScorer.from_model(lin, keys.public())
    other = HEKeys.generate()
    with pytest.raises(KeyMissingError, match="key set"):
        scorer.score(other.encrypt(np.ones((3, 2))))
    deeper = HEKeys.generate(depth=2)
    with pytest.raises(InputError, match="other CKKS parameters"):
        scorer.score(deeper.encrypt(np.ones((3, 2))))


def test_multi_output_softmax(keys):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 4))
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5)
    clf = LogisticRegression(max_iter=1000).fit(x, y)
    scorer = EncryptedScorer.from_model(clf, keys.public())
    probs = keys.decrypt(scorer.score(keys.encrypt(x)))
    assert probs.shape == (400, 3)
    assert np.max(np.abs(probs - clf.predict_proba(x))) < 1e-4


def test_rounding_and_zero_weights(keys):
    from privdl.encrypted.models import Layer, ModelSpec

    spec = ModelSpec(columns=("a", "b"), layers=(Layer.from_arrays([[0.0, 1.234567]], [0.1]),))
    scorer = EncryptedScorer(spec, keys.public())
    batch = keys.encrypt(np.array([[5.0, 1.0], [1.0, 2.0]]), columns=["a", "b"])
    out = keys.decrypt(scorer.score(batch), decimals=2)
    assert out.tolist() == [1.33, 2.57]
    zero = ModelSpec(columns=("a",), layers=(Layer.from_arrays([[0.0]], [1.0]),))
    with pytest.raises(UsageError, match="no weight"):
        EncryptedScorer(zero, keys.public()).score(keys.encrypt(np.ones((2, 1)), columns=["a"]))


def test_score_file_streams(tmp_path, keys, adult_xy, features):
    from privdl.encrypted.wire import read_batch_header

    x, _ = adult_xy
    x = x[:5000]
    lin = nn.Linear(len(features), 1)
    scorer = EncryptedScorer.from_model(lin, keys.public(), columns=features)
    keys.encrypt(x, columns=features).save(tmp_path / "in.he")
    header = scorer.score_file(tmp_path / "in.he", tmp_path / "out.he")
    assert header.rows == 5000 and read_batch_header(tmp_path / "out.he").kind == "scores"
    got = keys.decrypt(tmp_path / "out.he", raw=True)
    expected = x @ lin.weight.detach().double().numpy()[0] + float(lin.bias.detach())
    assert np.max(np.abs(got - expected)) < 1e-4


def test_per_row_packing_for_single_queries(breast_cancer):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = breast_cancer
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x, y)
    keys = HEKeys.generate(galois_keys=True)
    public = keys.public()
    assert public.context().has_galois_keys() and not public.is_private()
    scorer = EncryptedScorer.from_model(clf, public)
    one = keys.encrypt(x[:1], packing="row")
    many = keys.encrypt(x[:1])
    assert one.header.packing == "row" and len(one.chunks[0].blobs) == 1
    assert one.nbytes * 10 < many.nbytes  # one ciphertext instead of one per column
    got = keys.decrypt(scorer.score(keys.encrypt(x[:5], packing="row")), raw=True)
    assert np.max(np.abs(got - clf.decision_function(x[:5]))) < 1e-4
    # hybrid works per row too
    cols = [f"x{i}" for i in range(x.shape[1])]
    batch = keys.encrypt(x[:3, :10], columns=cols[:10], packing="row")
    hybrid = scorer.score(batch, plain=x[:3, 10:], plain_columns=cols[10:])
    assert np.max(np.abs(keys.decrypt(hybrid, raw=True) - clf.decision_function(x[:3]))) < 1e-4
    with pytest.raises(UsageError, match="latency-bound"):
        keys.encrypt(x[:100], packing="row")


def test_per_row_batches_need_galois_keys(keys):
    lin = nn.Linear(3, 1)
    scorer = EncryptedScorer.from_model(lin, keys.public())
    with pytest.raises(UsageError, match="Galois"):
        scorer.score(keys.encrypt(np.ones((1, 3)), packing="row"))
