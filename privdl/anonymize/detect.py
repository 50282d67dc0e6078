"""Spot columns that look like direct identifiers but were given no role.

Detection runs on a sample of each text column and recognises e-mail addresses,
phone numbers, IBANs (with their mod-97 check) and IP addresses; column names such as
``name`` or ``ssn`` are flagged too. It is a safety net for a forgotten column, not
a PII scanner: a column it misses is not thereby safe.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from pandas.api.types import is_object_dtype, is_string_dtype

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["looks_like_identifiers"]

SAMPLE = 500
THRESHOLD = 0.5
_EMAIL = re.compile(r"^[A-Za-z0-9._%+'-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")
_PHONE = re.compile(r"^\+?[\d\s().-]{7,20}$")
_IBAN = re.compile(r"^[A-Z]{2}\d{2}[A-Z0-9]{11,30}$")
_NAME_HINTS = {
    "name",
    "full_name",
    "fullname",
    "first_name",
    "firstname",
    "last_name",
    "lastname",
    "surname",
    "given_name",
    "ssn",
    "social_security_number",
    "passport",
    "passport_number",
    "national_id",
    "tax_id",
    "email",
    "e_mail",
    "mail",
    "phone",
    "phone_number",
    "mobile",
    "telephone",
    "ip",
    "ip_address",
    "iban",
    "address",
    "street",
    "street_address",
    "credit_card",
    "card_number",
    "username",
    "user_name",
    "device_id",
    "mac_address",
}


_DATE = re.compile(r"^\d{4}[-.]\d{1,2}[-.]\d{1,2}|^\d{1,2}[-.]\d{1,2}[-.]\d{2,4}$")


def _is_phone(text: str) -> bool:
    if not _PHONE.match(text) or _DATE.match(text):
        return False
    digits = sum(c.isdigit() for c in text)
    # a bare integer is more likely a count or an id than a phone number
    return 8 <= digits <= 15 and (not text.isdigit() or text.startswith("+"))


def _is_iban(text: str) -> bool:
    compact = text.replace(" ", "").upper()
    if not _IBAN.match(compact):
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(c, 36)) for c in rearranged)
    return int(number) % 97 == 1


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


_KINDS = (
    ("e-mail addresses", lambda s: bool(_EMAIL.match(s))),
    ("IBANs", _is_iban),
    ("IP addresses", _is_ip),
    ("phone numbers", _is_phone),
)


def looks_like_identifiers(frame: pd.DataFrame, columns: Iterable[str]) -> dict[str, str]:
    """Map column → what it looks like (``"e-mail addresses"``...) for suspicious columns.

    Only ``columns`` are inspected (the ones with no role). The result names kinds,
    never values.
    """
    found: dict[str, str] = {}
    for column in columns:
        series = frame[column]
        if is_object_dtype(series) or is_string_dtype(series):
            sample = series.dropna().astype(str).str.strip()
            sample = sample[sample != ""]
            if len(sample) > SAMPLE:
                sample = sample.sample(SAMPLE, random_state=0)
            values = sample.tolist()
            if values:
                for kind, test in _KINDS:
                    hits = sum(1 for v in values if test(v))
                    if hits / len(values) >= THRESHOLD:
                        found[column] = kind
                        break
        if column not in found:
            normalized = re.sub(r"[^a-z0-9]+", "_", column.lower()).strip("_")
            if normalized in _NAME_HINTS:
                found[column] = "a direct identifier (by its name)"
    return found
