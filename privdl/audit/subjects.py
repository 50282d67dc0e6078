"""Which data subjects a dataset held, without writing their pseudonyms into the log.

An entry's ``subjects`` field is a keyed Bloom filter: the k bit positions of a
pseudonym come from HMAC-SHA256 under the log's subjects key (derived from the audit
key) over a random per-entry salt and the pseudonym, expanded to k words by SplitMix64,
so filters of the same people in two entries share no bit pattern. Without the key the bits say nothing about who is
in the dataset; with it, :func:`might_contain` answers "possibly" (false-positive
rate :data:`FP_RATE`) or "certainly not". False positives only make an erasure request
list one dataset too many for the controller to check; there are no false negatives.
"""

from __future__ import annotations

import base64
import math
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["FP_RATE", "make_filter", "might_contain"]

FP_RATE = 1e-6
_BATCH = 1 << 16


def _clean(pseudonyms: Iterable[Any]) -> list[bytes]:
    out = set()
    for p in pseudonyms:
        if p is None or (isinstance(p, float) and math.isnan(p)):
            continue
        text = str(p)
        if text:
            out.add(text.encode("utf-8"))
    return sorted(out)


_GOLDEN = 0x9E3779B97F4A7C15
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _positions(key: bytes, salt: bytes, items: list[bytes], m: int, k: int) -> Any:
    """k bit positions per item, each reduced mod m.

    The secret part is one HMAC-SHA256 (``cryptography``) per item over salt || item;
    its first 64 bits seed SplitMix64, whose k outputs are the positions. Without the
    key the seeds are unpredictable; SplitMix64 only stretches them (double hashing's
    arithmetic progressions would give correlated bit sets in small filters).
    """
    import numpy as np
    from cryptography.hazmat.primitives import hashes, hmac

    base = hmac.HMAC(key, hashes.SHA256())
    base.update(salt)
    seeds = bytearray()
    for item in items:
        h = base.copy()
        h.update(item)
        seeds += h.finalize()[:8]
    state = np.frombuffer(bytes(seeds), dtype="<u8").reshape(-1, 1)
    steps = (np.arange(1, k + 1, dtype=np.uint64) * np.uint64(_GOLDEN)).reshape(1, -1)
    with np.errstate(over="ignore"):
        z = state + steps
        z = (z ^ (z >> np.uint64(30))) * np.uint64(_M1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(_M2)
        z = z ^ (z >> np.uint64(31))
    return z % np.uint64(m)


def make_filter(key: bytes, pseudonyms: Iterable[Any], *, fp_rate: float = FP_RATE) -> dict[str, Any]:
    """A keyed Bloom filter of the distinct pseudonyms (None, NaN and "" are skipped)."""
    import numpy as np

    items = _clean(pseudonyms)
    n = len(items)
    m = max(64, math.ceil(-max(n, 1) * math.log(fp_rate) / math.log(2) ** 2 / 8) * 8)
    k = max(1, min(32, round(m / max(n, 1) * math.log(2))))
    salt = secrets.token_bytes(16)
    bits = np.zeros(m // 8, dtype=np.uint8)
    for start in range(0, n, _BATCH):
        pos = _positions(key, salt, items[start : start + _BATCH], m, k).ravel()
        np.bitwise_or.at(
            bits,
            (pos >> np.uint64(3)).astype(np.intp),
            (np.uint8(1) << (pos & np.uint64(7)).astype(np.uint8)),
        )
    return {
        "n": n,
        "m": m,
        "k": k,
        "salt": salt.hex(),
        "bloom": base64.b64encode(bits.tobytes()).decode("ascii"),
    }


def might_contain(key: bytes, filt: Mapping[str, Any], pseudonym: str) -> bool:
    """True when ``pseudonym`` may be in the filter, False when it certainly is not."""
    try:
        m, k = int(filt["m"]), int(filt["k"])
        salt = bytes.fromhex(filt["salt"])
        bits = base64.b64decode(filt["bloom"], validate=True)
    except (KeyError, TypeError, ValueError):
        return False
    if m < 8 or len(bits) * 8 < m or not 1 <= k <= 64:
        return False
    for p in _positions(key, salt, [pseudonym.encode("utf-8")], m, k)[0]:
        p = int(p)
        if not bits[p >> 3] & (1 << (p & 7)):
            return False
    return True
