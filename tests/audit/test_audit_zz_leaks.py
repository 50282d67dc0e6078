"""No log, report or record holds key bytes or the raw identifiers of the fixture people.

Runs last among the audit tests (file name) and greps every file the session wrote
under pytest's base temporary folder: the audit tests' logs, checkpoints, records,
erasure output and captured CLI output, plus anything earlier test folders left there.
Key files (``*.key``) and writer state files (``*.state``, which hold the ratchet key
by design, mode 0600) are the only exclusions.
"""

from __future__ import annotations

import hmac
import re
from pathlib import Path

import pandas as pd
import pytest

from privdl.audit import AuditLog, operation, verify_audit_log
from privdl.audit.erasure import erase_request
from privdl.audit.records import build_records, write_records
from privdl.cli import main
from privdl.errors import PolicyNotMetError
from privdl.keys import Secret
from tests.audit.conftest import PEOPLE, identifier_patterns, remember, secret_patterns

_HEX = re.compile(rb"[0-9a-fA-F]{64,}")
_B64 = re.compile(rb"[A-Za-z0-9+/_-]{43,}={0,2}")


def test_end_to_end_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A realistic run with identifiers in the data, failures that quote them, and every
    audit output written to disk for the grep below."""
    audit_key = remember(Secret.generate())
    data_key = remember(Secret.generate())
    monkeypatch.setenv(
        "PRIVDL_AUDIT_KEY", "base64:" + __import__("base64").b64encode(audit_key.reveal()).decode()
    )
    raw = tmp_path / "people.csv"
    frame = pd.DataFrame(PEOPLE)
    frame.to_csv(raw, index=False)
    token_key = data_key.derive("pseudonymize").reveal()
    tokens = [hmac.new(token_key, p["email"].encode(), "sha256").hexdigest()[:32] for p in PEOPLE]
    released = tmp_path / "released.csv"
    log_path = tmp_path / "audit.jsonl"
    log = AuditLog(log_path, key=audit_key, actor="analyst", purpose="churn")
    with operation(
        log,
        "anonymize",
        params={"key": data_key, "k": 2, "policy": {"identifiers": ["name", "email"]}},
        inputs=[{"path": raw, "rows": 3, "columns": 3}],
    ) as op:
        pd.DataFrame({"id": tokens, "age": [30, 50, 20]}).to_csv(released, index=False)
        op.update(outputs=[released], subjects=tokens, params={"key_id": data_key.key_id})
    with pytest.raises(PolicyNotMetError), operation(log, "anonymize", inputs=[frame]):
        raise PolicyNotMetError(f"row of {PEOPLE[0]['name']} cannot be generalized")
    with pytest.raises(ValueError), operation(str(log_path), "train"):
        raise ValueError(f"bad value {PEOPLE[1]['email']}")
    erase_request(log_path, tokens[2], key=audit_key)
    write_records(build_records(log_path, verified=verify_audit_log(log_path)), tmp_path / "records.json")
    main(["audit", "keygen", "--out", str(tmp_path / "keys")])
    main(
        [
            "audit",
            "checkpoint",
            str(log_path),
            "--signing-key",
            str(tmp_path / "keys/audit-signing.key"),
            "-o",
            str(tmp_path / "audit.checkpoint"),
        ]
    )
    main(["audit", "records", str(log_path), "-o", str(tmp_path / "records.csv")])
    main(["audit", "erase-request", tokens[0], "--log", str(log_path), "--json"])
    main(
        [
            "audit",
            "verify",
            str(log_path),
            "--checkpoint",
            str(tmp_path / "audit.checkpoint"),
            "--public-key",
            str(tmp_path / "keys/audit-signing.pub"),
            "--json",
        ]
    )
    captured = capsys.readouterr()
    (tmp_path / "cli-output.txt").write_text(captured.out + captured.err)
    assert verify_audit_log(log_path).entries == 5


def _outputs(base: Path) -> list[Path]:
    skip_suffixes = {".key", ".state", ".pem"}
    return [
        p
        for p in base.rglob("*")
        if p.is_file()
        and p.suffix not in skip_suffixes
        and p.name != "people.csv"
        and not p.name.endswith(".tmp")
    ]


def test_no_key_bytes_or_identifiers_in_outputs(tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.getbasetemp()
    files = _outputs(base)
    assert any(p.name == "audit.jsonl" for p in files), "the audit tests wrote no logs"
    secrets = set(secret_patterns())
    hexes = {p.lower() for p in secrets if _HEX.fullmatch(p)}
    b64s = {p for p in secrets if _B64.fullmatch(p)}
    raws = [p for p in secrets if len(p) == 32 and not _HEX.fullmatch(p)]
    idents = identifier_patterns()
    leaks = []
    for path in files:
        data = path.read_bytes()
        for run in _HEX.findall(data):
            low = run.lower()
            if any(h in low for h in hexes if len(low) >= len(h)):
                leaks.append((path, "key (hex)"))
        for run in _B64.findall(data):
            if any(b in run for b in b64s if len(run) >= len(b)):
                leaks.append((path, "key (base64)"))
        if any(r in data for r in raws):
            leaks.append((path, "key (raw)"))
        if any(i in data for i in idents):
            leaks.append((path, "raw identifier"))
    assert not leaks, leaks
