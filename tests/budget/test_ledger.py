"""BudgetLedger: composition, refusal, atomic charges across processes, crash safety,
foreign and corrupt files."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from privdl.budget.accounting import epsilon_of
from privdl.budget.ledger import BudgetLedger, BudgetStatus, RunRecord
from privdl.errors import BudgetExceededError, InputError, PolicyError, UsageError
from tests.budget.race import capacity, race

DELTA = 1e-5


def opacus_epsilon(history, *, delta, accountant):
    """Independent recomputation with Opacus' own accountants."""
    from opacus.accountants import PRVAccountant, RDPAccountant

    acc = PRVAccountant() if accountant == "prv" else RDPAccountant()
    acc.history = [tuple(s) for s in history]
    return acc.get_epsilon(delta=delta)


@pytest.fixture
def ledger(tmp_path: Path) -> BudgetLedger:
    led = BudgetLedger(tmp_path / "budget.db")
    yield led
    led.close()


def test_new_ledger_is_empty_sqlite_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "budget.db"
    with BudgetLedger(path) as led:
        assert led.datasets() == []
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    # reopening an existing ledger works, also through a sqlite:/// URL
    with BudgetLedger(f"sqlite:///{path}") as led:
        assert led.datasets() == []


def test_set_budget_and_read_back(ledger: BudgetLedger) -> None:
    status = ledger.set_budget("adult", epsilon=3.0, delta=DELTA)
    assert isinstance(status, BudgetStatus)
    assert ledger.budget("adult") == (3.0, DELTA)
    assert ledger.spent("adult") == 0.0
    assert ledger.remaining("adult") == 3.0
    assert ledger.datasets() == ["adult"]
    assert BudgetStatus.from_json(status.to_json()) == status


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_spent_is_composition_recomputed_independently(tmp_path: Path, accountant: str) -> None:
    with BudgetLedger(tmp_path / "b.db") as led:
        led.set_budget("d", epsilon=10.0, delta=DELTA, accountant=accountant)
        runs = [[(1.1, 0.01, 600)], [(0.9, 0.02, 300), (1.3, 0.02, 200)], [(2.0, 0.05, 400)]]
        for hist in runs:
            led.reserve("d", history=hist, delta=DELTA, accountant=accountant, model_name="m")
        composed = opacus_epsilon([seg for h in runs for seg in h], delta=DELTA, accountant=accountant)
        status = led.status("d")
        assert status.spent == pytest.approx(composed, rel=0.01)
        # each run's own epsilon, and their naive sum, also match Opacus
        own = [opacus_epsilon(h, delta=DELTA, accountant=accountant) for h in runs]
        for record, expected in zip(led.runs("d"), own, strict=True):
            assert record.epsilon == pytest.approx(expected, rel=0.01)
        assert status.naive_sum == pytest.approx(sum(own), rel=0.01)
        # composition under the accountant is tighter than adding epsilons
        assert status.spent < status.naive_sum
        assert status.remaining == pytest.approx(10.0 - status.spent)
        assert led.history("d") == [seg for h in runs for seg in h]


def test_refusal_happens_before_anything_is_written(ledger: BudgetLedger) -> None:
    ledger.set_budget("d", epsilon=1.0, delta=DELTA, accountant="rdp")
    ledger.reserve("d", history=[(1.5, 0.01, 300)], delta=DELTA, accountant="rdp")
    before = ledger.status("d")
    with pytest.raises(BudgetExceededError) as info:
        ledger.reserve("d", history=[(0.8, 0.05, 2000)], delta=DELTA, accountant="rdp", epsilon=5.0)
    err = info.value
    assert err.requested == 5.0
    assert err.dataset_id == "d"
    assert err.remaining == pytest.approx(before.remaining)
    assert err.exit_code == 1
    after = ledger.status("d")
    assert after.runs == before.runs == 1
    assert after.spent == before.spent


def test_settle_replaces_reservation_and_gives_back_unused_steps(ledger: BudgetLedger) -> None:
    ledger.set_budget("d", epsilon=5.0, delta=DELTA)
    run_id = ledger.reserve(
        "d",
        history=[(1.0, 0.01, 2000)],
        delta=DELTA,
        accountant="prv",
        model_name="mlp",
        epsilon=3.0,
    )
    reserved = ledger.status("d")
    assert reserved.reserved == 1
    record = ledger.settle(run_id, history=[(1.0, 0.01, 700)])
    assert isinstance(record, RunRecord)
    assert record.status == "settled" and record.settled_at is not None
    assert record.history == [(1.0, 0.01, 700)]
    assert record.requested_epsilon == 3.0
    assert record.model_name == "mlp" and record.privdl_version and record.opacus_version
    settled = ledger.status("d")
    assert settled.reserved == 0
    assert settled.spent < reserved.spent
    assert settled.spent == pytest.approx(
        opacus_epsilon([(1.0, 0.01, 700)], delta=DELTA, accountant="prv"), rel=0.01
    )
    with pytest.raises(UsageError):
        ledger.settle(run_id, history=[(1.0, 0.01, 700)])
    assert RunRecord.from_json(record.to_json()) == record


def test_settle_over_budget_is_recorded_then_raises(ledger: BudgetLedger) -> None:
    ledger.set_budget("d", epsilon=1.0, delta=DELTA, accountant="rdp")
    run_id = ledger.reserve("d", history=[(1.5, 0.01, 100)], delta=DELTA, accountant="rdp")
    with pytest.raises(BudgetExceededError):
        ledger.settle(run_id, history=[(0.6, 0.05, 5000)])
    # the spend is never hidden: the larger history is what the ledger now counts
    assert ledger.run(run_id).history == [(0.6, 0.05, 5000)]
    assert ledger.spent("d") > 1.0
    assert ledger.remaining("d") == 0.0
    # a what-if view under another accountant stays available, and is labelled
    assert ledger.status("d", accountant="prv").accountant == "prv"


def test_calibrate_remaining_spends_what_is_left(ledger: BudgetLedger) -> None:
    ledger.set_budget("d", epsilon=2.0, delta=DELTA)
    ledger.reserve("d", history=[(1.2, 0.01, 800)], delta=DELTA, accountant="prv")
    sigma = ledger.calibrate_remaining("d", sample_rate=0.02, steps=500, accountant="prv")
    composed = opacus_epsilon([(1.2, 0.01, 800), (sigma, 0.02, 500)], delta=DELTA, accountant="prv")
    assert composed <= 2.0 * 1.01
    assert composed >= 2.0 * 0.95  # uses (almost) all of what is left
    ledger.reserve("d", history=[(sigma, 0.02, 500)], delta=DELTA, accountant="prv")
    # what is left now is a rounding remainder: a further run needs far more noise
    assert ledger.calibrate_remaining("d", sample_rate=0.02, steps=500) > 3 * sigma
    ledger.set_budget("d", epsilon=ledger.spent("d"), delta=DELTA)
    with pytest.raises(BudgetExceededError):
        ledger.calibrate_remaining("d", sample_rate=0.02, steps=500, accountant="prv")


def test_lowering_budget_below_spent_is_refused(ledger: BudgetLedger) -> None:
    ledger.set_budget("d", epsilon=3.0, delta=DELTA)
    ledger.reserve("d", history=[(1.0, 0.01, 1000)], delta=DELTA, accountant="prv")
    spent = ledger.spent("d")
    with pytest.raises(BudgetExceededError):
        ledger.set_budget("d", epsilon=spent / 2, delta=DELTA)
    assert ledger.budget("d") == (3.0, DELTA)
    ledger.set_budget("d", epsilon=spent * 1.5, delta=DELTA)  # lowering above spent is fine
    assert ledger.budget("d")[0] == pytest.approx(spent * 1.5)


def test_unknown_dataset_and_bad_arguments(ledger: BudgetLedger) -> None:
    with pytest.raises(PolicyError, match="no budget"):
        ledger.spent("nope")
    with pytest.raises(PolicyError, match="no budget"):
        ledger.reserve("nope", history=[(1.0, 0.01, 10)], delta=DELTA)
    with pytest.raises(PolicyError):
        ledger.set_budget("d", epsilon=-1.0, delta=DELTA)
    with pytest.raises(PolicyError):
        ledger.set_budget("d", epsilon=1.0, delta=1.5)
    with pytest.raises(PolicyError):
        ledger.set_budget("d", epsilon=1.0, delta=DELTA, accountant="gdp")
    with pytest.raises(InputError):
        ledger.run("no-such-run")
    ledger.set_budget("d", epsilon=1.0, delta=DELTA)
    with pytest.raises(InputError, match="history segment 0"):
        ledger.reserve("d", history=[(1.0, 2.0, 10)], delta=DELTA)


# -- the dataset's accountant, delta limits, epsilon never negative (issue 10.5) -------


def test_runs_naming_another_accountant_are_composed_under_the_datasets(ledger: BudgetLedger) -> None:
    # A dataset set to rdp used to accept PRV-calibrated runs (checked under PRV) and
    # then report 2.3 spent of 2.0 (its status composes under rdp).
    ledger.set_budget("d", epsilon=2.0, delta=DELTA, accountant="rdp")
    prv_sized = [(0.9615, 0.01, 1000)]  # PRV: 1.999; RDP: 2.30
    assert epsilon_of(prv_sized, delta=DELTA, accountant="prv") <= 2.0
    assert epsilon_of(prv_sized, delta=DELTA, accountant="rdp") > 2.0
    with pytest.raises(BudgetExceededError) as info:
        ledger.reserve("d", history=prv_sized, delta=DELTA, accountant="prv", epsilon=2.0)
    assert info.value.remaining == 2.0
    assert ledger.status("d").runs == 0

    # a run that fits under rdp is accepted, and recorded and settled under rdp
    fits = [(1.3, 0.01, 1000)]
    run_id = ledger.reserve("d", history=fits, delta=DELTA, accountant="prv")
    record = ledger.run(run_id)
    assert record.accountant == "rdp"
    assert record.epsilon == pytest.approx(epsilon_of(fits, delta=DELTA, accountant="rdp"), rel=1e-12)
    settled = ledger.settle(run_id, history=[(1.3, 0.01, 900)])
    assert settled.accountant == "rdp"
    assert settled.epsilon == pytest.approx(
        epsilon_of([(1.3, 0.01, 900)], delta=DELTA, accountant="rdp"), rel=1e-12
    )

    # "remaining" asked for under prv is calibrated under the dataset's rdp, so the
    # composed spend lands at (not over) the total
    sigma = ledger.calibrate_remaining("d", sample_rate=0.02, steps=500, accountant="prv")
    ledger.reserve("d", history=[(sigma, 0.02, 500)], delta=DELTA, accountant="prv")
    status = ledger.status("d")
    assert status.accountant == "rdp"
    assert 1.9 < status.spent <= 2.0 * (1 + 1e-9)
    assert status.spent == pytest.approx(
        opacus_epsilon([(1.3, 0.01, 900), (sigma, 0.02, 500)], delta=DELTA, accountant="rdp"), rel=0.01
    )
    # what a trainer asks to learn the accountant it should account its own run under
    assert ledger.accountant("d") == "rdp"


def test_changing_a_budget_keeps_the_datasets_accountant(ledger: BudgetLedger) -> None:
    ledger.set_budget("d", epsilon=2.0, delta=DELTA, accountant="rdp")
    assert ledger.set_budget("d", epsilon=3.0, delta=DELTA).accountant == "rdp"
    assert ledger.accountant("d") == "rdp"
    ledger.set_budget("d", epsilon=3.0, delta=DELTA, accountant="prv")  # asked for by name
    assert ledger.accountant("d") == "prv"
    assert ledger.set_budget("new", epsilon=1.0, delta=DELTA).accountant == "prv"
    with pytest.raises(PolicyError, match="no budget"):
        ledger.accountant("nope")


@pytest.mark.parametrize("delta", [2e-3, 0.01, 0.1, 0.5])
def test_set_budget_refuses_a_large_delta_unless_forced(ledger: BudgetLedger, delta: float) -> None:
    with pytest.raises(PolicyError, match=r"force=True") as info:
        ledger.set_budget("d", epsilon=1.0, delta=delta)
    assert "1e-03" in str(info.value) or "0.001" in str(info.value)
    assert ledger.datasets() == []
    with pytest.warns(UserWarning, match="forced"):
        status = ledger.set_budget("d", epsilon=1.0, delta=delta, force=True)
    assert status.delta == delta
    ledger.set_budget("e", epsilon=1.0, delta=1e-3)  # the limit itself is fine


@pytest.mark.parametrize(
    ("epsilon", "delta"),
    [
        (0.0, DELTA),
        (-1.0, DELTA),
        (math.inf, DELTA),
        (math.nan, DELTA),
        (True, DELTA),
        (1.0, 0.0),
        (1.0, -1e-5),
        (1.0, 1.0),
        (1.0, 1.5),
        (1.0, math.nan),
        (1.0, "1e-5"),
    ],
)
def test_set_budget_refuses_out_of_range_values_even_forced(
    ledger: BudgetLedger, epsilon: float, delta: float
) -> None:
    for force in (False, True):
        with pytest.raises(PolicyError):
            ledger.set_budget("d", epsilon=epsilon, delta=delta, force=force)
    assert ledger.datasets() == []


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
@pytest.mark.parametrize("delta", [0.1, 0.2, 0.3, 0.5])
def test_spent_is_never_negative_and_remaining_never_above_total(
    tmp_path: Path, accountant: str, delta: float
) -> None:
    # At a large delta the (epsilon, delta) conversion goes below zero: that used to be
    # reported as a negative spend with "remaining" above the total.
    with BudgetLedger(tmp_path / "b.db") as led:
        with pytest.warns(UserWarning, match="forced"):
            led.set_budget("d", epsilon=1.0, delta=delta, accountant=accountant, force=True)
        run_id = led.reserve("d", history=[(5.0, 0.01, 10)], delta=delta)
        status = led.status("d")
        assert status.spent == 0.0
        assert status.naive_sum == 0.0
        assert status.remaining == 1.0
        assert led.run(run_id).epsilon == 0.0
        led.reserve("d", history=[(1.0, 0.01, 1000)], delta=delta)
        status = led.status("d")
        assert status.spent >= 0.0
        assert 0.0 <= status.remaining <= status.epsilon


def test_unsupported_url_scheme(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="mysql"):
        BudgetLedger("mysql://host/db")


def test_reader_does_not_create_a_ledger(tmp_path: Path) -> None:
    path = tmp_path / "missing.db"
    with pytest.raises(InputError, match="no budget ledger"):
        BudgetLedger(path, create=False)
    assert not path.exists()


# -- foreign and corrupt files -------------------------------------------------------


def test_corrupt_bytes_are_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(os.urandom(8192))
    with pytest.raises(InputError, match=r"garbage\.db"):
        BudgetLedger(path)
    assert path.stat().st_size == 8192


def test_foreign_sqlite_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER, name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(InputError, match="not a privdl budget ledger"):
        BudgetLedger(path)
    conn = sqlite3.connect(path)  # untouched
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["users"]
    conn.close()


def test_wrong_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    BudgetLedger(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE privdl_meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(InputError, match="schema version 99"):
        BudgetLedger(path)


def test_damaged_pages_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    with BudgetLedger(path) as led:
        led.set_budget("d", epsilon=3.0, delta=DELTA)
        for _ in range(30):
            led.reserve("d", history=[(1.0, 0.001, 10)], delta=DELTA, accountant="rdp")
    # checkpoint the WAL into the main file, then overwrite the table pages
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()
    data = bytearray(path.read_bytes())
    for i in range(4096, len(data)):
        data[i] = 0xA5
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"b\.db"):
        led = BudgetLedger(path)
        led.status("d")


# -- properties ----------------------------------------------------------------------

segment = st.tuples(
    st.floats(min_value=0.6, max_value=3.0),
    st.floats(min_value=0.001, max_value=0.1),
    st.integers(min_value=1, max_value=3000),
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    requests=st.lists(st.lists(segment, min_size=1, max_size=2), min_size=1, max_size=8),
    total=st.floats(min_value=0.5, max_value=8.0),
)
def test_spent_never_exceeds_total_and_refusals_are_exact(
    tmp_path_factory: pytest.TempPathFactory, requests, total: float
) -> None:
    path = tmp_path_factory.mktemp("prop") / "b.db"
    with BudgetLedger(path) as led:
        led.set_budget("d", epsilon=total, delta=DELTA, accountant="rdp")
        accepted: list = []
        for hist in requests:
            would_be = epsilon_of([*accepted, *hist], delta=DELTA, accountant="rdp")
            try:
                led.reserve("d", history=hist, delta=DELTA, accountant="rdp")
            except BudgetExceededError:
                assert would_be > total
            else:
                assert would_be <= total * (1 + 1e-9)
                accepted.extend(hist)
            assert led.spent("d") <= total * (1 + 1e-9)
        assert led.history("d") == [tuple(s) for s in accepted]


# -- concurrency and crashes -----------------------------------------------------------


def test_two_processes_fifty_charges_each_never_overspend(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    n_max = capacity(2.0)
    assert 10 < n_max < 90  # the budget runs out in the middle of the race
    with BudgetLedger(path) as led:
        led.set_budget("d", epsilon=2.0, delta=DELTA, accountant="rdp")
    results = race(str(path), "d", tmp_path, timeout=120)
    assert sum(r["ok"] for r in results) == n_max
    assert sum(r["refused"] for r in results) == 100 - n_max
    with BudgetLedger(path) as led:
        status = led.status("d")
        assert status.runs == n_max
        assert status.spent <= 2.0


_CRASHER = textwrap.dedent(
    """
    import sqlite3, sys, time
    from privdl.budget.ledger import BudgetLedger
    led = BudgetLedger(sys.argv[1])
    run = led.reserve("d", history=[(1.0, 0.01, 1000)], delta=1e-5, accountant="prv",
                      model_name="crashes")
    print(run, flush=True)
    # 'training': a write transaction on the ledger file left open when the process dies
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("UPDATE privdl_runs SET model_name = 'half-written'")
    time.sleep(600)
    """
)


def test_killed_run_keeps_its_reservation_and_ledger_stays_usable(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    with BudgetLedger(path) as led:
        led.set_budget("d", epsilon=3.0, delta=DELTA)
    proc = subprocess.Popen([sys.executable, "-c", _CRASHER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    run_id = proc.stdout.readline().strip()
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    with BudgetLedger(path) as led:
        record = led.run(run_id)
        assert record.status == "reserved"
        assert record.model_name == "crashes"  # the open transaction was rolled back
        status = led.status("d")
        assert status.reserved == 1
        assert status.spent == pytest.approx(
            opacus_epsilon([(1.0, 0.01, 1000)], delta=DELTA, accountant="prv"), rel=0.01
        )
        # the ledger accepts new charges (no stale lock) and still counts the crashed run
        led.reserve("d", history=[(2.0, 0.01, 100)], delta=DELTA, accountant="prv")
        assert led.status("d").runs == 2


# -- audit and imports -----------------------------------------------------------------


def test_budget_changes_write_audit_entries(tmp_path: Path) -> None:
    from privdl.audit.log import AuditLog
    from privdl.audit.verify import verify_audit_log
    from privdl.keys import Secret

    key = Secret.generate()
    log = AuditLog(tmp_path / "audit.jsonl", key=key)
    with BudgetLedger(tmp_path / "b.db") as led:
        led.set_budget("d", epsilon=1.0, delta=DELTA, accountant="rdp", audit_log=log)
        run = led.reserve("d", history=[(2.0, 0.01, 100)], delta=DELTA, accountant="rdp", audit_log=log)
        led.settle(run, history=[(2.0, 0.01, 50)], audit_log=log)
        with pytest.raises(BudgetExceededError):
            led.reserve("d", history=[(0.8, 0.05, 2000)], delta=DELTA, accountant="rdp", audit_log=log)
    lines = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines() if x]
    events = [(e["entry"]["event"], e["entry"]["outcome"]) for e in lines]
    assert events == [
        ("budget.set", "ok"),
        ("budget.reserve", "ok"),
        ("budget.settle", "ok"),
        ("budget.reserve", "refused"),
    ]
    verify_audit_log(tmp_path / "audit.jsonl", key=key)


def test_reading_a_ledger_does_not_import_torch(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    with BudgetLedger(path) as led:
        led.set_budget("d", epsilon=1.0, delta=DELTA)
    code = (
        "import sys; from privdl.budget.ledger import BudgetLedger; "
        f"print(BudgetLedger({str(path)!r}).spent('d'), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0.0", "False"]
