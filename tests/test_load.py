"""Issue 12 "Also hold": concurrent writers under load (fast enough for the default run).

4 processes x 500 audit appends to one log verify as 2000 entries; 3 processes charging
one ledger past its budget accept exactly its capacity (SQLite always, PostgreSQL when
``PRIVDL_TEST_POSTGRES_URL`` is set).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
import uuid
from pathlib import Path

import pytest

from privdl.audit import AuditLog, verify_audit_log
from privdl.budget.ledger import BudgetLedger
from privdl.keys import Secret
from tests.budget.race import DELTA, capacity, race

WRITERS, APPENDS = 4, 500
CHARGERS = 3
BUDGET = 2.0
POSTGRES_URL = os.environ.get("PRIVDL_TEST_POSTGRES_URL", "")


def _appender(path: str, key_hex: str, go: str, n: int) -> None:
    log = AuditLog(path, key=Secret(bytes.fromhex(key_hex)), actor=f"w{os.getpid()}")
    while not os.path.exists(go):
        time.sleep(0.005)
    for i in range(n):
        log.append("score", params={"i": i})


def test_four_processes_append_500_entries_each_and_the_log_verifies(tmp_path: Path) -> None:
    key = Secret.generate()
    path, go = tmp_path / "audit.jsonl", tmp_path / "go"
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_appender, args=(str(path), key.reveal().hex(), str(go), APPENDS))
        for _ in range(WRITERS)
    ]
    for p in procs:
        p.start()
    go.touch()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    result = verify_audit_log(path, key=key, thorough=True)
    assert result.entries == WRITERS * APPENDS
    assert result.incomplete_tail == 0
    entries = [json.loads(line)["entry"] for line in path.read_text().splitlines()]
    assert [e["seq"] for e in entries] == list(range(1, WRITERS * APPENDS + 1))
    per_actor: dict[str, list[int]] = {}
    for e in entries:
        per_actor.setdefault(e["actor"], []).append(e["params"]["i"])
    assert len(per_actor) == WRITERS
    assert all(seen == list(range(APPENDS)) for seen in per_actor.values())


def _charge_past_capacity(location: str, dataset: str, tmp_path: Path) -> None:
    n_max = capacity(BUDGET)
    assert 10 < n_max < 90
    with BudgetLedger(location) as led:
        led.set_budget(dataset, epsilon=BUDGET, delta=DELTA, accountant="rdp")
    charges = n_max // 2 + 5  # 3 x charges > capacity: every process runs into the limit
    results = race(location, dataset, tmp_path, charges=charges, processes=CHARGERS)
    assert sum(r["ok"] for r in results) == n_max
    assert sum(r["refused"] for r in results) == CHARGERS * charges - n_max
    with BudgetLedger(location) as led:
        status = led.status(dataset)
        assert status.runs == status.reserved == n_max
        assert status.spent <= BUDGET


def test_three_processes_charging_one_sqlite_ledger_accept_exactly_the_capacity(tmp_path: Path) -> None:
    _charge_past_capacity(str(tmp_path / "budget.db"), "d", tmp_path)


@pytest.mark.postgres
def test_three_processes_charging_one_postgres_ledger_accept_exactly_the_capacity(tmp_path: Path) -> None:
    if not POSTGRES_URL:
        pytest.skip("PRIVDL_TEST_POSTGRES_URL is not set")
    pytest.importorskip("sqlalchemy")
    _charge_past_capacity(POSTGRES_URL, f"load-{uuid.uuid4().hex[:12]}", tmp_path)
