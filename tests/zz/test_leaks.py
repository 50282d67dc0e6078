"""Suite-wide leak check: runs last (folder ``zz``) and greps what the session wrote.

* No file under pytest's base temporary folder holds the bytes of a key made by the
  shared key fixtures or the audit tests (raw, hex or base64), except the key files
  themselves and the audit writer's state file (which holds the ratchet key by design).
* No log, report or record (``*.html``, ``*.md``, ``*.json``, audit ``*.jsonl``,
  ``records*``) holds a raw identifier of the fixture export (e-mails, full names,
  phone numbers of tests/data/users_small.csv).
"""

from __future__ import annotations

import base64
from pathlib import Path

import pandas as pd
import pytest

from tests.audit.conftest import SECRETS as AUDIT_SECRETS
from tests.conftest import DATA, SESSION_KEYS

KEY_FILES = {".key", ".state", ".pem"}
REPORT_SUFFIXES = {".html", ".md", ".json"}


def _key_patterns() -> list[bytes]:
    out: list[bytes] = []
    for raw in [*SESSION_KEYS, *AUDIT_SECRETS]:
        out += [
            raw,
            raw.hex().encode(),
            base64.b64encode(raw).rstrip(b"="),
            base64.urlsafe_b64encode(raw).rstrip(b"="),
        ]
    return out


def _identifiers() -> list[bytes]:
    users = pd.read_csv(DATA / "users_small.csv", dtype=str)
    values = set(users["email"]) | set(users["full_name"]) | set(users["phone"])
    return sorted(v.encode() for v in values)


def _is_evidence(path: Path) -> bool:
    name = path.name
    if path.suffix in REPORT_SUFFIXES:
        return True
    if name.startswith("records"):
        return True
    return path.suffix == ".jsonl" and "audit" in name


def _files(base: Path) -> list[Path]:
    return [p for p in base.rglob("*") if p.is_file() and not p.is_symlink()]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # a socket, or a file a test removed after the listing
        return b""


@pytest.fixture(scope="module")
def session_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    files = _files(tmp_path_factory.getbasetemp())
    if not SESSION_KEYS:
        pytest.skip("runs after the rest of the suite (pytest with no arguments)")
    return files


def test_the_suite_made_keys_and_files(session_files):
    # the checks below would pass vacuously without them
    assert len(SESSION_KEYS) >= 5 and len(session_files) >= 50


def test_no_key_bytes_in_any_file(session_files):
    patterns = _key_patterns()
    leaks = []
    for path in session_files:
        if path.suffix in KEY_FILES or path.name in ("secret.he",) or "key" in path.name:
            continue
        data = _read(path)
        if any(p in data for p in patterns):
            leaks.append(str(path))
    assert not leaks, f"key material found in {leaks[:5]}"


def test_no_raw_identifier_in_logs_reports_or_records(session_files):
    identifiers = _identifiers()
    evidence = [p for p in session_files if _is_evidence(p)]
    assert len(evidence) >= 10
    leaks = []
    for path in evidence:
        data = _read(path)
        hit = next((v for v in identifiers if v in data), None)
        if hit is not None:
            leaks.append(str(path))
    assert not leaks, f"raw identifiers found in {leaks[:5]}"
