"""Art. 17 erasure requests: which logged datasets and models hold a data subject.

A request names the subject by pseudonym only (the keyed token privdl's anonymizer
writes for the subject's identifier). The log is verified, then:

1. every entry whose subject filter may contain the pseudonym is a *direct* match:
   its outputs held the subject, and its inputs were the source data;
2. every later entry that read a matched dataset (same SHA-256 fingerprint) is a
   *derived* match, and so are its outputs (trained models, scores), transitively;
3. one ``erasure.request`` entry records the request and what was found, holding a
   keyed reference of the pseudonym, never the pseudonym itself.

Nothing in the log needs rewriting to honour the request: entries hold no identifiers,
only fingerprints and keyed filters. Acting on the listed files is the controller's
job. A filter can answer "possibly" for a subject it does not hold (false-positive rate
about 1e-6 per entry), never the reverse.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from privdl.audit.chain import subjects_key
from privdl.audit.log import AuditLog
from privdl.audit.subjects import might_contain
from privdl.audit.verify import DEFAULT_KEY_ENV, iter_entries, resolve_audit_key, verify_audit_log
from privdl.errors import InputError
from privdl.keys import Secret, hmac_sha256

__all__ = ["ErasureReport", "erase_request", "find_subject", "subject_ref"]


@dataclasses.dataclass(frozen=True)
class ErasureReport:
    """What an erasure request found.

    Attributes:
        subject_ref: keyed reference of the pseudonym (as recorded in the log).
        direct: entries whose data may contain the subject (seq, time, event, inputs,
            outputs).
        derived: later entries that read a matched dataset, and their outputs.
        entry: seq of the ``erasure.request`` entry written (None when not recorded).
    """

    subject_ref: str
    direct: list[dict[str, Any]]
    derived: list[dict[str, Any]]
    entry: int | None = None

    def datasets(self) -> list[dict[str, Any]]:
        """Every dataset or model fingerprint to act on, without duplicates."""
        seen: dict[str, dict[str, Any]] = {}
        for item in [*self.direct, *self.derived]:
            for fp in [*item.get("inputs", []), *item.get("outputs", [])]:
                if fp.get("sha256"):
                    seen.setdefault(fp["sha256"], fp)
        return list(seen.values())

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "datasets": self.datasets()}


def subject_ref(audit_key: Secret, pseudonym: str) -> str:
    """The keyed reference an erasure request records instead of the pseudonym."""
    key = audit_key.derive("audit/erasure-ref").reveal()
    return hmac_sha256(key, pseudonym.encode("utf-8")).hex()[:32]


def _summary(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "seq": entry.get("seq"),
        "time": entry.get("time"),
        "event": entry.get("event"),
        "inputs": [fp for fp in entry.get("inputs", []) if isinstance(fp, dict)],
        "outputs": [fp for fp in entry.get("outputs", []) if isinstance(fp, dict)],
    }


def find_subject(
    log: str | os.PathLike[str],
    pseudonym: str,
    *,
    key: Secret | bytes | None = None,
    key_env: str = DEFAULT_KEY_ENV,
) -> ErasureReport:
    """Verify ``log`` and list the entries whose data held ``pseudonym`` or derives from it."""
    if not isinstance(pseudonym, str) or not pseudonym.strip():
        raise InputError("erasure request: the subject's pseudonym is empty")
    audit_key = resolve_audit_key(key, key_env)
    result = verify_audit_log(log, key=audit_key)
    ref = subject_ref(audit_key, pseudonym)
    if result.log_id is None:
        return ErasureReport(subject_ref=ref, direct=[], derived=[])
    skey = subjects_key(audit_key, result.log_id)
    direct: list[dict[str, Any]] = []
    derived: list[dict[str, Any]] = []
    tainted: set[str] = set()
    for entry in iter_entries(log):
        subjects = entry.get("subjects")
        if isinstance(subjects, dict) and might_contain(skey, subjects, pseudonym):
            item = _summary(entry)
            direct.append(item)
            tainted.update(fp["sha256"] for fp in item["outputs"] if fp.get("sha256"))
            continue
        item = _summary(entry)
        if any(fp.get("sha256") in tainted for fp in item["inputs"]):
            derived.append(item)
            tainted.update(fp["sha256"] for fp in item["outputs"] if fp.get("sha256"))
    return ErasureReport(subject_ref=ref, direct=direct, derived=derived)


def erase_request(
    log: AuditLog | str | os.PathLike[str],
    pseudonym: str,
    *,
    key: Secret | bytes | None = None,
    key_env: str = DEFAULT_KEY_ENV,
) -> ErasureReport:
    """Record an Art. 17 request for ``pseudonym`` and return what it concerns.

    The log is verified first (a tampered log raises TamperDetectedError). The entry
    written has event ``erasure.request`` and params ``subject_ref``, ``direct`` and
    ``derived`` (entry numbers) and ``datasets`` (SHA-256 fingerprints).
    """
    audit_key = resolve_audit_key(key, key_env)
    path = Path(log.path if isinstance(log, AuditLog) else log)
    report = find_subject(path, pseudonym, key=audit_key)
    writer = log if isinstance(log, AuditLog) else AuditLog(path, key=audit_key)
    entry = writer.append(
        "erasure.request",
        params={
            "subject_ref": report.subject_ref,
            "direct": [d["seq"] for d in report.direct],
            "derived": [d["seq"] for d in report.derived],
            "datasets": [fp["sha256"] for fp in report.datasets()],
        },
    )
    return dataclasses.replace(report, entry=entry["seq"])
