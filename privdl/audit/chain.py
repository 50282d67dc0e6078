"""The line format of the audit log: hash chain, HMAC and the per-entry key ratchet.

One entry is one line::

    {"entry":{...canonical JSON of the entry...},"mac":"<64 hex digits>"}\\n

* ``mac`` = HMAC-SHA256 under the entry's key K_seq over the exact bytes of the
  ``entry`` object (the text between ``{"entry":`` and ``,"mac":``). Because keys sort
  ``"entry" < "mac"`` the whole line is itself canonical JSON.
* ``entry.prev`` = SHA-256 of the previous line (without its newline), 64 zeros for
  the first; the head hash of a log is the SHA-256 of its last line. Anyone can check
  the chain; only a holder of the audit key can check (or make) the MACs.
* K_1 = HKDF-SHA256(audit key, info ``privdl/v1/audit/mac/<log id>``), and
  K_{i+1} = HKDF-Expand(PRK=K_i, info ``privdl/v1/audit/ratchet``, 32 bytes), which
  for one output block is HMAC-SHA256(K_i, info || 0x01). The writer keeps only the
  newest key, so a key taken from a writer later cannot re-authenticate older entries
  (Schneier and Kelsey 1999). Each position has its own key, so an authentic entry
  moved to another position (deleted, swapped, replayed) no longer authenticates.
"""

from __future__ import annotations

from privdl.keys import Secret
from privdl.keys import hmac_sha256 as _hmac_sha256

__all__ = [
    "GENESIS",
    "LINE_PREFIX",
    "MAC_LEN",
    "initial_key",
    "key_at",
    "line_for",
    "mac_of",
    "ratchet",
    "seal",
    "split_line",
    "step",
    "subjects_key",
]

GENESIS = "0" * 64
LINE_PREFIX = b'{"entry":'
MAC_SEP = b',"mac":"'
LINE_SUFFIX = b'"}'
MAC_LEN = 64
# bytes after the entry object: ,"mac":" + 64 hex + "}
TAIL_LEN = len(MAC_SEP) + MAC_LEN + len(LINE_SUFFIX)
RATCHET_INFO = b"privdl/v1/audit/ratchet\x01"


def initial_key(audit_key: Secret, log_id: str) -> bytes:
    """K_1 of the log ``log_id`` under the master audit key."""
    return audit_key.derive(f"audit/mac/{log_id}").reveal()


def subjects_key(audit_key: Secret, log_id: str) -> bytes:
    """The key of the subject filters of one log (membership tests for erasure)."""
    return audit_key.derive(f"audit/subjects/{log_id}").reveal()


def step(key: bytes, body: bytes) -> tuple[bytes, bytes]:
    """``(HMAC-SHA256(K_i, body), K_{i+1})`` for K_i."""
    return _hmac_sha256(key, body), _hmac_sha256(key, RATCHET_INFO)


def ratchet(key: bytes) -> bytes:
    """K_{i+1} from K_i (one-way)."""
    return _hmac_sha256(key, RATCHET_INFO)


def key_at(k1: bytes, seq: int) -> bytes:
    """K_seq, ratcheting forward from K_1 (seq is 1-based)."""
    key = k1
    for _ in range(seq - 1):
        key = _hmac_sha256(key, RATCHET_INFO)
    return key


def mac_of(key: bytes, body: bytes) -> bytes:
    """The hex MAC (as ASCII bytes) of an entry body."""
    return _hmac_sha256(key, body).hex().encode("ascii")


def seal(key: bytes, body: bytes) -> tuple[bytes, bytes]:
    """``(line, K_{i+1})``: the line (without newline) for an entry body under K_i."""
    mac, next_key = step(key, body)
    return LINE_PREFIX + body + MAC_SEP + mac.hex().encode("ascii") + LINE_SUFFIX, next_key


def line_for(key: bytes, body: bytes) -> bytes:
    """The full line (without newline) for an entry body authenticated under ``key``."""
    return seal(key, body)[0]


def split_line(line: bytes) -> tuple[bytes, bytes] | None:
    """``(body, mac)`` of a line in the expected shape, else None (no parsing done)."""
    if (
        len(line) > len(LINE_PREFIX) + TAIL_LEN
        and line.startswith(LINE_PREFIX)
        and line.endswith(LINE_SUFFIX)
        and line[-TAIL_LEN : -TAIL_LEN + len(MAC_SEP)] == MAC_SEP
    ):
        return line[len(LINE_PREFIX) : -TAIL_LEN], line[-MAC_LEN - len(LINE_SUFFIX) : -len(LINE_SUFFIX)]
    return None
