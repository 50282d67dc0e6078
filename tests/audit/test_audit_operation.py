"""The `operation` contract other modules rely on: one entry per operation, always."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from privdl.audit import AuditLog, operation, verify_audit_log
from privdl.errors import BudgetExceededError, KeyMissingError, PolicyNotMetError
from privdl.keys import Secret


def _entries(p: Path) -> list[dict]:
    return [json.loads(x)["entry"] for x in p.read_bytes().splitlines()]


def test_ok(log: AuditLog, tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    with operation(log, "anonymize", params={"k": 5}, inputs=[]) as op:
        out.write_text("x\n1\n")
        op.update(params={"k_achieved": 7}, outputs=[out], subjects=["tok-a", "tok-b"])
    [entry] = _entries(log.path)
    assert entry["outcome"] == "ok" and "error" not in entry
    assert entry["params"] == {"k": 5, "k_achieved": 7}
    assert entry["outputs"][0]["name"] == "out.csv"
    assert entry["subjects"]["n"] == 2
    assert op.entry is not None and op.entry["seq"] == 1


@pytest.mark.parametrize("exc", [PolicyNotMetError("k=5 not met"), BudgetExceededError("over")])
def test_refused(log: AuditLog, exc: Exception) -> None:
    with pytest.raises(type(exc)), operation(log, "anonymize"):
        raise exc
    [entry] = _entries(log.path)
    assert entry["outcome"] == "refused" and entry["error"] == type(exc).__name__


def test_failed_keeps_class_not_message(log: AuditLog) -> None:
    with pytest.raises(ValueError, match="Ana"), operation(log, "train"):
        raise ValueError("could not parse 'Ana Quintero-Vasquez'")
    [entry] = _entries(log.path)
    assert entry["outcome"] == "failed" and entry["error"] == "ValueError"
    assert "Ana" not in log.path.read_text()


def test_keyboard_interrupt_is_failed(log: AuditLog) -> None:
    with pytest.raises(KeyboardInterrupt), operation(log, "train"):
        raise KeyboardInterrupt
    assert _entries(log.path)[0]["error"] == "KeyboardInterrupt"


def test_failed_outputs_that_do_not_exist_are_left_out(log: AuditLog, tmp_path: Path) -> None:
    with pytest.raises(OSError), operation(log, "anonymize", outputs=[tmp_path / "o.csv"]):
        raise OSError
    assert "outputs" not in _entries(log.path)[0]


def test_refusal_without_exception(log: AuditLog) -> None:
    with operation(log, "risk") as op:
        op.outcome = "refused"
    assert _entries(log.path)[0]["outcome"] == "refused"


def test_none_is_a_no_op(tmp_path: Path) -> None:
    with operation(None, "anonymize", inputs=[tmp_path / "nope"]) as op:
        op.update(params={"k": 2}, subjects=["x"])
    assert op.entry is None
    assert list(tmp_path.iterdir()) == []


def test_path_takes_key_from_environment(
    tmp_path: Path, audit_key: Secret, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = tmp_path / "a.jsonl"
    ran = []
    with pytest.raises(KeyMissingError), operation(p, "anonymize"):
        ran.append(1)
    assert ran == []  # refused before any processing
    monkeypatch.setenv("PRIVDL_AUDIT_KEY", "hex:" + audit_key.reveal().hex())
    with operation(str(p), "anonymize"):
        pass
    with operation(p, "risk"):
        pass
    assert verify_audit_log(p, key=audit_key).entries == 2


def test_custom_key_env(tmp_path: Path, audit_key: Secret, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_AUDIT", "hex:" + audit_key.reveal().hex())
    with operation(tmp_path / "a.jsonl", "risk", key_env="MY_AUDIT"):
        pass
    assert verify_audit_log(tmp_path / "a.jsonl", key=audit_key).entries == 1


def test_nested_operations_write_one_entry_each(log: AuditLog) -> None:
    with operation(log, "train"), operation(log, "budget.spend"):
        pass
    assert [e["event"] for e in _entries(log.path)] == ["budget.spend", "train"]
