"""One rank of the user-level distributed tests (tests/train/test_distributed_users.py),
run by ``python -m torch.distributed.run --nproc_per_node 2 --standalone``.

Usage: ``dist_user_worker.py OUT RUNS``, RUNS a JSON list of ``{"name", "ledger",
"dataset", "mode", "kind"}`` with ``kind`` one of ``"fit"`` (the unchanged user script at
user level: ``fit((X, y), users=...)`` then ``save``, a different initial model on each
rank; Opacus ``hooks`` in ``secure_mode``), ``"resume"`` (a seeded user-level run killed in epoch 2 on every rank, resumed
from rank 0's checkpoint by every rank), ``"other-users"`` / ``"other-count"`` (rank 1
passes other users: the same number grouped differently / another number; expected to
raise, recorded as ``{"error", "message"}``).

Then measures user-level DP steps directly (``bk`` and Opacus ``hooks``; with
``secure_mode`` noise; with the users in two physical chunks), sharded by
:meth:`~privdl.train.distributed.Group.shard_users`: the all-reduced clipped sum
without noise against one process on the same sampled users, the noise of an empty
step (its standard deviation, and whether both ranks apply the same), and the change of
the all-reduced update (SGD, lr 1, no noise) when one user's records are removed from
the data. Writes ``OUT/rank{R}.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from privdl.audit import AuditLog
from privdl.keys import Secret
from privdl.train.trainer import PrivateTrainer
from tests.train.dist_worker import blobs, digest

#: the clipping norm of the mechanism measures
CLIP = 0.5


def user_ids(n: int = 400, seed: int = 0) -> np.ndarray:
    """Pseudonyms for ``n`` records: 1 to 12 records per user (about 60 users), users
    interleaved in the data (a user's records are not contiguous)."""
    rng = np.random.default_rng(seed)
    counts: list[int] = []
    while sum(counts) < n:
        counts.append(int(rng.integers(1, 13)))
    counts[-1] -= sum(counts) - n
    owner = np.repeat(np.arange(len(counts)), counts)
    rng.shuffle(owner)
    return np.array([f"person-{o:04d}" for o in owner])


def fit(out: Path, ledger: str, dataset: str, mode: str, rank: int, kind: str) -> dict:
    """The unchanged user script, at user level: fit, then save (on every rank)."""
    out.mkdir(exist_ok=True)
    users = user_ids()
    if kind == "other-users" and rank == 1:
        users = users[::-1].copy()  # the same users, over other records
    if kind == "other-count" and rank == 1:
        users = users.copy()
        other = users[np.flatnonzero(users != users[0])[0]]
        users[users == users[0]] = other  # two users merged into one
    torch.manual_seed(100 + rank)  # a different initial model on each rank
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
    log = AuditLog(out / "audit.jsonl", key=Secret(bytes(range(32))))
    trainer = PrivateTrainer(
        model,
        epsilon=2.0,
        epochs=2,
        batch_size=10,  # expected users per step
        ledger=ledger,
        dataset_id=dataset,
        audit_log=log,
        grad_sample_mode=mode,
        privacy_unit="user",
        max_records_per_user=4,
        # the hooks run draws kept records, samples and noise from ChaCha20 (no seed:
        # the draw must come from rank 0)
        secure_mode=mode == "hooks",
    )
    trainer.fit(blobs(), users=users)
    saved = trainer.save(out / "model")
    return {
        "rank": rank,
        "world": torch.distributed.get_world_size(),
        "epsilon": trainer.epsilon,
        "noise_multiplier": trainer.noise_multiplier_,
        "sample_rate": trainer.sample_rate_,
        "steps": trainer.steps_,
        "delta": trainer.delta_,
        "run_id": trainer.run_id_,
        "n_users": trainer.n_users_,
        "records_dropped": trainer.records_dropped_,
        "mode": trainer.grad_sample_mode_,
        # the kept-record draw of the run (rank 0's, handed to every rank)
        "draw": hashlib.sha256(np.ascontiguousarray(trainer._user_draw.keys).tobytes()).hexdigest(),
        "charged_here": trainer.ledger_ is not None,
        "saved": str(saved),
        "weights": digest(trainer.model_),
    }


def crash_and_resume(out: Path, ledger: str, dataset: str, mode: str, rank: int, kind: str) -> dict:
    """A seeded user-level run whose power goes off in epoch 2 (on every rank, in the
    same step), resumed from rank 0's checkpoint of epoch 1 by every rank."""
    from tests.train.crash import CrashingLoss

    out.mkdir(exist_ok=True)
    key = Secret(bytes(range(32)))
    torch.manual_seed(100 + rank)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
    params: dict[str, Any] = dict(epsilon=2.0, epochs=3, batch_size=10, ledger=ledger, dataset_id=dataset)
    trainer = PrivateTrainer(
        model,
        **params,
        grad_sample_mode=mode,
        privacy_unit="user",
        max_records_per_user=4,
        checkpoint_dir=out / "ckpt",
        checkpoint_key=key,
        seed=11,
    )
    # 10 users per step: ceil(U / 10) steps per epoch; every rank samples some users in
    # every step of this seeded run (one loss call per step), so both stop in step 1 of
    # epoch 2
    trainer.loss = CrashingLoss(steps=-(-len(set(user_ids())) // 10))
    with contextlib.suppress(RuntimeError):  # "power cut", on every rank
        trainer.fit(blobs(), users=user_ids())
    resumed = PrivateTrainer.resume(out / "ckpt", key=key, ledger=ledger, seed=11)
    resumed.fit(blobs(), users=user_ids())
    return {
        "crashed_steps": trainer.steps_,
        "per_epoch": trainer.planned_steps_ // 3,
        "steps": resumed.steps_,
        "planned_steps": resumed.planned_steps_,
        "run_id": resumed.run_id_,
        "first_run_id": trainer.run_id_,
        "privacy_unit": resumed.privacy_unit,
        "n_users": resumed.n_users_,
        "epsilon": resumed.epsilon,
        "weights": digest(resumed.model_),
    }


def mechanism(rank: int, world: int) -> dict[str, Any]:
    """User-level DP steps under the process group, measured directly."""
    from privdl.train.data import TensorData
    from privdl.train.distributed import Group
    from privdl.train.dp_step import StepSettings
    from privdl.train.user_level import UserIndex, make_user_step, users_of

    group = Group(rank=rank, world_size=world)
    # 14 users, interleaved: 13 with 1 to 4 records (all kept), user 13 with 9 (4 kept)
    counts = [1, 2, 3, 4, 4, 3, 2, 1, 4, 4, 2, 3, 4, 9]
    owner = np.random.default_rng(7).permutation(np.repeat(np.arange(14), counts))
    n = len(owner)
    g = torch.Generator().manual_seed(7)
    X = torch.randn(n, 5, generator=g) * 3
    y = torch.randint(0, 3, (n,), generator=g)

    def index(codes: np.ndarray) -> UserIndex:
        return UserIndex.build(codes, 4, generator=torch.Generator().manual_seed(3))

    def settings(sigma: float, collective: Group | None, ebs: int, seed: int, lr: float, secure: bool = False):
        return StepSettings(
            noise_multiplier=sigma,
            max_grad_norm=CLIP,
            expected_batch_size=ebs,
            criterion=nn.CrossEntropyLoss(),
            shape_for_loss=lambda o, t: (o, t),
            make_optimizer=lambda ps: torch.optim.SGD(ps, lr=lr),
            generator=torch.Generator().manual_seed(seed),
            secure=secure,
            collective=collective,
        )

    def step(mode: str, data: TensorData, users: UserIndex, chosen: torch.Tensor, s: Any, chunked: bool) -> Any:
        torch.manual_seed(0)
        model = nn.Linear(5, 3)
        before = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
        dp = make_user_step(mode, model, s)
        dp.train()
        parts = list(chosen.chunk(2)) if chunked and chosen.numel() > 1 else [chosen]
        batches = [users.gather(p) for p in parts if p.numel()]
        dp.step(batches, lambda b: (data.X[b.records], data.y[b.records]))
        released = dp.release()
        grad = torch.cat([p.grad.reshape(-1) for p in released.parameters()])
        after = torch.cat([p.detach().reshape(-1) for p in released.parameters()])
        return grad, after - before

    def mine(users_all: UserIndex, sampled: torch.Tensor) -> torch.Tensor:
        """This rank's sampled users, as positions in its block."""
        start, stop = group.shard_range(users_all.n_users)
        return sampled[(sampled >= start) & (sampled < stop)] - start

    full = TensorData(X, y)
    codes = users_of(None, owner, None, n, what="data")
    users = index(codes)
    sampled = torch.tensor([0, 2, 3, 5, 7, 8, 11, 12, 13])  # the users of one Poisson batch
    local_data, local_users = group.shard_users(full, users)
    configs = {
        "bk": ("bk", False, False),
        "hooks": ("hooks", False, False),
        "bk-secure": ("bk", True, False),
        "hooks-secure": ("hooks", True, False),
        "bk-chunks": ("bk", False, True),
        "hooks-chunks": ("hooks", False, True),
    }
    out: dict[str, Any] = {"block": [int(b) for b in group.shard_range(users.n_users)]}
    for name, (mode, secure, chunked) in configs.items():
        # without noise: the all-reduced clipped sum of this rank's block of the sampled
        # users is the one-process clipped sum of all of them
        ebs = sampled.numel()
        reduced, _ = step(
            mode, local_data, local_users, mine(users, sampled), settings(0.0, group, ebs, 1, 0.0), chunked
        )
        alone, _ = step(mode, full, users, sampled, settings(0.0, None, ebs, 1, 0.0), False)
        # noise only (no user sampled on any rank): std of the applied noisy sum
        torch.manual_seed(0)
        big = nn.Linear(1000, 400)
        noisy = make_user_step(mode, big, settings(1.3, group, 1, 100 + rank, 0.0, secure=secure))
        noisy.train()
        noisy.step([], lambda b: (None, None))
        noise = torch.cat([p.grad.reshape(-1) for p in noisy.release().parameters()])
        out[name] = {
            "sum_max_abs_diff": float((reduced - alone).abs().max()),
            "sum_norm": float(alone.norm()),
            "noise_std": float(noise.std()),
            "noise_sha256": hashlib.sha256(noise.numpy().tobytes()).hexdigest(),
        }
        # one user removed from the data (all of their records; the blocks move): the
        # all-reduced update of SGD with lr 1, no noise, every user in the batch
        keep = owner != 13
        codes_without = users_of(None, owner[keep], None, int(keep.sum()), what="data")
        users_without = index(codes_without)
        data_without = TensorData(X[torch.from_numpy(keep)], y[torch.from_numpy(keep)])
        _, with_user = step(
            mode,
            *group.shard_users(full, users),
            mine(users, torch.arange(users.n_users)),
            settings(0.0, group, 1, 1, 1.0),
            chunked,
        )
        _, without_user = step(
            mode,
            *group.shard_users(data_without, users_without),
            mine(users_without, torch.arange(users_without.n_users)),
            settings(0.0, group, 1, 1, 1.0),
            chunked,
        )
        out[name]["removed_user_change"] = float((with_user - without_user).norm())
    return out


def main() -> None:
    out, runs = Path(sys.argv[1]), json.loads(sys.argv[2])
    warnings.simplefilter("ignore")
    rank = int(os.environ["RANK"])
    result: dict[str, Any] = {}
    for run in runs:
        kind = run["kind"]
        args = (out / run["name"], run["ledger"], run["dataset"], run["mode"], rank, kind)
        if kind in ("fit", "resume"):  # any error ends this rank: torchrun stops the others
            result[run["name"]] = (crash_and_resume if kind == "resume" else fit)(*args)
            continue
        try:
            result[run["name"]] = fit(*args)
        except Exception as exc:  # the refusal each rank saw
            result[run["name"]] = {"error": type(exc).__name__, "message": str(exc)}
    result["mechanism"] = mechanism(rank, torch.distributed.get_world_size())
    (out / f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
