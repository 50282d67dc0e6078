"""Evidence first: a log that cannot take an entry stops an operation before any work,
outputs appear only after their entry is written, and runs that commit resources
write a ``started`` entry first."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from privdl.audit import AuditLog, operation, verify_audit_log
from privdl.audit.records import build_records
from privdl.errors import (
    InputError,
    PolicyNotMetError,
    SecurityError,
    TamperDetectedError,
)
from privdl.io import STAGE_PREFIX, write_table
from privdl.keys import Secret


def _modes_bind() -> bool:
    """Whether a read-only file stops this process (not for root with CAP_DAC_OVERRIDE)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "probe"
        probe.write_bytes(b"")
        probe.chmod(0o444)
        try:
            os.close(os.open(probe, os.O_WRONLY))
        except PermissionError:
            return True
        return False


needs_non_root = pytest.mark.skipif(not _modes_bind(), reason="file modes do not stop this user (root)")


def _entries(p: Path) -> list[dict]:
    return [json.loads(x)["entry"] for x in p.read_bytes().splitlines()]


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(STAGE_PREFIX) or "privdl-tmp" in p.name]


def _two_entries(log: AuditLog) -> None:
    log.append("risk")
    log.append("risk")


# -- what a log that cannot take an entry looks like -----------------------------------
def _other_key(log: AuditLog) -> AuditLog:
    return AuditLog(log.path, key=Secret.generate())


def _other_key_no_state(log: AuditLog) -> AuditLog:
    log.state_path.unlink()
    return AuditLog(log.path, key=Secret.generate())


def _last_entry_torn(log: AuditLog) -> AuditLog:
    data = log.path.read_bytes()
    log.path.write_bytes(data[: len(data) - 60])  # the last line cut in half
    return log


def _half_line_appended(log: AuditLog) -> AuditLog:
    line = log.path.read_bytes().splitlines()[-1]
    with log.path.open("ab") as fh:
        fh.write(line[len(line) // 2 :])  # half an entry, not the start of one
    return log


def _state_is_a_folder(log: AuditLog) -> AuditLog:
    log.state_path.unlink()
    log.state_path.mkdir()
    return log


def _log_is_a_folder(log: AuditLog) -> AuditLog:
    log.path.unlink()
    log.path.mkdir()
    return log


def _read_only_file(log: AuditLog) -> AuditLog:
    log.path.chmod(0o444)
    return log


def _read_only_folder(log: AuditLog) -> AuditLog:
    log.path.parent.chmod(0o555)
    return log


BROKEN = [
    pytest.param(_other_key, SecurityError, id="other-key"),
    pytest.param(_other_key_no_state, SecurityError, id="other-key-no-state"),
    pytest.param(_last_entry_torn, TamperDetectedError, id="last-entry-torn"),
    pytest.param(_half_line_appended, TamperDetectedError, id="half-line-appended"),
    pytest.param(_state_is_a_folder, InputError, id="state-is-a-folder"),
    pytest.param(_log_is_a_folder, InputError, id="log-is-a-folder"),
    pytest.param(_read_only_file, InputError, id="read-only-file", marks=needs_non_root),
    pytest.param(_read_only_folder, InputError, id="read-only-folder", marks=needs_non_root),
]


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "logs"
    folder.mkdir()
    yield folder
    folder.chmod(0o755)  # let pytest clean up after the read-only case


@pytest.mark.parametrize(("breakage", "error"), BROKEN)
def test_check_appendable_refuses_and_names_the_log(
    log_dir: Path, audit_key: Secret, breakage, error
) -> None:
    log = AuditLog(log_dir / "audit.jsonl", key=audit_key)
    _two_entries(log)
    broken = breakage(log)
    with pytest.raises(error) as info:
        broken.check_appendable()
    assert str(log.path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(("breakage", "error"), BROKEN)
def test_operation_refuses_before_the_block_runs(
    log_dir: Path, tmp_path: Path, audit_key: Secret, breakage, error
) -> None:
    log = AuditLog(log_dir / "audit.jsonl", key=audit_key)
    _two_entries(log)
    broken = breakage(log)
    ran = []
    with pytest.raises(error), operation(broken, "anonymize") as op:
        ran.append(1)
        (tmp_path / "out.csv").write_text("x\n", encoding="utf-8")
        op.update(outputs=[tmp_path / "out.csv"])
    assert ran == [] and not (tmp_path / "out.csv").exists()


def test_check_appendable_on_a_good_log_appends_nothing(log: AuditLog, audit_key: Secret) -> None:
    _two_entries(log)
    before = log.path.read_bytes()
    log.check_appendable()
    assert log.path.read_bytes() == before
    assert sorted(p.name for p in log.path.parent.iterdir()) == ["audit.jsonl", "audit.jsonl.state"]


def test_a_crash_tail_is_repaired_not_refused(log: AuditLog, audit_key: Secret) -> None:
    # what a crash mid-append leaves (the start of an entry) is repaired and recorded
    _two_entries(log)
    line = log.path.read_bytes().splitlines()[-1]
    with log.path.open("ab") as fh:
        fh.write(line[:40])
    log.check_appendable()
    assert [e["event"] for e in _entries(log.path)] == ["risk", "risk", "audit.tail_discarded"]
    assert verify_audit_log(log.path, key=audit_key).entries == 3


# -- staged outputs --------------------------------------------------------------------
def test_staged_output_appears_after_its_entry_with_its_fingerprint(log: AuditLog, tmp_path: Path) -> None:
    import pandas as pd

    target = tmp_path / "released.csv"
    with operation(log, "anonymize") as op:
        staged = op.stage_table(target)
        write_table(pd.DataFrame({"a": [1, 2]}), staged)
        assert not target.exists()  # nothing visible before the entry
    [entry] = _entries(log.path)
    assert target.read_text(encoding="utf-8") == "a\n1\n2\n"
    import hashlib

    assert entry["outputs"] == [
        {"name": "released.csv", "sha256": hashlib.sha256(target.read_bytes()).hexdigest(), "bytes": 6}
    ]
    assert _leftovers(tmp_path) == []


def test_entry_that_cannot_be_written_leaves_no_output(log: AuditLog, tmp_path: Path) -> None:
    # the log breaks after the check (another process wrote garbage to it): no entry,
    # so the output written in the block never appears
    out, report = tmp_path / "out.csv", tmp_path / "report.json"
    out.write_text("old\n", encoding="utf-8")
    with pytest.raises(TamperDetectedError), operation(log, "anonymize") as op:
        op.stage(out).write_text("new\n", encoding="utf-8")
        op.stage(report).write_text("{}", encoding="utf-8")
        with log.path.open("ab") as fh:
            fh.write(b"\x00garbage\n")
    assert out.read_text(encoding="utf-8") == "old\n"  # not replaced
    assert not report.exists() and _leftovers(tmp_path) == []


@needs_non_root
def test_log_made_read_only_during_the_block_leaves_no_output(log: AuditLog, tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    with pytest.raises(InputError, match="cannot be appended"), operation(log, "anonymize") as op:
        op.stage(out).write_text("x\n", encoding="utf-8")
        log.path.chmod(0o444)
    assert not out.exists() and _leftovers(tmp_path) == []


def test_failed_block_removes_staged_outputs_and_records_none(log: AuditLog, tmp_path: Path) -> None:
    with pytest.raises(ValueError), operation(log, "anonymize") as op:
        op.stage(tmp_path / "a.csv").write_text("x\n", encoding="utf-8")
        raise ValueError("boom")
    [entry] = _entries(log.path)
    assert entry["outcome"] == "failed" and "outputs" not in entry
    assert not (tmp_path / "a.csv").exists() and _leftovers(tmp_path) == []


def test_refusal_keeps_only_outputs_staged_to_explain_it(log: AuditLog, tmp_path: Path) -> None:
    with pytest.raises(PolicyNotMetError), operation(log, "risk") as op:
        op.stage(tmp_path / "table.csv").write_text("x\n", encoding="utf-8")
        op.stage(tmp_path / "report.json", keep_if_refused=True).write_text("{}", encoding="utf-8")
        raise PolicyNotMetError("k not met")
    [entry] = _entries(log.path)
    assert [o["name"] for o in entry["outputs"]] == ["report.json"]
    assert (tmp_path / "report.json").exists() and not (tmp_path / "table.csv").exists()
    assert _leftovers(tmp_path) == []


def test_without_a_log_outputs_are_still_all_or_nothing(tmp_path: Path) -> None:
    with operation(None, "anonymize") as op:
        op.stage(tmp_path / "a.csv").write_text("a\n", encoding="utf-8")
        op.stage(tmp_path / "b.json").write_text("{}", encoding="utf-8")
        assert not (tmp_path / "a.csv").exists()
    assert (tmp_path / "a.csv").exists() and (tmp_path / "b.json").exists()
    with pytest.raises(OSError), operation(None, "anonymize") as op:
        op.stage(tmp_path / "c.csv").write_text("c\n", encoding="utf-8")
        raise OSError("disk full")
    assert not (tmp_path / "c.csv").exists() and _leftovers(tmp_path) == []


def test_staged_folder_of_keys_is_not_fingerprinted(log: AuditLog, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    with operation(log, "he.keygen") as op:
        folder = op.stage(keys, folder=True, record=False)
        (folder / "secret.he").write_bytes(b"secret material")
        (folder / "secret.he").chmod(0o600)
        assert not keys.exists()
    assert (keys / "secret.he").read_bytes() == b"secret material"
    assert (keys / "secret.he").stat().st_mode & 0o777 == 0o600
    assert "outputs" not in _entries(log.path)[0] and _leftovers(tmp_path) == []


# -- started entries -------------------------------------------------------------------
def test_started_entry_is_written_first_and_named_by_the_final_one(log: AuditLog, audit_key: Secret) -> None:
    with operation(log, "train", params={"dataset_id": "ds", "epsilon": 2.0}, started=True) as op:
        [started] = _entries(log.path)  # written before the work
        assert started["outcome"] == "started" and started["params"]["dataset_id"] == "ds"
        op.update(params={"run_id": "r1"})
    started, final = _entries(log.path)
    assert final["outcome"] == "ok" and final["started"] == started["seq"]
    assert final["params"]["run_id"] == "r1"
    result = verify_audit_log(log.path, key=audit_key)
    assert result.unfinished == () and "never finished" not in result.summary()


def test_unfinished_operation_is_a_notice_not_tampering(log: AuditLog, audit_key: Secret) -> None:
    log.append("risk")
    log.append("train", outcome="started", params={"dataset_id": "ds"})
    log.append("train", outcome="started", params={"dataset_id": "ds"})
    log.append("train", outcome="ok", started=3)
    result = verify_audit_log(log.path, key=audit_key)
    assert result.unfinished == (2,)
    assert "NOTE: 1 operation started and never finished (entry 2" in result.summary()
    records = build_records(log.path, config={}, verified=result)
    [activity] = records["activities"]
    # the finished run counts once, under its final outcome; the killed one as started
    assert activity["operations"] == {"risk": 1, "train": 2}
    assert activity["outcomes"] == {"ok": 2, "started": 1}


def test_started_must_be_a_seq(log: AuditLog) -> None:
    from privdl.errors import UsageError

    with pytest.raises(UsageError):
        log.append("train", started=0)
