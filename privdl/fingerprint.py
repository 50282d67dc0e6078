"""Fingerprints: SHA-256 of a file, folder, table, array or bytes, in one dict shape.

A fingerprint identifies data without holding any of it: the SHA-256 of its bytes (of
a folder's files, of an in-memory table's values), its size, and row and column
counts when known. The file's base name is kept for humans; the folder part is not
(home directories name people). Every fingerprint is a dict with ``"sha256"``, and::

    file    {"name", "sha256", "bytes"}
    folder  {"name", "kind": "dir", "sha256", "bytes", "files"}
    table   {"kind": "table", "sha256", "rows", "columns"}
    array   {"kind": "array", "sha256", "rows"[, "columns"]}
    bytes   {"kind": "bytes", "sha256", "bytes"}

Audit entries record these (their inputs and outputs), manifests record them for
input data and model state, model folders sign :func:`sha256_file` digests. Erasure
requests follow fingerprints from one entry's outputs to a later entry's inputs.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "fingerprint",
    "fingerprint_array",
    "fingerprint_bytes",
    "fingerprint_file",
    "fingerprint_folder",
    "fingerprint_frame",
    "fingerprint_path",
    "sha256_file",
]


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex SHA-256 of a file's bytes, read in blocks."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def fingerprint(item: Any) -> dict[str, Any]:
    """Fingerprint one input or output of an operation.

    Args:
        item: a path (``str`` or path-like); a dict ``{"path": ..., "rows": ...,
            "columns": ...}`` (the path is hashed, the other keys kept); an already
            made fingerprint (a dict with ``"sha256"``, kept as is); a pandas
            DataFrame, numpy array or tensor (hashed from its values in memory).
            Raw ``bytes`` are not hashed here (they may be a key, and a key's hash
            does not belong in a log): call :func:`fingerprint_bytes` on purpose.

    Example:
        >>> fingerprint({"sha256": "0" * 64, "rows": 3})["rows"]
        3
    """
    if isinstance(item, Mapping):
        if "path" in item:
            fp = fingerprint_path(item["path"])
            fp.update((k, v) for k, v in item.items() if k != "path")
            return fp
        return dict(item)
    if isinstance(item, str | os.PathLike):
        return fingerprint_path(item)
    if hasattr(item, "columns") and hasattr(item, "to_numpy"):
        return fingerprint_frame(item)
    if hasattr(item, "detach"):  # torch tensor, without importing torch
        item = item.detach().cpu().numpy()
    if hasattr(item, "tobytes") and hasattr(item, "shape"):
        return fingerprint_array(item)
    return {"kind": f"<{type(item).__name__}>"}


def fingerprint_path(path: str | os.PathLike[str]) -> dict[str, Any]:
    """:func:`fingerprint_file` or :func:`fingerprint_folder`; ``missing`` if neither."""
    p = Path(path)
    if p.is_file():
        return fingerprint_file(p)
    if p.is_dir():
        return fingerprint_folder(p)
    return {"name": p.name, "missing": True}


def fingerprint_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """SHA-256 and size of a file."""
    p = Path(path)
    return {"name": p.name, "sha256": sha256_file(p), "bytes": p.stat().st_size}


def fingerprint_folder(path: str | os.PathLike[str]) -> dict[str, Any]:
    """SHA-256 over every file under a folder (relative path and file digest, sorted)."""
    p = Path(path)
    outer = hashlib.sha256()
    total = files = 0
    for sub in sorted(q for q in p.rglob("*") if q.is_file()):
        inner = sha256_file(sub)
        outer.update(sub.relative_to(p).as_posix().encode("utf-8") + b"\0" + inner.encode() + b"\n")
        total += sub.stat().st_size
        files += 1
    return {"name": p.name, "kind": "dir", "sha256": outer.hexdigest(), "bytes": total, "files": files}


def fingerprint_frame(frame: Any) -> dict[str, Any]:
    """SHA-256 of a pandas DataFrame's column names and values (not its index)."""
    import pandas as pd

    try:
        hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    except TypeError:  # lists or dicts in an object column (JSON Lines): hash their text
        text = frame.apply(lambda col: col.map(repr) if col.dtype == object else col)
        hashed = pd.util.hash_pandas_object(text, index=False).to_numpy()
    digest = hashlib.sha256()
    digest.update("\0".join(map(str, frame.columns)).encode("utf-8") + b"\n")
    digest.update(hashed.tobytes())
    rows, columns = frame.shape
    return {"kind": "table", "sha256": digest.hexdigest(), "rows": int(rows), "columns": int(columns)}


def fingerprint_array(array: Any) -> dict[str, Any]:
    """SHA-256 of an array's dtype, shape and bytes."""
    import numpy as np

    arr = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
    digest.update(arr.tobytes())
    fp: dict[str, Any] = {
        "kind": "array",
        "sha256": digest.hexdigest(),
        "rows": int(arr.shape[0]) if arr.ndim else 1,
    }
    if arr.ndim > 1:
        fp["columns"] = int(arr.shape[1])
    return fp


def fingerprint_bytes(data: bytes) -> dict[str, Any]:
    """SHA-256 and length of a byte string (a serialized model state, a message)."""
    return {"kind": "bytes", "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
