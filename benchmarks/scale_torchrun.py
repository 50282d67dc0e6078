"""DP training under torchrun: 1 and 2 CPU processes, records/s beside each other.

Run:  python benchmarks/scale_torchrun.py [--rows 60000] [--features 20] [--hidden 64]
                 [--batch 256] [--epochs 2] [--procs 1,2] [--mode bk] [--json]

Each process count is one ``python -m torch.distributed.run --standalone
--nproc_per_node N`` launch of this file (gloo, one torch thread per process) running
the unchanged ``PrivateTrainer(...).fit`` script on generated data (an MLP
features-hidden-2, epsilon 3, a SQLite ledger). Printed per launch:

* records/s of the training loop (``rows * epochs / fit_seconds_``) and of the whole
  ``fit`` (planning, sigma calibration and the ledger reservation included), and each
  beside the one-process figure (a ratio);
* where the time goes: the launch (torchrun, imports, rendezvous) is the wall time
  minus ``fit``; ``fit`` minus the loop is the plan (rank 0) and the setup; ``in
  all-reduce`` is rank 0's time inside the steps' all-reduce, waiting for the slower
  rank included (the rest of the loop is its own compute); ``all-reduce ms`` times one
  all-reduce of the gradient buffer on its own, after ``fit``.

``benchmarks/scale.py`` calls :func:`run` and prints the same rows. Figures depend on
the machine and its load: on a 2-core machine shared with other work, 2 processes
cannot reach 2x.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _worker(out: Path, rows: int, features: int, epochs: int, mode: str, hidden: int, batch: int) -> None:
    """One rank: the user's script, timed; rank 0 writes the figures."""
    import numpy as np
    import torch
    from torch import nn

    from privdl import BudgetLedger, PrivateTrainer
    from privdl.train import distributed

    warnings.filterwarnings("ignore")
    # time spent in the step's all-reduce, waiting for the slowest rank included
    in_reduce = [0.0]
    plain_sum = distributed.Group.sum_

    def timed_sum(self: Any, tensors: Any) -> None:
        t = time.perf_counter()
        plain_sum(self, tensors)
        in_reduce[0] += time.perf_counter() - t

    distributed.Group.sum_ = timed_sum  # type: ignore[method-assign]
    rng = np.random.default_rng(0)
    w = rng.normal(size=features)
    X = rng.normal(size=(rows, features)).astype(np.float32)
    y = (X @ w + rng.normal(size=rows) > 0).astype(np.int64)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, 2))
    rank = int(os.environ.get("RANK", "0"))
    ledger = out / "budget.db"
    if rank == 0:  # only rank 0 opens the ledger; the trainer initializes the process group
        BudgetLedger(ledger).set_budget("bench", epsilon=1000.0, delta=1e-6)
    trainer = PrivateTrainer(
        model,
        epsilon=3.0,
        epochs=epochs,
        batch_size=batch,
        ledger=str(ledger),
        dataset_id="bench",
        grad_sample_mode=mode,
        progress=False,
    )
    t0 = time.perf_counter()
    trainer.fit((X, y))
    fit_s = time.perf_counter() - t0
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    allreduce_ms = 0.0
    if world > 1:
        flat = torch.zeros(sum(p.numel() for p in trainer.model_.parameters()))
        for _ in range(5):
            torch.distributed.all_reduce(flat)
        t1 = time.perf_counter()
        for _ in range(50):
            torch.distributed.all_reduce(flat)
        allreduce_ms = (time.perf_counter() - t1) / 50 * 1000
    if rank == 0:
        loop_s = float(trainer.fit_seconds_ or fit_s)
        record = {
            "processes": world,
            "rows": rows,
            "epochs": epochs,
            "steps": trainer.steps_,
            "mode": trainer.grad_sample_mode_,
            "fit_s": fit_s,
            "loop_s": loop_s,
            "records_per_s": rows * epochs / loop_s,
            "records_per_s_fit": rows * epochs / fit_s,
            "allreduce_ms": allreduce_ms,
            "in_reduce_s": in_reduce[0],
            "epsilon": trainer.epsilon,
        }
        (out / f"result-{world}.json").write_text(json.dumps(record))


def run(
    *,
    rows: int = 60_000,
    features: int = 20,
    epochs: int = 2,
    procs: tuple[int, ...] = (1, 2),
    mode: str = "bk",
    hidden: int = 64,
    batch: int = 256,
) -> list[dict[str, Any]]:
    """Launch torchrun once per process count; the figures of each launch (dicts with
    ``processes``, ``records_per_s``, ``records_per_s_fit``, ``fit_s``, ``loop_s``,
    ``launch_s``, ``allreduce_ms``, ``steps``, ``ratio`` (records/s over the first
    launch's) and ``ratio_fit``)."""
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="privdl-torchrun-") as tmp:
        for n in procs:
            out = Path(tmp) / f"p{n}"
            out.mkdir()
            env = dict(os.environ, OMP_NUM_THREADS="1")
            env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n)]
            cmd += [__file__, "--worker", str(out), "--rows", str(rows), "--features", str(features)]
            cmd += ["--epochs", str(epochs), "--mode", mode, "--hidden", str(hidden), "--batch", str(batch)]
            t0 = time.perf_counter()
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if done.returncode != 0:
                raise RuntimeError(f"torchrun with {n} process(es) failed:\n{done.stderr[-3000:]}")
            record = json.loads((out / f"result-{n}.json").read_text())
            record["wall_s"] = wall
            record["launch_s"] = wall - record["fit_s"]
            results.append(record)
    base = results[0]
    for r in results:
        r["ratio"] = r["records_per_s"] / base["records_per_s"]
        r["ratio_fit"] = r["records_per_s_fit"] / base["records_per_s_fit"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--procs", default="1,2")
    parser.add_argument("--mode", default="bk")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        _worker(args.worker, args.rows, args.features, args.epochs, args.mode, args.hidden, args.batch)
        return
    procs = tuple(int(p) for p in args.procs.split(","))
    results = run(
        rows=args.rows,
        features=args.features,
        epochs=args.epochs,
        procs=procs,
        mode=args.mode,
        hidden=args.hidden,
        batch=args.batch,
    )
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"torchrun, {args.rows:,} rows x {args.features} features, MLP {args.features}-{args.hidden}-2, "
        f"batch {args.batch}, {args.epochs} epochs, grad_sample_mode={args.mode}, gloo, 1 thread/process"
    )
    print(
        f"{'processes':>9} {'records/s (loop)':>17} {'x 1 proc':>9} {'records/s (fit)':>16} {'x 1 proc':>9} "
        f"{'loop s':>7} {'in all-reduce s':>16} {'fit s':>6} {'launch s':>9} {'all-reduce ms':>14}"
    )
    for r in results:
        print(
            f"{r['processes']:>9} {r['records_per_s']:>17,.0f} {r['ratio']:>9.2f} {r['records_per_s_fit']:>16,.0f} "
            f"{r['ratio_fit']:>9.2f} {r['loop_s']:>7.2f} {r['in_reduce_s']:>16.2f} {r['fit_s']:>6.2f} "
            f"{r['launch_s']:>9.1f} {r['allreduce_ms']:>14.3f}"
        )


if __name__ == "__main__":
    main()
