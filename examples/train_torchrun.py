"""DP training under torchrun: one run over every process (docs/scale-training.md).

Run on one machine, two CPU processes (a PostgreSQL URL works for --ledger too, and is
required on several machines):

    export PRIVDL_AUDIT_KEY=hex:$(python -c "import secrets; print(secrets.token_hex(32))")
    torchrun --standalone --nproc_per_node 2 examples/train_torchrun.py --out run/ \
        --ledger run/budget.db

Every rank runs this same script on the same (generated) data. Rank 0 prints the run:
one ledger charge, one audit entry, one model folder.
"""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from privdl import BudgetExceededError, BudgetLedger, PrivateTrainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("run"))
    parser.add_argument(
        "--ledger", default=None, help="SQLite path or postgresql:// URL (default OUT/budget.db)"
    )
    parser.add_argument("--dataset", default="torchrun-demo")
    parser.add_argument("--epsilon", type=float, default=2.0)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    rank = int(os.environ.get("RANK", "0"))
    ledger_url = args.ledger or str(args.out / "budget.db")

    rng = np.random.default_rng(0)  # the same records on every rank: each trains on its shard
    X = rng.normal(size=(20_000, 10)).astype(np.float32)
    y = (X @ rng.normal(size=10) + rng.normal(size=20_000) > 0).astype(np.int64)
    if rank == 0:  # only rank 0 opens the ledger
        args.out.mkdir(parents=True, exist_ok=True)
        ledger = BudgetLedger(ledger_url)
        if args.dataset not in ledger.datasets():
            ledger.set_budget(args.dataset, epsilon=8.0, delta=1e-5)

    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
    trainer = PrivateTrainer(
        model,
        epsilon=args.epsilon,
        epochs=3,
        batch_size=512,
        ledger=ledger_url,
        dataset_id=args.dataset,
        audit_log=str(args.out / "audit.jsonl"),
    )
    try:
        trainer.fit((X, y))
    except BudgetExceededError as exc:  # the budget is spent: refused on every rank
        if rank == 0:
            print(f"refused: {exc}")
        raise SystemExit(1) from None
    trainer.save(args.out / "model")  # on every rank: rank 0 writes, the others wait
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    if rank == 0:
        runs = BudgetLedger(ledger_url).runs(args.dataset)
        print(
            f"{world} process(es): epsilon {trainer.epsilon:.3f} at delta {trainer.delta_:g}, {trainer.steps_} steps"
        )
        print(
            f"ledger {args.dataset!r}: {len(runs)} run(s), spent {BudgetLedger(ledger_url).spent(args.dataset):.3f}"
        )
        print(f"model: {args.out / 'model'}, accuracy on the training data {trainer.score(X, y):.3f}")


if __name__ == "__main__":
    main()
