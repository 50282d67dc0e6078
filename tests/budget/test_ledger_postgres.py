"""BudgetLedger on PostgreSQL (needs PRIVDL_TEST_POSTGRES_URL, e.g.
``postgresql://privdl@127.0.0.1:55432/privdl_test``; skipped when unset)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from privdl.budget.accounting import epsilon_of
from privdl.budget.ledger import BudgetLedger
from privdl.errors import BudgetExceededError, InputError
from tests.budget.race import capacity, race

pytestmark = pytest.mark.postgres

URL = os.environ.get("PRIVDL_TEST_POSTGRES_URL", "")
DELTA = 1e-5


@pytest.fixture
def url() -> str:
    if not URL:
        pytest.skip("PRIVDL_TEST_POSTGRES_URL is not set")
    pytest.importorskip("sqlalchemy")
    return URL


def _dataset() -> str:
    # the database is shared between runs: every test uses its own dataset id
    return f"pg-{uuid.uuid4().hex[:12]}"


def test_postgres_ledger_round_trip(url: str) -> None:
    ds = _dataset()
    with BudgetLedger(url) as led:
        led.set_budget(ds, epsilon=2.0, delta=DELTA, accountant="rdp")
        run = led.reserve(ds, history=[(1.0, 0.01, 200)], delta=DELTA, accountant="rdp")
        assert led.status(ds).reserved == 1
        led.settle(run, history=[(1.0, 0.01, 100)])
        assert led.spent(ds) == pytest.approx(epsilon_of([(1.0, 0.01, 100)], delta=DELTA, accountant="rdp"))
        assert ds in led.datasets()
        with pytest.raises(BudgetExceededError):
            led.reserve(ds, history=[(0.5, 0.1, 5000)], delta=DELTA, accountant="rdp")
        assert led.status(ds).runs == 1
        assert led.location.startswith("postgresql://")


def test_postgres_foreign_tables_are_refused(url: str) -> None:
    sqlalchemy = pytest.importorskip("sqlalchemy")
    schema = f"foreign_{uuid.uuid4().hex[:8]}"
    engine = sqlalchemy.create_engine("postgresql+psycopg://" + url.split("://", 1)[1])
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
        conn.execute(sqlalchemy.text(f"CREATE TABLE {schema}.privdl_runs (x int)"))
    try:
        sep = "&" if "?" in url else "?"
        foreign = f"{url}{sep}options=-csearch_path%3D{schema}"
        with pytest.raises(InputError, match="not a privdl budget ledger"):
            BudgetLedger(foreign)
    finally:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


def test_postgres_two_processes_never_overspend(url: str, tmp_path: Path) -> None:
    ds = _dataset()
    n_max = capacity(2.0)
    with BudgetLedger(url) as led:
        led.set_budget(ds, epsilon=2.0, delta=DELTA, accountant="rdp")
    results = race(url, ds, tmp_path, timeout=180)
    assert sum(r["ok"] for r in results) == n_max
    with BudgetLedger(url) as led:
        assert led.status(ds).runs == n_max
        assert led.spent(ds) <= 2.0
