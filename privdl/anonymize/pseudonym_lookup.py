"""The pseudonym of a raw identifier, as the logged anonymizations wrote it.

An erasure request names a person by what the controller knows (an e-mail, a customer
number); the audit log and the released tables know only the keyed pseudonym. Each
``anonymize`` entry records its pseudonymization ``key_id``, the policy's identifier
rules (transform, ``normalize``, ``domain``) and the subject column (``subject_id``), never
a value. :func:`pseudonyms_for` reads those rules for the given key and derives the
pseudonym of ``identifier`` with :func:`~privdl.anonymize.pseudonymize.pseudonymize_values`,
the function the anonymizer used. The raw identifier is never logged, printed or
returned; only its pseudonyms are.

Example:
    >>> pseudonyms_for("ana@example.org", key=key, log="audit.jsonl")  # doctest: +SKIP
    ['K3VQ...']
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from privdl.anonymize.pseudonymize import pseudonymize_values
from privdl.audit.verify import iter_entries
from privdl.errors import InputError
from privdl.keys import Secret

__all__ = ["pseudonyms_for", "subject_rules"]


def subject_rules(
    log: str | os.PathLike[str], *, key_id: str, column: str | None = None
) -> list[tuple[str, str, str]]:
    """``(column, normalize, domain)`` of each distinct pseudonymization rule the log's
    ``anonymize`` entries under ``key_id`` applied to the subject column (or ``column``)."""
    found: list[tuple[str, str, str]] = []
    for entry in iter_entries(log):
        params = entry.get("params") or {}
        if (
            entry.get("event") != "anonymize"
            or entry.get("outcome") != "ok"
            or params.get("key_id") != key_id
        ):
            continue
        policy = params.get("policy") or {}
        wanted = column or policy.get("subject_id")
        for rule in policy.get("identifiers") or ():
            if not isinstance(rule, Mapping) or rule.get("column") != wanted:
                continue
            if (rule.get("transform") or "pseudonymize") != "pseudonymize":
                continue
            item = (str(wanted), str(rule.get("normalize") or "none"), str(rule.get("domain") or ""))
            if item not in found:
                found.append(item)
    return found


def pseudonyms_for(
    identifier: str,
    *,
    key: Secret,
    log: str | os.PathLike[str],
    column: str | None = None,
) -> list[str]:
    """The pseudonyms ``identifier`` was released as, under the rules of ``log``.

    Args:
        identifier: the raw identifier (never logged or printed).
        key: the pseudonymization key the anonymizations used (matched by key_id).
        log: the audit log holding their ``anonymize`` entries.
        column: the identifier column (default: each entry's subject column).

    Raises:
        InputError: an empty identifier, or no logged anonymization pseudonymized the
            column under this key (the message names the key_id and column, not the value).
    """
    if not isinstance(identifier, str) or not identifier.strip():
        raise InputError("erasure request: the identifier is empty")
    rules = subject_rules(log, key_id=key.key_id, column=column)
    if not rules:
        what = f"column {column!r}" if column else "the subject column"
        raise InputError(
            f"{os.fspath(log)}: no anonymize entry pseudonymized {what} under key {key.key_id}; "
            "check the key (or name the column with --column)"
        )
    import pandas as pd

    out: list[str] = []
    for _column, normalize, domain in rules:
        token: Any = pseudonymize_values(
            pd.Series([identifier], dtype=object), key=key, normalize=normalize, domain=domain
        ).iloc[0]
        if isinstance(token, str) and token not in out:
            out.append(token)
    return out
