"""A training run killed midway (SIGKILL, no cleanup) leaves a log that verifies and
holds its ``started`` entry: the ledger's reservation has its evidence."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from privdl.audit import iter_entries, verify_audit_log
from privdl.keys import Secret

pytest.importorskip("opacus")

_TRAIN = """
import sys
import numpy as np
import torch
from privdl.audit import AuditLog
from privdl.budget.ledger import BudgetLedger
from privdl.keys import Secret
from privdl.train.trainer import PrivateTrainer

log = AuditLog(sys.argv[1], key=Secret(bytes.fromhex(sys.argv[3]), source="argument"))
ledger = BudgetLedger(sys.argv[2])
ledger.set_budget("retention-2026-11", epsilon=100.0, delta=1e-5, accountant="rdp")
rng = np.random.default_rng(0)
X = rng.normal(size=(200, 6)).astype(np.float32)
y = (X[:, 0] > 0).astype(np.int64)
trainer = PrivateTrainer(
    torch.nn.Sequential(torch.nn.Linear(6, 2)), epsilon=50.0, epochs=100_000, batch_size=50,
    accountant="rdp", ledger=ledger, dataset_id="retention-2026-11", audit_log=log,
    device="cpu", progress=False,
)
trainer.fit((X, y))
"""


def _reserved(ledger: Path) -> int:
    if not ledger.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
        try:
            return con.execute("SELECT COUNT(*) FROM privdl_runs WHERE status = 'reserved'").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:  # schema not there yet
        return 0


def test_killed_fit_leaves_its_started_entry(tmp_path: Path, audit_key: Secret) -> None:
    log, ledger = tmp_path / "audit.jsonl", tmp_path / "budget.db"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(
        [sys.executable, "-c", _TRAIN, str(log), str(ledger), audit_key.reveal().hex()],
        env=env,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while _reserved(ledger) == 0 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert _reserved(ledger) == 1  # the run holds its reservation and is training
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    result = verify_audit_log(log, key=audit_key)  # a killed writer leaves a valid log
    entries = list(iter_entries(log))
    [started] = [e for e in entries if e["event"] == "train"]
    assert started["outcome"] == "started"
    assert started["params"]["dataset_id"] == "retention-2026-11" and started["params"]["epsilon"] == 50.0
    assert [len(i["sha256"]) for i in started["inputs"]] == [64, 64]  # X and y fingerprints
    assert result.unfinished == (started["seq"],)

    from privdl.cli import main

    os.environ["PRIVDL_AUDIT_KEY"] = "hex:" + audit_key.reveal().hex()
    try:
        assert main(["audit", "verify", str(log), "--json"]) == 0
    finally:
        del os.environ["PRIVDL_AUDIT_KEY"]
    assert json.loads(json.dumps(result.to_dict()))["unfinished"] == [started["seq"]]
