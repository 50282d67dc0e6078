"""PrivateTrainer and the habits users bring: a DataLoader's batch size, torch.compile'd
models, scikit-learn's estimator conventions."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from privdl.train.trainer import PrivateTrainer  # noqa: E402


def blobs(n=300, d=6, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=2.5, size=(2, d))
    y = rng.integers(0, 2, size=n)
    X = (centers[y] + rng.normal(size=(n, d))).astype(np.float32)
    return X, y


def mlp(d=6, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, 2))


# ------------------------------------------------------------------ a DataLoader's batch size
def test_dataloader_keeps_its_batch_size_as_the_expected_poisson_batch(tmp_path):
    X, y = blobs()
    loader = DataLoader(TensorDataset(torch.tensor(X), torch.tensor(y)), batch_size=64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: nothing is replaced
        tr = PrivateTrainer(mlp(), epsilon=3.0, epochs=2, seed=0).fit(loader)
    assert tr.batch_size is None and tr.batch_size_ == 64
    assert tr.sample_rate_ == pytest.approx(1 / math.ceil(300 / 64))
    assert tr.steps_ == 2 * 5
    assert tr.report().to_dict()["training"]["batch_size"] == 64
    tr.save(tmp_path / "model")
    assert PrivateTrainer.load(tmp_path / "model").batch_size == 64


def test_a_batch_size_that_differs_from_the_loaders_wins_with_a_warning():
    X, y = blobs()
    loader = DataLoader(TensorDataset(torch.tensor(X), torch.tensor(y)), batch_size=64)
    with pytest.warns(UserWarning, match="batch_size=64 is replaced by batch_size=100"):
        tr = PrivateTrainer(mlp(), epsilon=3.0, epochs=1, batch_size=100, seed=0).fit(loader)
    assert tr.batch_size_ == 100 and tr.steps_ == 3


def test_arrays_default_to_256():
    X, y = blobs(n=600)
    tr = PrivateTrainer(mlp(), epsilon=3.0, epochs=1, seed=0).fit((X, y))
    assert tr.batch_size_ == 256 and tr.steps_ == 3
