"""`privdl audit erase-request` with a raw identifier: the pseudonym is derived, never shown."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest

from privdl.keys import Secret


@pytest.fixture
def released(tmp_path, key):
    """The pseudonymization key and the audit chain key, each in its own file."""
    key_file = key.to_file(tmp_path / "pseudonym.key")
    chain = Secret.generate()
    chain_file = chain.to_file(tmp_path / "audit-chain.key")
    return tmp_path, key_file, chain_file, tmp_path / "audit.jsonl", chain


def _anonymize(run_cli, users_csv, tmp_path, key_file, log, monkeypatch, chain):
    monkeypatch.setenv("PRIVDL_AUDIT_KEY", "hex:" + chain.reveal().hex())
    code, _, err = run_cli(
        "anonymize", users_csv, "-o", tmp_path / "released.csv", "--id", "user_id",
        "--id", "email:pseudonymize:normalize=email", "--drop", "full_name", "--drop", "phone",
        "--drop", "ip", "--keep", "birth_date", "--keep", "signup_date", "--key-file", key_file,
        "--audit-log", log,
    )  # fmt: skip
    assert code == 0, err
    monkeypatch.delenv("PRIVDL_AUDIT_KEY")


def test_raw_identifier_finds_the_steps_and_is_never_shown(run_cli, users_csv, released, monkeypatch):
    tmp, key_file, chain_file, log, chain = released
    _anonymize(run_cli, users_csv, tmp, key_file, log, monkeypatch, chain)
    raw = str(pd.read_csv(users_csv)["user_id"].iloc[5])
    code, out, err = run_cli(
        "audit", "erase-request", raw, "--identifier", "--key-file", key_file,
        "--log", log, "--audit-key-file", chain_file,
    )  # fmt: skip
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith("Erasure request recorded as audit entry")
    assert any(
        line.startswith("Entry ") and "(anonymize, " in line and "released.csv" in line for line in lines
    )
    assert all(line.endswith(".") for line in lines)  # sentences, not a table
    assert raw not in out + err and raw not in log.read_text()
    # a release whose subject column is the e-mail: the same person, typed differently,
    # is found because the logged rule normalizes e-mails before the HMAC
    policy = tmp / "by-email.toml"
    policy.write_text(
        'subject_id = "email"\ndrop = ["full_name", "phone", "ip"]\n'
        '[identifiers]\nuser_id = "pseudonymize"\nemail = { transform = "pseudonymize", normalize = "email" }\n'
    )
    monkeypatch.setenv("PRIVDL_AUDIT_KEY", "hex:" + chain.reveal().hex())
    code, _, err = run_cli(
        "anonymize", users_csv, "-o", tmp / "by-email.csv", "--policy", policy, "--key-file", key_file,
        "--audit-log", log,
    )  # fmt: skip
    assert code == 0, err
    email = str(pd.read_csv(users_csv)["email"].iloc[5]).upper() + " "
    monkeypatch.setattr("sys.stdin", io.StringIO(email + "\n"))
    code, out, err = run_cli(
        "audit", "erase-request", "-", "--identifier", "--column", "email", "--key-file", key_file,
        "--log", log, "--json",
    )  # fmt: skip
    assert code == 0, err
    found = json.loads(out)["direct"]
    assert [(d["event"], d["outputs"][0]["name"]) for d in found] == [("anonymize", "by-email.csv")]
    assert email.strip().lower() not in (out + err + log.read_text()).lower()


def test_wrong_key_is_one_line_exit_2(run_cli, users_csv, released, monkeypatch, tmp_path):
    tmp, key_file, chain_file, log, chain = released
    _anonymize(run_cli, users_csv, tmp, key_file, log, monkeypatch, chain)
    other = Secret.generate().to_file(tmp_path / "other.key")
    code, out, err = run_cli(
        "audit", "erase-request", "u123", "--identifier", "--key-file", other, "--log", log,
        "--audit-key-file", chain_file,
    )  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no anonymize entry" in err
    assert "u123" not in err + out
    # a pseudonymization key without --identifier is a usage error
    code, _, err = run_cli("audit", "erase-request", "TOKEN", "--key-file", other, "--log", log)
    assert code == 2 and "--identifier" in err
