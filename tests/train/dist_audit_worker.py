"""One rank of tests/train/test_distributed_audit.py, run by
``python -m torch.distributed.run --nproc_per_node 2 --standalone``.

Usage: ``dist_audit_worker.py OUT``. Every rank fits the same small run with an audit log;
rank 0's log is tampered with (a line that is no audit entry), so rank 0's "started"
entry is refused. Each rank writes ``OUT/rank{R}.json``: the exception it saw (type and
message), or ``null`` when its fit went through.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from privdl.audit import AuditLog
from privdl.keys import Secret
from privdl.train.trainer import PrivateTrainer


def main() -> None:
    out = Path(sys.argv[1])
    rank = int(os.environ["RANK"])
    warnings.filterwarnings("ignore")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    log_path = out / f"audit-{rank}.jsonl"
    log = AuditLog(log_path, key=Secret(secrets.token_bytes(32)))
    if rank == 0:
        with open(log_path, "a", encoding="utf-8") as fh:
            fh.write("not an audit entry\n")
    torch.manual_seed(rank)
    trainer = PrivateTrainer(
        nn.Linear(4, 2), epsilon=2.0, epochs=1, batch_size=20, seed=0, progress=False,
        ledger=str(out / "budget.db"), dataset_id="dist-audit", audit_log=log,
    )  # fmt: skip
    seen = None
    try:
        trainer.fit((X, y))
    except Exception as exc:
        seen = {"type": type(exc).__name__, "message": str(exc)}
    (out / f"rank{rank}.json").write_text(json.dumps({"error": seen}))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
