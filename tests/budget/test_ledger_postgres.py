"""BudgetLedger on PostgreSQL (needs PRIVDL_TEST_POSTGRES_URL, e.g.
``postgresql://privdl@127.0.0.1:55432/privdl_test``; skipped when unset)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from privdl.budget.ledger import BudgetLedger
from privdl.errors import BudgetExceededError, InputError
from privdl.train.calibrate import epsilon_of

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


_CHARGER = textwrap.dedent(
    """
    import json, os, sys, time
    from privdl.budget.ledger import BudgetLedger
    from privdl.errors import BudgetExceededError
    url, ds, go, ready = sys.argv[1:5]
    led = BudgetLedger(url)
    open(ready, "w").close()
    while not os.path.exists(go):
        time.sleep(0.01)
    ok = refused = 0
    for _ in range(50):
        try:
            led.reserve(ds, history=[(1.0, 0.01, 20)], delta=1e-5, accountant="rdp")
            ok += 1
        except BudgetExceededError:
            refused += 1
    print(json.dumps({"ok": ok, "refused": refused}))
    """
)


def test_postgres_two_processes_never_overspend(url: str, tmp_path: Path) -> None:
    ds = _dataset()
    n_max = 0
    while epsilon_of([(1.0, 0.01, 20)] * (n_max + 1), delta=DELTA, accountant="rdp") <= 2.0:
        n_max += 1
    with BudgetLedger(url) as led:
        led.set_budget(ds, epsilon=2.0, delta=DELTA, accountant="rdp")
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHARGER, url, ds, str(go), str(tmp_path / f"r{i}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"r{i}").exists() for i in range(2)):
        assert time.monotonic() < deadline, "charger processes did not start"
        time.sleep(0.02)
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    assert sum(r["ok"] for r in results) == n_max
    with BudgetLedger(url) as led:
        assert led.status(ds).runs == n_max
        assert led.spent(ds) <= 2.0
