"""The GDPR Art. 30(1) record of processing activities, from ``privdl.toml`` and the log.

Art. 30(1) asks for (a) the controller's and DPO's names and contacts, (b) the purposes,
(c) the categories of data subjects and of personal data, (d) the categories of
recipients, (e) transfers to third countries and their safeguards, (f) time limits for
erasure, and (g) a description of the Art. 32(1) technical and organisational measures.
People know (a), (b), (d), (e) and (f): they come from the config. The log knows what
was actually done: which purposes data was processed for, which columns played which
role (identifiers, quasi-identifiers, sensitive attributes), and which measures were
applied with which parameters (pseudonymization key ids, k, l, t, DP epsilon and delta,
homomorphic-encryption parameters). Each activity is one purpose; entries without a
purpose are grouped under ``(no purpose recorded)``, which itself needs fixing.

An operation that wrote a ``started`` entry and a final entry counts once, under its
final outcome; one that never finished (killed midway) counts under ``started``.

Measures are read from entry parameters, at any nesting depth, by key name:
``key_id`` / ``key_ids`` / ``*_key_id`` (labelled by the entry's event: an ``anonymize``
key is a pseudonymization key, an ``he.*`` key an encryption key), ``k``, ``l``, ``t``,
``he_params`` (in words), and column roles from ``identifiers`` (``email (pseudonymize,
normalize=email)``, never a Python dict), ``quasi_identifiers``, ``sensitive`` and
``drop``. Each DP figure is labelled with what it is: a dataset's total budget
(``budget.set``), a training run's epsilon spent and its target, with delta and the
dataset.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from privdl.audit.verify import VerifyResult, iter_entries
from privdl.config import load_config
from privdl.errors import InputError
from privdl.io import check_output_path, write_text

__all__ = ["CSV_FIELDS", "build_records", "write_records"]

NO_PURPOSE = "(no purpose recorded)"
CSV_FIELDS = [
    "activity",
    "description",
    "controller",
    "controller_contact",
    "representative",
    "dpo",
    "dpo_contact",
    "legal_basis",
    "data_subject_categories",
    "personal_data_categories",
    "recipients",
    "third_country_transfers",
    "retention",
    "security_measures",
    "operations",
    "first_processing",
    "last_processing",
    "log_entries",
    "log_verified",
]
_ROLES = {
    "identifiers": "direct identifiers (pseudonymized or removed)",
    "quasi_identifiers": "quasi-identifiers (generalized for k-anonymity)",
    "sensitive": "sensitive attributes",
    "drop": "removed columns",
}


class _Measures:
    """What one activity's entries say was applied, each figure labelled by what it is."""

    def __init__(self) -> None:
        # key ids by the role of the key (never the keys): a CKKS key is an encryption
        # key, not a pseudonymization key
        self.pseudonym_keys: set[str] = set()
        self.encryption_keys: set[str] = set()
        self.other_keys: dict[str, set[str]] = {}
        self.values: dict[str, set[str]] = {n: set() for n in ("k", "l", "t")}
        self.dp: list[str] = []
        self.he: set[str] = set()
        self.roles: dict[str, set[str]] = {r: set() for r in _ROLES}
        self.encrypted_events = 0

    def scan(self, params: Any, event: str = "", depth: int = 0) -> None:
        if depth == 0 and isinstance(params, Mapping):
            self._dp(event, params)
        if depth > 6:
            return
        if isinstance(params, Mapping):
            for name, value in params.items():
                self._one(str(name), value, event)
                if isinstance(value, Mapping | list):
                    self.scan(value, event, depth + 1)
        elif isinstance(params, list):
            for item in params:
                if isinstance(item, Mapping | list):
                    self.scan(item, event, depth + 1)

    def _key(self, value: str, event: str) -> None:
        if event.startswith(("he.", "encrypt")) or value.startswith("he_"):
            self.encryption_keys.add(value)
        elif event.startswith("anonymize"):
            self.pseudonym_keys.add(value)
        else:
            self.other_keys.setdefault(event or "?", set()).add(value)

    def _one(self, name: str, value: Any, event: str) -> None:
        if name == "key_id" or name.endswith("_key_id"):
            if isinstance(value, str):
                self._key(value, event)
        elif name == "key_ids" and isinstance(value, list):
            for v in value:
                if isinstance(v, str):
                    self._key(v, event)
        elif name in self.values and isinstance(value, int | float) and not isinstance(value, bool):
            self.values[name].add(repr(value))
        elif name == "he_params" and isinstance(value, Mapping):
            self.he.add(_he_text(value))
        elif name in self.roles and isinstance(value, list):
            self.roles[name].update(_column_text(v) for v in value)

    def _dp(self, event: str, params: Mapping[str, Any]) -> None:
        """One labelled line per DP figure of an entry: a dataset's budget is not a
        run's spend, and a run's target is not what it spent."""
        eps, delta, dataset = params.get("epsilon"), params.get("delta"), params.get("dataset_id")
        at = f" at delta = {_num(delta)}" if _is_num(delta) else ""
        on = f" (dataset {dataset})" if isinstance(dataset, str) else ""
        if event == "budget.set" and _is_num(eps):
            line = f"DP budget of the dataset: total epsilon = {_num(eps)}{at}{on}"
        elif _is_num(params.get("epsilon_spent")):
            target = f" (target epsilon {_num(eps)})" if _is_num(eps) else ""
            line = f"DP training run ({event}): epsilon spent = {_num(params['epsilon_spent'])}{target}{at}{on}"
        elif _is_num(eps):
            line = f"DP ({event}): epsilon = {_num(eps)}{at}{on}"
        else:
            return
        if line not in self.dp:
            self.dp.append(line)

    def describe(self) -> list[str]:
        out = []
        if self.pseudonym_keys:
            out.append(
                "pseudonymization with keyed HMAC-SHA256, pseudonymization key ids "
                + ", ".join(sorted(self.pseudonym_keys))
            )
        if self.values["k"]:
            out.append("k-anonymity, k = " + ", ".join(sorted(self.values["k"], key=float)))
        if self.values["l"]:
            out.append("l-diversity, l = " + ", ".join(sorted(self.values["l"], key=float)))
        if self.values["t"]:
            out.append("t-closeness, t = " + ", ".join(sorted(self.values["t"], key=float)))
        if self.dp:
            out.append("differential privacy: " + "; ".join(self.dp))
        if self.he or self.encrypted_events or self.encryption_keys:
            text = "homomorphic encryption (CKKS) of data in use"
            if self.he:
                text += ", " + "; ".join(sorted(self.he))
            if self.encryption_keys:
                text += ", encryption key ids " + ", ".join(sorted(self.encryption_keys))
            out.append(text)
        for event, ids in sorted(self.other_keys.items()):
            out.append(f"keys used by {event}: key ids " + ", ".join(sorted(ids)))
        out.append("tamper-evident audit log (HMAC-SHA256 chain, signed checkpoints)")
        return out

    def categories(self) -> list[str]:
        return [
            f"{label}: {', '.join(sorted(self.roles[role]))}"
            for role, label in _ROLES.items()
            if self.roles[role]
        ]


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _column_text(value: Any) -> str:
    """A column as a person reads it: ``email (pseudonymize, normalize=email)``, not a
    Python dict."""
    if isinstance(value, Mapping):
        column = str(value.get("column", "?"))
        details = [str(value["transform"])] if value.get("transform") else []
        details += [f"{k}={v}" for k, v in sorted(value.items()) if k not in ("column", "transform")]
        return f"{column} ({', '.join(details)})" if details else column
    return str(value)


_HE_LABELS = {
    "poly_modulus_degree": "polynomial modulus degree {}",
    "coeff_mod_bit_sizes": "coefficient moduli {} bits",
    "scale_bits": "scale 2^{}",
    "security": "{}-bit security",
    "encryption": "{} encryption",
}


def _he_text(params: Mapping[str, Any]) -> str:
    """CKKS parameters in words (``polynomial modulus degree 8192, ...``)."""
    parts = []
    for name, label in _HE_LABELS.items():
        value = params.get(name)
        if value is None:
            continue
        parts.append(label.format("/".join(map(str, value)) if isinstance(value, list) else value))
    for name in ("galois_keys", "relin_keys"):
        if name in params:
            what = "Galois" if name == "galois_keys" else "relinearization"
            parts.append(f"{what} keys {'sent' if params[name] else 'not sent'} to the evaluator")
    return "parameters: " + ", ".join(parts) if parts else "parameters not recorded"


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list):
        return [_describe(v) for v in value]
    return [_describe(value)]


def _describe(value: Any) -> str:
    """A config value in words: ``country: US, recipient: Cloud host`` (no Python reprs)."""
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {_describe(v)}" for k, v in value.items() if v not in (None, "", []))
    if isinstance(value, list | tuple):
        return ", ".join(_describe(v) for v in value)
    return str(value)


def _new_group() -> dict[str, Any]:
    """What one processing activity (purpose) collects while the log is read."""
    return {
        "measures": _Measures(),
        "events": Counter(),
        "outcomes": Counter(),
        "bases": set(),
        "first": None,
        "last": None,
    }


def build_records(
    log: str | os.PathLike[str],
    *,
    config: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    verified: VerifyResult | None = None,
) -> dict[str, Any]:
    """The Art. 30 record as a dict: controller, DPO and one item per processing activity.

    Args:
        log: the audit log (verify it first and pass the result as ``verified``).
        config: ``privdl.toml`` path, an already loaded config, or None to look it up.
        verified: the :class:`VerifyResult` of the log, recorded in the output.
    """
    cfg = dict(config) if isinstance(config, Mapping) else load_config(config)
    purposes_cfg = {str(p.get("id")): p for p in cfg.get("purposes", []) if isinstance(p, Mapping)}
    controller = cfg.get("controller") or {}
    dpo = cfg.get("dpo") or {}
    default_retention = (cfg.get("retention") or {}).get("default")
    transfers_cfg = cfg.get("transfers") or []
    recipients_cfg = cfg.get("recipients") or []

    groups: dict[str, dict[str, Any]] = {}
    open_starts: dict[int, dict[str, Any]] = {}  # seq of a started entry -> its group
    total = 0
    for entry in iter_entries(log):
        total += 1
        purpose = entry.get("purpose") or NO_PURPOSE
        g = groups.setdefault(purpose, _new_group())
        start = entry.get("started")
        if isinstance(start, int) and start in open_starts:
            # the final entry of an operation already counted by its started entry
            first = open_starts.pop(start)
            first["outcomes"]["started"] -= 1
            if not first["outcomes"]["started"]:
                del first["outcomes"]["started"]
            if first is not g:  # moved to the purpose its final entry names
                event = entry.get("event", "?")
                first["events"][event] -= 1
                if not first["events"][event]:
                    del first["events"][event]
                g["events"][event] += 1
        else:
            g["events"][entry.get("event", "?")] += 1
        if entry.get("outcome") == "started" and isinstance(entry.get("seq"), int):
            open_starts[entry["seq"]] = g
        g["outcomes"][entry.get("outcome", "?")] += 1
        if entry.get("legal_basis"):
            g["bases"].add(str(entry["legal_basis"]))
        when = entry.get("time")
        g["first"] = g["first"] or when
        g["last"] = when or g["last"]
        if entry.get("outcome") == "ok":
            g["measures"].scan(entry.get("params") or {}, str(entry.get("event", "")))
            if str(entry.get("event", "")).startswith(("he.", "encrypt")):
                g["measures"].encrypted_events += 1
    for pid in purposes_cfg:  # configured purposes with no processing yet still belong in it
        groups.setdefault(pid, _new_group())

    activities = []
    for purpose in sorted(groups):
        g = groups[purpose]
        pc = purposes_cfg.get(purpose, {})
        basis = pc.get("legal_basis")
        bases = sorted(g["bases"] | ({basis} if basis else set()))
        transfers = _as_list(pc.get("transfers")) if "transfers" in pc else _as_list(transfers_cfg)
        recipients = _as_list(pc.get("recipients")) if "recipients" in pc else _as_list(recipients_cfg)
        m: _Measures = g["measures"]
        activities.append(
            {
                "activity": purpose,
                "description": pc.get("description"),
                "legal_basis": bases,
                "data_subject_categories": _as_list(pc.get("data_subjects")),
                "personal_data_categories": _as_list(pc.get("personal_data")) + m.categories(),
                "recipients": recipients,
                "third_country_transfers": transfers or ["none recorded"],
                "retention": pc.get("retention") or default_retention,
                "security_measures": m.describe(),
                "operations": dict(sorted(g["events"].items())),
                "outcomes": dict(sorted(g["outcomes"].items())),
                "first_processing": g["first"],
                "last_processing": g["last"],
            }
        )
    return {
        "record": "GDPR Art. 30(1) record of processing activities",
        "generated": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "controller": {k: controller.get(k) for k in ("name", "contact", "representative")},
        "dpo": {k: dpo.get(k) for k in ("name", "contact")},
        "log": {
            "file": Path(log).name,
            "entries": total,
            "verified": verified is not None,
            "head": verified.head if verified is not None else None,
            "log_id": verified.log_id if verified is not None else None,
        },
        "activities": activities,
    }


def _csv_rows(records: Mapping[str, Any]) -> Iterable[dict[str, Any]]:
    c, d, log = records["controller"], records["dpo"], records["log"]
    for a in records["activities"]:
        yield {
            "activity": a["activity"],
            "description": a["description"] or "",
            "controller": c.get("name") or "",
            "controller_contact": c.get("contact") or "",
            "representative": c.get("representative") or "",
            "dpo": d.get("name") or "",
            "dpo_contact": d.get("contact") or "",
            "legal_basis": "; ".join(a["legal_basis"]),
            "data_subject_categories": "; ".join(a["data_subject_categories"]),
            "personal_data_categories": "; ".join(a["personal_data_categories"]),
            "recipients": "; ".join(a["recipients"]),
            "third_country_transfers": "; ".join(a["third_country_transfers"]),
            "retention": a["retention"] or "",
            "security_measures": "; ".join(a["security_measures"]),
            "operations": "; ".join(f"{k} x{v}" for k, v in a["operations"].items()),
            "first_processing": a["first_processing"] or "",
            "last_processing": a["last_processing"] or "",
            "log_entries": log["entries"],
            "log_verified": "yes" if log["verified"] else "NO",
        }


def write_records(records: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write the record as ``.csv`` (one row per activity) or ``.json``, atomically.

    Raises:
        InputError: another extension, or a path :func:`privdl.io.check_output_path`
            refuses.
    """
    p = check_output_path(path, what="records output")
    suffix = p.suffix.lower()
    if suffix == ".json":
        text = json.dumps(records, indent=2, sort_keys=False, ensure_ascii=False) + "\n"
    elif suffix == ".csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(_csv_rows(records))
        text = buf.getvalue()
    else:
        raise InputError(f"records output {p.name}: use a .csv or .json file name")
    return write_text(p, text)
