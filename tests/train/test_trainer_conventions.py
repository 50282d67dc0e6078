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


# ------------------------------------------------------------------ torch.compile
def test_a_compiled_model_is_trained_through_its_original_module():
    X, y = blobs(n=400)
    torch.manual_seed(0)
    plain = nn.Linear(6, 2)
    before = plain.weight.detach().clone()
    # inductor, the default backend: its graphs reuse output buffers, which looked like a
    # layer output modified in place; it is never run, since training is eager
    compiled = torch.compile(plain)
    with pytest.warns(UserWarning, match="torch.compile"):
        tr = PrivateTrainer(compiled, epsilon=8.0, epochs=3, seed=0).fit((X, y))
    assert tr.model_ is plain and tr.grad_sample_mode_ == "bk"
    assert "(model): torch.compile -> original module" in tr.replaced_modules_
    assert not torch.equal(plain.weight, before) and tr.score(X, y) > 0.7
    assert tr.report().to_dict()["training"]["replaced_modules"][0].startswith("(model): torch.compile")


def test_a_compiled_submodule_and_make_private():
    from privdl.train.private_loop import make_private

    X, y = blobs(n=300)
    torch.manual_seed(0)
    model = nn.Sequential(torch.compile(nn.Linear(6, 16)), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loader = DataLoader(TensorDataset(torch.tensor(X), torch.tensor(y)), batch_size=50)
    with pytest.warns(UserWarning, match="torch.compile"), make_private(
        model, opt, loader, epsilon=4.0, epochs=2, seed=0
    ) as run:
        assert "0: torch.compile -> original module" in run.replaced_modules
        for _ in range(2):
            for xb, yb in run.data_loader:
                run.optimizer.zero_grad()
                nn.functional.cross_entropy(run.model(xb), yb).backward()
                run.optimizer.step()
    assert type(model[0]) is nn.Linear and run.steps == 12


# ------------------------------------------------------------------ scikit-learn conventions
def test_params_come_from_the_signature_and_clone_makes_an_unfitted_twin():
    import inspect

    from sklearn.base import clone

    X, y = blobs()
    tr = PrivateTrainer(mlp(), epsilon=2.0, epochs=1, seed=0)
    names = [n for n in inspect.signature(PrivateTrainer.__init__).parameters if n != "self"]
    assert list(tr.get_params(deep=False)) == names  # a parameter added later is included
    assert tr.get_params()["epsilon"] == 2.0 and tr.target_epsilon == 2.0
    tr.fit(X, y)  # scikit-learn's fit(X, y)
    twin = clone(tr)
    assert not twin.is_fitted and twin.model is not tr.model
    assert all(
        torch.equal(a, b) for a, b in zip(twin.model.parameters(), tr.model.parameters(), strict=True)
    )
    assert twin.set_params(epsilon=1.0, epochs=2) is twin
    assert twin.target_epsilon == 1.0 and twin.epochs == 2 and tr.target_epsilon == 2.0
    from privdl.errors import UsageError

    with pytest.raises(UsageError, match="no parameter 'epsilon_'"):
        twin.set_params(epsilon_=1.0)
    # the audit record is its own: names, never the seed
    assert tr.params_record()["seed_given"] is True and "seed" not in tr.params_record()


@pytest.mark.parametrize(
    "name",
    [
        "check_get_params_invariance",
        "check_set_params",
        "check_estimator_cloneable",
        "check_estimator_repr",
        "check_do_not_raise_errors_in_init_or_set_params",
        "check_parameters_default_constructible",
        "check_no_attributes_set_in_init",
    ],
)
def test_sklearn_estimator_checks(name):
    from sklearn.utils import estimator_checks

    getattr(estimator_checks, name)("PrivateTrainer", PrivateTrainer(mlp(), epsilon=2.0, epochs=1))


def test_not_fitted_before_fit_then_predict_proba_and_score():
    from sklearn.exceptions import NotFittedError as SklearnNotFitted
    from sklearn.utils.validation import check_is_fitted

    from privdl.errors import NotFittedError

    X, y = blobs()
    tr = PrivateTrainer(mlp(), epsilon=4.0, epochs=3, seed=0)
    with pytest.raises(NotFittedError):
        tr.predict(X)
    with pytest.raises(SklearnNotFitted):
        check_is_fitted(tr)
    tr.fit(X, y)
    check_is_fitted(tr)
    proba = tr.predict_proba(X)
    assert proba.shape == (300, 2) and np.allclose(proba.sum(axis=1), 1.0)
    assert tr.score(X, y) > 0.8 and tr.predict(X).shape == (300,)


def test_in_a_pipeline_with_a_dataframe_and_labels():
    import pandas as pd
    from sklearn.base import clone
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = blobs()
    pipe = Pipeline([("scale", StandardScaler()), ("dp", PrivateTrainer(mlp(), epsilon=4.0, epochs=3, seed=0))])
    pipe.fit(X, y)
    assert pipe.score(X, y) > 0.8
    assert clone(pipe).named_steps["dp"].is_fitted is False
    # a table and its labels beside it (a Series): the encoder takes the table
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(6)])
    labels = pd.Series(np.where(y == 1, "yes", "no"), name="answer")
    from privdl.train.encoding import TableEncoder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # learned domains: the report says so
        encoder = TableEncoder(domains="learned-unprotected").fit(frame.assign(answer=labels), target="answer")
        width = len(encoder.feature_names_)
        tr = PrivateTrainer(mlp(d=width), epsilon=4.0, epochs=3, seed=0, encoder=encoder)
        tr.fit(frame, labels)
    assert tr.score(frame, labels) > 0.8


def test_clone_of_a_trainer_with_a_table_encoder():
    import pandas as pd
    from sklearn.base import clone

    from privdl.train.encoding import TableEncoder

    frame = pd.DataFrame({"age": [30, 40, 50, 60], "label": [0, 1, 0, 1]})
    encoder = TableEncoder(numeric_bounds={"age": (0, 100)}, categories={"label": [0, 1]})
    encoder.fit(frame, target="label")
    twin = clone(PrivateTrainer(mlp(d=len(encoder.feature_names_)), epsilon=2.0, encoder=encoder))
    assert isinstance(twin.encoder, TableEncoder) and twin.encoder is not encoder
    assert twin.encoder.numeric_bounds == {"age": (0, 100)} and not hasattr(twin.encoder, "feature_names_")
