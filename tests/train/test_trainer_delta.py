"""PrivateTrainer refuses a delta at or above 1/n, whether given or taken from the ledger."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

from torch import nn  # noqa: E402

from privdl.budget.ledger import BudgetLedger  # noqa: E402
from privdl.errors import UsageError  # noqa: E402
from privdl.train.trainer import PrivateTrainer  # noqa: E402

N = 200  # 1/n = 0.005


def data(n: int = N) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 4)).astype(np.float32)
    return X, (X[:, 0] > 0).astype(np.int64)


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(4, 2)


@pytest.mark.parametrize("delta", [1 / N, 2 / N, 0.5])
def test_a_given_delta_at_or_above_one_over_n_is_refused(delta: float) -> None:
    trainer = PrivateTrainer(model(), epsilon=2.0, delta=delta, epochs=1, batch_size=50)
    with pytest.raises(UsageError, match=r"1/n"):
        trainer.fit(data())
    assert trainer.steps_ == 0


def test_a_ledger_delta_at_or_above_one_over_n_is_refused_before_any_charge(tmp_path: Path) -> None:
    # set_budget accepts a delta above 1e-3 only when forced; the trainer still checks it
    # against the data it is given, before it reserves anything
    with BudgetLedger(tmp_path / "budget.db") as ledger:
        with pytest.warns(UserWarning, match="forced"):
            ledger.set_budget("ds", epsilon=2.0, delta=0.01, force=True)
        trainer = PrivateTrainer(
            model(), epsilon=1.0, epochs=1, batch_size=50, ledger=ledger, dataset_id="ds"
        )
        with pytest.raises(UsageError, match=r"delta=0\.01 is not below 1/n"):
            trainer.fit(data())
        assert ledger.runs("ds") == []
        assert ledger.spent("ds") == 0.0


def test_a_delta_below_one_over_n_trains() -> None:
    trainer = PrivateTrainer(model(), epsilon=2.0, delta=0.5 / N, epochs=1, batch_size=50, seed=0)
    trainer.fit(data())
    assert trainer.delta_ == 0.5 / N
    assert 0.0 < trainer.epsilon <= 2.0
