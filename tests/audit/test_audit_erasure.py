"""Erasure requests: find datasets and models that hold a pseudonym, by keyed filter and
fingerprint lineage, and record the request without the pseudonym."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from privdl.audit import AuditLog, verify_audit_log
from privdl.audit.erasure import erase_request, find_subject
from privdl.audit.subjects import make_filter, might_contain
from privdl.errors import InputError, TamperDetectedError
from privdl.keys import Secret


def test_bloom_filter_has_no_false_negatives() -> None:
    key = Secret.generate().reveal()
    items = [f"tok{i}" for i in range(5000)]
    filt = make_filter(key, [*items, None, float("nan"), ""])
    assert filt["n"] == 5000
    assert all(might_contain(key, filt, t) for t in items)
    assert sum(might_contain(key, filt, f"other{i}") for i in range(5000)) <= 1
    other_key = Secret.generate().reveal()  # positions depend on the key
    assert sum(might_contain(other_key, filt, t) for t in items[:2000]) <= 1
    assert not might_contain(key, {"m": "x"}, "tok1")


def test_filter_reveals_nothing_without_key() -> None:
    key = Secret.generate().reveal()
    a, b = make_filter(key, ["same"]), make_filter(key, ["same"])
    assert a["salt"] != b["salt"] and a["bloom"] != b["bloom"]  # unlinkable across entries


def _pipeline(tmp_path: Path, key: Secret) -> AuditLog:
    log = AuditLog(tmp_path / "audit.jsonl", key=key, actor="a")
    raw, rel1, rel2, model, scores = (
        tmp_path / n for n in ("raw.csv", "rel1.csv", "rel2.csv", "model.pt", "s.csv")
    )
    for p, text in ((raw, "raw"), (rel1, "r1"), (rel2, "r2"), (model, "m"), (scores, "s")):
        p.write_text(text)
    log.append("anonymize", inputs=[raw], outputs=[rel1], subjects=["tokA", "tokB"])
    log.append("anonymize", inputs=[raw], outputs=[rel2], subjects=["tokC"])
    log.append("train", inputs=[rel1], outputs=[model])
    log.append("he.score", inputs=[model], outputs=[scores])
    log.append("train", inputs=[rel2], outputs=[tmp_path / "other-model"])
    return log


def test_find_direct_and_derived(tmp_path: Path, audit_key: Secret) -> None:
    log = _pipeline(tmp_path, audit_key)
    report = find_subject(log.path, "tokA", key=audit_key)
    assert [d["seq"] for d in report.direct] == [1]
    assert [d["seq"] for d in report.derived] == [3, 4]
    names = {fp.get("name") for fp in report.datasets()}
    assert names == {"raw.csv", "rel1.csv", "model.pt", "s.csv"}
    assert find_subject(log.path, "nobody", key=audit_key).direct == []


def test_erase_request_is_recorded_without_pseudonym(tmp_path: Path, audit_key: Secret) -> None:
    log = _pipeline(tmp_path, audit_key)
    report = erase_request(log.path, "tokC", key=audit_key)
    assert report.entry == 6
    last = json.loads(log.path.read_bytes().splitlines()[-1])["entry"]
    assert last["event"] == "erasure.request"
    assert last["params"]["direct"] == [2] and last["params"]["derived"] == [5]
    assert last["params"]["subject_ref"] == report.subject_ref
    assert b"tokC" not in log.path.read_bytes()
    assert verify_audit_log(log.path, key=audit_key).entries == 6


def test_erase_request_refuses_tampered_log(tmp_path: Path, audit_key: Secret) -> None:
    log = _pipeline(tmp_path, audit_key)
    lines = log.path.read_bytes().splitlines(keepends=True)
    log.path.write_bytes(b"".join([lines[1], lines[0], *lines[2:]]))
    with pytest.raises(TamperDetectedError):
        erase_request(log.path, "tokA", key=audit_key)
    with pytest.raises(InputError):
        erase_request(log.path, "  ", key=audit_key)
