"""Your own DP training loop under torchrun: one run over every process (docs/scale-training.md).

The loop an Opacus user writes, unchanged, on every rank; privdl shards the data (each
rank's ``run.data_loader`` draws Poisson batches of its shard at the global rate),
all-reduces the clipped gradient sums with one noise draw (rank 0's), and charges the
ledger once. Run on one machine, two CPU processes (a PostgreSQL URL works for --ledger
too, and is required on several machines):

    export PRIVDL_AUDIT_KEY=hex:$(python -c "import secrets; print(secrets.token_hex(32))")
    torchrun --standalone --nproc_per_node 2 examples/train_torchrun_loop.py --out run/
    torchrun --standalone --nproc_per_node 2 examples/train_torchrun_loop.py --out run/ --user-level

Every rank runs this same script on the same (generated) data. Rank 0 prints the run:
one ledger charge, one audit entry.
"""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from privdl import BudgetExceededError, BudgetLedger, make_private


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("run"))
    parser.add_argument(
        "--ledger", default=None, help="SQLite path or postgresql:// URL (default OUT/budget.db)"
    )
    parser.add_argument("--dataset", default=None, help="default torchrun-loop(-users)")
    parser.add_argument("--epsilon", type=float, default=2.0)
    parser.add_argument("--user-level", action="store_true", help="protect a person with all their records")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    rank = int(os.environ.get("RANK", "0"))
    ledger_url = args.ledger or str(args.out / "budget.db")
    dataset = args.dataset or ("torchrun-loop-users" if args.user_level else "torchrun-loop")

    rng = np.random.default_rng(0)  # the same records on every rank: each trains on its shard
    X = rng.normal(size=(20_000, 10)).astype(np.float32)
    y = (X @ rng.normal(size=10) + rng.normal(size=20_000) > 0).astype(np.int64)
    users = rng.integers(0, 2_000, size=20_000)  # 2,000 people, about 10 records each
    if rank == 0:  # only rank 0 opens the ledger
        args.out.mkdir(parents=True, exist_ok=True)
        ledger = BudgetLedger(ledger_url)
        if dataset not in ledger.datasets():
            unit = {"privacy_unit": "user", "max_records_per_user": 16} if args.user_level else {}
            ledger.set_budget(dataset, epsilon=8.0, delta=1e-5, **unit)

    torch.manual_seed(rank)  # any start: every rank begins from rank 0's weights
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    data = TensorDataset(torch.from_numpy(X), torch.from_numpy(y))
    # the batch size is the expected Poisson batch of the whole run (at user level: users)
    loader = DataLoader(data, batch_size=64 if args.user_level else 512)
    unit_args = {"privacy_unit": "user", "users": users, "max_records_per_user": 16} if args.user_level else {}
    epochs = 3
    try:
        with make_private(
            model,
            optimizer,
            loader,
            epsilon=args.epsilon,
            epochs=epochs,
            ledger=ledger_url,
            dataset_id=dataset,
            audit_log=str(args.out / "audit.jsonl"),
            **unit_args,
        ) as run:
            for _ in range(epochs):
                for xb, yb in run.data_loader:  # Poisson batches of this rank's shard
                    run.optimizer.zero_grad()
                    nn.functional.cross_entropy(run.model(xb), yb).backward()
                    run.optimizer.step()  # all-reduced clipped sums + one noise draw
            shard = len(run.data_loader.dataset)
    except BudgetExceededError as exc:  # the budget is spent: refused on every rank
        if rank == 0:
            print(f"refused: {exc}")
        raise SystemExit(1) from None
    print(f"rank {rank}: {shard} records in its shard, {run.steps} steps")
    if rank == 0:
        runs = BudgetLedger(ledger_url).runs(dataset)
        with torch.no_grad():
            accuracy = (run.model(torch.from_numpy(X)).argmax(1).numpy() == y).mean()
        print(
            f"{run.processes} process(es), {run.privacy_unit} level: epsilon {run.epsilon:.3f} "
            f"at delta {run.delta:g}, {run.steps} steps"
        )
        print(f"ledger {dataset!r}: {len(runs)} run(s), spent {BudgetLedger(ledger_url).spent(dataset):.3f}")
        print(f"accuracy on the training data {accuracy:.3f}")


if __name__ == "__main__":
    main()
