"""AuditLog: entries, the ratchet state across processes, locking, crashes, batches."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from privdl.audit import AuditLog, verify_audit_log
from privdl.audit.chain import GENESIS, initial_key, key_at, ratchet
from privdl.errors import KeyMissingError, SecurityError, TamperDetectedError, UsageError
from privdl.keys import Secret


def _lines(p: Path) -> list[dict]:
    return [json.loads(x)["entry"] for x in p.read_bytes().splitlines()]


def test_entry_fields(log: AuditLog, tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("a,b\n1,2\n3,4\n")
    entry = log.append(
        "anonymize",
        params={"k": 5, "epsilon": 1.5},
        inputs=[{"path": src, "rows": 2, "columns": 2}],
        outputs=[{"sha256": "ab" * 32, "rows": 2}],
    )
    assert entry["seq"] == 1 and entry["prev"] == GENESIS and entry["v"] == 1
    assert entry["actor"] == "tester" and entry["purpose"] == "testing"
    assert entry["legal_basis"] == "Art. 6(1)(f)"
    assert entry["privdl"] and entry["outcome"] == "ok"
    assert entry["time"].endswith("Z")
    assert entry["inputs"][0]["rows"] == 2 and entry["inputs"][0]["name"] == "in.csv"
    assert len(entry["inputs"][0]["sha256"]) == 64
    assert str(tmp_path) not in json.dumps(entry)  # no directories (they name people)
    assert _lines(log.path) == [entry]


def test_secrets_and_bytes_never_written(log: AuditLog, audit_key: Secret) -> None:
    other = Secret.generate()
    entry = log.append("key.rotate", params={"old": other, "raw": other.reveal()})
    text = log.path.read_text()
    assert entry["params"]["old"] == {"key_id": other.key_id}
    assert other.reveal().hex() not in text and audit_key.reveal().hex() not in text
    assert entry["params"]["raw"] == "<32 bytes>"


def test_error_must_be_a_class_name(log: AuditLog) -> None:
    with pytest.raises(UsageError):
        log.append("train", outcome="failed", error="could not parse 'Ana Q.'")
    assert log.append("train", outcome="failed", error=ValueError("x"))["error"] == "ValueError"
    with pytest.raises(UsageError):
        log.append("train", outcome="maybe")
    with pytest.raises(UsageError):
        log.append("Not An Event")


def test_chain_and_ratchet(log: AuditLog, audit_key: Secret) -> None:
    for i in range(3):
        log.append("risk", params={"i": i})
    raw = log.path.read_bytes().splitlines()
    entries = _lines(log.path)
    import hashlib

    assert [e["seq"] for e in entries] == [1, 2, 3]
    assert entries[1]["prev"] == hashlib.sha256(raw[0]).hexdigest()
    k1 = initial_key(audit_key, entries[0]["log"])
    assert key_at(k1, 3) == ratchet(ratchet(k1))
    state = json.loads(log.state_path.read_text())
    assert bytes.fromhex(state["next_key"]) == key_at(k1, 4)
    assert state["n"] == 3 and state["size"] == log.path.stat().st_size
    assert stat.S_IMODE(log.state_path.stat().st_mode) == 0o600


def test_continues_across_instances_and_without_key(log: AuditLog, audit_key: Secret) -> None:
    log.append("risk")
    AuditLog(log.path, key=audit_key).append("risk")
    AuditLog(log.path).append("risk")  # from the state file alone: no master key needed
    assert verify_audit_log(log.path, key=audit_key).entries == 3


def test_no_state_no_key_is_key_missing(tmp_path: Path) -> None:
    with pytest.raises(KeyMissingError):
        AuditLog(tmp_path / "a.jsonl")


def test_key_from_env_when_no_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = Secret.generate()
    monkeypatch.setenv("PRIVDL_AUDIT_KEY", "hex:" + key.reveal().hex())
    log = AuditLog(tmp_path / "a.jsonl")
    log.append("risk")
    assert verify_audit_log(log.path, key=key).entries == 1


def test_other_key_is_refused(log: AuditLog) -> None:
    log.append("risk")
    with pytest.raises(SecurityError):
        AuditLog(log.path, key=Secret.generate()).append("risk")


def test_lost_state_is_rebuilt_with_the_key(log: AuditLog, audit_key: Secret) -> None:
    log.append("risk")
    log.append("risk")
    log.state_path.unlink()
    AuditLog(log.path, key=audit_key).append("train")
    assert verify_audit_log(log.path, key=audit_key).entries == 3


def test_lost_state_over_tampered_log_is_refused(log: AuditLog, audit_key: Secret) -> None:
    log.append("risk")
    log.append("risk")
    log.state_path.unlink()
    lines = log.path.read_bytes().splitlines()
    log.path.write_bytes(lines[1] + b"\n")
    with pytest.raises(TamperDetectedError):
        AuditLog(log.path, key=audit_key).append("train")


def test_writer_refuses_truncated_log(log: AuditLog) -> None:
    log.append("risk")
    log.append("risk")
    lines = log.path.read_bytes().splitlines()
    log.path.write_bytes(lines[0] + b"\n")
    with pytest.raises(TamperDetectedError) as info:
        log.append("risk")
    assert info.value.kind == "truncated"


def test_writer_refuses_rewritten_last_entry(log: AuditLog) -> None:
    log.append("risk")
    data = log.path.read_bytes().replace(b'"outcome":"ok"', b'"outcome":"no"')
    log.path.write_bytes(data)
    with pytest.raises(TamperDetectedError):
        log.append("risk")


def test_crash_after_log_write_before_state(log: AuditLog, audit_key: Secret) -> None:
    log.append("risk")
    saved = log.state_path.read_bytes()
    log.append("risk")
    log.state_path.write_bytes(saved)  # as if the process died before replacing the state
    log.append("train")
    entries = _lines(log.path)
    assert [e["seq"] for e in entries] == [1, 2, 3]
    assert verify_audit_log(log.path, key=audit_key).entries == 3


def test_torn_tail_is_repaired_and_recorded(log: AuditLog, audit_key: Secret) -> None:
    log.append("risk")
    saved = log.state_path.read_bytes()
    log.append("train")
    lines = log.path.read_bytes().splitlines()
    log.path.write_bytes(lines[0] + b"\n" + lines[1][:40])  # died mid-write
    log.state_path.write_bytes(saved)
    result = verify_audit_log(log.path, key=audit_key)
    assert result.entries == 1 and result.incomplete_tail == 40
    log.append("train")
    entries = _lines(log.path)
    assert [e["event"] for e in entries] == ["risk", "audit.tail_discarded", "train"]
    assert entries[1]["params"]["bytes"] == 40
    assert verify_audit_log(log.path, key=audit_key).entries == 3


def test_garbage_tail_is_refused_by_writer(log: AuditLog) -> None:
    log.append("risk")
    with log.path.open("ab") as fh:
        fh.write(b"\x00\x01binary")
    with pytest.raises(TamperDetectedError):
        log.append("risk")


def test_batch_and_append_many(log: AuditLog, audit_key: Secret) -> None:
    with log.batch():
        for i in range(10):
            log.append("score", params={"i": i})
        assert log.path.stat().st_size == 0  # buffered until the batch ends
    entries = log.append_many([{"event": "score", "params": {"i": i}} for i in range(5)])
    assert [e["seq"] for e in entries] == list(range(11, 16))
    assert verify_audit_log(log.path, key=audit_key).entries == 15
    assert len(log) == 15


def test_batch_is_written_when_block_raises(log: AuditLog, audit_key: Secret) -> None:
    with pytest.raises(RuntimeError), log.batch():
        log.append("score")
        raise RuntimeError
    assert verify_audit_log(log.path, key=audit_key).entries == 1


def _worker(path: str, key_hex: str, n: int) -> None:
    log = AuditLog(path, key=Secret(bytes.fromhex(key_hex)), actor=f"w{os.getpid()}")
    for i in range(n):
        log.append("score", params={"i": i})


def test_concurrent_writers_are_serialized(log_path: Path, audit_key: Secret) -> None:
    AuditLog(log_path, key=audit_key).append("risk")  # create the log and its state
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_worker, args=(str(log_path), audit_key.reveal().hex(), 25)) for _ in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    result = verify_audit_log(log_path, key=audit_key)
    assert result.entries == 101
    assert len({e["actor"] for e in _lines(log_path)}) == 5


def test_fingerprints(tmp_path: Path, log: AuditLog) -> None:
    d = tmp_path / "model"
    d.mkdir()
    (d / "w.bin").write_bytes(b"\x00" * 10)
    frame = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    entry = log.append(
        "train",
        inputs=[frame, np.zeros((4, 3)), tmp_path / "missing.csv"],
        outputs=[d],
    )
    table, array, missing = entry["inputs"]
    assert (table["rows"], table["columns"], table["kind"]) == (3, 2, "table")
    assert (array["rows"], array["columns"]) == (4, 3)
    assert missing == {"name": "missing.csv", "missing": True}
    assert entry["outputs"][0]["kind"] == "dir" and entry["outputs"][0]["files"] == 1


def test_checkpoint_needs_signing_key(log_path: Path, audit_key: Secret) -> None:
    with pytest.raises(KeyMissingError):
        AuditLog(log_path, key=audit_key).checkpoint()


def test_actor_from_environment_and_config(
    tmp_path: Path, audit_key: Secret, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "privdl.toml").write_text(
        '[audit]\nactor = "config-actor"\npurpose = "churn"\nlegal_basis = "Art. 6(1)(b)"\n'
    )
    log = AuditLog(tmp_path / "a.jsonl", key=audit_key)
    entry = log.append("risk")
    assert (entry["actor"], entry["purpose"], entry["legal_basis"]) == (
        "config-actor",
        "churn",
        "Art. 6(1)(b)",
    )
    monkeypatch.setenv("PRIVDL_ACTOR", "env-actor")
    assert AuditLog(tmp_path / "a.jsonl").append("risk")["actor"] == "env-actor"


def test_writer_forgets_the_master_key(log: AuditLog, audit_key: Secret) -> None:
    assert audit_key.reveal().hex() not in repr(log)
    log.append("risk")
    held = [v for v in vars(log).values() if isinstance(v, Secret)]
    assert held == []  # only the ratchet state is kept once the log exists
