"""The versioned container for encrypted batches, encrypted scores and CKKS contexts.

Layout (all integers big-endian)::

    b"PRIVDLHE" | u16 version | u32 header length | header (UTF-8 JSON)
    frame*      : u32 rows | u32 blob count | (u64 length | blob bytes)*
    end marker  : u32 0xFFFFFFFF | u32 trailer length | trailer (UTF-8 JSON)

The header names the privdl version, the file kind (``features``, ``scores``,
``public-context``, ``secret-context``), the CKKS parameter set, the ``key_id`` of the
key set, the packing and the column names. Each frame is one chunk of up to ``N/2``
rows with one serialized ciphertext per column (feature-major packing). The trailer
holds the row and chunk counts and a SHA-256 of the frames, so a truncated or
corrupted file is a clear error and not garbage scores. Frames can be written and read
one at a time, so files of any row count stream in flat memory.

Nothing in this format is pickled; blobs are TenSEAL/SEAL protobuf serializations.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from privdl.encrypted.params import ParameterSet
from privdl.errors import FormatError, InputError, KeyMissingError, UsageError

__all__ = [
    "FORMAT",
    "KINDS",
    "BatchHeader",
    "BatchWriter",
    "Chunk",
    "EncryptedBatch",
    "iter_chunks",
    "read_batch_header",
]

MAGIC = b"PRIVDLHE"
VERSION = 1
FORMAT = "privdl-he/1"
KINDS = ("features", "scores", "public-context", "secret-context")
_END = 0xFFFFFFFF
_MAX_HEADER = 16 << 20
_MAX_BLOB = 1 << 31


@dataclass(frozen=True)
class Chunk:
    """Up to ``N/2`` rows: one serialized ciphertext per column, in column order."""

    rows: int
    blobs: tuple[bytes, ...]

    @property
    def nbytes(self) -> int:
        return sum(len(b) for b in self.blobs)


@dataclass(frozen=True)
class BatchHeader:
    """What a container holds; checked against the keys and model that use it.

    Attributes:
        kind: ``"features"``, ``"scores"``, ``"public-context"`` or ``"secret-context"``.
        params: the CKKS parameter set.
        key_id: public identifier of the key set (``"he_"`` + 16 hex digits).
        columns: one name per blob of a chunk (feature specs or score names).
        rows: total row count when known (the trailer is authoritative).
        packing: ``"feature-major"`` (one ciphertext per column per N/2 rows).
        privdl_version: version that wrote the file.
        info: kind-specific public facts (model id, link, output, rounding...).
    """

    kind: str
    params: ParameterSet
    key_id: str
    columns: tuple[str, ...] = ()
    rows: int | None = None
    packing: str = "feature-major"
    privdl_version: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "kind": self.kind,
            "params": self.params.to_dict(),
            "key_id": self.key_id,
            "columns": list(self.columns),
            "rows": self.rows,
            "packing": self.packing,
            "privdl_version": self.privdl_version or _version(),
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "header") -> BatchHeader:
        if data.get("format") != FORMAT:
            raise FormatError(f"{source}: not a {FORMAT} container (format {data.get('format')!r})")
        kind = data.get("kind")
        if kind not in KINDS:
            raise FormatError(f"{source}: unknown container kind {kind!r}")
        try:
            return cls(
                kind=str(kind),
                params=ParameterSet.from_dict(data["params"]),
                key_id=str(data["key_id"]),
                columns=tuple(str(c) for c in data.get("columns", [])),
                rows=None if data.get("rows") is None else int(data["rows"]),
                packing=str(data.get("packing", "feature-major")),
                privdl_version=str(data.get("privdl_version", "")),
                info=dict(data.get("info") or {}),
            )
        except (KeyError, TypeError, ValueError, InputError) as exc:
            raise FormatError(f"{source}: malformed header ({type(exc).__name__})") from None

    def check_compatible(self, *, kind: str, params: ParameterSet, key_id: str, source: str) -> None:
        """Refuse a container made for another purpose, key set or parameter set.

        Raises:
            InputError: wrong kind or parameters.
            KeyMissingError: made with another key set.
        """
        if self.kind != kind:
            raise InputError(f"{source} holds {self.kind}, expected {kind}")
        if self.params != params:
            raise InputError(
                f"{source} was made with other CKKS parameters "
                f"(N={self.params.poly_modulus_degree}, moduli {list(self.params.coeff_mod_bit_sizes)})"
            )
        if self.key_id != key_id:
            raise KeyMissingError(
                f"{source} was made with key set {self.key_id}, not {key_id}; "
                "use the keys it was encrypted with"
            )


@dataclass(frozen=True)
class EncryptedBatch:
    """An in-memory container: a header and its chunks of serialized ciphertexts.

    Rows keep their order: chunk ``i`` holds rows ``i * N/2`` onwards. Holds bytes
    only, so it pickles cheaply across worker processes and never holds a key.

    Example:
        >>> batch = keys.encrypt(frame, columns=["age"])      # doctest: +SKIP
        >>> batch.save("users.he"); EncryptedBatch.load("users.he")  # doctest: +SKIP
    """

    header: BatchHeader
    chunks: tuple[Chunk, ...]

    @property
    def rows(self) -> int:
        return sum(c.rows for c in self.chunks)

    @property
    def columns(self) -> tuple[str, ...]:
        return self.header.columns

    @property
    def key_id(self) -> str:
        return self.header.key_id

    @property
    def params(self) -> ParameterSet:
        return self.header.params

    @property
    def nbytes(self) -> int:
        """Bytes of ciphertext payload (what an upload costs, before framing)."""
        return sum(c.nbytes for c in self.chunks)

    def __repr__(self) -> str:
        return (
            f"EncryptedBatch(kind={self.header.kind!r}, rows={self.rows}, "
            f"columns={list(self.columns)!r}, key_id={self.key_id!r}, chunks={len(self.chunks)})"
        )

    def to_bytes(self) -> bytes:
        import io

        buf = io.BytesIO()
        write_container(buf, self.header, self.chunks)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "batch") -> EncryptedBatch:
        import io

        fh = io.BytesIO(data)
        header, head = _read_header_raw(fh, source)
        chunks = tuple(_read_frames(fh, source, head))
        return cls(header=replace(header, rows=sum(c.rows for c in chunks)), chunks=chunks)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically (temporary file, fsync, rename)."""
        from privdl.io import atomic_write

        with atomic_write(path, "wb") as fh:
            write_container(fh, replace(self.header, rows=self.rows), self.chunks)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EncryptedBatch:
        """Read and check a container file (magic, version, header, trailer, digest).

        Raises:
            InputError: the file is missing.
            FormatError: not a privdl container, or truncated / corrupted.
        """
        p = Path(path)
        with _open(p) as fh:
            header, head = _read_header_raw(fh, p.name)
            chunks = tuple(_read_frames(fh, p.name, head))
        return cls(header=replace(header, rows=sum(c.rows for c in chunks)), chunks=chunks)


# ----------------------------------------------------------------------------- streaming
def read_batch_header(path: str | os.PathLike[str]) -> BatchHeader:
    """The header of a container file, without reading its frames."""
    p = Path(path)
    with _open(p) as fh:
        return _read_header(fh, p.name)


def iter_chunks(path: str | os.PathLike[str]) -> Iterator[Chunk]:
    """Yield a container's chunks one at a time; the trailer is checked at the end.

    Raises:
        FormatError: truncated or corrupted file (raised when reaching the damage).
    """
    p = Path(path)
    with _open(p) as fh:
        _, head = _read_header_raw(fh, p.name)
        yield from _read_frames(fh, p.name, head)


class BatchWriter:
    """Write a container chunk by chunk, atomically (nothing is left on failure).

    Example:
        >>> with BatchWriter("scores.he", header) as out:   # doctest: +SKIP
        ...     for chunk in chunks:
        ...         out.write(chunk)
    """

    def __init__(self, path: str | os.PathLike[str], header: BatchHeader) -> None:
        self.path = Path(path)
        self.header = header
        self.rows = 0
        self.chunks = 0
        self._digest = hashlib.sha256()
        self._cm: Any = None
        self._fh: IO[bytes] | None = None

    def __enter__(self) -> BatchWriter:
        from privdl.io import atomic_write

        self._cm = atomic_write(self.path, "wb")
        self._fh = self._cm.__enter__()
        _write_header(self._fh, self.header, self._digest)
        return self

    def write(self, chunk: Chunk) -> None:
        if self._fh is None:
            raise UsageError("BatchWriter is not open; use it in a with-block")
        _check_chunk(self.header, chunk)
        _write_frame(self._fh, chunk, self._digest)
        self.rows += chunk.rows
        self.chunks += 1

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self._cm is not None and self._fh is not None
        if exc_type is None:
            _write_trailer(self._fh, self.rows, self.chunks, self._digest)
        self._cm.__exit__(exc_type, exc, tb)
        self._fh = None


# ----------------------------------------------------------------------------- encoding
def write_container(fh: IO[bytes], header: BatchHeader, chunks: Iterable[Chunk]) -> None:
    """Write a complete container to an open binary file."""
    digest = hashlib.sha256()
    _write_header(fh, header, digest)
    rows = count = 0
    for chunk in chunks:
        _check_chunk(header, chunk)
        _write_frame(fh, chunk, digest)
        rows += chunk.rows
        count += 1
    _write_trailer(fh, rows, count, digest)


def _check_chunk(header: BatchHeader, chunk: Chunk) -> None:
    if header.kind not in ("features", "scores"):
        return
    # per-row packed features: one ciphertext holds all columns of one row
    expected = 1 if header.kind == "features" and header.packing == "row" else len(header.columns)
    if len(chunk.blobs) != expected:
        raise UsageError(f"chunk has {len(chunk.blobs)} ciphertexts, expected {expected}")


def _write_header(fh: IO[bytes], header: BatchHeader, digest: Any) -> None:
    body = json.dumps(header.to_dict(), sort_keys=True, separators=(",", ":")).encode()
    data = MAGIC + struct.pack(">HI", VERSION, len(body)) + body
    fh.write(data)
    digest.update(data)


def _write_frame(fh: IO[bytes], chunk: Chunk, digest: Any) -> None:
    head = struct.pack(">II", chunk.rows, len(chunk.blobs))
    fh.write(head)
    digest.update(head)
    for blob in chunk.blobs:
        size = struct.pack(">Q", len(blob))
        fh.write(size)
        fh.write(blob)
        digest.update(size)
        digest.update(blob)


def _write_trailer(fh: IO[bytes], rows: int, count: int, digest: Any) -> None:
    body = json.dumps(
        {"rows": rows, "chunks": count, "sha256": digest.hexdigest()},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    fh.write(struct.pack(">II", _END, len(body)) + body)


@contextlib.contextmanager
def _open(path: Path) -> Iterator[IO[bytes]]:
    if not path.exists():
        raise InputError(f"input file {path} does not exist")
    if path.is_dir():
        raise InputError(f"input {path} is a folder, not a file")
    with open(path, "rb") as fh:
        yield fh


def _exact(fh: IO[bytes], n: int, source: str) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise FormatError(f"{source}: truncated container ({len(data)} of {n} bytes at the end)")
    return data


def _read_header(fh: IO[bytes], source: str) -> BatchHeader:
    return _read_header_raw(fh, source)[0]


def _read_header_raw(fh: IO[bytes], source: str) -> tuple[BatchHeader, bytes]:
    magic = fh.read(len(MAGIC))
    if magic != MAGIC:
        raise FormatError(f"{source}: not a privdl encrypted container")
    fixed = _exact(fh, 6, source)
    version, size = struct.unpack(">HI", fixed)
    if version != VERSION:
        raise FormatError(f"{source}: container version {version} is not supported (need {VERSION})")
    if size > _MAX_HEADER:
        raise FormatError(f"{source}: header of {size} bytes is too large")
    body = _exact(fh, size, source)
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FormatError(f"{source}: header is not valid JSON") from None
    if not isinstance(data, dict):
        raise FormatError(f"{source}: header is not a JSON object")
    return BatchHeader.from_dict(data, source=source), magic + fixed + body


def _read_frames(fh: IO[bytes], source: str, head: bytes) -> Iterator[Chunk]:
    digest = hashlib.sha256(head)
    rows = count = 0
    while True:
        head = _exact(fh, 8, source)
        nrows, nblobs = struct.unpack(">II", head)
        if nrows == _END:
            trailer_size = nblobs
            break
        digest.update(head)
        blobs = []
        for _ in range(nblobs):
            size_bytes = _exact(fh, 8, source)
            (size,) = struct.unpack(">Q", size_bytes)
            if size > _MAX_BLOB:
                raise FormatError(f"{source}: frame {count + 1} is corrupted (blob size)")
            blob = _exact(fh, size, source)
            digest.update(size_bytes)
            digest.update(blob)
            blobs.append(blob)
        rows += nrows
        count += 1
        yield Chunk(rows=nrows, blobs=tuple(blobs))
    try:
        trailer = json.loads(_exact(fh, trailer_size, source).decode("utf-8"))
        ok = (
            trailer["rows"] == rows and trailer["chunks"] == count and trailer["sha256"] == digest.hexdigest()
        )
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        ok = False
    if not ok or fh.read(1):
        raise FormatError(f"{source}: container is corrupted (trailer does not match its frames)")


def _version() -> str:
    from privdl._version import __version__

    return __version__
