"""Launching the distributed tests' workers: ``python -m torch.distributed.run
--nproc_per_node 2 --standalone`` (gloo on CPU), with this checkout first on the path
and none of the torchrun variables of an outer launch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: what torchrun sets for its workers (a test process must not inherit them)
TORCHRUN_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_WORLD_SIZE",
    "NNODES",
    "MASTER_ADDR",
    "MASTER_PORT",
)


def launch(
    script: Path, *args: str, cwd: Path, timeout: int = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``script args...`` on 2 local processes; fails the test unless torchrun exits 0
    (the last 4,000 characters of its stderr as the message)."""
    environ = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), environ.get("PYTHONPATH", "")])
    environ["OMP_NUM_THREADS"] = "1"
    environ.update(env or {})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
    cmd += [str(script), *map(str, args)]
    done = subprocess.run(cmd, env=environ, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def rank_results(out: Path) -> list[dict]:
    """What each of the 2 ranks wrote: ``out/rank{R}.json``."""
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
