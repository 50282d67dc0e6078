"""Art. 30 records: config facts plus the measures the log shows were applied."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from privdl.audit import AuditLog, verify_audit_log
from privdl.audit.records import CSV_FIELDS, build_records, write_records
from privdl.errors import InputError
from privdl.keys import Secret

CONFIG = """
[controller]
name = "Example GmbH"
contact = "privacy@example.com"

[dpo]
name = "Dana P. Officer"
contact = "dpo@example.com"

[[purposes]]
id = "churn-model"
description = "Predict churn to plan retention offers"
legal_basis = "Art. 6(1)(f) legitimate interests"
data_subjects = ["customers"]
personal_data = ["contract data", "usage data"]
recipients = ["internal analytics team"]
transfers = [{ country = "US", recipient = "Cloud host", safeguard = "SCCs" }]
retention = "24 months after contract end"

[[purposes]]
id = "not-started"
description = "Configured but not run yet"

[retention]
default = "36 months"
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    p = tmp_path / "privdl.toml"
    p.write_text(CONFIG)
    return p


@pytest.fixture
def filled(tmp_path: Path, audit_key: Secret) -> AuditLog:
    log = AuditLog(tmp_path / "audit.jsonl", key=audit_key, actor="analyst", purpose="churn-model")
    log.append(
        "anonymize",
        params={
            "policy": {
                "identifiers": ["email", "name"],
                "quasi_identifiers": ["age", "zip"],
                "sensitive": ["plan"],
                "k": 5,
            },
            "key_id": "kid_00112233aabbccdd",
        },
    )
    log.append("train", params={"epsilon": 3.0, "delta": 1e-5})
    log.append("train", outcome="refused", error="BudgetExceededError", params={"epsilon": 99.0})
    log.append("he.score", params={"he_params": {"poly_modulus_degree": 8192}})
    AuditLog(log.path, purpose=None).append("risk", params={"k": 2})
    return log


def test_records_fields(filled: AuditLog, config: Path, audit_key: Secret) -> None:
    rec = build_records(filled.path, config=config, verified=verify_audit_log(filled.path, key=audit_key))
    assert rec["controller"]["name"] == "Example GmbH"
    assert rec["dpo"]["contact"] == "dpo@example.com"
    assert rec["log"]["verified"] and rec["log"]["entries"] == 5
    acts = {a["activity"]: a for a in rec["activities"]}
    assert set(acts) == {"churn-model", "not-started", "(no purpose recorded)"}
    churn = acts["churn-model"]
    assert churn["legal_basis"] == ["Art. 6(1)(f) legitimate interests"]
    assert churn["data_subject_categories"] == ["customers"]
    assert "contract data" in churn["personal_data_categories"]
    assert any(c.startswith("direct identifiers") and "email" in c for c in churn["personal_data_categories"])
    assert any("quasi-identifiers" in c and "zip" in c for c in churn["personal_data_categories"])
    measures = " | ".join(churn["security_measures"])
    assert "kid_00112233aabbccdd" in measures
    assert "k = 5" in measures
    assert "DP (train): epsilon = 3 at delta = 1e-05" in measures
    assert "99.0" not in measures  # a refused run applied nothing
    assert "polynomial modulus degree 8192" in measures
    assert churn["third_country_transfers"] == ["country: US, recipient: Cloud host, safeguard: SCCs"]
    assert churn["retention"] == "24 months after contract end"
    assert churn["operations"] == {"anonymize": 1, "he.score": 1, "train": 2}
    assert acts["not-started"]["retention"] == "36 months"
    assert acts["(no purpose recorded)"]["operations"] == {"risk": 1}


def test_write_csv_and_json(filled: AuditLog, config: Path, tmp_path: Path) -> None:
    rec = build_records(filled.path, config=config)
    write_records(rec, tmp_path / "r.csv")
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert list(rows[0]) == CSV_FIELDS
    assert {r["activity"] for r in rows} >= {"churn-model"}
    assert all(r["log_verified"] == "NO" for r in rows)
    write_records(rec, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["activities"]
    with pytest.raises(InputError):
        write_records(rec, tmp_path / "r.txt")
    assert not (tmp_path / "r.txt").exists()


def test_records_without_config(filled: AuditLog) -> None:
    rec = build_records(filled.path, config={})
    assert rec["controller"] == {"name": None, "contact": None, "representative": None}
    assert rec["activities"]


def test_bad_config_is_input_error(filled: AuditLog, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[controller\nname=")
    with pytest.raises(InputError):
        build_records(filled.path, config=bad)
    with pytest.raises(InputError):
        build_records(filled.path, config=tmp_path / "missing.toml")


def test_records_read_as_sentences(tmp_path: Path, audit_key: Secret) -> None:
    """No Python dict reprs; HE key ids are encryption keys; each epsilon says what it is."""
    log = AuditLog(tmp_path / "audit.jsonl", key=audit_key, purpose="retention")
    rules = [{"column": "email", "normalize": "email", "transform": "pseudonymize"}, {"column": "user_id"}]
    log.append("anonymize", params={"key_id": "kid_aaaa", "policy": {"identifiers": rules, "k": 5}})
    log.append("budget.set", params={"dataset_id": "ds", "epsilon": 8.0, "delta": 1e-5})
    log.append(
        "train", params={"dataset_id": "ds", "epsilon": 2.0, "epsilon_spent": 1.9946, "delta": 1e-5}
    )
    he = {"poly_modulus_degree": 8192, "coeff_mod_bit_sizes": [60, 40, 60], "scale_bits": 40}
    log.append("he.encrypt", params={"key_id": "he_bbbb", "he_params": he})
    rec = build_records(log.path, config={})
    write_records(rec, tmp_path / "records.csv")
    text = (tmp_path / "records.csv").read_text()
    assert "{" not in text and "'" not in text  # no dict or list reprs anywhere
    row = next(csv.DictReader(io.StringIO(text)))
    assert "email (pseudonymize, normalize=email)" in row["personal_data_categories"]
    measures = row["security_measures"]
    assert "pseudonymization key ids kid_aaaa;" in measures and "he_bbbb" not in measures.split(";")[0]
    assert "encryption key ids he_bbbb" in measures
    assert "DP budget of the dataset: total epsilon = 8 at delta = 1e-05 (dataset ds)" in measures
    assert "epsilon spent = 1.995 (target epsilon 2) at delta = 1e-05 (dataset ds)" in measures
    assert "coefficient moduli 60/40/60 bits" in measures
