"""One rank of the distributed tests (tests/train/test_distributed.py), run by
``python -m torch.distributed.run --nproc_per_node 2 --standalone``.

Usage: ``dist_worker.py OUT RUNS``, RUNS a JSON list of ``{"name", "ledger", "dataset",
"mode", "table", "resume"}`` (``table``: train on a DataFrame whose encoder the trainer
fits; ``resume``: a run killed in epoch 2, resumed from its checkpoint; ``refused``: a run
expected to raise, recorded as ``{"error": <exception type>}``; any other error ends the
rank, and torchrun stops the other).

For each run, trains the script every user writes (``PrivateTrainer(...).fit((X, y))``
then ``save``), unchanged, with a different initial model on each rank (the trainer must
start every rank from rank 0's weights), in ``OUT/<name>/``; the first fit initializes
the process group from the torchrun environment. Then measures one DP step of each
engine (``bk``, Opacus ``hooks`` and ``ghost``; with ``secure_mode`` noise; with the
batch in two physical chunks) directly: the all-reduced clipped sum without noise
against one process on the union of the two ranks' batches, and the noise of an empty
batch (its standard deviation, and whether it is the same on both ranks). Writes ``OUT/rank{R}.json``: per run the figures the rank saw, the ledger run
id and a digest of its final weights, and the mechanism measures.
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


def blobs(n: int = 400, d: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=2.5, size=(2, d))
    y = rng.integers(0, 2, size=n)
    return (centers[y] + rng.normal(size=(n, d))).astype(np.float32), y


def digest(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def mechanism(rank: int, world: int) -> dict[str, dict[str, float | str]]:
    """Each engine's step under the process group, measured directly."""
    from privdl.train.distributed import Group
    from privdl.train.dp_step import StepSettings, make_dp_step

    group = Group(rank=rank, world_size=world)
    out: dict[str, dict[str, float | str]] = {}
    g = torch.Generator().manual_seed(7)
    X = torch.randn(20, 5, generator=g)
    y = torch.randint(0, 3, (20,), generator=g)

    def settings(
        sigma: float, collective: Group | None, ebs: int, seed: int, secure: bool = False
    ) -> StepSettings:
        return StepSettings(
            noise_multiplier=sigma,
            max_grad_norm=0.5,
            expected_batch_size=ebs,
            criterion=nn.CrossEntropyLoss(),
            shape_for_loss=lambda o, t: (o, t),
            make_optimizer=lambda ps: torch.optim.SGD(ps, lr=0.0),
            generator=torch.Generator().manual_seed(seed),
            secure=secure,
            collective=collective,
        )

    def grads(module: nn.Module) -> torch.Tensor:
        return torch.cat([p.grad.reshape(-1) for p in module.parameters()])

    # name -> (engine, secure_mode noise, the batch in two physical chunks)
    configs = {
        "bk": ("bk", False, False),
        "hooks": ("hooks", False, False),
        "ghost": ("ghost", False, False),
        "bk-secure": ("bk", True, False),
        "hooks-secure": ("hooks", True, False),
        "bk-chunks": ("bk", False, True),
        "hooks-chunks": ("hooks", False, True),
    }
    for name, (mode, secure, chunked) in configs.items():
        # without noise: the reduced clipped sum is the one-process sum over the union
        torch.manual_seed(0)
        shared = nn.Linear(5, 3)
        mine = torch.arange(rank * 10, (rank + 1) * 10)
        union = torch.arange(0, 10 * world)
        step = make_dp_step(mode, shared, settings(0.0, group, ebs=10 * world, seed=1))
        step.train()
        step.step([mine[:4], mine[4:]] if chunked else [mine], lambda idx: (X[idx], y[idx]))
        reduced = grads(step.release())
        torch.manual_seed(0)
        alone = nn.Linear(5, 3)
        single = make_dp_step(mode, alone, settings(0.0, None, ebs=10 * world, seed=1))
        single.train()
        single.step([union], lambda idx: (X[idx], y[idx]))
        expected = grads(single.release())
        # noise only (an empty batch on every rank): std of the applied noisy sum
        big = nn.Linear(1000, 400)
        noisy = make_dp_step(mode, big, settings(1.3, group, ebs=1, seed=100 + rank, secure=secure))
        noisy.train()
        noisy.step([], lambda idx: (None, None))
        noise = grads(noisy.release())
        out[name] = {
            "sum_max_abs_diff": float((reduced - expected).abs().max()),
            "sum_norm": float(expected.norm()),
            "noise_std": float(noise.std()),
            "noise_sha256": hashlib.sha256(noise.numpy().tobytes()).hexdigest(),
        }
    return out


def frame() -> Any:
    """A table whose numeric domains have no public source (a DP estimate, 6 features)."""
    import pandas as pd

    rng = np.random.default_rng(0)
    table = pd.DataFrame({"age": rng.integers(18, 80, 400), "income": rng.normal(50, 10, 400)})
    table["retained"] = np.where(table["age"] > 40, "yes", "no")
    return table


def train(out: Path, ledger: str, dataset: str, mode: str, rank: int, table: bool = False) -> dict:
    """The unchanged user script: fit, then save (on every rank)."""
    from privdl.train.encoding import TableEncoder

    out.mkdir(exist_ok=True)
    torch.manual_seed(100 + rank)  # a different initial model on each rank
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
    log = AuditLog(out / "audit.jsonl", key=Secret(bytes(range(32))))
    trainer = PrivateTrainer(
        model,
        epsilon=2.0,
        epochs=2,
        batch_size=50,
        ledger=ledger,
        dataset_id=dataset,
        audit_log=log,
        grad_sample_mode=mode,
        # a DataFrame: the trainer fits the encoder (its DP domain estimate charged once)
        encoder=TableEncoder(categories={"retained": ["no", "yes"]}) if table else None,
    )
    if table:
        trainer.fit(frame(), target="retained")
    else:
        trainer.fit(blobs())
    saved = trainer.save(out / "model")
    encoded = trainer.encoder_.transform(frame()) if table else np.zeros(0)
    return {
        "domain_run_id": trainer.domain_run_id_,
        "encoded": hashlib.sha256(np.ascontiguousarray(encoded, dtype=np.float64).tobytes()).hexdigest(),
        "rank": rank,
        "world": torch.distributed.get_world_size(),
        "epsilon": trainer.epsilon,
        "noise_multiplier": trainer.noise_multiplier_,
        "sample_rate": trainer.sample_rate_,
        "steps": trainer.steps_,
        "delta": trainer.delta_,
        "run_id": trainer.run_id_,
        "charged_here": trainer.ledger_ is not None,
        "saved": str(saved),
        "weights": digest(trainer.model_),
    }


def crash_and_resume(out: Path, ledger: str, dataset: str, mode: str, rank: int, table: bool = False) -> dict:
    """A run whose power goes off in epoch 2 (on every rank, in the same step), resumed
    from rank 0's checkpoint of epoch 1 by every rank."""
    from tests.train.crash import CrashingLoss

    out.mkdir(exist_ok=True)
    key = Secret(bytes(range(32)))
    torch.manual_seed(100 + rank)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
    trainer = PrivateTrainer(
        model,
        epsilon=2.0,
        epochs=3,
        batch_size=50,
        ledger=ledger,
        dataset_id=dataset,
        grad_sample_mode=mode,
        checkpoint_dir=out / "ckpt",
        checkpoint_key=key,
    )
    trainer.loss = CrashingLoss(steps=8)  # 8 steps per epoch: stops in step 1 of epoch 2
    with contextlib.suppress(RuntimeError):  # "power cut", on every rank
        trainer.fit(blobs())
    resumed = PrivateTrainer.resume(out / "ckpt", key=key, ledger=ledger)
    resumed.fit(blobs())
    return {
        "crashed_steps": trainer.steps_,
        "steps": resumed.steps_,
        "planned_steps": resumed.planned_steps_,
        "run_id": resumed.run_id_,
        "first_run_id": trainer.run_id_,
        "epsilon": resumed.epsilon,
        "weights": digest(resumed.model_),
    }


def main() -> None:
    out, runs = Path(sys.argv[1]), json.loads(sys.argv[2])
    warnings.simplefilter("ignore")
    rank = int(os.environ["RANK"])
    # the first fit initializes the process group from the torchrun environment
    result: dict[str, Any] = {}
    for run in runs:
        args = (out / run["name"], run["ledger"], run["dataset"], run["mode"], rank, run.get("table", False))
        make = crash_and_resume if run.get("resume") else train
        if not run.get("refused"):  # any error ends this rank: torchrun stops the others
            result[run["name"]] = make(*args)
            continue
        try:
            result[run["name"]] = make(*args)
        except Exception as exc:  # the refusal each rank saw
            result[run["name"]] = {"error": type(exc).__name__}
    result["mechanism"] = mechanism(rank, torch.distributed.get_world_size())
    (out / f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
