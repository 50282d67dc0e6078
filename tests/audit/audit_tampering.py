"""Tampering operators on an audit log's lines, shared by the tests and the vector maker.

Each operator takes the list of whole lines (bytes, without newlines) and returns the
new file content plus what the verifier must report: the 1-based entry and the kinds
acceptable for it, or None when the change cannot be detected without a checkpoint.
"""

from __future__ import annotations

import hashlib
import json

from privdl.audit.canonical import canonical_json


def join(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def modify(lines: list[bytes], j: int) -> tuple[bytes, int, set[str]]:
    """Change one field of entry j (1-based), re-encoded canonically, MAC kept."""
    obj = json.loads(lines[j - 1])
    obj["entry"]["outcome"] = "failed" if obj["entry"]["outcome"] == "ok" else "ok"
    out = list(lines)
    out[j - 1] = canonical_json(obj)
    return join(out), j, {"modified"}


def modify_param(lines: list[bytes], j: int) -> tuple[bytes, int, set[str]]:
    obj = json.loads(lines[j - 1])
    params = obj["entry"].setdefault("params", {})
    params["epsilon"] = 1e9
    out = list(lines)
    out[j - 1] = canonical_json(obj)
    return join(out), j, {"modified"}


def delete(lines: list[bytes], j: int) -> tuple[bytes, int, set[str]]:
    """Remove entry j; the last one only shows against a checkpoint (truncation)."""
    out = lines[: j - 1] + lines[j:]
    return join(out), j, {"deleted"} if j < len(lines) else {"truncated"}


def swap(lines: list[bytes], j: int) -> tuple[bytes, int, set[str]]:
    out = list(lines)
    out[j - 1], out[j] = out[j], out[j - 1]
    return join(out), j, {"reordered"}


def duplicate(lines: list[bytes], j: int) -> tuple[bytes, int, set[str]]:
    out = [*lines[:j], lines[j - 1], *lines[j:]]
    return join(out), j + 1, {"duplicated"}


def insert_forged(lines: list[bytes], j: int) -> tuple[bytes, int, set[str]]:
    """Insert a well-formed entry with a made-up MAC (no key) before position j."""
    template = json.loads(lines[0])["entry"]
    prev = hashlib.sha256(lines[j - 2]).hexdigest() if j > 1 else "0" * 64
    entry = dict(template, seq=j, prev=prev, event="anonymize", outcome="ok")
    entry.pop("subjects", None)
    forged = canonical_json({"entry": entry, "mac": hashlib.sha256(b"guess").hexdigest()})
    out = [*lines[: j - 1], forged, *lines[j - 1 :]]
    return join(out), j, {"inserted"} if j <= len(lines) else {"modified"}


def truncate(lines: list[bytes], keep: int) -> tuple[bytes, int, set[str]]:
    return join(lines[:keep]), keep + 1, {"truncated"}


def garbage_line(lines: list[bytes], j: int) -> tuple[bytes, int, set[str]]:
    out = [*lines[: j - 1], b"this is not an entry", *lines[j - 1 :]]
    return join(out), j, {"garbage"}


def garbage_before(lines: list[bytes], j: int) -> tuple[bytes, int, set[str]]:
    out = list(lines)
    out[j - 1] = b"xx" + out[j - 1]
    return join(out), j, {"garbage"}


def garbage_after(lines: list[bytes], j: int) -> tuple[bytes, int, set[str]]:
    out = list(lines)
    out[j - 1] = out[j - 1] + b"}junk"
    return join(out), j, {"garbage"}


def garbage_at_end(lines: list[bytes], j: int = 0) -> tuple[bytes, int, set[str]]:
    return join(lines) + b"garbage without newline", len(lines) + 1, {"garbage"}


def reencode(lines: list[bytes], j: int) -> tuple[bytes, int, set[str]]:
    """The same entry in another JSON spelling (spaces after separators)."""
    out = list(lines)
    out[j - 1] = json.dumps(json.loads(lines[j - 1]), sort_keys=True).encode()
    return join(out), j, {"noncanonical"}


def reorder_keys(lines: list[bytes], j: int) -> tuple[bytes, int, set[str]]:
    obj = json.loads(lines[j - 1])
    entry = dict(reversed(list(obj["entry"].items())))
    out = list(lines)
    out[j - 1] = json.dumps({"entry": entry, "mac": obj["mac"]}, separators=(",", ":")).encode()
    return join(out), j, {"noncanonical"}


def append_forged(lines: list[bytes], j: int = 0) -> tuple[bytes, int, set[str]]:
    """A well-formed entry with a made-up MAC added at the end (by someone without the key)."""
    return insert_forged(lines, len(lines) + 1)


# name -> (operator, smallest log it applies to, how j is chosen: "any", "not_last", "end")
OPERATORS = {
    "modify": (modify, 1, "any"),
    "modify_param": (modify_param, 1, "any"),
    "delete": (delete, 2, "not_last"),
    "swap": (swap, 2, "not_last"),
    "duplicate": (duplicate, 1, "any"),
    "insert_forged": (insert_forged, 1, "any"),
    "append_forged": (append_forged, 1, "end"),
    "garbage_line": (garbage_line, 1, "any"),
    "garbage_before": (garbage_before, 1, "any"),
    "garbage_after": (garbage_after, 1, "any"),
    "garbage_at_end": (garbage_at_end, 1, "end"),
    "reencode": (reencode, 1, "any"),
    "reorder_keys": (reorder_keys, 1, "any"),
}
