"""`privdl audit ...`: exit codes 0 / 1 (tampered) / 2 (usage, missing key) and outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from privdl.audit import AuditLog
from privdl.cli import main
from privdl.keys import Secret


@pytest.fixture
def env_key(monkeypatch: pytest.MonkeyPatch, audit_key: Secret) -> Secret:
    monkeypatch.setenv("PRIVDL_AUDIT_KEY", "hex:" + audit_key.reveal().hex())
    return audit_key


@pytest.fixture
def cli_log(tmp_path: Path, env_key: Secret) -> Path:
    log = AuditLog(tmp_path / "audit.jsonl", key=env_key, actor="cli", purpose="churn")
    for i in range(4):
        log.append(
            "anonymize",
            params={"k": 5, "i": i},
            subjects=[f"tok{i}"],
            outputs=[{"sha256": f"{i:064x}", "name": f"out{i}.csv"}],
        )
    return log.path


def test_verify_ok(cli_log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "verify", str(cli_log)]) == 0
    out = capsys.readouterr().out
    assert "OK, 4 entries" in out and out.count("\n") == 1


def test_verify_json(cli_log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "verify", str(cli_log), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["entries"] == 4


def test_verify_tampered_exit_1(cli_log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = cli_log.read_bytes().splitlines(keepends=True)
    cli_log.write_bytes(b"".join([lines[0], lines[2], lines[1], lines[3]]))
    assert main(["audit", "verify", str(cli_log)]) == 1
    err = capsys.readouterr().err
    assert "entry 2" in err and "reordered" in err and "Traceback" not in err


def test_unparseable_line_is_tampering(cli_log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = cli_log.read_bytes().splitlines(keepends=True)
    cli_log.write_bytes(b"".join([lines[0], b"{not json\n", *lines[1:]]))
    assert main(["audit", "verify", str(cli_log)]) == 1
    assert "entry 2: garbage" in capsys.readouterr().err


def test_missing_key_exit_2(
    cli_log: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PRIVDL_AUDIT_KEY")
    assert main(["audit", "verify", str(cli_log)]) == 2
    assert "PRIVDL_AUDIT_KEY" in capsys.readouterr().err


def test_audit_key_env_option(cli_log: Path, monkeypatch: pytest.MonkeyPatch, env_key: Secret) -> None:
    monkeypatch.delenv("PRIVDL_AUDIT_KEY")
    monkeypatch.setenv("OTHER_VAR", "hex:" + env_key.reveal().hex())
    assert main(["audit", "verify", str(cli_log), "--audit-key-env", "OTHER_VAR"]) == 0


def test_missing_log_exit_2(tmp_path: Path, env_key: Secret) -> None:
    assert main(["audit", "verify", str(tmp_path / "none.jsonl")]) == 2


def test_keygen_checkpoint_verify(cli_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "keys"
    assert main(["audit", "keygen", "--out", str(keys)]) == 0
    cp = tmp_path / "elsewhere" / "audit.checkpoint"
    cp.parent.mkdir()
    assert (
        main(["audit", "checkpoint", str(cli_log), "--signing-key", str(keys / "audit-signing.key"), "-o", str(cp)])
        == 0
    )
    assert cp.read_text().split("\n")[1] == "4"
    args = ["audit", "verify", str(cli_log), "--checkpoint", str(cp), "--public-key", str(keys / "audit-signing.pub")]
    assert main(args) == 0
    assert "checkpoint" in capsys.readouterr().out
    lines = cli_log.read_bytes().splitlines(keepends=True)
    cli_log.write_bytes(b"".join(lines[:3]))
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "entry 4" in err and "truncated" in err
    assert main(["audit", "verify", str(cli_log), "--checkpoint", str(cp)]) == 2  # no pub key


def test_checkpoint_refuses_tampered_log(cli_log: Path, tmp_path: Path) -> None:
    main(["audit", "keygen", "--out", str(tmp_path / "k")])
    cli_log.write_bytes(cli_log.read_bytes().replace(b'"k":5', b'"k":9', 1))
    out = tmp_path / "cp"
    code = main(
        [
            "audit",
            "checkpoint",
            str(cli_log),
            "--signing-key",
            str(tmp_path / "k" / "audit-signing.key"),
            "-o",
            str(out),
        ]
    )
    assert code == 1 and not out.exists()


def test_config_defaults_for_verify(cli_log: Path, tmp_path: Path) -> None:
    main(["audit", "keygen", "--out", str(tmp_path / "k")])
    main(
        [
            "audit",
            "checkpoint",
            str(cli_log),
            "--signing-key",
            str(tmp_path / "k" / "audit-signing.key"),
            "-o",
            str(tmp_path / "cp"),
        ]
    )
    (tmp_path / "privdl.toml").write_text('[audit]\npublic_key = "k/audit-signing.pub"\ncheckpoint = "cp"\n')
    cli_log.write_bytes(b"".join(cli_log.read_bytes().splitlines(keepends=True)[:2]))
    assert main(["audit", "verify", str(cli_log)]) == 1  # the configured checkpoint is used


def test_records(cli_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "records.csv"
    assert main(["audit", "records", str(cli_log), "-o", str(out)]) == 0
    assert "churn" in out.read_text()
    assert main(["audit", "records", str(cli_log), "-o", str(tmp_path / "r.json")]) == 0
    rec = json.loads((tmp_path / "r.json").read_text())
    assert rec["log"]["verified"] is True
    assert main(["audit", "records", str(cli_log), "-o", str(tmp_path / "r.xlsx")]) == 2


def test_records_of_tampered_log_fail(cli_log: Path, tmp_path: Path) -> None:
    cli_log.write_bytes(cli_log.read_bytes().replace(b'"k":5', b'"k":9', 1))
    out = tmp_path / "records.csv"
    assert main(["audit", "records", str(cli_log), "-o", str(out)]) == 1
    assert not out.exists()
    assert main(["audit", "records", str(cli_log), "-o", str(out), "--no-verify"]) == 0


def test_erase_request(cli_log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "erase-request", "tok2", "--log", str(cli_log)]) == 0
    out = capsys.readouterr().out
    assert "entry 5" in out and "out2.csv" in out and "tok2" not in out
    assert main(["audit", "erase-request", "tok1", "--log", str(cli_log), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [d["seq"] for d in report["direct"]] == [2]
    assert main(["audit", "verify", str(cli_log)]) == 0
