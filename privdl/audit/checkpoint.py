"""Signed checkpoints: a small statement of a log's size and head, kept apart from it.

A hash chain and MACs catch edits, deletions, reordering and insertions, but nothing in
the log itself can show that its last entries were cut off. A checkpoint can: it says
"this log had N entries and the N-th line hashed to H", signed with Ed25519, and is
stored somewhere the log's writer cannot rewrite (another folder or machine, a ticket,
an e-mail). The format copies transparency-dev's checkpoint notes
(https://github.com/transparency-dev/formats, ``log/README.md``) and the signed-note
format of ``golang.org/x/mod/sumdb/note``::

    privdl.audit/9f2c61d0a4b3e8f7          <- origin: this log's id
    1234                                   <- size: entries covered
    3q2+7w...base64 of the 32-byte head==   <- root hash: SHA-256 of line 1234
    time 2026-11-27T09:30:00Z              <- extension line (informational)
                                           <- blank line
    — privdl-audit AbCd...base64(key hash[4] || Ed25519 signature[64])

The signature covers the text before the blank line. The key hash is the first four
bytes of SHA-256(name || "\\n" || 0x01 || public key), so a verifier can tell which
key a line claims to be from.

A checkpoint proves nothing about entries appended after it, and an *older* genuine
checkpoint of the same log hides a truncation down to its size: verify against the
newest checkpoint you hold.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as _dt
import hashlib
import os
import re
from pathlib import Path
from typing import Any

from privdl.errors import InputError, KeyMissingError, TamperDetectedError
from privdl.io import check_output_path, write_text
from privdl.keys import (
    generate_ed25519_key,
    key_folder_lock,
    load_ed25519_private_key,
    load_ed25519_public_key,
)
from privdl.signing import ed25519_sign, ed25519_verify, public_bytes

__all__ = [
    "KEY_NAME",
    "Checkpoint",
    "checkpoint_verified",
    "generate_signing_key",
    "load_public_key",
    "load_signing_key",
    "origin_for",
    "sign_checkpoint",
    "verifier_key",
]

KEY_NAME = "privdl-audit"
_ALG_ED25519 = b"\x01"
_SIG_PREFIX = "\u2014 "  # em dash and space, as in signed notes
_DECIMAL = re.compile(r"^(0|[1-9][0-9]{0,18})$")
_MAX_NOTE = 64 * 1024


def origin_for(log_id: str) -> str:
    """The origin line of the checkpoints of log ``log_id``."""
    return f"privdl.audit/{log_id}"


def _key_hash(name: str, public_raw: bytes) -> bytes:
    return hashlib.sha256(name.encode("utf-8") + b"\n" + _ALG_ED25519 + public_raw).digest()[:4]


def _malformed(what: str) -> TamperDetectedError:
    return TamperDetectedError(f"checkpoint: {what}", kind="checkpoint_malformed")


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A parsed checkpoint note (signature not yet checked: call :meth:`verify`).

    Attributes:
        origin: ``privdl.audit/<log id>``.
        size: number of entries covered.
        root_hash: SHA-256 of the ``size``-th line (32 zero bytes when size is 0).
        time: the UTC time the writer stated, or None.
        text: the whole note, signature lines included.
    """

    origin: str
    size: int
    root_hash: bytes
    time: str | None
    text: str

    @property
    def body(self) -> str:
        """The signed text: everything before the blank line."""
        return self.text.split("\n\n", 1)[0] + "\n"

    @classmethod
    def parse(cls, text: str | bytes) -> Checkpoint:
        """Parse a note strictly.

        Raises:
            TamperDetectedError: kind ``checkpoint_malformed``.
        """
        if isinstance(text, bytes):
            if len(text) > _MAX_NOTE:
                raise _malformed("too large")
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                raise _malformed("not UTF-8 text") from None
        if len(text) > _MAX_NOTE or "\r" in text or not text.endswith("\n"):
            raise _malformed("not a checkpoint note (bad size or line endings)")
        if "\n\n" not in text:
            raise _malformed("no blank line before the signatures")
        body, sigs = text.split("\n\n", 1)
        lines = body.split("\n")
        if len(lines) < 3 or not lines[0] or any(not ln for ln in lines):
            raise _malformed("origin, size and root hash lines expected")
        origin, size_text, root_text = lines[0], lines[1], lines[2]
        if not _DECIMAL.match(size_text):
            raise _malformed("size is not a decimal number")
        try:
            root = base64.b64decode(root_text, validate=True)
        except (binascii.Error, ValueError):
            raise _malformed("root hash is not base64") from None
        if len(root) != 32 or base64.b64encode(root).decode() != root_text:
            raise _malformed("root hash is not 32 bytes in standard base64")
        time = None
        for ext in lines[3:]:
            if ext.startswith("time "):
                time = ext[5:]
        if not sigs or any(not s.startswith(_SIG_PREFIX) for s in sigs.rstrip("\n").split("\n")):
            raise _malformed("no signature lines")
        return cls(origin=origin, size=int(size_text), root_hash=root, time=time, text=text)

    @classmethod
    def load(cls, source: str | os.PathLike[str] | bytes) -> Checkpoint:
        """Parse a checkpoint from a file path, or from note text (str containing newlines)."""
        if isinstance(source, bytes):
            return cls.parse(source)
        if isinstance(source, str) and "\n" in source:
            return cls.parse(source)
        p = Path(source)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            raise InputError(f"checkpoint file {p} does not exist") from None
        return cls.parse(data)

    def verify(self, public_key: Any, *, name: str = KEY_NAME) -> None:
        """Check that a signature line by ``public_key`` signs this note.

        Raises:
            TamperDetectedError: kind ``checkpoint_forged``.
        """
        want = _key_hash(name, public_bytes(public_key))
        body = self.body.encode("utf-8")
        sig_text = self.text.split("\n\n", 1)[1]
        for line in sig_text.rstrip("\n").split("\n"):
            parts = line[len(_SIG_PREFIX) :].split(" ")
            if len(parts) != 2 or parts[0] != name:
                continue
            try:
                blob = base64.b64decode(parts[1], validate=True)
            except (binascii.Error, ValueError):
                continue
            if len(blob) != 68 or blob[:4] != want:
                continue
            if ed25519_verify(public_key, blob[4:], body):
                return
        raise TamperDetectedError(
            "checkpoint: no valid signature by the given public key (forged or altered)",
            kind="checkpoint_forged",
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the note to ``path`` atomically (fsynced; nothing left on failure).

        Raises:
            InputError: a path :func:`privdl.io.check_output_path` refuses.
        """
        check_output_path(path, what="checkpoint")
        return write_text(path, self.text)


def sign_checkpoint(
    *,
    origin: str,
    size: int,
    root_hash: bytes,
    signing_key: Any,
    time: str | None = None,
    name: str = KEY_NAME,
) -> Checkpoint:
    """Make and sign a checkpoint note."""
    if time is None:
        time = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if "\n" in origin or not origin:
        raise InputError("checkpoint origin must be one non-empty line")
    body = f"{origin}\n{size}\n{base64.b64encode(root_hash).decode()}\ntime {time}\n"
    sig = ed25519_sign(signing_key, body.encode("utf-8"))
    blob = base64.b64encode(_key_hash(name, public_bytes(signing_key)) + sig).decode()
    text = f"{body}\n{_SIG_PREFIX}{name} {blob}\n"
    return Checkpoint(origin=origin, size=size, root_hash=root_hash, time=time, text=text)


def checkpoint_verified(
    verified: Any, *, signing_key: Any, output: str | os.PathLike[str] | None = None
) -> Checkpoint:
    """Sign a checkpoint of a log as :func:`~privdl.audit.verify.verify_audit_log` found it.

    The one way to checkpoint a log someone else writes (``privdl audit checkpoint``):
    verify it with the audit key, then sign what was verified::

        cp = checkpoint_verified(verify_audit_log(log, key=key), signing_key="audit-signing.key",
                                 output="elsewhere/audit.checkpoint")

    A writer holding the log open signs with :meth:`AuditLog.checkpoint` instead.

    Args:
        verified: the :class:`~privdl.audit.verify.VerifyResult` of the log.
        signing_key: an Ed25519 private key or its PEM file (see :func:`load_signing_key`).
        output: also write the note here, atomically; store it apart from the log.

    Raises:
        InputError: the log is empty (nothing to checkpoint), or a path
            :func:`privdl.io.check_output_path` refuses (checked first).
        KeyMissingError / SecurityError: see :func:`load_signing_key`.
    """
    if output is not None:
        check_output_path(output, what="checkpoint")
    key = load_signing_key(signing_key)
    if verified.log_id is None:
        raise InputError(f"audit log {verified.path} is empty: nothing to checkpoint")
    cp = sign_checkpoint(
        origin=origin_for(verified.log_id),
        size=verified.entries,
        root_hash=bytes.fromhex(verified.head),
        signing_key=key,
    )
    if output is not None:
        cp.save(output)
    return cp


# -- keys ------------------------------------------------------------------------------
def generate_signing_key(out_dir: str | os.PathLike[str], *, name: str = "audit") -> tuple[Path, Path]:
    """Write a new Ed25519 key pair: ``<name>.key`` (PKCS#8 PEM, mode 0600) and ``<name>.pub``.

    Concurrent calls for one folder have one winner: they take turns on an ``flock``
    on a hidden lock file in the folder's parent, and the others find the keys there.

    Raises:
        SecurityError: a file of that name exists (keys are never overwritten); it
            exits 1 when a concurrent keygen wrote it while this one waited.
        InputError: ``out_dir`` is a file, its parent folder is missing, or either
            is not writable.
    """
    from privdl.errors import SecurityError

    d = Path(out_dir)

    def exist(path: object) -> SecurityError:
        exc = SecurityError(f"keys already exist: {path} was just written by another keygen")
        exc.exit_code = 1  # a race lost, not bad input
        return exc

    for p in (d / f"{name}.key", d / f"{name}.pub"):
        if p.exists():  # there before this call: bad usage (exit 2)
            raise SecurityError(f"keys already exist: {p} exists; refusing to overwrite a key")
    with key_folder_lock(d):
        for p in (d / f"{name}.key", d / f"{name}.pub"):
            if p.exists():  # written by a concurrent keygen while this one waited
                raise exist(p)
        try:
            return generate_ed25519_key(d, name=name)
        except (FileExistsError, SecurityError):  # written meanwhile by a process without the lock
            raise exist(d / f"{name}.key") from None


def load_signing_key(spec: Any) -> Any:
    """An Ed25519 private key from a key object or a PEM file (mode 0600 or 0400).

    Raises:
        KeyMissingError: the file does not exist.
        SecurityError: the file is readable by group or others.
        InputError: the file is not an unencrypted Ed25519 PEM key.
    """
    return load_ed25519_private_key(spec)


def load_public_key(spec: Any) -> Any:
    """An Ed25519 public key from a key object, PEM bytes, a PEM file, or a note verifier
    key (``privdl-audit+<hash>+<base64>``); a private key gives its public half."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

    if isinstance(spec, Ed25519PublicKey):
        return spec
    if isinstance(spec, Ed25519PrivateKey):
        return spec.public_key()
    if isinstance(spec, str) and spec.count("+") >= 2 and "\n" not in spec and not Path(spec).exists():
        return _from_verifier_key(spec)
    data = spec if isinstance(spec, bytes) else None
    if data is None:
        p = Path(spec)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            raise KeyMissingError(f"no public key: {p} does not exist") from None
    text = data.strip()
    if text.count(b"+") >= 2 and b"-----BEGIN" not in text:
        return _from_verifier_key(text.decode("ascii", "replace"))
    return load_ed25519_public_key(data)


def verifier_key(public_key: Any, *, name: str = KEY_NAME) -> str:
    """The note verifier key text ``<name>+<hex key hash>+<base64(0x01 || key)>``."""
    raw = public_bytes(load_public_key(public_key))
    return f"{name}+{_key_hash(name, raw).hex()}+{base64.b64encode(_ALG_ED25519 + raw).decode()}"


def _from_verifier_key(text: str) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        name, hash_hex, b64 = text.strip().split("+", 2)
        blob = base64.b64decode(b64, validate=True)
    except (ValueError, binascii.Error):
        raise InputError("public key is not a verifier key name+hash+base64") from None
    if len(blob) != 33 or blob[:1] != _ALG_ED25519 or _key_hash(name, blob[1:]).hex() != hash_hex:
        raise InputError("verifier key is not a consistent Ed25519 note key")
    return Ed25519PublicKey.from_public_bytes(blob[1:])
