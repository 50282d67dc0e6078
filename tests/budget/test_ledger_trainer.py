"""The ledger with a real PrivateTrainer: a run killed mid-training keeps its reservation."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from privdl.budget.accounting import epsilon_of
from privdl.budget.ledger import BudgetLedger
from privdl.errors import BudgetExceededError

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

DELTA = 1e-5

_TRAIN = textwrap.dedent(
    """
    import sys
    import numpy as np, torch
    from privdl.train.trainer import PrivateTrainer
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 20)).astype("float32")
    y = (X[:, 0] > 0).astype("int64")
    trainer = PrivateTrainer(torch.nn.Linear(20, 2), epsilon=1.0, epochs=2000,
                             ledger=sys.argv[1], dataset_id="d", seed=0)
    trainer.fit((X, y))
    """
)


def test_run_killed_mid_training_keeps_its_reservation(tmp_path: Path) -> None:
    from privdl.train.trainer import PrivateTrainer

    path = tmp_path / "budget.db"
    with BudgetLedger(path) as led:
        led.set_budget("d", epsilon=1.2, delta=DELTA)
    proc = subprocess.Popen(
        [sys.executable, "-c", _TRAIN, str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        with BudgetLedger(path) as led:
            while not led.runs("d"):
                assert proc.poll() is None, "the training process ended early"
                assert time.monotonic() < deadline, "no reservation within 120 s"
                time.sleep(0.1)
        time.sleep(1.0)  # training steps are running now
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    with BudgetLedger(path) as led:
        (run,) = led.runs("d")
        assert run.status == "reserved"
        assert run.model_name == "Linear"
        # the planned history is counted in full, as if the run had finished
        assert led.spent("d") == pytest.approx(
            epsilon_of(run.history, delta=DELTA, accountant="prv"), rel=1e-9
        )
        assert 0.9 <= led.spent("d") <= 1.0 * 1.001
        # the next run cannot take the crashed run's budget
        rng = np.random.default_rng(1)
        X = rng.normal(size=(500, 20)).astype("float32")
        y = (X[:, 0] > 0).astype("int64")
        again = PrivateTrainer(
            torch.nn.Linear(20, 2), epsilon=1.0, epochs=1, ledger=led, dataset_id="d", seed=1
        )
        with pytest.raises(BudgetExceededError):
            again.fit((X, y))
        assert len(led.runs("d")) == 1


@pytest.mark.parametrize("target", [1.5, "remaining"])
def test_trainer_accounts_under_the_datasets_accountant(tmp_path: Path, target: object) -> None:
    """An rdp dataset: the trainer (prv by default) calibrates, charges and reports under
    rdp, so its epsilon is the ledger's figure and the budget is met, not overspent."""
    from privdl.train.trainer import PrivateTrainer

    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 5)).astype("float32")
    y = (X[:, 0] > 0).astype("int64")
    ledger = BudgetLedger(tmp_path / "b.db")
    ledger.set_budget("d", epsilon=2.0, delta=DELTA, accountant="rdp")
    trainer = PrivateTrainer(
        torch.nn.Linear(5, 2), epsilon=target, epochs=2, batch_size=50, ledger=ledger, dataset_id="d", seed=0
    )
    with pytest.warns(UserWarning, match="accounted with 'rdp'"):
        trainer.fit((X, y))
    assert trainer.accountant_ == "rdp"
    spent = ledger.spent("d")
    assert trainer.epsilon == pytest.approx(spent, rel=1e-6)
    assert trainer.epsilon == pytest.approx(
        epsilon_of(trainer.accountant_history_, delta=DELTA, accountant="rdp"), rel=1e-9
    )
    want = 1.5 if target == 1.5 else 2.0
    assert want * 0.95 <= spent <= want + 1e-6
    assert trainer.report().accountant == "rdp"
