"""The privacy unit in the ledger: recorded per budget and run, converted by group privacy."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import uuid

import pytest

from privdl.budget.accounting import epsilon_of
from privdl.budget.ledger import BudgetLedger
from privdl.budget.store import SCHEMA_VERSION
from privdl.errors import PolicyError

DELTA = 1e-5
HIST = [(1.2, 0.02, 300)]


def _group(eps: float, delta: float, k: int) -> tuple[float, float]:
    # written out here, apart from the library: (k eps, k e^((k-1) eps) delta)
    return k * eps, k * math.exp((k - 1) * eps) * delta


def test_same_unit_runs_compose_by_history(tmp_path):
    led = BudgetLedger(tmp_path / "b.db")
    led.set_budget("users", epsilon=5.0, delta=DELTA, privacy_unit="user", accountant="rdp")
    run = led.reserve("users", history=HIST, delta=DELTA, accountant="rdp", privacy_unit="user")
    led.settle(run, history=HIST)
    rec = led.runs("users")[0]
    assert rec.privacy_unit == "user" and rec.charge is None
    assert led.spent("users") == pytest.approx(epsilon_of(HIST, delta=DELTA, accountant="rdp"))
    status = led.status("users")
    assert status.privacy_unit == "user" and status.max_records_per_user is None


def test_record_run_on_user_budget_is_charged_by_group_privacy(tmp_path):
    led = BudgetLedger(tmp_path / "b.db")
    led.set_budget("u", epsilon=50.0, delta=1e-3, privacy_unit="user", accountant="rdp")
    # no declared maximum: refused, nothing written
    with pytest.raises(PolicyError, match="max_records_per_user"):
        led.reserve("u", history=HIST, delta=1e-9, accountant="rdp")
    assert led.runs("u") == []
    led.set_budget("u", epsilon=50.0, delta=1e-3, privacy_unit="user", max_records_per_user=5)
    run_delta = 1e-9
    led.reserve("u", history=HIST, delta=run_delta, accountant="rdp")
    rec = led.runs("u")[0]
    eps_r = epsilon_of(HIST, delta=run_delta, accountant="rdp")
    want_eps, want_delta = _group(eps_r, run_delta, 5)
    assert rec.privacy_unit == "record"
    assert rec.charge.epsilon == pytest.approx(want_eps) and rec.charge.delta == pytest.approx(want_delta)
    assert led.spent("u") == pytest.approx(want_eps)
    # settle recomputes the charge from the settled history
    led.settle(rec.run_id, history=[(1.2, 0.02, 100)])
    eps_r = epsilon_of([(1.2, 0.02, 100)], delta=run_delta, accountant="rdp")
    assert led.runs("u")[0].charge.epsilon == pytest.approx(_group(eps_r, run_delta, 5)[0])


def test_user_run_on_record_budget_is_a_group_of_two(tmp_path):
    led = BudgetLedger(tmp_path / "b.db")
    led.set_budget("r", epsilon=20.0, delta=1e-4, accountant="rdp")
    led.reserve("r", history=HIST, delta=1e-6, accountant="rdp", privacy_unit="user")
    rec = led.runs("r")[0]
    eps = epsilon_of(HIST, delta=1e-6, accountant="rdp")
    assert rec.charge.epsilon == pytest.approx(2 * eps)
    assert rec.charge.delta == pytest.approx(2 * math.exp(eps) * 1e-6)


def test_fixed_charges_and_histories_compose(tmp_path):
    led = BudgetLedger(tmp_path / "b.db")
    led.set_budget("m", epsilon=30.0, delta=1e-4, accountant="rdp")
    led.reserve("m", history=HIST, delta=1e-6, accountant="rdp", privacy_unit="user")  # fixed
    led.reserve("m", history=HIST, delta=1e-5, accountant="rdp")  # by history
    fixed = led.runs("m")[0].charge
    want = epsilon_of(HIST, delta=1e-4 - fixed.delta, accountant="rdp") + fixed.epsilon
    assert led.spent("m") == pytest.approx(want)
    # a charge that takes more delta than the budget has is refused
    from privdl.budget.accounting.units import Charge
    from privdl.errors import BudgetExceededError

    with pytest.raises(BudgetExceededError):
        led.reserve("m", history=HIST, delta=1e-5, accountant="rdp", charge=Charge(0.1, 2e-4, "test"))


def test_unit_of_a_budget_with_runs_cannot_change(tmp_path):
    led = BudgetLedger(tmp_path / "b.db")
    led.set_budget("d", epsilon=5.0, delta=DELTA)
    led.reserve("d", history=HIST, delta=DELTA)
    with pytest.raises(PolicyError, match="cannot change"):
        led.set_budget("d", epsilon=5.0, delta=DELTA, privacy_unit="user", max_records_per_user=3)
    assert led.status("d").privacy_unit == "record"
    led.set_budget("d", epsilon=6.0, delta=DELTA)  # the total still can
    assert led.status("d").epsilon == 6.0


_V1_SCHEMA = (
    "CREATE TABLE privdl_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE privdl_datasets (dataset_id TEXT PRIMARY KEY, epsilon DOUBLE PRECISION NOT NULL, "
    "delta DOUBLE PRECISION NOT NULL, accountant TEXT NOT NULL, created_at TEXT NOT NULL, "
    "updated_at TEXT NOT NULL)",
    "CREATE TABLE privdl_runs (run_id TEXT PRIMARY KEY, dataset_id TEXT NOT NULL, created_at TEXT NOT NULL, "
    "settled_at TEXT, status TEXT NOT NULL, model_name TEXT NOT NULL, privdl_version TEXT NOT NULL, "
    "opacus_version TEXT NOT NULL, accountant TEXT NOT NULL, delta DOUBLE PRECISION NOT NULL, "
    "requested_epsilon DOUBLE PRECISION, epsilon DOUBLE PRECISION NOT NULL, history TEXT NOT NULL)",
)
_V1_ROWS = (
    "INSERT INTO privdl_meta VALUES ('application', 'privdl-budget-ledger'), ('schema_version', '1')",
    "INSERT INTO privdl_datasets VALUES ('old', 4.0, 1e-05, 'rdp', '2026-01-01', '2026-01-01')",
    "INSERT INTO privdl_runs VALUES ('r1', 'old', '2026-01-01', '2026-01-01', 'settled', 'mlp', '0.1', '1.6', "
    "'rdp', 1e-05, 2.0, 1.0, '" + json.dumps(HIST) + "')",
)


def _check_migrated(led: BudgetLedger) -> None:
    status = led.status("old")
    assert status.privacy_unit == "record" and status.max_records_per_user is None
    run = led.runs("old")[0]
    assert run.privacy_unit == "record" and run.charge is None
    assert status.spent == pytest.approx(epsilon_of(HIST, delta=1e-5, accountant="rdp"))
    # and it goes on working: a user-level run on the (record-level) migrated budget
    led.reserve("old", history=[(2.0, 0.01, 10)], delta=1e-7, accountant="rdp", privacy_unit="user")
    assert led.runs("old")[1].charge is not None


def test_sqlite_v1_ledger_is_migrated(tmp_path):
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)
    for stmt in (*_V1_SCHEMA, *_V1_ROWS):
        conn.execute(stmt)
    conn.execute(f"PRAGMA application_id = {0x70646C62}")
    conn.commit()
    conn.close()
    with BudgetLedger(path) as led:
        _check_migrated(led)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM privdl_meta WHERE key='schema_version'").fetchone()[0] == str(
        SCHEMA_VERSION
    )
    conn.close()
    with BudgetLedger(path) as led:  # opening a migrated ledger again changes nothing
        assert led.status("old").runs == 2


@pytest.mark.postgres
def test_postgres_v1_ledger_is_migrated():
    url = os.environ.get("PRIVDL_TEST_POSTGRES_URL", "")
    if not url:
        pytest.skip("PRIVDL_TEST_POSTGRES_URL is not set")
    sqlalchemy = pytest.importorskip("sqlalchemy")
    # a schema of its own: the shared database's other ledgers are left alone
    schema = f"v1_{uuid.uuid4().hex[:8]}"
    engine = sqlalchemy.create_engine("postgresql+psycopg://" + url.split("://", 1)[1])
    try:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
            conn.execute(sqlalchemy.text(f"SET LOCAL search_path TO {schema}"))
            for stmt in (*_V1_SCHEMA, *_V1_ROWS):
                conn.execute(sqlalchemy.text(stmt.replace(":", "\\:")))
        sep = "&" if "?" in url else "?"
        with BudgetLedger(f"{url}{sep}options=-csearch_path%3D{schema}") as led:
            _check_migrated(led)
        with engine.begin() as conn:
            version = conn.execute(
                sqlalchemy.text(f"SELECT value FROM {schema}.privdl_meta WHERE key='schema_version'")
            ).scalar()
        assert version == str(SCHEMA_VERSION)
    finally:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        engine.dispose()


def test_trainer_records_its_unit_and_the_report_headline_states_it(tmp_path):
    pytest.importorskip("opacus")
    import numpy as np
    import torch

    from privdl import PrivateTrainer

    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(100), 6)
    X = rng.normal(size=(len(users), 3)).astype("float32")
    y = (X[:, 0] > 0).astype("int64")
    led = BudgetLedger(tmp_path / "b.db")
    led.set_budget("ev", epsilon=4.0, delta=1e-4, privacy_unit="user")
    t = PrivateTrainer(
        torch.nn.Linear(3, 2), epsilon=2.0, privacy_unit="user", max_records_per_user=6,
        ledger=led, dataset_id="ev", epochs=1, batch_size=25, progress=False,
    )
    t.fit((X, y), users=users)
    run = led.runs("ev")[0]
    assert run.privacy_unit == "user" and run.charge is None
    assert led.spent("ev") == pytest.approx(t.epsilon, abs=0.02)
    from privdl.budget import report_document

    text = report_document.statement(t.report())
    assert text.startswith("This training run satisfies user-level (")
    assert "one person (user) with all their records" in text
    # a record-level run on this budget without a declared maximum: refused before a step
    r = PrivateTrainer(torch.nn.Linear(3, 2), epsilon=1.0, ledger=led, dataset_id="ev", epochs=1, progress=False)
    with pytest.raises(PolicyError):
        r.fit((X, y))
    assert r.steps_ == 0 and len(led.runs("ev")) == 1
    # a record-level report with max_records_per_user points to user-level training
    rec = PrivateTrainer(torch.nn.Linear(3, 2), epsilon=2.0, epochs=1, progress=False).fit((X, y))
    report = rec.report(max_records_per_user=6)
    assert report.privacy_unit.method == "group privacy"
    assert any('privacy_unit="user"' in w for w in report.warnings)
    assert "record-level (" in report_document.statement(report)


def test_cli_budget_show_states_the_unit(tmp_path, capsys):
    from privdl.cli import main

    path = tmp_path / "b.db"
    with BudgetLedger(path) as led:
        led.set_budget("people", epsilon=3.0, delta=DELTA, privacy_unit="user", max_records_per_user=40)
    assert main(["budget", "show", str(path)]) == 0
    assert "user (max 40/user)" in capsys.readouterr().out
    assert main(["budget", "show", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["datasets"][0]["privacy_unit"] == "user"
