"""One rank of the own-loop distributed tests (tests/train/test_make_private_distributed.py),
run by ``python -m torch.distributed.run --nproc_per_node 2 --standalone``.

Usage: ``dist_loop_worker.py OUT RUNS``, RUNS a JSON list of ``{"name", "ledger",
"dataset", "mode", "unit", "kind"}`` with ``kind`` one of ``"fit"`` (the loop every
Opacus user writes, unchanged: ``with make_private(...) as run: for x, y, i in
run.data_loader: ...``, a different initial model on each rank, seeded), ``"other-data"``
(rank 1 passes other records of the same number), ``"other-users"`` (rank 1 groups the
records into other users), ``"refused"`` (a budget too small for the run), ``"bad-audit"``
(rank 0's audit log refuses the "started" entry) and ``"ddp"`` (the model wrapped in
``DistributedDataParallel``); the last five are expected to raise
and are recorded as ``{"error", "message"}``. The first ``make_private`` initializes the
process group from the torchrun environment.

A ``"fit"`` run records, per step, the records of the rank's batch (as indices in the
whole data: the dataset's third tensor) and the gradient the step applied (the
all-reduced clipped sum plus the noise, divided by ``n q``), and at the end the run's
figures and its weights. The test replays the union of the ranks' batches on one
process with the same seed (:func:`replay`): rank 0's noise stream is the one-process
stream, so the one-process gradients must equal the two-process ones.
Writes ``OUT/rank{R}.json``.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from privdl.audit import AuditLog
from privdl.keys import Secret
from privdl.train.private_loop import make_private
from tests.train.dist_user_worker import user_ids
from tests.train.dist_worker import blobs, digest

SEED = 5
#: make_private's arguments of every run but the ledger's (a user-level run adds its own)
RUN = {"epsilon": 2.0, "epochs": 2, "max_grad_norm": 1.0, "seed": SEED}
BATCH = {"record": 50, "user": 10}  # expected records / users per step


def model_for(rank: int) -> nn.Module:
    torch.manual_seed(100 + rank)  # a different initial model on each rank
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))


def loader(unit: str, X: Any = None) -> DataLoader:
    Xn, y = blobs()
    X = torch.from_numpy(Xn if X is None else X)
    return DataLoader(TensorDataset(X, torch.from_numpy(y), torch.arange(len(y))), batch_size=BATCH[unit])


def unit_args(unit: str, users: Any = None) -> dict[str, Any]:
    if unit != "user":
        return {}
    return {"privacy_unit": "user", "users": user_ids() if users is None else users, "max_records_per_user": 4}


def train_loop(run: Any) -> dict[str, list]:
    """The user's loop; per step the batch's records and the gradient the step applied."""
    seen: dict[str, list] = {"records": [], "grads": []}
    for _ in range(RUN["epochs"]):
        for xb, yb, ib in run.data_loader:
            run.optimizer.zero_grad()
            nn.functional.cross_entropy(run.model(xb), yb).backward()
            run.optimizer.step()
            seen["records"].append(ib.tolist())
            seen["grads"].append(torch.cat([p.grad.reshape(-1) for p in run.model.parameters()]).tolist())
    return seen


def fit(out: Path, ledger: str, dataset: str, mode: str, unit: str, rank: int, kind: str) -> dict:
    out.mkdir(exist_ok=True)
    model = model_for(rank)
    users = None
    X = None
    if kind == "other-data" and rank == 1:
        X = blobs(seed=1)[0]  # the same number of records, other ones
    if kind == "other-users" and rank == 1:
        users = user_ids()[::-1].copy()  # the same users, over other records
    if kind == "ddp":
        model = nn.parallel.DistributedDataParallel(model)
    data = loader(unit, X)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    log_path = out / ("audit.jsonl" if kind != "bad-audit" else f"audit-{rank}.jsonl")
    log = AuditLog(log_path, key=Secret(bytes(range(32))))
    if kind == "bad-audit" and rank == 0:  # rank 0's log refuses the run's "started" entry
        with open(log_path, "a", encoding="utf-8") as fh:
            fh.write("not an audit entry\n")
    with make_private(
        model,
        optimizer,
        data,
        **RUN,
        ledger=ledger,
        dataset_id=dataset,
        audit_log=log,
        grad_sample_mode=mode,
        **unit_args(unit, users),
    ) as run:
        shard = len(run.data_loader.dataset)
        per_epoch = len(run.data_loader)
        seen = train_loop(run)
    return {
        "rank": rank,
        "world": torch.distributed.get_world_size(),
        "processes": run.processes,
        "epsilon": run.epsilon,
        "noise_multiplier": run.noise_multiplier,
        "sample_rate": run.sample_rate,
        "steps": run.steps,
        "planned_steps": run.planned_steps,
        "per_epoch": per_epoch,
        "shard": shard,
        "delta": run.delta,
        "run_id": run.run_id,
        "accountant": run.accountant,
        "mode": run.grad_sample_mode,
        "n_users": run.n_users,
        "records_dropped": run.records_dropped,
        "charged_here": run._ledger is not None,
        "report_epsilon": run.report().to_dict()["epsilon"],  # every rank can report the run
        "weights": digest(run.model),
        "final": torch.cat([p.detach().reshape(-1) for p in run.model.parameters()]).tolist(),
        **seen,
    }


class ReplaySampler:
    """Hands out recorded Poisson draws (the union of the ranks' batches), in order."""

    def __init__(self, draws: list[list[int]]) -> None:
        self.draws = list(draws)

    def sample(self) -> torch.Tensor:
        return torch.tensor(self.draws.pop(0), dtype=torch.long)


def replay(unit: str, mode: str, ledger: Any, dataset: str, ranks: list[dict]) -> tuple[Any, dict[str, list]]:
    """The same run on one process, seeded alike, its sampler replaced by the union of
    the two ranks' batches (records, or the users whose records they are)."""
    from privdl.train.user_level import users_of

    a, b = ranks
    union = [sorted(set(x) | set(y)) for x, y in zip(a["records"], b["records"], strict=True)]
    if unit == "user":
        codes = users_of(None, user_ids(), None, 400, what="data")
        union = [sorted({int(codes[i]) for i in step}) for step in union]
    model = model_for(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with make_private(
            model, optimizer, loader(unit), **RUN, ledger=ledger, dataset_id=dataset, grad_sample_mode=mode,
            **unit_args(unit),
        ) as run:
            run.data_loader.sampler = ReplaySampler(union)
            seen = train_loop(run)
    return run, seen


def main() -> None:
    out, runs = Path(sys.argv[1]), json.loads(sys.argv[2])
    warnings.simplefilter("ignore")
    rank = int(os.environ["RANK"])
    result: dict[str, Any] = {}
    for spec in runs:
        kind = spec["kind"]
        args = (out / spec["name"], spec["ledger"], spec["dataset"], spec["mode"], spec["unit"], rank, kind)
        if kind == "fit":  # any error ends this rank: torchrun stops the other
            result[spec["name"]] = fit(*args)
            continue
        try:
            result[spec["name"]] = fit(*args)
        except Exception as exc:  # the refusal each rank saw
            result[spec["name"]] = {"error": type(exc).__name__, "message": str(exc)}
    (out / f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
