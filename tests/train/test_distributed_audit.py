"""Under torchrun, rank 0's audit log refusing the run's "started" entry stops every rank
with that error, before anything is charged: a real 2-process gloo launch. (Before, the
other ranks went on into the run's first collective and failed there with a transport
error naming nothing, or waited when rank 0's script caught its error and went on.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")
if not torch.distributed.is_available():  # pragma: no cover
    pytest.skip("this torch build has no torch.distributed", allow_module_level=True)

from privdl.budget.ledger import BudgetLedger  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("dist_audit_worker.py")
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_WORLD_SIZE", "NNODES",
                 "MASTER_ADDR", "MASTER_PORT")  # fmt: skip


def test_rank_0s_refused_audit_entry_stops_every_rank_before_any_charge(tmp_path):
    BudgetLedger(tmp_path / "budget.db").set_budget("dist-audit", epsilon=10.0, delta=1e-4)
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           str(WORKER), str(tmp_path)]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    errors = [json.loads((tmp_path / f"rank{r}.json").read_text())["error"] for r in range(2)]
    assert [e["type"] for e in errors] == ["TamperDetectedError", "TamperDetectedError"]
    assert "not a JSON audit entry" in errors[0]["message"] and errors[1]["message"] == errors[0]["message"]
    ledger = BudgetLedger(tmp_path / "budget.db")
    assert ledger.spent("dist-audit") == 0.0 and ledger.runs("dist-audit") == []
