"""Column transforms for direct identifiers.

=============== ============================================================ ==========
transform       what it does                                                 reversible
=============== ============================================================ ==========
pseudonymize    HMAC-SHA256 under a purpose key; 32-char base32 token         no
                (160 bits), deterministic per key, so released tables join
encrypt         AES-SIV (deterministic authenticated encryption), token      key holder
                ``enc1.<base64url>``; :func:`decrypt_values` reverses it
mask            replace letters and digits with ``*`` except the last N       no
                (``keep_last``, default 4); separators are kept
redact          replace every non-missing value with ``[REDACTED]``           no
drop            remove the column                                             no
shift_dates     move every date of one person by the same secret number of   no
                days (``by=`` the person's id column, ``max_days``, default
                30, never 0), keyed by that person's pseudonym
=============== ============================================================ ==========

Unkeyed hashing is not offered: a plain SHA-256 of an e-mail or phone number is
reversed by a dictionary in hours.

``shift_dates`` is not generalization: it hides the exact day from a reader without
the key, but a date moved by at most ``max_days`` is still near-unique, and an attacker
who knows a person's true date searches a window of ``2 * max_days`` days (on
``examples/data/users.csv``, true birth date, sex and city single out more than half of
the people through a 30-day shift). The report counts a shifted column that is not a
quasi-identifier as linkable; make it a quasi-identifier too (``--qi COL --hierarchy
COL=date``) to generalize the shifted dates. ``mask`` with ``keep_last`` > 0 leaves
characters that can still be linked on (the last four digits of a phone number).

**Normalization before hashing / encryption is explicit** (option ``normalize``):

* ``none`` (default): the value's exact text (``str(value)`` for numbers);
* ``strip``: surrounding whitespace removed;
* ``casefold``: stripped and Unicode case-folded (``"Ana "`` ≡ ``"ana"``);
* ``email``: stripped and case-folded (the whole address; ``+tags`` and dots are
  kept because providers differ on them);
* ``digits``: only the digits are kept, with a leading ``+`` (phone numbers:
  ``"+1 (555) 010-9999"`` ≡ ``"+15550109999"``).

Missing values (None, NaN, empty string) stay missing: hashing them would link every
record with a missing identifier to one fake person.

All keys are derived from the master key per purpose (``pseudonymize``, ``encrypt``,
``shift_dates``) and per optional ``domain`` option, so tokens of one domain cannot
be joined with another's unless the user wants them to be.
"""

from __future__ import annotations

import base64
import os
import re
import unicodedata
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from privdl.errors import InputError, KeyMissingError, PolicyError
from privdl.keys import Secret

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "NORMALIZERS",
    "TRANSFORMS",
    "apply_rule",
    "date_offsets",
    "decrypt_values",
    "encrypt_values",
    "mask_values",
    "normalize_values",
    "pseudonymize_values",
    "redact_values",
    "shift_dates",
]

TOKEN_BYTES = 20  # 160 bits, 32 base32 characters
REDACTED = "[REDACTED]"
ENC_PREFIX = "enc1."
_PARALLEL_MIN = 200_000  # distinct values before both cores are used

TRANSFORMS: dict[str, frozenset[str]] = {
    # transform -> allowed options
    "pseudonymize": frozenset({"normalize", "domain"}),
    "encrypt": frozenset({"normalize", "domain"}),
    "mask": frozenset({"keep_last", "char"}),
    "redact": frozenset(),
    "drop": frozenset(),
    "shift_dates": frozenset({"by", "max_days", "normalize", "domain"}),
}
KEYED = frozenset({"pseudonymize", "encrypt", "shift_dates"})


def _purpose(name: str, options: Mapping[str, Any]) -> str:
    domain = str(options.get("domain", "") or "")
    return name if not domain else f"{name}/{domain}"


# ----------------------------------------------------------------------------- normalize
def _digits(text: str) -> str:
    plus = "+" if text.lstrip().startswith("+") else ""
    return plus + re.sub(r"\D", "", text)


NORMALIZERS: dict[str, Callable[[str], str] | None] = {
    "none": None,
    "strip": str.strip,
    "casefold": lambda s: unicodedata.normalize("NFKC", s).strip().casefold(),
    "email": lambda s: unicodedata.normalize("NFKC", s).strip().casefold(),
    "digits": _digits,
}


def _as_text(values: Any) -> np.ndarray:
    """Object array of str; integral floats print without ``.0`` (CSV ints with gaps)."""
    arr = np.asarray(values)
    if arr.dtype.kind == "f" and np.all(np.mod(arr, 1) == 0):
        arr = arr.astype(np.int64)
    if arr.dtype.kind in "iub":
        return arr.astype(str).astype(object)
    if arr.dtype == object and all(type(v) is str for v in arr):
        return arr
    return np.array(
        [str(int(v)) if isinstance(v, float) and v.is_integer() else str(v) for v in arr], dtype=object
    )


def normalize_values(uniques: np.ndarray, how: str) -> np.ndarray:
    """Apply a named normalization to distinct values (object array of str)."""
    if how not in NORMALIZERS:
        raise PolicyError(f"unknown normalization {how!r}; choose one of {sorted(NORMALIZERS)}")
    fn = NORMALIZERS[how]
    if fn is None:
        return uniques
    return np.array([fn(s) for s in uniques], dtype=object)


def _factorize(series: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes, distinct texts, missing mask): every distinct value is processed once.

    Text columns are dictionary-encoded by Arrow (C++ hashing, faster than
    ``pd.factorize`` on Python strings); other dtypes fall back to pandas. Missing
    values and empty strings get code -1 semantics through the mask.
    """
    import pandas as pd
    import pyarrow as pa

    codes: np.ndarray
    try:
        if not (pd.api.types.is_object_dtype(series) or pd.api.types.is_string_dtype(series)):
            raise TypeError("not text")
        encoded = pa.array(
            series.to_numpy(dtype=object), type=pa.string(), from_pandas=True
        ).dictionary_encode()
        codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        texts = encoded.dictionary.to_numpy(zero_copy_only=False).astype(object)
    except (TypeError, pa.ArrowInvalid, pa.ArrowTypeError):
        codes, uniques = pd.factorize(series, use_na_sentinel=True)
        texts = _as_text(uniques)
    missing = codes < 0
    empty = np.flatnonzero(texts == "")
    if len(empty):
        missing |= np.isin(codes, empty)
    return codes, texts, missing


def _scatter(codes: np.ndarray, mapped: np.ndarray, missing: np.ndarray, series: pd.Series) -> pd.Series:
    import pandas as pd

    out = np.empty(len(codes), dtype=object)
    valid = codes >= 0
    out[valid] = mapped[codes[valid]]
    out[~valid] = None
    out[missing] = None
    return pd.Series(out, index=series.index, name=series.name, dtype=object)


# ----------------------------------------------------------------------------- pseudonymize
_B32 = b"abcdefghijklmnopqrstuvwxyz234567"
# 10-bit value -> two base32 characters, as one little-endian uint16
_B32_PAIRS = np.array([_B32[i >> 5] | (_B32[i & 31] << 8) for i in range(1024)], dtype="<u2")
_PAIR_SHIFTS = np.array([30, 20, 10, 0], dtype=np.uint64)


def _base32_ascii(digests: bytes) -> bytes:
    """Lowercase base32 (RFC 4648 alphabet) of concatenated 20-byte digests, as ASCII.

    20 bytes are exactly 32 base32 characters, so tokens need no padding and the
    concatenation encodes in one vectorized pass (the stdlib's ``b32encode`` is a
    Python loop in 3.11).
    """
    raw = np.frombuffer(digests, dtype=np.uint8).reshape(-1, 5)
    packed = raw[:, 0].astype(np.uint64) << np.uint64(32)
    for i, shift in enumerate((24, 16, 8, 0), start=1):
        packed |= raw[:, i].astype(np.uint64) << np.uint64(shift)
    pairs = _B32_PAIRS[((packed[:, None] >> _PAIR_SHIFTS) & np.uint64(1023)).astype(np.intp)]
    return pairs.tobytes()


def _split_tokens(ascii_tokens: bytes, n: int) -> np.ndarray:
    text = ascii_tokens.decode("ascii")
    out = np.empty(n, dtype=object)
    out[:] = [text[i : i + 32] for i in range(0, 32 * n, 32)]
    return out


def _hmac_digests(key: bytes, texts: list[str]) -> bytes:
    """Concatenated truncated HMAC-SHA256 tags of ``texts`` (cryptography's HMAC)."""
    from cryptography.hazmat.primitives import hashes, hmac

    base = hmac.HMAC(key, hashes.SHA256())
    out = bytearray()
    for text in texts:
        h = base.copy()  # reuse the keyed state: no per-value key schedule
        h.update(text.encode("utf-8"))
        out += h.finalize()[:TOKEN_BYTES]
    return bytes(out)


# Set only while a fork pool runs: workers inherit the key and values through memory,
# so neither is ever pickled onto a pipe; each worker returns its slice's digests.
_FORK_STATE: tuple[bytes, list[str]] | None = None


def _worker_tokens(bounds: tuple[int, int]) -> bytes:
    assert _FORK_STATE is not None
    key, items = _FORK_STATE
    return _base32_ascii(_hmac_digests(key, items[bounds[0] : bounds[1]]))


def _tokens(key: bytes, texts: np.ndarray, *, workers: int | None = None) -> np.ndarray:
    global _FORK_STATE
    n = len(texts)
    if n == 0:
        return np.empty(0, dtype=object)
    items = texts.tolist()
    workers = workers if workers is not None else (os.cpu_count() or 1)
    if n >= _PARALLEL_MIN and workers > 1 and "fork" in _start_methods():
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        chunk = -(-n // workers)
        bounds = [(i, min(i + chunk, n)) for i in range(0, n, chunk)]
        _FORK_STATE = (key, items)
        try:
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
                ascii_tokens = b"".join(pool.map(_worker_tokens, bounds))
        finally:
            _FORK_STATE = None
    else:
        ascii_tokens = _base32_ascii(_hmac_digests(key, items))
    return _split_tokens(ascii_tokens, n)


def _start_methods() -> list[str]:
    import multiprocessing as mp

    return mp.get_all_start_methods()


def pseudonymize_values(
    series: pd.Series,
    *,
    key: Secret,
    normalize: str = "none",
    domain: str = "",
    workers: int | None = None,
) -> pd.Series:
    """Keyed pseudonyms (HMAC-SHA256, 160-bit base32 tokens) of a column.

    Each distinct value is hashed once; with many distinct values both cores are used.

    Example:
        >>> import pandas as pd
        >>> s = pd.Series(["a@x.org", "A@x.org "])
        >>> t = pseudonymize_values(s, key=Secret(b"k" * 32), normalize="email")
        >>> t[0] == t[1] and len(t[0]) == 32
        True
    """
    subkey = key.derive(_purpose("pseudonymize", {"domain": domain})).reveal()
    codes, texts, missing = _factorize(series)
    if normalize != "none":
        import pandas as pd

        # normalization may merge distinct raw values: hash each normalized value once
        inverse, merged = pd.factorize(normalize_values(texts, normalize))
        tokens = _tokens(subkey, np.asarray(merged, dtype=object), workers=workers)[inverse]
    else:
        tokens = _tokens(subkey, texts, workers=workers)
    return _scatter(codes, tokens, missing, series)


# ----------------------------------------------------------------------------- encrypt
def _siv(key: Secret, domain: str) -> Any:
    from cryptography.hazmat.primitives.ciphers.aead import AESSIV

    return AESSIV(key.derive(_purpose("encrypt", {"domain": domain}), length=64).reveal())


_ENC_AD = b"privdl/encrypt/v1"


def encrypt_values(series: pd.Series, *, key: Secret, normalize: str = "none", domain: str = "") -> pd.Series:
    """Deterministic AES-SIV encryption: equal inputs give equal tokens; reversible
    by :func:`decrypt_values` with the same key and domain."""
    siv = _siv(key, domain)
    codes, texts, missing = _factorize(series)
    texts = normalize_values(texts, normalize)
    enc = np.array(
        [
            ENC_PREFIX
            + base64.urlsafe_b64encode(siv.encrypt(t.encode("utf-8"), [_ENC_AD])).decode().rstrip("=")
            for t in texts
        ],
        dtype=object,
    )
    return _scatter(codes, enc, missing, series)


def decrypt_values(series: pd.Series, *, key: Secret, domain: str = "") -> pd.Series:
    """Reverse :func:`encrypt_values` (for the key holder only).

    Raises:
        InputError: a token was not produced with this key and domain, or was altered
            (AES-SIV authenticates every token).
    """
    from cryptography.exceptions import InvalidTag

    siv = _siv(key, domain)
    codes, texts, missing = _factorize(series)
    plain = np.empty(len(texts), dtype=object)
    for i, token in enumerate(texts):
        if not token.startswith(ENC_PREFIX):
            raise InputError(f"column {series.name!r}: a value is not a privdl encryption token")
        body = token[len(ENC_PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            plain[i] = siv.decrypt(raw, [_ENC_AD]).decode("utf-8")
        except (InvalidTag, ValueError):
            raise InputError(
                f"column {series.name!r}: a token does not decrypt under this key (wrong key or altered)"
            ) from None
    return _scatter(codes, plain, missing, series)


# ----------------------------------------------------------------------------- mask / redact
def mask_values(series: pd.Series, *, keep_last: int = 4, char: str = "*") -> pd.Series:
    """Replace letters and digits by ``char`` except the last ``keep_last`` of them;
    separators (spaces, dashes, brackets, ``+``) stay so the format is recognisable."""
    if keep_last < 0:
        raise PolicyError("mask: keep_last must be >= 0")
    if len(char) != 1:
        raise PolicyError("mask: char must be one character")
    codes, texts, missing = _factorize(series)
    out = np.empty(len(texts), dtype=object)
    for i, text in enumerate(texts):
        alnum = [j for j, c in enumerate(text) if c.isalnum()]
        hide = set(alnum[: max(len(alnum) - keep_last, 0)])
        out[i] = "".join(char if j in hide else c for j, c in enumerate(text))
    return _scatter(codes, out, missing, series)


def redact_values(series: pd.Series) -> pd.Series:
    """Replace every non-missing value by ``[REDACTED]``."""
    import pandas as pd

    missing = series.isna().to_numpy()
    out = np.full(len(series), REDACTED, dtype=object)
    out[missing] = None
    return pd.Series(out, index=series.index, name=series.name, dtype=object)


# ----------------------------------------------------------------------------- dates
def date_offsets(
    person: pd.Series, *, key: Secret, max_days: int = 30, normalize: str = "none", domain: str = ""
) -> np.ndarray:
    """Per-person secret day offsets in ``[-max_days, -1] ∪ [1, max_days]``.

    The offset is an HMAC of the person's pseudonym under the ``shift_dates`` key, so
    it is the same for every date of that person in every table shifted with the key.
    """
    if max_days < 1:
        raise PolicyError("shift_dates: max_days must be >= 1")
    tokens = pseudonymize_values(person, key=key, normalize=normalize, domain=domain)
    subkey = key.derive(_purpose("shift_dates", {"domain": domain})).reveal()
    codes, uniques = _factorize_tokens(tokens)
    digests = np.frombuffer(_hmac_digests(subkey, uniques.tolist()), dtype=np.uint8)
    words = digests.reshape(len(uniques), TOKEN_BYTES)[:, :8].copy().view(">u8").ravel()
    magnitude = (words % np.uint64(max_days)).astype(np.int64) + 1
    sign = np.where((words >> np.uint64(63)) == 1, -1, 1)
    per_unique = magnitude * sign
    out = np.zeros(len(codes), dtype=np.int64)
    valid = codes >= 0
    out[valid] = per_unique[codes[valid]]
    return out


def _factorize_tokens(tokens: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    codes, uniques = pd.factorize(tokens, use_na_sentinel=True)
    return codes, np.asarray(uniques, dtype=object)


def shift_dates(
    dates: pd.Series,
    person: pd.Series,
    *,
    key: Secret,
    max_days: int = 30,
    normalize: str = "none",
    domain: str = "",
) -> pd.Series:
    """Shift each date by its person's secret offset; text dates keep ISO text form.

    This is not generalization: the shifted date is still near-exact (see the module
    docstring); generalize it as a quasi-identifier to release it under a k claim.

    Raises:
        InputError: values that are not dates (the count, not the values), or a date
            whose person is missing.
    """
    import pandas as pd

    was_text = not pd.api.types.is_datetime64_any_dtype(dates)
    parsed = pd.to_datetime(dates, errors="coerce", format="ISO8601") if was_text else dates
    bad = parsed.isna() & dates.notna() & (dates.astype(object) != "")
    if bad.any():
        raise InputError(f"column {dates.name!r}: {int(bad.sum())} values are not ISO dates (YYYY-MM-DD)")
    if (person.isna() & parsed.notna()).any():
        raise InputError(
            f"column {dates.name!r}: {int((person.isna() & parsed.notna()).sum())} dates have no"
            f" value in {person.name!r} to key their shift"
        )
    offsets = date_offsets(person, key=key, max_days=max_days, normalize=normalize, domain=domain)
    shifted = parsed + pd.to_timedelta(offsets, unit="D")
    if not was_text:
        return shifted
    has_time = bool((shifted.dropna().dt.normalize() != shifted.dropna()).any())
    fmt = "%Y-%m-%dT%H:%M:%S" if has_time else "%Y-%m-%d"
    text = shifted.dt.strftime(fmt).astype(object)
    return text.where(shifted.notna(), None)


# ----------------------------------------------------------------------------- dispatch
def apply_rule(
    frame: pd.DataFrame, column: str, transform: str, options: Mapping[str, Any], key: Secret | None
) -> pd.Series | None:
    """Apply one identifier rule to ``frame[column]``; ``None`` means drop the column."""
    if transform == "drop":
        return None
    if transform in KEYED and key is None:
        raise KeyMissingError(
            f"column {column!r} needs a key for {transform}: pass --key-env VAR or --key-file PATH"
        )
    series = frame[column]
    normalize = str(options.get("normalize", "none"))
    domain = str(options.get("domain", "") or "")
    if transform == "pseudonymize":
        assert key is not None
        return pseudonymize_values(series, key=key, normalize=normalize, domain=domain)
    if transform == "encrypt":
        assert key is not None
        return encrypt_values(series, key=key, normalize=normalize, domain=domain)
    if transform == "mask":
        return mask_values(
            series, keep_last=int(options.get("keep_last", 4)), char=str(options.get("char", "*"))
        )
    if transform == "redact":
        return redact_values(series)
    if transform == "shift_dates":
        assert key is not None
        by = options.get("by")
        if not by:
            raise PolicyError(f"column {column!r}: shift_dates needs by=<person id column>")
        return shift_dates(
            series,
            frame[str(by)],
            key=key,
            max_days=int(options.get("max_days", 30)),
            normalize=normalize,
            domain=domain,
        )
    raise PolicyError(f"column {column!r}: unknown transform {transform!r}")
