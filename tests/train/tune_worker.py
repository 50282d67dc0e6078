"""One rank of tests/train/test_tune_distributed.py, run by
``python -m torch.distributed.run --nproc_per_node 2 --standalone``.

Usage: ``tune_worker.py OUT LEDGER [POSTGRES_URL DATASET]``. Runs, on every rank, the script a user writes
(``privdl.tune(make_model, grid, (X, y), ...)``, unchanged), for each search of
:data:`SEARCHES`: a record-level search charged to ``LEDGER`` (dataset ``tune-dist``)
with an audit log, a user-level search, a user-level and a secure_mode search without a seed (each rank's own randomness), a search scored on public data, a search the
budget refuses, and searches whose arguments differ on rank 1 (another grid, other
data, a grid that only rank 1 refuses); with a PostgreSQL URL, also a search charged to
it (dataset ``DATASET``). ``make_model`` gives each rank other initial
weights. Writes ``OUT/rank{R}.json``: per search what the rank's result says (K, the
candidates, the best, epsilon, the run id, a digest of the released weights), or the
error it raised (``{"error": type, "message": str}``).
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import privdl
from privdl.audit import AuditLog
from privdl.keys import Secret
from tests.train.dist_worker import digest

GRID = {"lr": [0.05, 0.2], "max_grad_norm": [0.5, 1.0]}
#: the record-level search (the test repeats it on one process)
RECORD = {"epsilon": 3.0, "mean_runs": 3, "distribution": "poisson", "epochs": 1, "batch_size": 100, "seed": 5}
KEY = bytes(range(32))


def blobs(n: int = 600, d: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    centers = np.random.default_rng(0).normal(scale=1.0, size=(2, d))  # one distribution
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    return (centers[y] + rng.normal(size=(n, d))).astype(np.float32), y


def model_maker(rank: int):
    counter = itertools.count()

    def make_model() -> nn.Module:
        torch.manual_seed(1000 * rank + next(counter))  # other initial weights on each rank
        return nn.Linear(6, 2)

    return make_model


def search(name: str, rank: int, out: Path, ledger: str) -> dict[str, Any]:
    X, y = blobs()
    make_model = model_maker(rank)
    if name == "postgres":  # the ledger in PostgreSQL: rank 0 reserves and settles there
        url, dataset = sys.argv[3], sys.argv[4]
        return privdl.tune(make_model, GRID, (X, y), ledger=url, dataset_id=dataset, **{**RECORD, "seed": 8})
    if name == "record":
        log = AuditLog(out / "audit.jsonl", key=Secret(KEY))
        return privdl.tune(make_model, GRID, (X, y), ledger=ledger, dataset_id="tune-dist", audit_log=log, **RECORD)
    if name == "user":
        users = np.repeat(np.arange(100), 6)
        return privdl.tune(
            make_model, {"lr": [0.1, 0.2]}, (X, y), epsilon=3.0, mean_runs=2,
            distribution="truncated_negative_binomial", users=users, privacy_unit="user",
            max_records_per_user=6, epochs=1, batch_size=20,  # no seed: each rank's own randomness
        )
    if name == "secure":  # ChaCha20 noise, drawn on rank 0 (no seed either)
        return privdl.tune(
            make_model, GRID, (X, y), epsilon=3.0, mean_runs=2, distribution="truncated_negative_binomial",
            secure_mode=True, epochs=1, batch_size=100,
        )
    if name == "public":
        return privdl.tune(
            make_model, {"lr": [0.1, 0.2]}, (X, y), epsilon=2.0, mean_runs=2,
            distribution="truncated_negative_binomial", public_val=blobs(301, seed=7),
            epochs=1, batch_size=150, seed=3,
        )
    if name == "over-budget":
        return privdl.tune(make_model, GRID, (X, y), ledger=ledger, dataset_id="tune-small", **RECORD)
    if name == "other-grid":  # rank 1 passes another grid
        grid = GRID if rank == 0 else {"lr": [0.05, 0.3], "max_grad_norm": [0.5, 1.0]}
        return privdl.tune(make_model, grid, (X, y), ledger=ledger, dataset_id="tune-refuse", **RECORD)
    if name == "other-data":  # rank 1 passes its own part of the data (same size)
        data = (X, y) if rank == 0 else blobs(seed=1)
        return privdl.tune(make_model, GRID, data, ledger=ledger, dataset_id="tune-refuse", **RECORD)
    if name == "refused-on-one":  # a grid only rank 1 refuses
        grid = GRID if rank == 0 else {**GRID, "epsilon": [1.0]}
        return privdl.tune(make_model, grid, (X, y), ledger=ledger, dataset_id="tune-refuse", **RECORD)
    raise ValueError(name)


SEARCHES = ("record", "user", "secure", "public", "over-budget", "other-grid", "other-data", "refused-on-one")


def main() -> None:
    out, ledger = Path(sys.argv[1]), sys.argv[2]
    warnings.simplefilter("ignore")
    rank = int(os.environ["RANK"])
    seen: dict[str, Any] = {}
    for name in SEARCHES + (("postgres",) if len(sys.argv) > 3 else ()):
        try:
            result = search(name, rank, out, ledger)
        except Exception as exc:  # the refusal this rank saw
            seen[name] = {"error": type(exc).__name__, "message": str(exc)}
            continue
        trainer = result.trainer_
        saved = None
        if name == "record":  # save is a collective: rank 0 writes, rank 1 waits, both read it
            folder = trainer.save(out / "tuned")
            saved = privdl.PrivateTrainer.load(folder).epsilon
        seen[name] = {
            "saved_epsilon": saved,
            "world": torch.distributed.get_world_size(),
            "k": len(result.candidates_),
            "candidates": result.candidates_,
            "best_params": result.best_params_,
            "best_score": result.best_score_,
            "epsilon": result.epsilon,
            "delta": result.delta,
            "run_id": result.run_id,
            "weights": None if trainer is None else digest(trainer.model_),
            "trainer_epsilon": None if trainer is None else trainer.epsilon,
            "privacy_unit": None if trainer is None else trainer.privacy_unit,
            "n_samples": None if trainer is None else trainer.n_samples_,
            # the released model's exact accuracy, on all the data and on the public data
            "accuracy": None if trainer is None else trainer.score(*blobs()),
            "public_accuracy": None if trainer is None else trainer.score(*blobs(301, seed=7)),
        }
    (out / f"rank{rank}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main()
