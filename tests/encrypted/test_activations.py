"""HE-friendly activations: trained as polynomials, scored exactly."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from privdl.encrypted.activations import PolynomialActivation, Square
from privdl.encrypted.models import ModelSpec, approximate, as_model
from privdl.errors import ApproximationWarning, UsageError


@pytest.mark.parametrize("coefficients", [(0.5, -1.0), (0.1, 0.5, 0.25), (0.0, 1.0, 0.0, -0.2)])
def test_forward_is_the_polynomial(coefficients):
    x = torch.linspace(-3, 3, 101, dtype=torch.float64)
    got = PolynomialActivation(coefficients)(x).numpy()
    assert np.allclose(got, np.polynomial.polynomial.polyval(x.numpy(), coefficients), atol=1e-12)
    assert list(PolynomialActivation(coefficients).parameters()) == []  # nothing for DP-SGD to clip


@pytest.mark.parametrize("coefficients", [(1.0,), (0.0, 0.0, 0.0, 0.0, 1.0), (0.0, float("nan"))])
def test_unsupported_polynomials_are_refused(coefficients):
    with pytest.raises(UsageError):
        PolynomialActivation(coefficients)


def test_the_scorer_maps_them_exactly():
    relu_like = PolynomialActivation.approximating("relu", degree=2, range=(-3, 3))
    assert relu_like.coefficients == approximate("relu", degree=2, range=(-3, 3)).coefficients
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), relu_like, nn.Linear(4, 4), Square(), nn.Linear(4, 1))
    spec = as_model(net)
    first, second = spec.activations
    assert (first.name, first.exact, first.max_error) == ("polynomial", True, 0.0)
    assert (second.name, second.exact, second.depth) == ("square", True, 1)
    x = np.random.default_rng(0).normal(scale=5.0, size=(40, 3))  # far outside any fitted range
    with torch.no_grad():
        expected = net.double()(torch.tensor(x)).numpy()
    assert np.allclose(spec.predict(x), expected, atol=1e-9)
    assert np.allclose(spec.predict(x, exact=True), expected, atol=1e-9)
    # the exported file (what the CLI reads) keeps them exact
    again = ModelSpec.from_json(spec.to_json())
    assert again == spec and all(a.exact for a in again.activations)
    with pytest.raises(UsageError, match="before the first Linear"):
        as_model(nn.Sequential(Square(), nn.Linear(3, 1)))


@pytest.mark.parametrize("activation", [Square(), PolynomialActivation.approximating("relu")])
def test_trained_private_mlp_scores_encrypted_like_plaintext(deep_keys, activation):
    pytest.importorskip("opacus")
    from sklearn.datasets import load_breast_cancer
    from sklearn.preprocessing import StandardScaler

    from privdl.encrypted.scorer import EncryptedScorer
    from privdl.train.trainer import PrivateTrainer

    x, y = load_breast_cancer(return_X_y=True)
    scaler = StandardScaler().fit(x)
    xs = scaler.transform(x).astype(np.float32)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(30, 4), activation, nn.Linear(4, 1))
    trainer = PrivateTrainer(net, epsilon=5.0, epochs=2, batch_size=64, seed=0, progress=False)
    trainer.fit((xs, y.astype(np.float32)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ApproximationWarning)  # exact: nothing to warn about
        scorer = EncryptedScorer.from_model(trainer.model_, deep_keys.public(), scaler=scaler, link="logit")
    assert scorer.approximation_.status == "exact"
    got = deep_keys.decrypt(scorer.score(deep_keys.encrypt(x)))
    plaintext = trainer.predict_proba(xs)[:, 1]
    # measured 5e-6 (CKKS noise at depth 3-4, float32 plaintext); no approximation term
    assert np.max(np.abs(got - plaintext)) < 5e-5
