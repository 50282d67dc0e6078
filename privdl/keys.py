"""Secret keys: a masked type, providers (environment, file) and purpose-bound derivation.

A :class:`Secret` never shows its bytes in ``repr``/``str``/f-strings and cannot be
pickled. Every use of a key is recorded by its :func:`key_id`, a short public
fingerprint. A master key is never used directly: each purpose (pseudonyms,
deterministic encryption, date shifting, audit MACs) gets its own key derived with
HKDF-SHA256 and a purpose label, so a leaked purpose key does not expose the others.

Key text formats accepted from an environment variable or a file:

* ``hex:<hex digits>`` or bare hex of 32+ digits (decoded as hex, so 32 hex digits
  are a 16-byte key and are refused),
* ``base64:<standard or url-safe base64>``,
* in a file only: raw key bytes that are not text (32+ random bytes).

Keys shorter than 32 bytes (256 bits) are refused, and so is text that is none of
these, a passphrase, or a hex / base64 value that decodes to text: every report
publishes the :func:`key_id`, an HMAC under the key, so a key that a person could
type could be guessed offline from it. ``privdl keygen -o KEYFILE`` makes a random
key (32 bytes from :mod:`secrets`, hex, mode 0600).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import os
import re
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

from privdl.config import KEY_ENV
from privdl.errors import InputError, KeyMissingError, SecurityError

__all__ = [
    "MIN_KEY_BYTES",
    "Secret",
    "check_key_folder",
    "generate_ed25519_key",
    "hmac_sha256",
    "key_folder_lock",
    "key_id",
    "load_ed25519_private_key",
    "load_ed25519_public_key",
]

MIN_KEY_BYTES = 32
#: what a refused passphrase is told to do instead
MAKE_KEY_HINT = (
    "make a random key with `privdl keygen -o KEYFILE` (32 random bytes, hex, mode 0600)"
    " and give --key-file KEYFILE, or set the variable to the file's hex:... line"
)
_TEXT_BYTES = frozenset(range(0x20, 0x7F)) | {0x09, 0x0A, 0x0D}
_HEX = re.compile(r"^[0-9a-fA-F]{32,}$")
_KEY_ID_LABEL = b"privdl/v1/key-id"


class Secret:
    """Key material that does not leak through ``repr``, ``str``, logs or pickles.

    Args:
        value: the key bytes (at least 32 bytes).
        source: a public description of where the key came from (``"env:PRIVDL_KEY"``);
            shown in ``repr`` and error messages, never the bytes.

    Example:
        >>> key = Secret.generate()
        >>> repr(key).startswith("Secret(key_id=")
        True
    """

    __slots__ = ("_source", "_value")

    def __init__(self, value: bytes, *, source: str = "memory") -> None:
        if not isinstance(value, bytes | bytearray):
            raise TypeError("Secret needs bytes")
        if len(value) < MIN_KEY_BYTES:
            raise SecurityError(
                f"key from {source} is {len(value)} bytes; at least {MIN_KEY_BYTES} are required"
            )
        self._value = bytes(value)
        self._source = source

    # -- construction -----------------------------------------------------------------
    @classmethod
    def generate(cls, nbytes: int = MIN_KEY_BYTES) -> Secret:
        """A fresh random key from :mod:`secrets`."""
        return cls(secrets.token_bytes(max(nbytes, MIN_KEY_BYTES)), source="generated")

    @classmethod
    def from_env(cls, name: str = KEY_ENV) -> Secret:
        """Read a key from environment variable ``name``.

        Raises:
            KeyMissingError: the variable is unset or empty.
            SecurityError: the decoded key is shorter than 32 bytes.
        """
        raw = os.environ.get(name)
        if not raw:
            raise KeyMissingError(f"no key: environment variable {name} is not set")
        return cls(_decode_key_text(raw, source=f"env:{name}"), source=f"env:{name}")

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Secret:
        """Read a key from a file readable by its owner only (mode 0600 or 0400).

        Raises:
            KeyMissingError: the file does not exist.
            SecurityError: the file is group- or world-readable, or the key is too short.
        """
        p = Path(path)
        source = f"file:{p.name}"
        try:
            st = p.stat()
        except FileNotFoundError:
            raise KeyMissingError(f"no key: key file {p} does not exist") from None
        if os.name == "posix" and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SecurityError(
                f"key file {p} is accessible by group or others (mode {stat.S_IMODE(st.st_mode):o});"
                " run `chmod 600` on it"
            )
        data = p.read_bytes()
        try:
            text = data.decode("ascii").strip()
        except UnicodeDecodeError:
            if _is_text(data):  # a passphrase with non-ASCII letters is still typed text
                raise _passphrase_error(source) from None
            return cls(data, source=source)
        return cls(_decode_key_text(text, source=source), source=source)

    def to_file(self, path: str | os.PathLike[str]) -> Path:
        """Write the key as ``hex:...`` to a new file with mode 0600, atomically.

        Raises:
            FileExistsError: ``path`` exists (a key is never overwritten).
        """
        from privdl.io import write_text

        return write_text(path, "hex:" + self._value.hex() + "\n", private=True, overwrite=False)

    # -- use --------------------------------------------------------------------------
    def derive(self, purpose: str, *, length: int = 32) -> Secret:
        """Derive the key for one purpose with HKDF-SHA256 (info = purpose label).

        Keys for different purposes are computationally independent.
        """
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        okm = HKDF(
            algorithm=hashes.SHA256(),
            length=max(length, MIN_KEY_BYTES),
            salt=None,
            info=b"privdl/v1/" + purpose.encode("utf-8"),
        ).derive(self._value)
        return Secret(okm, source=f"{self._source}/{purpose}")

    def reveal(self) -> bytes:
        """The raw key bytes. Call only where a primitive needs them."""
        return self._value

    @property
    def key_id(self) -> str:
        """Short public fingerprint of this key (see :func:`key_id`)."""
        return key_id(self)

    @property
    def source(self) -> str:
        return self._source

    # -- hygiene ----------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"Secret(key_id={self.key_id!r}, source={self._source!r})"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(self.key_id)

    def __reduce__(self) -> NoReturn:
        raise SecurityError("a Secret cannot be pickled")

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Secret:
        return self


def key_id(key: Secret | bytes) -> str:
    """A short public fingerprint of a key: ``"kid_"`` + 16 hex digits.

    It is an HMAC of a fixed label under the key, so it identifies the key without
    revealing anything usable about it. Record it wherever a key was used.
    """
    return "kid_" + hmac_sha256(key, _KEY_ID_LABEL).hex()[:16]


def hmac_sha256(key: Secret | bytes, message: bytes) -> bytes:
    """HMAC-SHA256 from ``cryptography`` (the one HMAC every privdl module uses)."""
    from cryptography.hazmat.primitives import hashes, hmac

    mac = hmac.HMAC(key.reveal() if isinstance(key, Secret) else bytes(key), hashes.SHA256())
    mac.update(message)
    return mac.finalize()


def _decode_key_text(text: str, *, source: str) -> bytes:
    """The key bytes of a ``hex:`` / ``base64:`` / bare-hex text.

    Raises:
        InputError: invalid hex or base64.
        SecurityError: any other text (a passphrase), or an encoding of text.
    """
    text = text.strip()
    if not text:
        raise SecurityError(f"key from {source} is empty; {MAKE_KEY_HINT}")
    if text.startswith("hex:"):
        try:
            value = bytes.fromhex(text[4:])
        except ValueError:
            raise InputError(f"key from {source} is not valid hex") from None
    elif text.startswith("base64:"):
        body = text[7:].strip()
        if "-" in body or "_" in body:  # url-safe alphabet: map it, then decode strictly
            body = body.replace("-", "+").replace("_", "/")
        try:
            # validate=True: a character outside the alphabet is an error, never skipped
            value = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
        except (ValueError, binascii.Error):
            raise InputError(f"key from {source} is not valid base64") from None
    elif _HEX.match(text) and len(text) % 2 == 0:
        value = bytes.fromhex(text)
    else:
        raise _passphrase_error(source)
    # 32 random bytes are all printable ASCII with probability (98/256)**32 < 1e-13
    if len(value) >= MIN_KEY_BYTES and _is_text(value):
        raise SecurityError(f"key from {source} decodes to text, not random bytes; {MAKE_KEY_HINT}")
    return value


def _is_text(data: bytes) -> bool:
    """Whether ``data`` reads as typed text: printable ASCII, or printable UTF-8."""
    if all(b in _TEXT_BYTES for b in data):
        return True
    try:
        decoded = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\t\r\n" for c in decoded)


def _passphrase_error(source: str) -> SecurityError:
    return SecurityError(
        f"key from {source} is text (a passphrase?), not a hex:, base64: or raw random key;"
        f" a typed key can be guessed offline from the key_id every report publishes; {MAKE_KEY_HINT}"
    )


# -- Ed25519 key files -----------------------------------------------------------------
def generate_ed25519_key(out_dir: str | os.PathLike[str], *, name: str) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair: ``<name>.key`` (PKCS#8 PEM, mode 0600) and ``<name>.pub``.

    Raises:
        SecurityError: a file of that name exists (keys are never overwritten).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from privdl.io import write_bytes

    d = Path(out_dir)
    made = [p for p in (d, *d.parents) if not p.exists()]
    d.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = d / f"{name}.key", d / f"{name}.pub"
    for p in (priv_path, pub_path):
        if p.exists():
            raise SecurityError(f"{p} exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    written: list[Path] = []
    try:
        written.append(write_bytes(priv_path, pem, private=True, overwrite=False))
        written.append(write_bytes(pub_path, public, overwrite=False))
    except BaseException as exc:
        # all or nothing: no private key without its public half, no folder made for them
        for path in written:
            path.unlink(missing_ok=True)
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only while empty
        if isinstance(exc, FileExistsError):
            raise SecurityError(f"{exc.filename} exists; refusing to overwrite a key") from None
        raise
    return priv_path, pub_path


def load_ed25519_private_key(spec: object) -> Any:
    """An Ed25519 private key from a key object or a PEM file (mode 0600 or 0400).

    Raises:
        KeyMissingError: the file does not exist.
        SecurityError: the file is readable by group or others.
        InputError: the file is not an unencrypted Ed25519 PEM key.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if isinstance(spec, Ed25519PrivateKey):
        return spec
    p = Path(spec)  # type: ignore[arg-type]
    try:
        st = p.stat()
    except FileNotFoundError:
        raise KeyMissingError(f"no signing key: {p} does not exist") from None
    if os.name == "posix" and st.st_mode & 0o077:
        raise SecurityError(f"signing key {p} is accessible by group or others; run `chmod 600` on it")
    try:
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except (ValueError, TypeError):
        raise InputError(f"{p} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"{p} is not an Ed25519 key")
    return key


def load_ed25519_public_key(data: bytes) -> Any:
    """An Ed25519 public key from PEM (SubjectPublicKeyInfo) bytes.

    Raises:
        InputError: not a PEM Ed25519 public key.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise InputError("public key is not a PEM Ed25519 public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InputError("public key is not an Ed25519 key")
    return key


# -- key folders ----------------------------------------------------------------------
def check_key_folder(folder: Path) -> Path:
    """The parent of the key folder ``folder``, checked: an existing, writable folder,
    and ``folder`` (if it exists) a writable folder.

    Raises:
        InputError: naming the path that cannot hold the keys.
    """
    parent = Path(os.path.abspath(folder)).parent
    if folder.exists() and not folder.is_dir():
        raise InputError(f"output {folder} exists and is not a folder")
    if not parent.is_dir():
        raise InputError(f"output folder {folder.parent} does not exist")
    for f in (folder, parent):
        if f.is_dir() and not os.access(f, os.W_OK | os.X_OK):
            raise InputError(f"cannot write to {f}: permission denied")
    return parent


@contextlib.contextmanager
def key_folder_lock(folder: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the exclusive key-generation lock of ``folder``: an ``flock`` on a hidden
    file in its parent (released by the kernel when the process dies; the file is
    removed on release). Concurrent key generators for one folder take turns under it,
    so exactly one writes the keys and the others find them there.

    Raises:
        InputError: the folder cannot hold keys (see :func:`check_key_folder`).
    """
    import fcntl

    folder = Path(folder)
    parent = check_key_folder(folder)
    lock = parent / f".{Path(os.path.abspath(folder)).name}.privdl-keygen.lock"
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        except PermissionError:
            raise InputError(f"cannot write to {parent}: permission denied") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the holder before us removed it: lock the new one
                os.close(fd)
                continue
        except BaseException:
            os.close(fd)
            raise
        break
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)
