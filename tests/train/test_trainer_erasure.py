"""An erasure request finds the training run of a person's data (issue 6, item 5)."""

from __future__ import annotations

import pytest

pytest.importorskip("opacus")

from torch import nn

from privdl import Anonymizer, AuditLog, Policy, PrivateTrainer, Secret, TableEncoder
from privdl.audit.erasure import find_subject


def test_erasure_lists_anonymization_and_training(users, key, tmp_path):
    audit_key = Secret.generate()
    log = AuditLog(tmp_path / "audit.jsonl", key=audit_key)
    released = Anonymizer(Policy(identifiers=["user_id"], drop=["ip", "email", "full_name", "phone"]),
                          key=key, audit_log=log).fit_transform(users)  # fmt: skip
    train, other = released.iloc[:200], released.iloc[200:]
    encoder = TableEncoder(numeric_bounds={"plays_week1": (0, 60)}, categories={"retained": [0, 1]})
    trainer = PrivateTrainer(nn.Linear(3, 1), epsilon=5.0, epochs=1, encoder=encoder, audit_log=log,
                             seed=0, progress=False)  # fmt: skip
    trainer.fit(train[["plays_week1", "retained"]], target="retained", subjects=train["user_id"])

    inside = find_subject(tmp_path / "audit.jsonl", train["user_id"].iloc[0], key=audit_key)
    assert [d["event"] for d in inside.direct] == ["anonymize", "train"]
    outside = find_subject(tmp_path / "audit.jsonl", other["user_id"].iloc[0], key=audit_key)
    assert [d["event"] for d in outside.direct] == ["anonymize"]
