"""Spot released columns that identify people or that an attacker can link on.

Two nets, both run on columns without a declared role:

* :func:`looks_like_identifiers`: a sample of each text column is checked for e-mail
  addresses, phone numbers, IBANs (with their mod-97 check) and IP addresses; column
  names such as ``name`` or ``ssn`` are flagged too.
* :func:`linkable_columns`: dates and timestamps (datetime dtype, or text of which at
  least half the sampled values are dates), free text (on average three or more words
  with letters per value, or 40+ characters), and high-cardinality columns (at least
  ``MIN_DISTINCT`` distinct values, and either as many distinct values as half the
  records or at least ``UNIQUE_SHARE`` of the records unique on the column alone). An
  attacker who knows a person's birth date, sign-up day or ZIP code links on such a
  column exactly as on a quasi-identifier, so the report measures the risk with them
  added.

Both are safety nets for a forgotten column, not PII scanners: a column they miss is
not thereby safe (a low-cardinality column such as a city can still be known to an
attacker). ``strict`` policies make every column's role an explicit decision instead.
The results name kinds and counts, never values.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from pandas.api.types import (
    is_bool_dtype,
    is_datetime64_any_dtype,
    is_object_dtype,
    is_string_dtype,
)

from privdl.anonymize.metrics import hashable

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["linkable_columns", "looks_like_identifiers"]

SAMPLE = 500
THRESHOLD = 0.5
#: a column needs at least this many distinct values to count as high-cardinality
MIN_DISTINCT = 20
#: ... and half its records distinct, or this share of records unique on it alone
DISTINCT_SHARE = 0.5
UNIQUE_SHARE = 0.05
#: free text: this many words per value on average, or this many characters
FREE_TEXT_WORDS = 3.0
FREE_TEXT_CHARS = 40.0
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
_TIME = r"(?:[ T]\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:Z|[+-]\d{2}:?\d{2})?)?"
_MONTH = r"(?:0?[1-9]|1[0-2])"
_DAY = r"(?:0?[1-9]|[12]\d|3[01])"
# year first (ISO, 2024/01/31, 2024.01.31), or day and month first in either order
_DATE_TEXT = re.compile(rf"^(?:\d{{4}}([-/.]){_MONTH}\1{_DAY}|{_DAY}([-/.]){_DAY}\2\d{{4}})({_TIME})$")


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
            values = _text_sample(series)
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


def _text_sample(series: pd.Series) -> list[str]:
    sample = series.dropna().astype(str).str.strip()
    sample = sample[sample != ""]
    if len(sample) > SAMPLE:
        sample = sample.sample(SAMPLE, random_state=0)
    return sample.tolist()


def _date_kind(values: list[str]) -> str | None:
    """``"dates"`` / ``"timestamps"`` when at least half the values are, else None."""
    matches = [_DATE_TEXT.match(v) for v in values]
    hits = [m for m in matches if m is not None]
    if not values or len(hits) / len(values) < THRESHOLD:
        return None
    timed = sum(1 for m in hits if m.group(3))
    return "timestamps" if timed / len(hits) >= THRESHOLD else "dates"


def _free_text(values: list[str]) -> bool:
    if not values:
        return False
    # words with a letter: "+49 30 6008" is a number in groups, not text
    words = sum(sum(1 for w in v.split() if any(c.isalpha() for c in w)) for v in values) / len(values)
    chars = sum(len(v) for v in values) / len(values)
    return words >= FREE_TEXT_WORDS or chars >= FREE_TEXT_CHARS


def _text_kind(values: list[str]) -> str | None:
    """What a sample of a text column is linkable as: ``"dates"`` / ``"timestamps"``,
    ``"free text"``, or None (the pandas and the Spark engine use this one rule)."""
    kind = _date_kind(values)
    if kind is None and _free_text(values):
        kind = "free text"
    return kind


def _cardinality(series: pd.Series) -> str | None:
    try:
        counts = series.value_counts(dropna=True)
    except TypeError:  # unhashable values (lists from JSONL)
        counts = hashable(series).value_counts(dropna=True)
    n = len(series)
    distinct = len(counts)
    if not n or distinct < MIN_DISTINCT:
        return None
    unique_share = float((counts == 1).sum()) / n
    if distinct / n >= DISTINCT_SHARE or unique_share >= UNIQUE_SHARE:
        return (
            f"high-cardinality values ({distinct} distinct, {unique_share:.0%} of records unique on it alone)"
        )
    return None


def linkable_columns(frame: pd.DataFrame, columns: Iterable[str]) -> dict[str, str]:
    """Map column → why an attacker can link on it, for the linkable ``columns``.

    Only ``columns`` are inspected (pass the released columns without a role). A column
    is linkable when it holds dates or timestamps, free text, or high-cardinality
    values (see the module docstring for the thresholds). The reasons name kinds and
    counts, never values.

    Example:
        >>> import pandas as pd
        >>> frame = pd.DataFrame({"signup": ["2024-01-%02d" % (i % 28 + 1) for i in range(40)],
        ...                       "plan": ["basic", "pro"] * 20})
        >>> linkable_columns(frame, ["signup", "plan"])
        {'signup': 'dates'}
    """
    found: dict[str, str] = {}
    for column in columns:
        series = frame[column]
        if is_datetime64_any_dtype(series):
            present = series.dropna()
            timed = bool(len(present)) and bool((present.dt.normalize() != present).any())
            found[column] = "timestamps" if timed else "dates"
            continue
        if is_object_dtype(series) or is_string_dtype(series):
            kind = _text_kind(_text_sample(series))
            if kind is not None:
                found[column] = kind
                continue
        if is_bool_dtype(series):
            continue
        kind = _cardinality(series)
        if kind is not None:
            found[column] = kind
    return found
