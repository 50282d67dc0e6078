"""Fixtures for the audit tests: keys, a small log, and a registry of secrets and raw
identifiers that no log, report or record may contain (checked by test_audit_zz_leaks)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privdl.audit import AuditLog
from privdl.keys import Secret

# raw identifiers of the fixture people: none may appear in any output
PEOPLE = [
    {"name": "Ana Quintero-Vasquez", "email": "ana.quintero@example.org", "age": 34},
    {"name": "Bogdan Ilyushenko", "email": "b.ilyushenko@example.net", "age": 51},
    {"name": "Chiamaka Obiora", "email": "chiamaka.obiora@example.com", "age": 27},
]
SECRETS: list[bytes] = []


def remember(key: Secret) -> Secret:
    SECRETS.append(key.reveal())
    return key


def secret_patterns() -> list[bytes]:
    out = []
    for raw in SECRETS:
        out += [raw, raw.hex().encode(), base64.b64encode(raw), base64.urlsafe_b64encode(raw)]
        out.append(base64.b64encode(raw).rstrip(b"="))
    return out


def identifier_patterns() -> list[bytes]:
    return [p[f].encode() for p in PEOPLE for f in ("name", "email")]


@pytest.fixture
def audit_key() -> Secret:
    return remember(Secret.generate())


@pytest.fixture
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.jsonl"


@pytest.fixture
def log(log_path: Path, audit_key: Secret, signing_key: Ed25519PrivateKey) -> AuditLog:
    return AuditLog(
        log_path,
        key=audit_key,
        signing_key=signing_key,
        actor="tester",
        purpose="testing",
        legal_basis="Art. 6(1)(f)",
        config=None,
    )


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("PRIVDL_AUDIT_KEY", "PRIVDL_ACTOR", "PRIVDL_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray ./privdl.toml is picked up
