"""Issue 12 (items 2 and 4): the training API refuses bad input with a clear
InputError / UsageError before any budget is reserved, never a raw torch error."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

from torch import nn  # noqa: E402

from privdl.errors import InputError, UsageError  # noqa: E402
from privdl.train.trainer import PrivateTrainer  # noqa: E402


def data(n=80, d=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    return X, rng.integers(0, 2, size=n)


def mlp(d=4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d, 8), nn.ReLU(), nn.Linear(8, 2))


def trainer(model, **kw):
    return PrivateTrainer(model, epsilon=1.0, epochs=1, batch_size=20, device="cpu", progress=False, **kw)


@pytest.fixture
def ledger(tmp_path):
    from privdl.budget.ledger import BudgetLedger

    led = BudgetLedger(tmp_path / "budget.db")
    led.set_budget("ds", epsilon=5.0, delta=1e-5)
    return led


def assert_nothing_reserved(ledger):
    assert ledger.spent("ds") == 0
    assert list(ledger.runs("ds")) == []


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_feature_is_refused_naming_its_index_before_the_ledger(ledger, bad):
    X, y = data()
    X[7, 2] = bad
    X[9, 2] = 123.456
    tr = trainer(mlp(), ledger=ledger, dataset_id="ds")
    with pytest.raises(InputError, match=r"feature 2 has non-finite values .* in 1 row") as err:
        tr.fit((X, y))
    assert "\n" not in str(err.value) and "123" not in str(err.value)
    assert_nothing_reserved(ledger)


def test_non_finite_feature_in_a_dataframe_names_the_column():
    X, y = data()
    frame = pd.DataFrame(X, columns=["age", "income", "height", "weight"])
    frame.loc[3, "height"] = np.nan
    with pytest.raises(InputError, match=r"column 'height' has non-finite"):
        trainer(mlp()).fit((frame, y))


def test_non_finite_target_is_refused(ledger):
    X, _ = data()
    y = np.linspace(0, 1, len(X)).astype(np.float32)
    y[5] = np.nan
    model = nn.Sequential(nn.Linear(4, 1))
    with pytest.raises(InputError, match=r"target has non-finite values .* in 1 row"):
        trainer(model, loss="mse", ledger=ledger, dataset_id="ds").fit((X, y))
    assert_nothing_reserved(ledger)


def test_non_finite_tensor_dataset_and_val_are_refused():
    from torch.utils.data import TensorDataset

    X, y = data()
    bad = X.copy()
    bad[0, 1] = np.inf
    with pytest.raises(InputError, match=r"feature 1"):
        trainer(mlp()).fit(TensorDataset(torch.from_numpy(bad), torch.from_numpy(y)))
    with pytest.raises(InputError, match=r"^val: feature 1"):
        trainer(mlp()).fit((X, y), val=(bad, y))


def test_model_input_size_mismatch_says_both_counts_before_the_ledger(ledger):
    X, y = data(d=4)
    tr = trainer(mlp(d=5), ledger=ledger, dataset_id="ds")
    with pytest.raises(InputError, match=r"model expects 5 input features but the training data has 4"):
        tr.fit((X, y))
    assert_nothing_reserved(ledger)


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_mps_without_mps_is_a_usage_error():
    X, y = data()
    with pytest.raises(UsageError, match=r"^device 'mps' is not available$"):
        PrivateTrainer(mlp(), epsilon=1.0, epochs=1, device="mps").fit((X, y))


class Recurrent(nn.Module):
    def __init__(self, cell=False):
        super().__init__()
        self.cell = cell
        self.rnn = nn.RNNCell(4, 8) if cell else nn.RNN(4, 8, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        if self.cell:
            return self.head(self.rnn(x))
        out, _ = self.rnn(x.unsqueeze(1))
        return self.head(out[:, -1])


@pytest.mark.parametrize(
    ("cell", "kind", "alternative"), [(False, "RNN", "DPRNN"), (True, "RNNCell", "DPRNNCell")]
)
def test_plain_rnn_names_the_layer_and_the_opacus_alternative(ledger, cell, kind, alternative):
    X, y = data()
    tr = trainer(Recurrent(cell), ledger=ledger, dataset_id="ds")
    with pytest.raises(
        InputError, match=rf"layer 'rnn' is a plain torch\.nn\.{kind}\b.*opacus\.layers\.{alternative}\b"
    ):
        tr.fit((X, y))
    assert_nothing_reserved(ledger)
