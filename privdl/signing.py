"""Signing a set of file digests: HMAC-SHA256 under a derived key, or Ed25519.

The one signer of privdl. A model folder's ``signature.json`` and an audit
checkpoint note both come from here:

* :func:`sign_digests` / :func:`verify_digests` sign and check a manifest
  ``{"format", "kind", "files": {name: sha256}}`` (canonical JSON), with

  - a :class:`~privdl.keys.Secret`: HMAC-SHA256 under ``key.derive(purpose)``
    (HKDF-SHA256, so the master key itself never signs anything), recorded with
    that derived key's ``key_id``;
  - an Ed25519 private key (verify with its public key), recorded with
    ``"ed_" + SHA-256(public key)[:16]``;
  - ``None``: only the digests (``alg = "sha256"``): this catches corruption, not
    tampering, and a manifest without a signature is refused when a key is given.

* :func:`ed25519_sign` / :func:`ed25519_verify` / :func:`public_bytes` are the
  Ed25519 primitives the signed-note format of audit checkpoints builds on.

Comparisons of MACs and digests are constant-time (:func:`hmac.compare_digest`).
The on-disk format (``privdl-signature/1``) is unchanged from the first release:
folders signed then still verify.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from privdl.errors import InputError, KeyMissingError, SecurityError, TamperDetectedError, UsageError
from privdl.keys import Secret, hmac_sha256

__all__ = [
    "SIGNATURE_FORMAT",
    "digests_match",
    "ed25519_key_id",
    "ed25519_sign",
    "ed25519_verify",
    "is_ed25519_private",
    "is_ed25519_public",
    "public_bytes",
    "sign_digests",
    "verify_digests",
]

SIGNATURE_FORMAT = "privdl-signature/1"


# -- Ed25519 primitives ----------------------------------------------------------------
def _ed25519() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519


def is_ed25519_private(key: Any) -> bool:
    """Whether ``key`` is an Ed25519 private key object."""
    return isinstance(key, _ed25519().Ed25519PrivateKey)


def is_ed25519_public(key: Any) -> bool:
    """Whether ``key`` is an Ed25519 public key object."""
    return isinstance(key, _ed25519().Ed25519PublicKey)


def public_bytes(key: Any) -> bytes:
    """The 32 raw bytes of an Ed25519 public key (of a private key: of its public half)."""
    from cryptography.hazmat.primitives import serialization

    if is_ed25519_private(key):
        key = key.public_key()
    return bytes(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def ed25519_key_id(key: Any) -> str:
    """A short public id of an Ed25519 key: ``"ed_"`` + 16 hex digits of SHA-256."""
    return "ed_" + hashlib.sha256(public_bytes(key)).hexdigest()[:16]


def ed25519_sign(key: Any, message: bytes) -> bytes:
    """The 64-byte Ed25519 signature of ``message``."""
    return bytes(key.sign(message))


def ed25519_verify(public_key: Any, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` is ``public_key``'s valid signature of ``message``."""
    from cryptography.exceptions import InvalidSignature

    if is_ed25519_private(public_key):
        public_key = public_key.public_key()
    try:
        public_key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def digests_match(a: str, b: str) -> bool:
    """Constant-time comparison of two hex digests (or MACs)."""
    return hmac.compare_digest(str(a).encode("utf-8"), str(b).encode("utf-8"))


# -- signed digest manifests -----------------------------------------------------------
def _body(kind: str, files: Mapping[str, str]) -> bytes:
    body = {"format": SIGNATURE_FORMAT, "kind": kind, "files": dict(files)}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")


def sign_digests(files: Mapping[str, str], *, kind: str, key: Any, purpose: str) -> dict[str, Any]:
    """Sign a ``{name: sha256}`` manifest of kind ``kind``; return the signature record.

    Args:
        files: file name -> hex SHA-256 of the file.
        kind: what the files form (``"privdl-model/1"``...); it is signed too.
        key: a :class:`~privdl.keys.Secret` (HMAC under ``key.derive(purpose)``),
            an Ed25519 private key, or None (digests only, ``alg = "sha256"``).
        purpose: the HKDF purpose label of the HMAC key (``"model-signature"``).

    Raises:
        UsageError: ``key`` is of another type.

    Example:
        >>> sig = sign_digests({"a": "00"}, kind="k", key=Secret.generate(), purpose="p")
        >>> sig["alg"]
        'hmac-sha256'
    """
    sig: dict[str, Any] = {"format": SIGNATURE_FORMAT, "kind": kind, "files": dict(files)}
    body = _body(kind, files)
    if key is None:
        sig["alg"] = "sha256"
    elif isinstance(key, Secret):
        mac_key = key.derive(purpose)
        sig.update(alg="hmac-sha256", key_id=mac_key.key_id, mac=hmac_sha256(mac_key, body).hex())
    elif is_ed25519_private(key):
        sig.update(alg="ed25519", key_id=ed25519_key_id(key), signature=ed25519_sign(key, body).hex())
    else:
        raise UsageError("key must be a privdl.Secret (HMAC) or an Ed25519 private key")
    return sig


def verify_digests(sig: Mapping[str, Any], key: Any, *, purpose: str, label: str) -> None:
    """Check the signature of a record made by :func:`sign_digests` (not the files).

    Compare the files' digests with :func:`digests_match` against ``sig["files"]``
    before or after; this checks that the record itself is what the key signed.

    Args:
        sig: the parsed record (``format``, ``kind``, ``files``, ``alg``, ...).
        key: the :class:`~privdl.keys.Secret`, or the Ed25519 public (or private)
            key; None for an unsigned record.
        purpose: the HKDF purpose label it was signed under.
        label: names the signed thing in messages (a folder path).

    Raises:
        TamperDetectedError: kind ``malformed`` or ``signature``.
        SecurityError: the record is not signed, but a key was given.
        KeyMissingError: the record is signed and no (suitable) key was given.
        InputError: an unknown format or algorithm.
    """
    try:
        files = {str(k): str(v) for k, v in dict(sig["files"]).items()}
        alg = str(sig["alg"])
        kind = str(sig["kind"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise TamperDetectedError(f"{label}: signature.json is malformed", kind="malformed") from exc
    if sig.get("format") != SIGNATURE_FORMAT:
        raise InputError(f"{label}: not a privdl signature")
    body = _body(kind, files)
    forged = TamperDetectedError(
        f"{label}: signature does not verify (wrong key or modified)", kind="signature"
    )
    if alg == "sha256":
        if key is not None:
            raise SecurityError(f"{label} is not signed, but a key was given to verify it")
    elif alg == "hmac-sha256":
        if not isinstance(key, Secret):
            raise KeyMissingError(f"{label} is HMAC-signed: pass key= (the signing Secret)")
        expected = hmac_sha256(key.derive(purpose), body).hex()
        if not digests_match(expected, str(sig.get("mac", ""))):
            raise forged
    elif alg == "ed25519":
        if not (is_ed25519_private(key) or is_ed25519_public(key)):
            raise KeyMissingError(f"{label} is Ed25519-signed: pass key= (the public key)")
        try:
            signature = bytes.fromhex(str(sig.get("signature", "")))
        except ValueError:
            raise forged from None
        if not ed25519_verify(key, signature, body):
            raise forged
    else:
        raise InputError(f"{label}: unknown signature algorithm {alg!r}")
