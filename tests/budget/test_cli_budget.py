"""`privdl budget set|show|report` through the real CLI entry point."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from privdl.budget.ledger import BudgetLedger
from privdl.cli import main

DELTA = 1e-5


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    path = tmp_path / "budget.db"
    with BudgetLedger(path) as led:
        led.set_budget("adult", epsilon=4.0, delta=DELTA)
        run = led.reserve("adult", history=[(1.1, 0.01, 800)], delta=DELTA, model_name="lr")
        led.settle(run, history=[(1.1, 0.01, 800)])
        led.set_budget("digits", epsilon=2.0, delta=DELTA, accountant="rdp")
    return path


def test_show_json(ledger_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["budget", "show", str(ledger_path), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    by_id = {d["dataset_id"]: d for d in payload["datasets"]}
    assert set(by_id) == {"adult", "digits"}
    with BudgetLedger(ledger_path) as led:
        assert by_id["adult"]["spent"] == pytest.approx(led.spent("adult"))
    assert by_id["digits"]["remaining"] == 2.0


def test_show_one_dataset_table(ledger_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["budget", "show", str(ledger_path), "--dataset", "adult"]) == 0
    out = capsys.readouterr().out
    assert "adult" in out and "settled" in out and "lr" in out
    assert main(["budget", "show", str(ledger_path), "--dataset", "adult", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert len(payload["runs"]) == 1 and payload["runs"][0]["history"] == [[1.1, 0.01, 800]]


def test_set_then_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "new.db"
    assert main(["budget", "set", str(path), "--dataset", "d", "--epsilon", "3", "--delta", "1e-6"]) == 0
    assert "remaining=3" in capsys.readouterr().out
    with BudgetLedger(path) as led:
        assert led.budget("d") == (3.0, 1e-6)


def test_report_html(ledger_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report.html"
    assert main(["budget", "report", str(ledger_path), "--dataset", "adult", "-o", str(out)]) == 0
    html = out.read_text()
    assert "Privacy report: dataset adult" in html and "data:image/png;base64," in html


def test_errors_are_one_line_with_exit_codes(
    ledger_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # unknown dataset -> exit 2, one line, no traceback
    assert main(["budget", "show", str(ledger_path), "--dataset", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no budget" in err[0]
    # a missing ledger is not created by show
    missing = tmp_path / "missing.db"
    assert main(["budget", "show", str(missing)]) == 2
    assert not missing.exists()
    # a foreign SQLite file
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    assert main(["budget", "show", str(foreign)]) == 2
    assert "foreign.db" in capsys.readouterr().err
    # garbage bytes
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(os.urandom(4096))
    assert main(["budget", "report", str(garbage), "--dataset", "x", "-o", str(tmp_path / "r.html")]) == 2
    assert not (tmp_path / "r.html").exists()
    # lowering below spent: a failed check, exit 1
    assert (
        main(
            ["budget", "set", str(ledger_path), "--dataset", "adult", "--epsilon", "0.01", "--delta", "1e-5"]
        )
        == 1
    )
    # unknown report extension: exit 2 before any work
    assert (
        main(["budget", "report", str(ledger_path), "--dataset", "adult", "-o", str(tmp_path / "r.pdf")]) == 2
    )


def test_set_writes_an_audit_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PRIVDL_AUDIT_KEY", "hex:" + "ab" * 32)
    log = tmp_path / "audit.jsonl"
    path = tmp_path / "b.db"
    assert (
        main(
            [
                "budget",
                "set",
                str(path),
                "--dataset",
                "d",
                "--epsilon",
                "1",
                "--delta",
                "1e-5",
                "--audit-log",
                str(log),
            ]
        )
        == 0
    )
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert len(entries) == 1
    assert "budget.set" in json.dumps(entries[0])


@pytest.mark.parametrize(
    "bad",
    [
        ["--epsilon", "1", "--delta", "0.01"],  # above 1e-3 without --force
        ["--epsilon", "1", "--delta", "0"],
        ["--epsilon", "1", "--delta", "1"],
        ["--epsilon", "0", "--delta", "1e-5"],
        ["--epsilon", "-2", "--delta", "1e-5"],
        ["--epsilon", "inf", "--delta", "1e-5"],
    ],
)
def test_set_refuses_bad_budgets_with_exit_2_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: list[str]
) -> None:
    path = tmp_path / "new.db"
    assert main(["budget", "set", str(path), "--dataset", "d", *bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("delta" in err[0] or "epsilon" in err[0])
    assert not path.exists()


def test_set_a_large_delta_needs_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "new.db"
    args = ["budget", "set", str(path), "--dataset", "d", "--epsilon", "1", "--delta", "0.01"]
    assert main(args) == 2
    assert "--force" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="forced"):
        assert main([*args, "--force"]) == 0
    with BudgetLedger(path) as led:
        assert led.budget("d") == (1.0, 0.01)


def test_set_keeps_the_datasets_accountant(ledger_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # raising a budget without --accountant used to reset an rdp dataset to prv
    args = ["budget", "set", str(ledger_path), "--dataset", "digits", "--epsilon", "3", "--delta", "1e-5"]
    assert main(args) == 0
    with BudgetLedger(ledger_path) as led:
        assert led.accountant("digits") == "rdp"
    assert main([*args, "--accountant", "prv"]) == 0
    with BudgetLedger(ledger_path) as led:
        assert led.accountant("digits") == "prv"
