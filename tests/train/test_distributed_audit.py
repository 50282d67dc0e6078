"""Under torchrun, rank 0's audit log refusing the run's "started" entry stops every rank
with that error, before anything is charged: a real 2-process gloo launch. (Before, the
other ranks went on into the run's first collective and failed there with a transport
error naming nothing, or waited when rank 0's script caught its error and went on.)"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")
if not torch.distributed.is_available():  # pragma: no cover
    pytest.skip("this torch build has no torch.distributed", allow_module_level=True)

from privdl.budget.ledger import BudgetLedger  # noqa: E402
from tests.train.torchrun import launch, rank_results  # noqa: E402

WORKER = Path(__file__).with_name("dist_audit_worker.py")


def test_rank_0s_refused_audit_entry_stops_every_rank_before_any_charge(tmp_path):
    BudgetLedger(tmp_path / "budget.db").set_budget("dist-audit", epsilon=10.0, delta=1e-4)
    launch(WORKER, tmp_path, cwd=tmp_path, timeout=240)
    errors = [rank["error"] for rank in rank_results(tmp_path)]
    assert [e["type"] for e in errors] == ["TamperDetectedError", "TamperDetectedError"]
    assert "not a JSON audit entry" in errors[0]["message"] and errors[1]["message"] == errors[0]["message"]
    ledger = BudgetLedger(tmp_path / "budget.db")
    assert ledger.spent("dist-audit") == 0.0 and ledger.runs("dist-audit") == []
