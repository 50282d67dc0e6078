"""Verify an audit log: every entry, the chain, and optionally a signed checkpoint.

The verifier is the security boundary, so it trusts nothing it reads: a line is
accepted only if its MAC under the key of its position is right, its ``seq`` is its
line number and its ``prev`` is the hash of the line before. The first line that
fails is diagnosed to name the kind of tampering:

=====================  =============================================================
kind                   meaning
=====================  =============================================================
garbage                the line is not a JSON audit entry (bytes before / after an
                       entry, a blank or foreign line, a non-ASCII byte)
noncanonical           a JSON entry, but not in the one canonical encoding
modified               the entry does not authenticate at its position (a field was
                       changed, or it was written without the audit key)
inserted               an entry that does not authenticate, followed by the genuine
                       entry of this position
deleted                a genuine entry of a later position: entries are missing
reordered              a genuine entry of another position, whose own position holds
                       another entry (swapped or moved)
duplicated             an exact copy of an earlier entry (replayed)
foreign                an entry of another log
wrong_key              the first entry names another audit key than the one given
truncated              fewer entries than a trusted checkpoint covers
checkpoint_mismatch    the entry a checkpoint covers last is not the one it signed
checkpoint_forged      the checkpoint's signature is not valid under the public key
checkpoint_replayed    a validly signed checkpoint of another log
checkpoint_malformed   the checkpoint file is not a checkpoint note
=====================  =============================================================

An operation that wrote a ``started`` entry and no final entry naming it (a run
killed midway) is not tampering: it is reported in ``VerifyResult.unfinished`` and as
a notice in the summary.

A last line without its newline is what a crash during an append leaves; if it is a
plausible beginning of an entry it is reported as an *incomplete tail* and not
verified, and the entries before it still verify. Anything else after the last
newline is garbage.

Speed: the fast path per line is one HMAC, one SHA-256, one ratchet step and two
byte searches (no JSON parsing): the MAC is over the exact bytes written, so any
re-encoding by someone without the key already fails it. ``thorough=True`` also
parses every entry and re-checks its canonical encoding and log id, which matters
only against a writer that holds the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from privdl.audit.canonical import canonical_json
from privdl.audit.chain import (
    GENESIS,
    LINE_PREFIX,
    MAC_LEN,
    MAC_SEP,
    TAIL_LEN,
    initial_key,
    key_at,
    mac_of,
    split_line,
    step,
)
from privdl.config import AUDIT_KEY_ENV
from privdl.errors import InputError, TamperDetectedError
from privdl.keys import Secret
from privdl.serialize import JSONSerializable

if TYPE_CHECKING:
    from privdl.audit.checkpoint import Checkpoint

__all__ = [
    "DEFAULT_KEY_ENV",
    "VerifyResult",
    "checkpoint_log",
    "iter_entries",
    "resolve_audit_key",
    "verify_audit_log",
]

DEFAULT_KEY_ENV = AUDIT_KEY_ENV  # the name is privdl.config's
_PREV_TAG = b',"prev":"'
_SEQ_TAG = b',"seq":'
_STARTED = b'"started'
_MAX_SEQ_JUMP = 10_000_000
_TAIL_LEN = TAIL_LEN  # ,"mac":" + 64 hex + "}
_MAC_AT = MAC_LEN + 2  # the MAC's start, counted from the end


@dataclasses.dataclass(frozen=True)
class VerifyResult(JSONSerializable):
    """What a successful verification established.

    Attributes:
        path: the log file.
        entries: number of whole entries, all verified.
        head: hex SHA-256 of the last entry line (64 zeros for an empty log).
        log_id: the log's random identifier (None for an empty log).
        size: bytes of the whole entries (the file may hold an incomplete tail after).
        incomplete_tail: bytes after the last whole entry, not verified (0 normally).
        checkpoint_size: entries covered by the verified checkpoint, if one was given.
        checkpoint_time: the time the checkpoint states, if any.
        first_time, last_time: times of the first and last entry.
        unfinished: ``seq`` of each ``started`` entry that no later entry finishes
            (an operation killed midway, or still running).
    """

    path: str
    entries: int
    head: str
    log_id: str | None
    size: int
    incomplete_tail: int = 0
    checkpoint_size: int | None = None
    checkpoint_time: str | None = None
    first_time: str | None = None
    last_time: str | None = None
    unfinished: tuple[int, ...] = ()

    # to_json / from_json: privdl.serialize.JSONSerializable
    _json_kind = "audit verification result"
    _json_indent = 2

    def summary(self) -> str:
        """One line for humans, e.g. ``audit.jsonl: OK, 12 entries, head 3f2a9c01…``."""
        text = f"{self.path}: OK, {self.entries} entries, head {self.head[:16]}"
        if self.checkpoint_size is not None:
            when = f" of {self.checkpoint_time}" if self.checkpoint_time else ""
            text += f"; checkpoint{when} covers {self.checkpoint_size} of them"
        else:
            text += "; no checkpoint (truncation of the tail is not detectable)"
        if self.incomplete_tail:
            text += (
                f"; WARNING: incomplete last line ({self.incomplete_tail} bytes after entry"
                f" {self.entries}, a crash during an append?) was not verified"
            )
        if self.unfinished:
            n = len(self.unfinished)
            shown = ", ".join(str(seq) for seq in self.unfinished[:5]) + (", ..." if n > 5 else "")
            text += (
                f"; NOTE: {n} operation{'s' if n > 1 else ''} started and never finished"
                f" (entry {shown}: killed, or still running)"
            )
        return text

    def to_dict(self) -> dict[str, Any]:
        """As plain JSON-compatible data (``unfinished`` as a list)."""
        data = dataclasses.asdict(self)
        data["unfinished"] = list(self.unfinished)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VerifyResult:
        """Rebuild a result from :meth:`to_dict` output.

        Raises:
            InputError: not a verification result.
        """
        try:
            fields = dict(data)
            fields["unfinished"] = tuple(int(seq) for seq in fields.get("unfinished") or ())
            return cls(**fields)
        except (TypeError, ValueError) as exc:
            raise InputError("not a privdl audit verification result") from exc


@dataclasses.dataclass
class _Scan:
    """Internal result of a scan, including the next ratchet key (never exposed)."""

    entries: int = 0
    head: str = GENESIS
    log_id: str | None = None
    kid: str | None = None
    size: int = 0
    tail: bytes = b""
    next_key: bytes | None = None
    hash_at: dict[int, str] = dataclasses.field(default_factory=dict)
    first_time: str | None = None
    last_time: str | None = None
    # (seq, body) of verified entries that mention "started": parsed after the scan
    started: list[tuple[int, bytes]] = dataclasses.field(default_factory=list)


def resolve_audit_key(key: Secret | bytes | None, key_env: str = DEFAULT_KEY_ENV) -> Secret:
    """The audit key given, or the one in environment variable ``key_env``.

    Raises:
        KeyMissingError: no key given and the variable is unset.
    """
    if isinstance(key, Secret):
        return key
    if isinstance(key, bytes | bytearray):
        return Secret(bytes(key), source="argument")
    return Secret.from_env(key_env)


def verify_audit_log(
    path: str | os.PathLike[str],
    *,
    key: Secret | bytes | None = None,
    checkpoint: Any = None,
    public_key: Any = None,
    thorough: bool = False,
    key_env: str = DEFAULT_KEY_ENV,
) -> VerifyResult:
    """Verify the audit log at ``path``; raise on the first sign of tampering.

    Args:
        path: the JSON Lines log.
        key: the audit key (a :class:`~privdl.keys.Secret`); by default read from the
            environment variable ``key_env`` (``PRIVDL_AUDIT_KEY``).
        checkpoint: a signed checkpoint (path, note text, or
            :class:`~privdl.audit.checkpoint.Checkpoint`) kept apart from the log; with
            it, truncation of the tail and a rewritten history are detected.
        public_key: the Ed25519 public key that signs checkpoints (PEM path, PEM bytes,
            note verifier key text, or key object); needed with ``checkpoint``.
        thorough: also parse every entry and check its canonical encoding (slower).

    Returns:
        A :class:`VerifyResult`; its ``summary()`` is a one-line report.

    Raises:
        TamperDetectedError: with ``entry`` (1-based line number) and ``kind``.
        KeyMissingError: no audit key.
        InputError: the log file does not exist.
        UsageError: a checkpoint without a public key.

    Example:
        >>> verify_audit_log("audit.jsonl", public_key="audit-signing.pub",
        ...                  checkpoint="audit.checkpoint").summary()  # doctest: +SKIP
    """
    from privdl.audit.checkpoint import Checkpoint, load_public_key, origin_for
    from privdl.errors import UsageError

    audit_key = resolve_audit_key(key, key_env)
    p = Path(path)
    cp = None
    if checkpoint is not None:
        if public_key is None:
            raise UsageError("a checkpoint is trusted only with the public key that signed it")
        cp = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint.load(checkpoint)
        cp.verify(load_public_key(public_key))
    watch = (cp.size,) if cp is not None and cp.size > 0 else ()
    with _open_log(p) as fh:
        try:
            scan = _scan(fh, audit_key, watch=watch, thorough=thorough)
        except TamperDetectedError as exc:
            raise TamperDetectedError(f"{p}: {exc}", entry=exc.entry, kind=exc.kind) from None
    if cp is not None:
        if scan.log_id is not None and cp.origin != origin_for(scan.log_id):
            raise TamperDetectedError(
                f"checkpoint is for {cp.origin!r}, not this log ({origin_for(scan.log_id)!r}):"
                " a checkpoint of another log was put in its place",
                kind="checkpoint_replayed",
            )
        if scan.entries < cp.size:
            raise TamperDetectedError(
                f"{p}: entry {scan.entries + 1}: truncated: the log has {scan.entries} entries,"
                f" the checkpoint covers {cp.size}",
                entry=scan.entries + 1,
                kind="truncated",
            )
        if cp.size > 0 and scan.hash_at.get(cp.size) != cp.root_hash.hex():
            raise TamperDetectedError(
                f"{p}: entry {cp.size}: checkpoint_mismatch: not the entry the checkpoint"
                " signed: the log was rewritten after the checkpoint",
                entry=cp.size,
                kind="checkpoint_mismatch",
            )
    return VerifyResult(
        path=str(p),
        entries=scan.entries,
        head=scan.head,
        log_id=scan.log_id,
        size=scan.size,
        incomplete_tail=len(scan.tail),
        checkpoint_size=cp.size if cp is not None else None,
        checkpoint_time=cp.time if cp is not None else None,
        first_time=scan.first_time,
        last_time=scan.last_time,
        unfinished=_unfinished(scan.started),
    )


def checkpoint_log(
    path: str | os.PathLike[str],
    *,
    signing_key: Any,
    key: Secret | bytes | None = None,
    output: str | os.PathLike[str] | None = None,
    key_env: str = DEFAULT_KEY_ENV,
) -> Checkpoint:
    """Verify the log at ``path``, then sign a checkpoint of what was verified.

    The one way to checkpoint a log someone else writes (``privdl audit checkpoint``);
    a writer holding the log open signs with :meth:`AuditLog.checkpoint` instead.
    Store the note apart from the log: with it, :func:`verify_audit_log` detects
    truncation.

    Args:
        path: the JSON Lines log.
        signing_key: an Ed25519 private key or its PEM file (mode 0600); a bad key
            is refused before the log is read.
        key: the audit key; by default read from the variable ``key_env``.
        output: also write the note here, atomically.

    Returns:
        The signed :class:`~privdl.audit.checkpoint.Checkpoint`.

    Raises:
        TamperDetectedError: the log does not verify (nothing is signed).
        InputError: the log is empty or missing.
        KeyMissingError / SecurityError: a missing audit key, or a missing or
            group-readable signing key file.

    Example:
        >>> checkpoint_log("audit.jsonl", signing_key="audit-signing.key",
        ...                output="elsewhere/audit.checkpoint")  # doctest: +SKIP
    """
    from privdl.audit.checkpoint import checkpoint_verified, load_signing_key

    if output is not None:  # a bad output path is refused before any key or log is read
        from privdl.io import check_output_path

        check_output_path(output, what="checkpoint")
    signer = load_signing_key(signing_key)
    verified = verify_audit_log(path, key=key, key_env=key_env)
    return checkpoint_verified(verified, signing_key=signer, output=output)


def _unfinished(marked: list[tuple[int, bytes]]) -> tuple[int, ...]:
    """The ``started`` entries that no later entry names as its start."""
    open_: set[int] = set()
    for seq, body in marked:
        try:
            entry = json.loads(body)
        except ValueError:
            continue
        if entry.get("outcome") == "started":
            open_.add(seq)
        elif isinstance(entry.get("started"), int):
            open_.discard(entry["started"])
    return tuple(sorted(open_))


def iter_entries(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The entries of a log as dicts, *without* verifying them (verify first).

    An incomplete last line is skipped; a line that does not parse raises
    :class:`~privdl.errors.TamperDetectedError`.
    """
    with _open_log(Path(path)) as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.endswith(b"\n"):
                return
            try:
                yield json.loads(raw)["entry"]
            except (ValueError, KeyError, TypeError):
                raise TamperDetectedError(
                    f"{path}: line {lineno} is not an audit entry", entry=lineno, kind="garbage"
                ) from None


def _open_log(p: Path) -> IO[bytes]:
    try:
        return p.open("rb", buffering=1 << 20)
    except FileNotFoundError:
        raise InputError(f"audit log {p} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"audit log {p} is a directory") from None


def _time_of(body: bytes) -> str | None:
    at = body.rfind(b',"time":"')
    if at < 0:
        return None
    end = body.find(b'"', at + 9)
    return body[at + 9 : end].decode("ascii", "replace")


def _scan(
    fh: IO[bytes],
    audit_key: Secret | None,
    *,
    watch: tuple[int, ...] = (),
    thorough: bool = False,
    start: _Scan | None = None,
    start_lineno: int = 0,
) -> _Scan:
    """Verify lines from ``fh``; ``start`` continues a chain (writer catch-up)."""
    scan = start if start is not None else _Scan()
    k = scan.next_key
    prev = scan.head.encode("ascii")
    n = scan.entries
    size = scan.size
    watch_set = set(watch)
    compare = hmac.compare_digest
    sha256 = hashlib.sha256
    lineno = start_lineno
    body = last_body = b""
    for raw in fh:
        lineno += 1
        if raw[-1:] != b"\n":
            if _plausible_tail(raw):
                scan.tail = raw
                break
            raise TamperDetectedError(
                f"entry {lineno}: garbage: bytes after the last entry that are not an entry",
                entry=lineno,
                kind="garbage",
            )
        line = raw[:-1]
        if k is None:  # first entry: its log id selects K_1
            assert audit_key is not None
            k, scan.log_id, scan.kid = _first_key(line, audit_key)
        ok = False
        if (
            line[-_TAIL_LEN:-_MAC_AT] == MAC_SEP
            and line.startswith(LINE_PREFIX)
            and line.endswith(b'"}')
            and len(line) > _TAIL_LEN + 9
        ):
            body = line[9:-_TAIL_LEN]
            mac, k_next = step(k, body)
            if compare(mac.hex().encode(), line[-_MAC_AT:-2]):
                at = body.rfind(_PREV_TAG)
                if at >= 0 and body[at + 9 : at + 73] == prev:
                    at = body.rfind(_SEQ_TAG)
                    end = body.find(b",", at + 7)
                    if at >= 0 and body[at + 7 : end if end >= 0 else -1] == b"%d" % (n + 1):
                        ok = not thorough or _thorough_ok(line, scan.log_id)
        if not ok:
            raise _diagnose(fh, lineno, line, k, prev.decode("ascii"), n + 1, audit_key, scan)
        n += 1
        if n == 1:
            scan.first_time = _time_of(body)
        if _STARTED in body:
            scan.started.append((n, body))
        prev = sha256(line).hexdigest().encode("ascii")
        if n in watch_set:
            scan.hash_at[n] = prev.decode("ascii")
        size += len(raw)
        k = k_next
        last_body = body
    if n > scan.entries:
        scan.last_time = _time_of(last_body)
    scan.entries = n
    scan.head = prev.decode("ascii")
    scan.size = size
    scan.next_key = k
    return scan


def _first_key(line: bytes, audit_key: Secret) -> tuple[bytes, str, str | None]:
    parts = split_line(line)
    entry = None
    if parts is not None:
        try:
            entry = json.loads(parts[0])
        except ValueError:
            entry = None
    if not isinstance(entry, dict) or not isinstance(entry.get("log"), str):
        # no usable log id: let the diagnosis name what is wrong with the line
        log_id = "?"
        kid = None
    else:
        log_id = entry["log"]
        kid = entry.get("kid") if isinstance(entry.get("kid"), str) else None
    return initial_key(audit_key, log_id), log_id, kid


def _plausible_tail(raw: bytes) -> bool:
    """Could these bytes be the start of an entry cut short by a crash?"""
    if not raw.isascii() or any(b < 0x20 for b in raw):
        return False
    return LINE_PREFIX.startswith(raw) or raw.startswith(LINE_PREFIX + b"{")


def _thorough_ok(line: bytes, log_id: str | None) -> bool:
    try:
        obj = json.loads(line)
    except ValueError:
        return False
    if canonical_json(obj) != line:
        return False
    entry = obj.get("entry")
    return isinstance(entry, dict) and entry.get("log") == log_id and entry.get("v") == 1


# -- diagnosis -------------------------------------------------------------------------
def _authentic(key: bytes, line: bytes) -> bool:
    parts = split_line(line)
    return parts is not None and hmac.compare_digest(mac_of(key, parts[0]), parts[1])


def _seq_of(line: bytes) -> int | None:
    try:
        seq = json.loads(line)["entry"]["seq"]
    except (ValueError, KeyError, TypeError):
        return None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


def _diagnose(
    fh: IO[bytes],
    lineno: int,
    line: bytes,
    key: bytes,
    prev: str,
    expected: int,
    audit_key: Secret | None,
    scan: _Scan,
) -> TamperDetectedError:
    """Name the kind of tampering at the first line that failed."""

    def err(kind: str, what: str) -> TamperDetectedError:
        return TamperDetectedError(f"entry {lineno}: {kind}: {what}", entry=lineno, kind=kind)

    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return err("garbage", "the line is not a JSON audit entry")
    entry = obj.get("entry") if isinstance(obj, dict) else None
    if not (
        isinstance(obj, dict)
        and set(obj) == {"entry", "mac"}
        and isinstance(entry, dict)
        and isinstance(obj["mac"], str)
    ):
        return err("garbage", "the line is JSON but not an audit entry")
    if canonical_json(obj) != line:
        return err("noncanonical", "the entry is not in its canonical encoding (re-encoded)")
    mac_ok = _authentic(key, line)
    if audit_key is None:  # a writer catching up: no position analysis without K_1
        what = "breaks the chain" if mac_ok else "does not authenticate"
        return err("modified", f"the entry {what} (written by someone else?)")
    given_kid = audit_key.key_id
    if lineno == 1 and not mac_ok and entry.get("kid") != given_kid:
        return err(
            "wrong_key",
            f"does not authenticate under the given audit key ({given_kid}); the log names"
            f" {entry.get('kid')!r}: wrong key, or the entry was altered",
        )
    if scan.log_id is not None and entry.get("log") != scan.log_id:
        return err("foreign", "the entry belongs to another audit log")
    seq = entry.get("seq")
    if mac_ok:
        return err(
            "modified",
            "the entry authenticates but breaks the chain (seq or prev): it was written by"
            " a holder of the audit key out of order",
        )
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        return err("modified", "the entry does not authenticate (altered)")
    rest = _read_rest(fh)
    genuine_follows = bool(rest) and _authentic(key, rest[0])
    k1 = initial_key(audit_key, scan.log_id or "?")
    if seq != expected and seq - expected <= _MAX_SEQ_JUMP and _authentic(key_at(k1, seq), line):
        if seq > expected:
            if any(_seq_of(r) in range(expected, seq) for r in rest):
                return err("reordered", f"holds entry {seq}; entry {expected} comes later")
            missing = f"{expected}" if seq == expected + 1 else f"{expected} to {seq - 1}"
            return err("deleted", f"holds entry {seq}: entry {missing} deleted")
        if _line_at(fh, seq) == line:
            return err("duplicated", f"is a copy of entry {seq} (replayed)")
        return err("reordered", f"holds entry {seq}, which belongs earlier")
    if genuine_follows:
        return err("inserted", "an entry that does not authenticate was inserted here")
    if seq == expected and entry.get("prev") == prev:
        return err("modified", "the entry does not authenticate: altered, or added without the audit key")
    return err("modified", "the entry does not authenticate (altered)")


def _line_at(fh: IO[bytes], lineno: int) -> bytes | None:
    fh.seek(0)
    for number, raw in enumerate(fh, 1):
        if number == lineno:
            return raw[:-1]
    return None


def _read_rest(fh: IO[bytes]) -> list[bytes]:
    """The remaining whole lines (for diagnosis only)."""
    return [raw[:-1] for raw in fh if raw.endswith(b"\n")]
