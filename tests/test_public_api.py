"""The public API of ../shared/DESIGN.md, called exactly as documented there."""

from __future__ import annotations

import numpy as np
import pytest

import privdl


def test_all_names_resolve():
    for name in privdl.__all__:
        assert getattr(privdl, name) is not None


def test_design_api_end_to_end(users, key_hex, tmp_path, monkeypatch):
    pytest.importorskip("opacus")
    pytest.importorskip("tenseal")
    import torch

    monkeypatch.setenv("PRIVDL_KEY", key_hex)
    monkeypatch.setenv("PRIVDL_AUDIT_KEY", privdl.Secret.generate().reveal().hex())
    log = privdl.AuditLog(tmp_path / "audit.jsonl", key=privdl.Secret.from_env("PRIVDL_AUDIT_KEY"))

    # anonymize
    policy = privdl.Policy(
        identifiers=["email", "full_name"],
        quasi_identifiers=["age", "zip", "sex"],
        sensitive=["retained"],
        k=5,
        l=None,
        t=None,
        max_suppression=0.02,
        hierarchies={"zip": "prefix"},
        drop=["ip", "phone", "user_id"],
    )
    anonymizer = privdl.Anonymizer(policy, key=privdl.Secret.from_env("PRIVDL_KEY"))
    released = anonymizer.fit_transform(users)
    assert anonymizer.report_.to_dict()["after"]["k"] >= 5
    anonymizer.report_.save(tmp_path / "anon.html")
    risk = privdl.assess_risk(users, quasi_identifiers=["age", "zip", "sex"], sensitive=["retained"])
    assert isinstance(risk, privdl.RiskReport)

    # train with differential privacy
    x = users[["plays_week1", "plays_week2"]].to_numpy(dtype=np.float32) / 30.0
    y = users["retained"].to_numpy()
    model = torch.nn.Linear(2, 2)
    ledger = privdl.BudgetLedger(str(tmp_path / "budget.db"))
    ledger.set_budget("retention-2026-11", epsilon=8.0, delta=1e-5)  # a run needs a budget first
    trainer = privdl.PrivateTrainer(
        model, epsilon=3.0, delta=None, epochs=2, batch_size=64, max_grad_norm=1.0,
        ledger=str(tmp_path / "budget.db"), dataset_id="retention-2026-11", audit_log=log,
        device="auto", progress=False,
    )  # fmt: skip
    trainer.fit((x, y))
    assert 0 < trainer.epsilon <= 3.0
    trainer.report().save(tmp_path / "report.html")
    trainer.save(tmp_path / "model")
    loaded = privdl.PrivateTrainer.load(tmp_path / "model", model=torch.nn.Linear(2, 2))
    assert np.allclose(loaded.predict_proba(x), trainer.predict_proba(x), atol=1e-6)
    encoder = privdl.TableEncoder(policy=policy)
    assert encoder.fit(released[["age", "zip", "sex"]]).transform(released[["age", "zip", "sex"]]).shape[
        0
    ] == len(released)

    ledger.set_budget("other-dataset", epsilon=8.0, delta=1e-5)
    assert ledger.spent("retention-2026-11") > 0 and ledger.remaining("other-dataset") == 8.0

    # score encrypted (a linear model on two features)
    keys = privdl.HEKeys.generate()
    scorer = privdl.EncryptedScorer.from_model(torch.nn.Linear(2, 1), keys.public())
    encrypted = keys.encrypt(x[:50])
    scores = keys.decrypt(scorer.score(encrypted))
    assert scores.shape[0] == 50

    # evidence
    privdl.verify_audit_log(tmp_path / "audit.jsonl")
